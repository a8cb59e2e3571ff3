"""Contracts of ``LogInspector`` and ``RecordTimestamps``: what a monitor reads of the log."""

from __future__ import annotations

import time
from abc import abstractmethod

from tests.contracts import eventually, unique
from tests.contracts.log import LogContract, read, records
from toolkit.ports import FROM_BEGINNING, LogInspector, LogOffsets, RecordTimestamps
from toolkit.positions import TopicPartition

__all__ = ["LogInspectorContract", "RecordTimestampsContract"]


class LogInspectorContract(LogContract):
    @abstractmethod
    def make_inspector(self) -> LogInspector: ...

    def test_an_empty_topic_starts_and_ends_at_zero(self) -> None:
        topic = self.new_topic()
        assert self.make_inspector().log_offsets([topic]) == {
            TopicPartition(topic, 0): LogOffsets(0, 0, 0)
        }

    def test_a_topic_that_does_not_exist_is_absent(self) -> None:
        assert self.make_inspector().log_offsets([unique("no-such-topic")]) == {}

    def test_the_stable_end_and_the_end_follow_the_written_records(self) -> None:
        topic = self.new_topic()
        last = self.write(topic, "a", "b", "c")[-1]
        found = self.make_inspector().log_offsets(iter([topic]))[TopicPartition(topic, 0)]
        assert (found.start, found.stable, found.end) == (0, last + 1, last + 1)

    def test_an_open_transaction_moves_the_end_but_not_the_stable_end(self) -> None:
        topic = self.new_topic()
        tp = TopicPartition(topic, 0)
        inspector = self.make_inspector()
        stable = self.write(topic, "a")[-1] + 1
        with self.make_transactions().begin() as transaction:
            transaction.produce(records(topic, "b", "c"))
            found = inspector.log_offsets([topic])[tp]
            assert found.stable == stable and found.end == stable + 2
            transaction.commit()
        # The commit marker lands after commit() returns: both ends meet soon after.
        eventually(
            lambda: (
                inspector.log_offsets([topic])[tp].stable
                == inspector.log_offsets([topic])[tp].end
                >= stable + 2
            ),
            what="stable end after commit",
        )

    def test_group_offsets_are_each_groups_committed_offsets_for_the_partitions_asked(
        self,
    ) -> None:
        topic, other = self.new_topic(), self.new_topic()
        group, idle = unique("g"), unique("idle")
        self.write(topic, "a", "b")
        self.write(other, "x")
        consumer = self.make_consumer(group)
        consumer.subscribe([topic, other], lambda parts: dict.fromkeys(parts, FROM_BEGINNING))
        assert len(read(consumer, 3)) == 3
        consumer.commit({TopicPartition(topic, 0): 2, TopicPartition(other, 0): 1})
        found = self.make_inspector().group_offsets(
            {group: [TopicPartition(topic, 0)], idle: [TopicPartition(topic, 0)]}
        )
        assert found == {group: {TopicPartition(topic, 0): 2}, idle: {}}

    def test_a_group_nobody_joined_has_no_members(self) -> None:
        group = unique("nobody")
        found = self.make_inspector().group_members([group])
        assert found[group].members == 0 and found[group].assigned == frozenset()


class RecordTimestampsContract(LogContract):
    @abstractmethod
    def make_timestamps(self) -> RecordTimestamps: ...

    def test_the_timestamp_of_a_written_record_is_when_it_was_written(self) -> None:
        topic = self.new_topic()
        before = time.time_ns() // 1_000_000
        offsets = self.write(topic, "a", "b")
        after = time.time_ns() // 1_000_000
        tp = TopicPartition(topic, 0)
        found = self.make_timestamps().timestamps({tp: offsets[1]}, timeout=10)
        assert before - 1_000 <= found[tp] <= after + 1_000

    def test_an_offset_past_the_stable_end_has_no_timestamp(self) -> None:
        topic = self.new_topic()
        last = self.write(topic, "a")[-1]
        tp = TopicPartition(topic, 0)
        assert self.make_timestamps().timestamps({tp: last + 1}, timeout=1) == {}
