"""KafkaRecordConsumer.idle() across a rebalance, against the real broker.

librdkafka keeps a partition paused through its revocation and a later
re-assignment. A loop waiting out an outage idles (pauses its partitions and
polls); if the group rebalances meanwhile and a partition comes back after the
idle ended, resuming only what was assigned at the end left that partition
paused for good: the member polled nothing from it again, with no error (seen
as a saga participant that stopped committing in a fault run).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable

from confluent_kafka import Producer

from connectors.kafka import KafkaRecordConsumer, KafkaSettings
from tests.integration.conftest import Endpoints
from toolkit.ports import RecordConsumer

PARTITIONS = 3


def _partitions_read(consumer: RecordConsumer, seconds: float) -> set[int]:
    found: set[int] = set()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and len(found) < PARTITIONS:
        found.update(r.partition for r in consumer.poll(100, 0.2))
    return found


def test_a_partition_revoked_while_idling_is_read_again_when_it_comes_back(
    endpoints: Endpoints, create_topic: Callable[..., str]
) -> None:
    settings = KafkaSettings(bootstrap_servers=endpoints.kafka_bootstrap)
    topic = create_topic("idle", partitions=PARTITIONS)
    producer = Producer({"bootstrap.servers": endpoints.kafka_bootstrap})
    for partition in range(PARTITIONS):
        producer.produce(topic, value=b"x", partition=partition)
    producer.flush(10)

    group = f"idle-{uuid.uuid4().hex[:8]}"
    member = KafkaRecordConsumer(settings, group, session_timeout_ms=6000)
    member.subscribe([topic])
    assert _partitions_read(member, 30) == set(range(PARTITIONS))

    other = KafkaRecordConsumer(settings, group, session_timeout_ms=6000)
    idling = threading.Thread(target=member.idle, args=(6.0,))
    idling.start()  # member pauses everything and polls: it takes part in the rebalance
    other.subscribe([topic])
    deadline = time.monotonic() + 30
    while idling.is_alive():  # other joins and holds some partitions until member resumed
        other.poll(100, 0.2)
        assert time.monotonic() < deadline
    idling.join()
    held = other.assignment()
    assert held, "the second member never got a partition: no rebalance happened"
    other.close()  # its partitions go back to member, which never committed: read again

    try:
        assert _partitions_read(member, 30) == set(range(PARTITIONS))
    finally:
        member.close()
