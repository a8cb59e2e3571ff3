"""Replication on the cluster: topic settings fit it, and two brokers down stop writes cleanly.

With three combined broker+controller nodes, two down also means the KRaft
quorum is gone: the surviving leader can neither shrink its ISR nor move
leaderships, so an ``acks=all`` write waits for a replica that never answers.
librdkafka's idempotent producer retries that (and a real
``NOT_ENOUGH_REPLICAS``) until its delivery timeout, so kct's error says the
write was not acknowledged by the in-sync replicas and names
``NOT_ENOUGH_REPLICAS`` as the cause to check. A transaction spanning several
partitions is aborted as a whole: read ``read_committed`` nothing of it is
ever visible. When one broker returns, writes resume by themselves.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import pytest
from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType

from connectors.kafka import KafkaAdmin, KafkaRecordConsumer, KafkaRecordProducer, KafkaSettings
from connectors.kafka.transactions import KafkaTransactionalProducer
from toolkit.errors import AdminError, ConnectorError, PublishError
from toolkit.ports import OutgoingRecord
from toolkit.runtime.app import Kct
from toolkit.runtime.stack import LocalStack

from .cluster import FaultRun, report


def _replication(bootstrap: str, topic: str) -> tuple[set[int], str]:
    client = AdminClient({"bootstrap.servers": bootstrap})
    described = client.list_topics(topic, timeout=10).topics[topic]
    replicas = {len(p.replicas) for p in described.partitions.values()}
    resource = ConfigResource(ResourceType.TOPIC, topic)
    configs = client.describe_configs([resource])[resource].result(10)
    return replicas, str(configs["min.insync.replicas"].value)


def test_topics_the_toolkit_creates_fit_the_cluster_and_too_many_replicas_is_an_error(
    cluster: LocalStack,
) -> None:
    bootstrap = cluster.endpoints().kafka_bootstrap
    topic = f"faults.fit.{uuid.uuid4().hex[:8]}"
    KafkaAdmin(KafkaSettings(bootstrap_servers=bootstrap)).create_topics([topic])
    assert _replication(bootstrap, topic) == ({3}, "2")
    greedy = KafkaAdmin(KafkaSettings(bootstrap_servers=bootstrap, replication_factor=4))
    with pytest.raises(AdminError, match="replication factor 4 asked for but the cluster has 3"):
        greedy.create_topics([f"{topic}.x"])


def _isr(bootstrap: str, topic: str) -> list[list[int]]:
    client = AdminClient({"bootstrap.servers": bootstrap})
    described = client.list_topics(topic, timeout=10).topics[topic]
    return [list(p.isrs) for p in described.partitions.values()]


def _records(topic: str, tag: str) -> list[OutgoingRecord]:
    # Keys 0..5 spread over the three partitions.
    return [OutgoingRecord(topic, str(k).encode(), f"{tag}:{k}".encode()) for k in range(6)]


def _write_transaction(txn: KafkaTransactionalProducer, records: list[OutgoingRecord]) -> None:
    with txn.begin() as transaction:
        transaction.produce(records)
        transaction.commit()


def _committed_values(settings: KafkaSettings, topic: str) -> set[str]:
    consumer = KafkaRecordConsumer(settings, f"verify-{uuid.uuid4().hex[:8]}")
    consumer.subscribe([topic])
    values: set[str] = set()
    deadline = time.monotonic() + 15
    try:
        while time.monotonic() < deadline:
            values |= {(r.value or b"").decode() for r in consumer.poll(500, 0.5)}
    finally:
        consumer.close()
    return values


@pytest.mark.timeout(400)
def test_two_brokers_down_writes_fail_clearly_nothing_half_applied_and_resume(
    cluster: LocalStack, make_cluster_kct: Callable[[], Kct]
) -> None:
    kct = make_cluster_kct()
    settings = kct.settings.kafka
    topic = f"faults.two-down.{uuid.uuid4().hex[:8]}"
    kct.admin.create_topics([topic], partitions=3)
    # Short operation timeouts: the doomed transaction gives up sooner.
    txn = KafkaTransactionalProducer(
        settings, f"two-down-{uuid.uuid4().hex[:6]}", operation_timeout=4.0, commit_attempts=2
    )
    first, second = "kafka-2", "kafka-3"
    started = time.monotonic()
    try:
        _write_transaction(txn, _records(topic, "before"))
        cluster.kill(first)
        deadline = time.monotonic() + 60
        while any(2 in isr for isr in _isr(settings.bootstrap_servers, topic)):
            assert time.monotonic() < deadline, "the dead broker never left the ISR"
            time.sleep(0.5)
        _write_transaction(txn, _records(topic, "one-down"))  # 2 in-sync = min.insync.replicas
        cluster.kill(second)
        down_at = time.monotonic()
        producer = KafkaRecordProducer(settings, delivery_timeout_ms=8_000)
        with pytest.raises(PublishError, match="NOT_ENOUGH_REPLICAS") as plain:
            producer.produce(_records(topic, "plain"))
        producer.close(timeout=1)
        with pytest.raises(ConnectorError) as in_txn:
            _write_transaction(txn, _records(topic, "doomed"))
        cluster.start(first)
        resumed = _write_until_accepted(txn, _records(topic, "after"))
        outage = time.monotonic() - down_at
    finally:
        cluster.start(first)
        cluster.start(second)
        txn.close()
    values = _committed_values(settings, topic)
    doomed = {v for v in values if v.startswith("doomed:")}
    wanted = {f"{tag}:{k}" for tag in ("before", "one-down", "after") for k in range(6)}
    report(
        FaultRun(
            "two brokers down",
            events=18,
            faults={"broker kill -9": 2},
            lost=len(wanted - values),
            duplicated=0,
            pauses=[resumed],
            seconds=time.monotonic() - started,
            extra=f"errors: {plain.value} | {type(in_txn.value).__name__}; "
            f"writes refused for {outage:.0f} s, resumed {resumed:.1f} s after a broker "
            "answered again",
        )
    )
    assert not doomed, f"half of an aborted transaction is visible: {sorted(doomed)}"
    assert wanted <= values, sorted(wanted - values)


def _write_until_accepted(txn: KafkaTransactionalProducer, records: list[OutgoingRecord]) -> float:
    """Seconds until a transaction of ``records`` commits (retrying failed ones)."""
    started = time.monotonic()
    while True:
        try:
            _write_transaction(txn, records)
            return time.monotonic() - started
        except ConnectorError:
            assert time.monotonic() - started < 120, "writes did not resume"
            time.sleep(0.5)
