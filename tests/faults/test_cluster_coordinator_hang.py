"""A transactional call stuck on a frozen group coordinator, on the three-broker cluster.

librdkafka does not always honour the timeout of ``send_offsets_to_transaction``:
with the group's coordinator frozen (SIGSTOP) it blocks until its request
times out, several times its own timeout; with the coordinator killed and
decommissioned it can block for good (librdkafka issues 5456, 5511), and a
saga participant's loop with it (in a fault run the deadline below fired and
the participant healed by itself). The adapter runs
such calls under a hard deadline: the call must fail clearly by then, the
next transaction must commit once the coordinator is back, and nothing of the
abandoned transaction may ever be visible.
"""

from __future__ import annotations

import time
import uuid

import pytest
from confluent_kafka import Consumer
from confluent_kafka import TopicPartition as KafkaTopicPartition
from confluent_kafka.admin import AdminClient

from connectors.kafka.admin import KafkaAdmin
from connectors.kafka.settings import KafkaSettings
from connectors.kafka.transactions import KafkaTransactionalProducer
from toolkit.errors import PublishError, TransactionAborted
from toolkit.ports import OutgoingRecord
from toolkit.positions import TopicPartition
from toolkit.runtime.stack import LocalStack

from .cluster import read_committed_records

# Shorter timeouts make the first init_transactions on the cluster flaky.
OPERATION_TIMEOUT_S = 2.0


def _joined(settings: KafkaSettings, group: str, topic: str) -> Consumer:
    consumer = Consumer(
        {
            **settings.client_config(),
            "group.id": group,
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    consumer.subscribe([topic])
    deadline = time.monotonic() + 30
    while not consumer.assignment():
        assert time.monotonic() < deadline, "the consumer never got its partitions"
        consumer.poll(0.2)
    return consumer


@pytest.mark.timeout(240)
def test_send_offsets_stuck_on_a_frozen_coordinator_fails_by_its_deadline_and_the_next_commits(
    cluster: LocalStack, cluster_kafka: KafkaSettings, cluster_admin: KafkaAdmin
) -> None:
    run = uuid.uuid4().hex[:8]
    source, sink, group = f"hang.{run}.in", f"hang.{run}.out", f"hang-{run}"
    cluster_admin.create_topics([source], partitions=3, replication_factor=3)
    cluster_admin.create_topics([sink], partitions=1, replication_factor=3)
    consumer = _joined(cluster_kafka, group, source)
    admin = AdminClient(cluster_kafka.client_config())  # type: ignore[arg-type]
    coordinator = admin.describe_consumer_groups([group])[group].result().coordinator
    node = f"kafka-{coordinator.id}"
    producer = KafkaTransactionalProducer(
        cluster_kafka, f"hang-{run}", operation_timeout=OPERATION_TIMEOUT_S
    )
    try:
        transaction = producer.begin()
        transaction.produce([OutgoingRecord(sink, b"k", b"abandoned", ())])
        cluster.freeze(node)
        try:
            began = time.monotonic()
            with pytest.raises(TransactionAborted) as stuck:
                transaction.send_offsets(
                    {TopicPartition(source, 0): 1}, consumer.consumer_group_metadata()
                )
            took = time.monotonic() - began
        finally:
            cluster.thaw(node)
        # The hard deadline (2x the timeout) plus re-creating the producer, whose
        # init_transactions times out too while the coordinator is frozen: 6.0 s
        # in every run. Without the deadline: 10.3-16.2 s.
        assert took < 4 * OPERATION_TIMEOUT_S + 0.5, f"blocked {took:.1f} s: {stuck.value!r}"

        deadline = time.monotonic() + 90
        while True:  # the coordinator is back: the next transaction must commit
            try:
                with producer.begin() as transaction:
                    transaction.produce([OutgoingRecord(sink, b"k", b"committed", ())])
                    transaction.send_offsets(
                        {TopicPartition(source, 0): 2}, consumer.consumer_group_metadata()
                    )
                    transaction.commit()
                break
            except PublishError:
                assert time.monotonic() < deadline, "no transaction committed after the thaw"
                time.sleep(1.0)
        found = read_committed_records(cluster_kafka, sink, expected=1, within=30)
        assert [r.value for r in found] == [b"committed"]
        committed = consumer.committed([KafkaTopicPartition(source, 0)], timeout=30)
        assert [c.offset for c in committed] == [2]
    finally:
        producer.close()
        consumer.close()
