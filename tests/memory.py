"""In-memory port implementations for unit tests of core logic (no servers)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from toolkit.errors import PublishError
from toolkit.ports import (
    FROM_BEGINNING,
    AssignCallback,
    ConsumedRecord,
    OutgoingRecord,
    RevokeCallback,
)
from toolkit.positions import Position, TopicPartition


class InMemoryLog:
    """Topics with one partition each; a producer and consumers over them."""

    def __init__(self) -> None:
        self.topics: dict[str, list[ConsumedRecord]] = {}
        self.committed: dict[str, dict[TopicPartition, int]] = {}
        self.fail_topics: set[str] = set()

    def produce(self, records: Sequence[OutgoingRecord]) -> list[Position]:
        positions = []
        for record in records:
            if record.topic in self.fail_topics:
                raise PublishError("injected failure", topic=record.topic)
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
        self.position.update(offsets)

    def close(self) -> None:
        pass
