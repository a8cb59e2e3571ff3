"""Redis adapters: read-model store, position pub/sub, event-id index."""

from connectors.redis.positions import (
    RedisEventPositionIndex,
    RedisPositionListener,
    RedisPositionNotifier,
)
from connectors.redis.read_model import RedisReadModelStore
from connectors.redis.settings import RedisSettings

__all__ = [
    "RedisEventPositionIndex",
    "RedisPositionListener",
    "RedisPositionNotifier",
    "RedisReadModelStore",
    "RedisSettings",
]
