"""Contract of ``TransactionalProducer``: all of a transaction's records, or none."""

from __future__ import annotations

import pytest

from tests.contracts import eventually, unique
from tests.contracts.log import LogContract, read, records
from toolkit.positions import TopicPartition

__all__ = ["TransactionalProducerContract"]


class TransactionalProducerContract(LogContract):
    def test_a_committed_transaction_is_read_whole_and_in_order(self) -> None:
        topic = self.new_topic()
        with self.make_transactions().begin() as transaction:
            positions = transaction.produce(records(topic, "a", "b"))
            transaction.produce(records(topic, "c"))
            transaction.commit()
        assert [p.topic for p in positions] == [topic, topic]
        consumer = self.make_consumer(unique("g"))
        consumer.subscribe([topic])
        assert [r.value for r in read(consumer, 3)] == [b"a", b"b", b"c"]
        # Polling on moves the position past the commit marker, to the stable end.
        tp, offsets = TopicPartition(topic, 0), self.make_offsets()
        eventually(
            lambda: (
                consumer.poll(1, 0.1) == []
                and consumer.positions([tp]) == offsets.end_offsets([topic])
            ),
            what="position at the stable end",
        )
        consumer.close()

    def test_an_aborted_transaction_is_never_read(self) -> None:
        topic = self.new_topic()
        transactions = self.make_transactions()
        with transactions.begin() as transaction:
            transaction.produce(records(topic, "aborted"))
            transaction.abort()
            transaction.abort()  # idempotent
        with transactions.begin() as transaction:
            transaction.produce(records(topic, "kept"))
            transaction.commit()
        consumer = self.make_consumer(unique("g"))
        consumer.subscribe([topic])
        assert [r.value for r in read(consumer, 1)] == [b"kept"]
        assert read(consumer, 1, timeout=0.5) == []
        consumer.close()

    def test_leaving_the_block_without_commit_aborts(self) -> None:
        topic = self.new_topic()
        transactions = self.make_transactions()
        with transactions.begin() as transaction:
            transaction.produce(records(topic, "left"))
        with pytest.raises(RuntimeError), transactions.begin() as transaction:
            transaction.produce(records(topic, "raised"))
            raise RuntimeError("handler failed")
        with transactions.begin() as transaction:
            transaction.produce(records(topic, "kept"))
            transaction.commit()
        consumer = self.make_consumer(unique("g"))
        consumer.subscribe([topic])
        assert [r.value for r in read(consumer, 1)] == [b"kept"]
        consumer.close()

    @pytest.mark.parametrize("committed", [True, False])
    def test_offsets_sent_to_a_transaction_are_committed_with_it(self, committed: bool) -> None:
        source, sink, group = self.new_topic(), self.new_topic(), unique("g")
        written = self.write(source, "a", "b")
        tp = TopicPartition(source, 0)
        consumer = self.make_consumer(group)
        consumer.subscribe([source])
        assert len(read(consumer, 2)) == 2
        with self.make_transactions().begin() as transaction:
            transaction.produce(records(sink, "out"))
            transaction.send_offsets({tp: written[1] + 1}, self.group_metadata(consumer))
            if committed:
                transaction.commit()
        consumer.close()
        found = self.make_offsets().committed_offsets(group, [source])
        assert found == ({tp: written[1] + 1} if committed else {})
