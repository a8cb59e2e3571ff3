"""KafkaTransactionalProducer against the real broker: each error class."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest

from connectors.kafka import KafkaAdmin, KafkaSettings
from connectors.kafka.transactions import KafkaTransactionalProducer
from tests.integration.conftest import Endpoints
from tests.integration.helpers import peek
from toolkit.errors import PublishError, TransactionAborted
from toolkit.ports import OutgoingRecord

pytestmark = pytest.mark.integration


def visible(endpoints: Endpoints, topic: str, isolation: str = "read_committed") -> list[bytes]:
    return [
        p.value
        for p in peek(
            endpoints.kafka_bootstrap, topic, isolation=isolation, partitions=1, seconds=2
        )
    ]


def record(topic: str, value: bytes) -> OutgoingRecord:
    return OutgoingRecord(topic, b"k", value)


def test_commit_makes_records_visible_and_abort_hides_them(
    kafka_settings: KafkaSettings, endpoints: Endpoints, create_topic: Callable[..., str]
) -> None:
    topic = create_topic("txn", partitions=1)
    producer = KafkaTransactionalProducer(kafka_settings, f"test-{uuid.uuid4().hex}")
    try:
        with producer.begin() as transaction:
            positions = transaction.produce([record(topic, b"committed")])
            transaction.commit()
        assert positions[0].offset == 0
        with producer.begin() as transaction:
            transaction.produce([record(topic, b"aborted")])
            transaction.abort()
        with producer.begin() as transaction:  # leaving the block without commit aborts
            transaction.produce([record(topic, b"abandoned")])
    finally:
        producer.close()
    assert visible(endpoints, topic) == [b"committed"]
    assert visible(endpoints, topic, "read_uncommitted") == [b"committed", b"aborted", b"abandoned"]


def test_a_record_the_broker_rejects_aborts_the_whole_transaction(
    kafka_settings: KafkaSettings, endpoints: Endpoints, admin: KafkaAdmin
) -> None:
    topic = f"test.txn-small.{uuid.uuid4().hex[:10]}"
    admin.create_topics([topic], partitions=1, config={"max.message.bytes": "2000"})
    producer = KafkaTransactionalProducer(kafka_settings, f"test-{uuid.uuid4().hex}")
    try:
        with pytest.raises(TransactionAborted) as raised, producer.begin() as transaction:
            transaction.produce([record(topic, b"fits"), record(topic, b"x" * 50_000)])
        assert raised.value.context["topic"] == topic
        # The producer is usable again: the next transaction commits.
        with producer.begin() as transaction:
            transaction.produce([record(topic, b"after")])
            transaction.commit()
    finally:
        producer.close()
    assert visible(endpoints, topic) == [b"after"]


def test_a_fenced_producer_stops_and_never_fences_the_newer_one_back(
    kafka_settings: KafkaSettings, endpoints: Endpoints, create_topic: Callable[..., str]
) -> None:
    topic = create_topic("txn", partitions=1)
    shared_id = f"test-{uuid.uuid4().hex}"
    old = KafkaTransactionalProducer(kafka_settings, shared_id)
    transaction = old.begin()
    transaction.produce([record(topic, b"zombie")])
    new = KafkaTransactionalProducer(kafka_settings, shared_id)  # fences `old`
    try:
        with pytest.raises(PublishError):
            transaction.commit()
        with pytest.raises(PublishError, match=r"closed|fenced"):
            old.begin()
        with new.begin() as fresh:
            fresh.produce([record(topic, b"owner")])
            fresh.commit()
    finally:
        old.close()
        new.close()
    assert visible(endpoints, topic) == [b"owner"]
