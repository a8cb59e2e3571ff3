"""The in-memory log: ``RecordProducer`` and ``RecordConsumer`` without a broker.

Topics have one partition each. Records written by open transactions
(:mod:`tests.fakes.transactions`) are counted in ``pending`` until their
transaction ends, so :class:`~tests.fakes.offsets.InMemoryOffsets` can tell the
last stable offset from the high watermark.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from toolkit.errors import PublishError
from toolkit.ports import (
    FROM_BEGINNING,
    AssignCallback,
    ConsumedRecord,
    OutgoingRecord,
    RevokeCallback,
)
from toolkit.positions import Position, TopicPartition

__all__ = ["InMemoryConsumer", "InMemoryLog"]


class InMemoryLog:
    """Topics with one partition each; a producer and consumers over them."""

    def __init__(self) -> None:
        self.topics: dict[str, list[ConsumedRecord]] = {}
        self.committed: dict[str, dict[TopicPartition, int]] = {}
        self.fail_topics: set[str] = set()
        # Like the broker's message.max.bytes (key + value + headers), when set.
        self.max_record_bytes: int | None = None
        # Records of open transactions per topic: written, not yet committed or aborted.
        self.pending: dict[str, int] = {}
        # The timestamp given to each record written (like CreateTime); 0 unless set.
        self.clock_ms: Callable[[], int] = lambda: 0

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
                record.topic, 0, len(log), record.key, record.value, record.headers, self.clock_ms()
            )
            log.append(stored)
            positions.append(stored.position)
        return positions

    def close(self) -> None:
        pass

    def consumer(self, group: str) -> InMemoryConsumer:
        return InMemoryConsumer(self, group)


class InMemoryConsumer:
    """A group member reading every topic's one partition; ``idled`` sums ``idle()``."""

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
