"""Readiness probe for Redis: does the server answer PING?

Guarantee: ``redis_ready`` returns True only after a PING round trip, so a
server still loading its append-only file (``LOADING``) is not ready yet.
Failure modes: never raises for an unreachable or loading server; answers False.
"""

from __future__ import annotations

import redis

__all__ = ["redis_ready"]


def redis_ready(url: str, timeout: float) -> bool:
    """True if the Redis server at ``url`` answers PING within ``timeout`` seconds."""
    client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()
