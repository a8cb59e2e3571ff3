"""In-memory port implementations for unit tests of core logic (no servers)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from toolkit.errors import PublishError
from toolkit.ports import (
    FROM_BEGINNING,
    AssignCallback,
    ConsumedRecord,
    OutgoingRecord,
    ReadModelChange,
    RevokeCallback,
)
from toolkit.positions import Position, TopicPartition


class InMemoryLog:
    """Topics with one partition each; a producer and consumers over them."""

    def __init__(self) -> None:
        self.topics: dict[str, list[ConsumedRecord]] = {}
        self.committed: dict[str, dict[TopicPartition, int]] = {}
        self.fail_topics: set[str] = set()
        # Like the broker's message.max.bytes (key + value + headers), when set.
        self.max_record_bytes: int | None = None

    def produce(self, records: Sequence[OutgoingRecord]) -> list[Position]:
        positions = []
        for record in records:
            if record.topic in self.fail_topics:
                raise PublishError("injected failure", topic=record.topic)
            size = len(record.key or b"") + len(record.value or b"")
            size += sum(len(k) + len(v) for k, v in record.headers)
            if self.max_record_bytes is not None and size > self.max_record_bytes:
                raise PublishError("too large", topic=record.topic, code="MSG_SIZE_TOO_LARGE")
            log = self.topics.setdefault(record.topic, [])
            stored = ConsumedRecord(
                record.topic, 0, len(log), record.key, record.value, record.headers, 0
            )
            log.append(stored)
            positions.append(stored.position)
        return positions

    def close(self) -> None:
        pass

    def consumer(self, group: str) -> InMemoryConsumer:
        return InMemoryConsumer(self, group)


class InMemoryConsumer:
    def __init__(self, log: InMemoryLog, group: str) -> None:
        self.log = log
        self.group = group
        self.topics: list[str] = []
        committed = log.committed.setdefault(group, {})
        self.position: dict[TopicPartition, int] = dict(committed)
        self.idled = 0.0

    def subscribe(
        self,
        topics: Sequence[str],
        on_assign: AssignCallback | None = None,
        on_revoke: RevokeCallback | None = None,
    ) -> None:
        self.topics = list(topics)
        partitions = [TopicPartition(t, 0) for t in self.topics]
        starts = on_assign(partitions) if on_assign else None
        for tp, start in (starts or {}).items():
            self.position[tp] = 0 if start == FROM_BEGINNING else start

    def poll(self, max_records: int, timeout: float) -> list[ConsumedRecord]:
        out: list[ConsumedRecord] = []
        for topic in self.topics:
            tp = TopicPartition(topic, 0)
            log = self.log.topics.get(topic, [])
            start = self.position.get(tp, 0)
            batch = log[start : start + max_records - len(out)]
            out.extend(batch)
            self.position[tp] = start + len(batch)
        return out

    def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        self.log.committed[self.group].update(offsets)

    def rewind(self, offsets: Mapping[TopicPartition, int]) -> None:
        for tp, offset in offsets.items():
            self.position[tp] = 0 if offset == FROM_BEGINNING else offset

    def positions(self, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: self.position[tp] for tp in partitions if tp in self.position}

    def idle(self, seconds: float) -> None:
        self.idled += seconds

    def close(self) -> None:
        pass


class InMemoryReadModelStore:
    """CheckpointedReadModelStore in a dict, with the same compare-and-set rule as Redis."""

    def __init__(self) -> None:
        self.documents: dict[tuple[str, str], dict[str, Any]] = {}
        self.counter_values: dict[tuple[str, str], dict[str, int]] = {}
        self.offsets: dict[str, dict[TopicPartition, int]] = {}

    def get(self, projection: str, key: str) -> dict[str, Any] | None:
        found = self.documents.get((projection, key))
        return None if found is None else json.loads(json.dumps(found))

    def counters(self, projection: str, key: str) -> dict[str, int]:
        return dict(self.counter_values.get((projection, key), {}))

    def applied_offsets(
        self, projection: str, partitions: Iterable[TopicPartition]
    ) -> dict[TopicPartition, int]:
        stored = self.offsets.get(projection, {})
        return {tp: stored[tp] for tp in partitions if tp in stored}

    def apply(
        self,
        projection: str,
        changes: Sequence[ReadModelChange],
        expected: Mapping[TopicPartition, int | None],
        offsets: Mapping[TopicPartition, int],
    ) -> bool:
        stored = self.offsets.setdefault(projection, {})
        if any(stored.get(tp) != want for tp, want in expected.items()):
            return False
        for change in changes:
            key = (projection, change.key)
            if change.kind == "put":
                self.documents[key] = json.loads(json.dumps(change.document))
            elif change.kind == "delete":
                self.documents.pop(key, None)
            elif change.field is not None:
                counters = self.counter_values.setdefault(key, {})
                counters[change.field] = counters.get(change.field, 0) + change.amount
        stored.update(offsets)
        return True

    def dump(self, projection: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for (name, key), doc in self.documents.items():
            if name == projection:
                out[f"d:{key}"] = doc
        for (name, key), counters in self.counter_values.items():
            if name == projection:
                out[f"c:{key}"] = dict(counters)
        return out

    def reset(self, projection: str) -> None:
        self.documents = {k: v for k, v in self.documents.items() if k[0] != projection}
        self.counter_values = {k: v for k, v in self.counter_values.items() if k[0] != projection}
        self.offsets.pop(projection, None)


class InMemoryOffsets:
    """OffsetSource over an InMemoryLog; counts how often it is asked."""

    def __init__(self, log: InMemoryLog) -> None:
        self.log = log
        self.queries = 0

    def committed_offsets(self, group: str, topics: Iterable[str]) -> dict[TopicPartition, int]:
        self.queries += 1
        wanted = set(topics)
        return {tp: o for tp, o in self.log.committed.get(group, {}).items() if tp.topic in wanted}

    def end_offsets(self, topics: Iterable[str]) -> dict[TopicPartition, int]:
        return {TopicPartition(t, 0): len(self.log.topics.get(t, [])) for t in topics}


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
