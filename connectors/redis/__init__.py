"""Redis adapters: read-model store, position pub/sub, event-id index."""

from connectors.redis.positions import (
    RedisEventPositionIndex,
    RedisPositionListener,
    RedisPositionNotifier,
)
from connectors.redis.read_model import RedisReadModelStore
from connectors.redis.saga_store import RedisSagaStepStore
from connectors.redis.settings import RedisSettings

__all__ = [
    "RedisEventPositionIndex",
    "RedisPositionListener",
    "RedisPositionNotifier",
    "RedisReadModelStore",
    "RedisSagaStepStore",
    "RedisSettings",
]
