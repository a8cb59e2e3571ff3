"""Once-only marks of replayed dead letters, in Redis.

``RedisReplayMarkers`` implements the ``ReplayMarkers`` port: each mark is a
JSON string at ``kct:dlq-replay:<key>`` (the key names the source topic and
the event id). ``claim`` is one Lua script (set unless present, or replace
a given mark), so two replays racing on one event id cannot both claim it.
Marks never expire: a replay must stay once-only however late it is run
again (delete ``kct:dlq-replay:*`` to forget them).

Failure modes: any Redis error becomes ``StoreError`` naming the key.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import redis

from connectors.redis.errors import map_exceptions
from connectors.redis.settings import RedisSettings

__all__ = ["RedisReplayMarkers"]

_CLAIM = """
local existing = redis.call('GET', KEYS[1])
if (not existing) or (ARGV[2] ~= '' and existing == ARGV[2]) then
  redis.call('SET', KEYS[1], ARGV[1])
  return false
end
return existing
"""


def _encode(mark: Mapping[str, Any]) -> str:
    return json.dumps(mark, separators=(",", ":"), sort_keys=True)


class RedisReplayMarkers:
    """Replay marks by key, claimed atomically."""

    def __init__(self, settings: RedisSettings, client: redis.Redis | None = None) -> None:
        self._settings = settings
        self._redis = client or settings.client()
        self._claim = self._redis.register_script(_CLAIM)

    @staticmethod
    def _key(key: str) -> str:
        return f"kct:dlq-replay:{key}"

    def claim(
        self, key: str, mark: Mapping[str, Any], replacing: Mapping[str, Any] | None = None
    ) -> dict[str, Any] | None:
        args = [_encode(mark), "" if replacing is None else _encode(replacing)]
        with map_exceptions("replay mark claim", self._settings, key=key):
            found = self._claim(keys=[self._key(key)], args=args)
        return None if found is None else dict(json.loads(str(found)))

    def confirm(self, key: str, mark: Mapping[str, Any]) -> None:
        with map_exceptions("replay mark write", self._settings, key=key):
            self._redis.set(self._key(key), _encode(mark))

    def release(self, key: str) -> None:
        with map_exceptions("replay mark delete", self._settings, key=key):
            self._redis.delete(self._key(key))

    def close(self) -> None:
        self._redis.close()
