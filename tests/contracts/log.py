"""Contracts of ``RecordProducer`` and ``RecordConsumer``, and the log they share.

:class:`LogContract` holds the factories every log-facing suite needs: a
fresh one-partition topic, a producer, group members, an offset source and a
transactional producer. Suites for one port subclass it; an implementation
implements the factories once and subclasses the suites it honours.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from typing import Any

from tests.contracts import unique
from toolkit.ports import (
    FROM_BEGINNING,
    ConsumedRecord,
    OffsetSource,
    OutgoingRecord,
    RecordConsumer,
    RecordProducer,
    TransactionalProducer,
)
from toolkit.positions import TopicPartition

__all__ = ["LogContract", "RecordConsumerContract", "RecordProducerContract", "read"]


def read(consumer: RecordConsumer, count: int, timeout: float = 20.0) -> list[ConsumedRecord]:
    """Poll until ``count`` records arrived (fewer after ``timeout`` seconds)."""
    found: list[ConsumedRecord] = []
    deadline = time.monotonic() + timeout
    while len(found) < count and time.monotonic() < deadline:
        found.extend(consumer.poll(count - len(found), 0.2))
    return found


def records(topic: str, *values: str, key: bytes | None = b"k") -> list[OutgoingRecord]:
    return [OutgoingRecord(topic, key, v.encode(), (("n", v.encode()),)) for v in values]


class LogContract(ABC):
    """Factories for suites that write and read a log."""

    @abstractmethod
    def new_topic(self) -> str:
        """A fresh, empty topic with one partition."""

    @abstractmethod
    def make_producer(self) -> RecordProducer: ...

    @abstractmethod
    def make_consumer(self, group: str) -> RecordConsumer:
        """A new member of ``group`` (reading committed records only)."""

    @abstractmethod
    def make_offsets(self) -> OffsetSource: ...

    @abstractmethod
    def make_transactions(self) -> TransactionalProducer: ...

    @abstractmethod
    def group_metadata(self, consumer: RecordConsumer) -> Any:
        """What ``RecordTransaction.send_offsets`` needs of ``consumer``'s group."""

    def write(self, topic: str, *values: str) -> list[int]:
        """Write records with key ``k``; their offsets."""
        positions = self.make_producer().produce(records(topic, *values))
        return [p.offset for p in positions]


class RecordProducerContract(LogContract):
    """Acknowledged writes, positions in input order."""

    def test_positions_come_in_input_order(self) -> None:
        topic = self.new_topic()
        positions = self.make_producer().produce(records(topic, "a", "b", "c"))
        assert [(p.topic, p.partition) for p in positions] == [(topic, 0)] * 3
        assert [p.offset for p in positions] == [positions[0].offset + i for i in range(3)]

    def test_nothing_to_write_is_no_position(self) -> None:
        assert self.make_producer().produce([]) == []

    def test_records_are_read_back_as_written(self) -> None:
        topic = self.new_topic()
        written = [
            OutgoingRecord(topic, b"k1", b"v1", (("a", b"1"), ("a", b"2"), ("b", b""))),
            OutgoingRecord(topic, None, b"no key"),
            OutgoingRecord(topic, b"k1", None),  # a tombstone
        ]
        positions = self.make_producer().produce(written)
        consumer = self.make_consumer(unique("g"))
        consumer.subscribe([topic])
        found = read(consumer, 3)
        consumer.close()
        assert [r.position for r in found] == positions
        assert [(r.key, r.value, r.headers) for r in found] == [
            (w.key, w.value, w.headers) for w in written
        ]
        assert found[0].header("a") == b"2"


class RecordConsumerContract(LogContract):
    """Group members: where reading starts, commits, rewinds, positions, idling."""

    def test_a_new_group_reads_from_the_start_in_order(self) -> None:
        topic = self.new_topic()
        offsets = self.write(topic, "a", "b", "c")
        consumer = self.make_consumer(unique("g"))
        assigned: list[list[TopicPartition]] = []

        def on_assign(partitions: list[TopicPartition]) -> None:
            assigned.append(partitions)

        consumer.subscribe([topic], on_assign=on_assign)
        found = read(consumer, 3)
        consumer.close()
        assert [r.offset for r in found] == offsets
        assert [r.value for r in found] == [b"a", b"b", b"c"]
        assert assigned == [[TopicPartition(topic, 0)]]

    def test_reading_resumes_after_the_committed_offsets(self) -> None:
        topic, group = self.new_topic(), unique("g")
        offsets = self.write(topic, "a", "b", "c")
        first = self.make_consumer(group)
        first.subscribe([topic])
        assert len(read(first, 3)) == 3
        first.commit({TopicPartition(topic, 0): offsets[2]})
        first.close()
        second = self.make_consumer(group)
        second.subscribe([topic])
        found = read(second, 1)
        second.close()
        assert [r.value for r in found] == [b"c"]

    def test_the_assign_callback_chooses_where_reading_starts(self) -> None:
        topic, group = self.new_topic(), unique("g")
        offsets = self.write(topic, "a", "b", "c")
        tp = TopicPartition(topic, 0)
        consumer = self.make_consumer(group)
        consumer.subscribe([topic], on_assign=lambda tps: {tp: offsets[1]})
        assert [r.value for r in read(consumer, 2)] == [b"b", b"c"]
        consumer.commit({tp: offsets[2] + 1})
        consumer.close()
        again = self.make_consumer(group)
        again.subscribe([topic], on_assign=lambda tps: dict.fromkeys(tps, FROM_BEGINNING))
        assert [r.value for r in read(again, 3)] == [b"a", b"b", b"c"]
        again.close()

    def test_rewind_reads_the_records_again(self) -> None:
        topic = self.new_topic()
        offsets = self.write(topic, "a", "b", "c")
        consumer = self.make_consumer(unique("g"))
        consumer.subscribe([topic])
        assert len(read(consumer, 3)) == 3
        consumer.rewind({TopicPartition(topic, 0): offsets[1]})
        assert [r.offset for r in read(consumer, 2)] == offsets[1:]
        consumer.close()

    def test_positions_are_the_next_offsets_to_read(self) -> None:
        topic = self.new_topic()
        offsets = self.write(topic, "a", "b")
        tp = TopicPartition(topic, 0)
        consumer = self.make_consumer(unique("g"))
        consumer.subscribe([topic])
        assert len(read(consumer, 2)) == 2
        assert consumer.positions([tp, TopicPartition(topic, 7)]) == {tp: offsets[1] + 1}
        assert consumer.positions([]) == {}
        consumer.close()

    def test_idling_neither_loses_nor_repeats_records(self) -> None:
        topic = self.new_topic()
        self.write(topic, "a")
        consumer = self.make_consumer(unique("g"))
        consumer.subscribe([topic])
        assert len(read(consumer, 1)) == 1
        later = self.write(topic, "b", "c")
        consumer.idle(0.6)
        found = read(consumer, 2)
        assert read(consumer, 1, timeout=0.5) == []
        consumer.close()
        assert [r.offset for r in found] == later
