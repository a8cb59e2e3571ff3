"""In-memory ``TopicBrowser`` (over :class:`~tests.fakes.log.InMemoryLog`) and
``ReplayMarkers``."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from tests.fakes.log import InMemoryLog
from toolkit.errors import AdminError
from toolkit.ports import ConsumedRecord
from toolkit.positions import Position

__all__ = ["InMemoryReplayMarkers", "InMemoryTopicBrowser"]


class InMemoryTopicBrowser:
    """Reads the in-memory log's topics (one partition each) without a group."""

    def __init__(self, log: InMemoryLog) -> None:
        self.log = log

    def read(self, topic: str, since_ms: int | None, timeout: float) -> list[ConsumedRecord]:
        if topic not in self.log.topics:
            raise AdminError("no such topic", topic=topic)
        records = list(self.log.topics[topic])
        if since_ms is None:
            return records
        return [r for r in records if (r.timestamp_ms or 0) >= since_ms]

    def fetch(self, position: Position, timeout: float) -> ConsumedRecord | None:
        records = self.log.topics.get(position.topic, [])
        if position.partition != 0 or not 0 <= position.offset < len(records):
            return None
        return records[position.offset]

    def close(self) -> None:
        pass


class InMemoryReplayMarkers:
    """Replay marks in a dict (JSON copies, like Redis)."""

    def __init__(self) -> None:
        self.marks: dict[str, str] = {}

    def claim(
        self, key: str, mark: Mapping[str, Any], replacing: Mapping[str, Any] | None = None
    ) -> dict[str, Any] | None:
        existing = self.marks.get(key)
        wanted = None if replacing is None else json.dumps(replacing, sort_keys=True)
        if existing is None or existing == wanted:
            self.marks[key] = json.dumps(mark, sort_keys=True)
            return None
        return dict(json.loads(existing))

    def confirm(self, key: str, mark: Mapping[str, Any]) -> None:
        self.marks[key] = json.dumps(mark, sort_keys=True)

    def release(self, key: str) -> None:
        self.marks.pop(key, None)

    def close(self) -> None:
        pass
