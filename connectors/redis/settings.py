"""Connection settings for Redis.

Typed and frozen; the environment is read only by :meth:`RedisSettings.from_env`.
The URL may hold a password (``redis://:secret@host:port/0``): it is never
shown in errors or logs (see :meth:`RedisSettings.safe_url`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from urllib.parse import urlsplit, urlunsplit

import redis
from pydantic import BaseModel, ConfigDict

__all__ = ["DEFAULT_REDIS_URL", "RedisSettings"]

# The local stack's Redis (`kct stack up`).
DEFAULT_REDIS_URL = "redis://127.0.0.1:16379/0"


class RedisSettings(BaseModel):
    """Where Redis is."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    url: str = DEFAULT_REDIS_URL
    socket_timeout: float = 5.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> RedisSettings:
        """Settings from ``KCT_REDIS_URL`` (default: the local stack)."""
        env = os.environ if environ is None else environ
        return cls(url=env.get("KCT_REDIS_URL", DEFAULT_REDIS_URL))

    def safe_url(self) -> str:
        """The URL with any credentials masked, for messages."""
        parts = urlsplit(self.url)
        if parts.password is None and parts.username is None:
            return self.url
        host = parts.hostname or ""
        netloc = f"***@{host}" + (f":{parts.port}" if parts.port else "")
        return urlunsplit(parts._replace(netloc=netloc))

    def client(self) -> redis.Redis:
        """A client with string responses."""
        return redis.Redis.from_url(
            self.url,
            decode_responses=True,
            socket_timeout=self.socket_timeout,
            socket_connect_timeout=self.socket_timeout,
            health_check_interval=30,
        )
