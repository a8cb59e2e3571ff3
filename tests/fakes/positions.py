"""In-memory ``PositionNotifier``/``PositionListener`` and ``EventPositionIndex``."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence

from toolkit.positions import Position, TopicPartition

__all__ = ["InMemoryEventPositionIndex", "InMemoryPositions"]


class InMemoryPositions:
    """PositionNotifier and PositionListener in one, without threads."""

    def __init__(self) -> None:
        self._latest: dict[str, dict[TopicPartition, int]] = {}
        self._version = 0
        self._changed = threading.Condition()

    def publish(
        self, projection: str, offsets: Mapping[TopicPartition, int], *, rewound: bool = False
    ) -> None:
        with self._changed:
            latest = self._latest.setdefault(projection, {})
            for tp, offset in offsets.items():
                latest[tp] = offset if rewound else max(latest.get(tp, -1), offset)
            self._version += 1
            self._changed.notify_all()

    @property
    def version(self) -> int:
        return self._version

    def latest(self, projection: str) -> dict[TopicPartition, int]:
        with self._changed:
            return dict(self._latest.get(projection, {}))

    def wait_for_update(self, after_version: int, timeout: float) -> int:
        with self._changed:
            self._changed.wait_for(lambda: self._version != after_version, timeout)
            return self._version


class InMemoryEventPositionIndex:
    """EventPositionIndex in a dict (entries never expire)."""

    def __init__(self) -> None:
        self.entries: dict[str, Position] = {}

    def record(self, entries: Sequence[tuple[str, Position]]) -> None:
        self.entries.update(entries)

    def lookup(self, event_id: str) -> Position | None:
        return self.entries.get(event_id)
