"""Redis errors become the toolkit's ``StoreError`` here, in one place for the package.

Every Redis adapter wraps its calls in :func:`map_exceptions` instead of
catching ``redis.RedisError`` per method (httpx's ``map_exceptions`` idea):
a ``redis.RedisError`` raised inside becomes ``StoreError("Redis <what>
failed: <type>: <reason>")`` with the adapter's context (projection,
participant, ...) and the server's URL with credentials masked; the original
is chained. Nothing else is caught.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import redis

from connectors.redis.settings import RedisSettings
from toolkit.errors import StoreError

__all__ = ["map_exceptions"]


@contextmanager
def map_exceptions(what: str, settings: RedisSettings, **context: object) -> Iterator[None]:
    """Translate a Redis error raised in the block into ``StoreError`` naming ``what``."""
    try:
        yield
    except redis.RedisError as exc:
        raise StoreError(
            f"Redis {what} failed: {type(exc).__name__}: {exc}",
            **context,
            redis=settings.safe_url(),
        ) from exc
