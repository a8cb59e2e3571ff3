"""Contract of ``OffsetSource``: end offsets and consumer groups' committed offsets."""

from __future__ import annotations

from tests.contracts import eventually, unique
from tests.contracts.log import LogContract, read, records
from toolkit.positions import TopicPartition

__all__ = ["OffsetSourceContract"]


class OffsetSourceContract(LogContract):
    def test_an_empty_topic_ends_at_zero(self) -> None:
        topic = self.new_topic()
        tp = TopicPartition(topic, 0)
        offsets = self.make_offsets()
        assert offsets.end_offsets([topic]) == {tp: 0}
        assert offsets.end_offsets([topic], include_open_transactions=True) == {tp: 0}

    def test_the_end_is_after_the_last_written_record(self) -> None:
        topic = self.new_topic()
        written = self.write(topic, "a", "b", "c")
        ends = self.make_offsets().end_offsets(iter([topic]))
        assert ends == {TopicPartition(topic, 0): written[-1] + 1}

    def test_an_open_transaction_counts_only_with_include_open_transactions(self) -> None:
        topic = self.new_topic()
        tp = TopicPartition(topic, 0)
        offsets = self.make_offsets()
        stable = self.write(topic, "a")[-1] + 1
        with self.make_transactions().begin() as transaction:
            transaction.produce(records(topic, "b", "c"))
            assert offsets.end_offsets([topic]) == {tp: stable}
            assert offsets.end_offsets([topic], include_open_transactions=True) == {tp: stable + 2}
            transaction.commit()
        # Kafka writes the commit markers after commit() returns: the end follows soon.
        eventually(lambda: offsets.end_offsets([topic])[tp] >= stable + 2, what="stable end")

    def test_committed_offsets_are_the_groups_own_for_the_topics_asked(self) -> None:
        topic, other, group = self.new_topic(), self.new_topic(), unique("g")
        offsets = self.make_offsets()
        assert offsets.committed_offsets(group, [topic]) == {}
        written = self.write(topic, "a", "b")
        consumer = self.make_consumer(group)
        consumer.subscribe([topic])
        assert len(read(consumer, 2)) == 2
        consumer.commit({TopicPartition(topic, 0): written[1]})
        consumer.close()
        assert offsets.committed_offsets(group, iter([topic, other])) == {
            TopicPartition(topic, 0): written[1]
        }
        assert offsets.committed_offsets(group, [other]) == {}
        assert offsets.committed_offsets(unique("g"), [topic]) == {}
