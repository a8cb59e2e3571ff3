"""Projection position announcements over Redis pub/sub, and the event-id index.

``RedisPositionNotifier`` publishes a projection's newly committed offsets on
``kct:positions:<projection>`` right after the Kafka commit.
``RedisPositionListener`` keeps one pattern subscription per process on a
background thread, folds announcements into the highest offsets seen per
projection and wakes waiters through a condition variable, so a waiter is
woken within a pub/sub round trip of the commit, with no polling.

Pub/sub is best effort (a disconnected listener misses messages): waiters use
Kafka's committed offsets as the truth and fall back to them, so a lost
announcement only delays a waiter, never makes it return early. The listener
reconnects with bounded back-off and forgets what it heard on every
(re)subscription, since a missed announcement may have been a rewind: a
projection whose read model lost writes announces its lowered offsets with
``rewound``, which replaces rather than raises what listeners hold.

``RedisEventPositionIndex`` maps event ids to positions with a TTL, so callers
can wait for an event they know only by id.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Mapping, Sequence
from datetime import timedelta

import redis

from connectors.redis.errors import map_exceptions
from connectors.redis.settings import RedisSettings
from toolkit.positions import Position, TopicPartition

__all__ = ["RedisEventPositionIndex", "RedisPositionListener", "RedisPositionNotifier"]

log = logging.getLogger(__name__)

CHANNEL_PREFIX = "kct:positions:"


def _encode(offsets: Mapping[TopicPartition, int], rewound: bool = False) -> str:
    flat = {f"{tp.topic}:{tp.partition}": o for tp, o in offsets.items()}
    # Offset keys always hold a ':', so the one key "rewound" is unambiguous.
    return json.dumps({"rewound": flat} if rewound else flat)


def _decode(payload: str) -> tuple[dict[TopicPartition, int], bool]:
    document = dict(json.loads(payload))
    rewound = set(document) == {"rewound"}
    if rewound:
        document = dict(document["rewound"])
    decoded: dict[TopicPartition, int] = {}
    for field, offset in document.items():
        topic, _, partition = str(field).rpartition(":")
        decoded[TopicPartition(topic, int(partition))] = int(offset)
    return decoded, rewound


class RedisPositionNotifier:
    """Publishes committed offsets of a projection."""

    def __init__(self, settings: RedisSettings, client: redis.Redis | None = None) -> None:
        self._settings = settings
        self._redis = client or settings.client()

    def publish(
        self, projection: str, offsets: Mapping[TopicPartition, int], *, rewound: bool = False
    ) -> None:
        with map_exceptions("position announcement", self._settings, projection=projection):
            self._redis.publish(CHANNEL_PREFIX + projection, _encode(offsets, rewound))

    def close(self) -> None:
        self._redis.close()


class RedisPositionListener:
    """Highest announced offsets per projection, with a wake-up for waiters."""

    def __init__(self, settings: RedisSettings) -> None:
        self._settings = settings
        self._latest: dict[str, dict[TopicPartition, int]] = {}
        self._version = 0
        self._changed = threading.Condition()
        self._subscribed = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kct-position-listener", daemon=True)

    def start(self, timeout: float = 5.0) -> RedisPositionListener:
        """Start listening; returns once subscribed (or after ``timeout``, still retrying)."""
        self._thread.start()
        if not self._subscribed.wait(timeout):
            log.warning("position listener not subscribed yet; waiters fall back to Kafka")
        return self

    @property
    def version(self) -> int:
        with self._changed:
            return self._version

    def latest(self, projection: str) -> dict[TopicPartition, int]:
        with self._changed:
            return dict(self._latest.get(projection, {}))

    def wait_for_update(self, after_version: int, timeout: float) -> int:
        with self._changed:
            self._changed.wait_for(lambda: self._version != after_version, timeout)
            return self._version

    def _run(self) -> None:
        delay = 0.1
        while not self._stopping.is_set():
            client = self._settings.client()
            pubsub = client.pubsub(ignore_subscribe_messages=False)  # type: ignore[no-untyped-call]
            try:
                pubsub.psubscribe(CHANNEL_PREFIX + "*")
                while not self._stopping.is_set():
                    message = pubsub.get_message(timeout=0.5)
                    if message is None:
                        continue
                    if message["type"] == "psubscribe":
                        # Announcements may have been missed while disconnected (a
                        # rewind among them): forget what was heard, trust Kafka.
                        self._forget_all()
                        self._subscribed.set()
                        delay = 0.1
                    elif message["type"] == "pmessage":
                        self._fold(str(message["channel"]), str(message["data"]))
            except (redis.RedisError, OSError, ValueError) as exc:
                self._subscribed.clear()
                self._forget_all()
                log.warning("position listener disconnected (%s); retrying in %.1fs", exc, delay)
                self._stopping.wait(delay)
                delay = min(delay * 2, 5.0)
            finally:
                pubsub.close()
                client.close()

    def _fold(self, channel: str, payload: str) -> None:
        projection = channel[len(CHANNEL_PREFIX) :]
        offsets, rewound = _decode(payload)
        with self._changed:
            latest = self._latest.setdefault(projection, {})
            for tp, offset in offsets.items():
                if rewound or offset > latest.get(tp, -1):
                    latest[tp] = offset
            self._version += 1
            self._changed.notify_all()

    def _forget_all(self) -> None:
        with self._changed:
            self._latest.clear()
            self._version += 1
            self._changed.notify_all()

    def close(self) -> None:
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2)


class RedisEventPositionIndex:
    """event id -> position, expiring after ``ttl``."""

    def __init__(
        self,
        settings: RedisSettings,
        ttl: timedelta = timedelta(hours=24),
        client: redis.Redis | None = None,
    ) -> None:
        self._settings = settings
        self._ttl = ttl
        self._redis = client or settings.client()

    @staticmethod
    def _key(event_id: str) -> str:
        return f"kct:event-position:{event_id}"

    def record(self, entries: Sequence[tuple[str, Position]]) -> None:
        with map_exceptions("event index write", self._settings):
            pipe = self._redis.pipeline(transaction=False)
            for event_id, p in entries:
                pipe.set(self._key(event_id), f"{p.topic}:{p.partition}:{p.offset}", ex=self._ttl)
            pipe.execute()

    def lookup(self, event_id: str) -> Position | None:
        with map_exceptions("event index read", self._settings):
            raw = self._redis.get(self._key(event_id))
        if raw is None:
            return None
        topic, partition, offset = str(raw).rsplit(":", 2)
        return Position(topic, int(partition), int(offset))

    def close(self) -> None:
        self._redis.close()
