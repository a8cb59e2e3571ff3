"""Avro events over a real Kafka broker: positions, evolution, dead letters."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import pytest

from connectors.avro import AvroCodec, AvroSchemaRegistry
from connectors.kafka import KafkaAdmin, KafkaRecordConsumer, KafkaRecordProducer, KafkaSettings
from toolkit.dead_letter import DeadLetter, DeadLetterQueue, dead_letter_topic
from toolkit.envelope import ConsumedEvent, Envelope
from toolkit.errors import PublishError
from toolkit.hlc import HybridLogicalClock
from toolkit.ports import ConsumedRecord, OutgoingRecord
from toolkit.positions import ConsistencyToken, TopicPartition
from toolkit.publisher import EventPublisher
from toolkit.reader import EventReader

PLACED = "kct.examples.orders.OrderPlaced"
CANCELLED = "kct.examples.orders.OrderCancelled"


def placed(order_id: str, sequence: int = 1) -> Envelope:
    return Envelope(
        PLACED,
        "order",
        order_id,
        sequence,
        {
            "order_id": order_id,
            "customer_id": "c-1",
            "lines": [{"sku": "widget", "quantity": sequence, "unit_price_cents": 100}],
            "total_cents": 100 * sequence,
            "currency": "EUR",
        },
    )


def read_until(
    reader: EventReader, done: Callable[[list[ConsumedEvent]], bool], timeout_s: float = 30
) -> list[ConsumedEvent]:
    events: list[ConsumedEvent] = []
    deadline = time.monotonic() + timeout_s
    while not done(events) and time.monotonic() < deadline:
        events.extend(reader.poll(max_events=200, timeout=0.5))
    return events


def read_raw(
    settings: KafkaSettings, topic: str, count: int, timeout_s: float = 30
) -> list[ConsumedRecord]:
    consumer = KafkaRecordConsumer(settings, f"raw-{uuid.uuid4().hex[:8]}")
    consumer.subscribe([topic])
    records: list[ConsumedRecord] = []
    deadline = time.monotonic() + timeout_s
    while len(records) < count and time.monotonic() < deadline:
        records.extend(consumer.poll(100, 0.5))
    consumer.close()
    return records


def test_round_trip_returns_the_positions_the_consumer_sees(
    kafka_settings: KafkaSettings,
    admin: KafkaAdmin,
    codec: AvroCodec,
    producer: KafkaRecordProducer,
    create_topic: Callable[..., str],
    group_id: str,
) -> None:
    topic = create_topic("roundtrip", partitions=3)
    publisher = EventPublisher(producer, codec, HybridLogicalClock("writer"))
    events = [placed(f"order-{n % 4}", sequence=n // 4 + 1) for n in range(20)]
    published = publisher.publish_all(topic, events)

    # Every event of one aggregate lands in one partition, at increasing offsets.
    by_aggregate: dict[str, list[tuple[int, int]]] = {}
    for p in published:
        by_aggregate.setdefault(p.envelope.aggregate_id, []).append(
            (p.position.partition, p.position.offset)
        )
    for coordinates in by_aggregate.values():
        assert len({partition for partition, _ in coordinates}) == 1
        assert [o for _, o in coordinates] == sorted(o for _, o in coordinates)

    token = publisher.token_of(published)
    end = admin.end_offsets([topic])
    assert all(end[tp] == offset + 1 for tp, offset in token.items())

    reader = EventReader(
        KafkaRecordConsumer(kafka_settings, group_id), codec, DeadLetterQueue(producer, group_id)
    )
    reader.subscribe([topic])
    consumed = read_until(reader, lambda got: len(got) >= len(published))
    reader.commit()
    reader.close()

    assert {c.envelope.event_id: c.position for c in consumed} == {
        p.envelope.event_id: p.position for p in published
    }
    assert {c.envelope.event_id: c.envelope for c in consumed} == {
        p.envelope.event_id: p.envelope for p in published
    }
    committed = admin.committed_offsets(group_id, [topic])
    assert token.is_applied_by(committed)
    # The string form survives a trip through an HTTP header.
    assert ConsistencyToken.parse(token.to_string()).is_applied_by(committed)


def test_consumer_with_newer_reader_schema_reads_events_written_with_the_old_one(
    kafka_settings: KafkaSettings,
    producer: KafkaRecordProducer,
    create_topic: Callable[..., str],
    group_id: str,
) -> None:
    v1 = {
        "type": "record",
        "name": "CustomerRegistered",
        "namespace": "kct.test.evolution",
        "fields": [{"name": "customer_id", "type": "string"}],
    }
    v2 = {
        **v1,
        "fields": [
            *v1["fields"],
            {"name": "tier", "type": "string", "default": "standard"},
        ],
    }
    old_registry = AvroSchemaRegistry()
    old_registry.register(v1)
    new_registry = AvroSchemaRegistry()
    new_registry.register(v1, current=False)
    new_registry.register(v2)

    topic = create_topic("evolution", partitions=1)
    old_writer = EventPublisher(producer, AvroCodec(old_registry), HybridLogicalClock("old"))
    new_writer = EventPublisher(producer, AvroCodec(new_registry), HybridLogicalClock("new"))
    name = "kct.test.evolution.CustomerRegistered"
    old_writer.publish(topic, Envelope(name, "customer", "c-1", 1, {"customer_id": "c-1"}))
    new_writer.publish(
        topic, Envelope(name, "customer", "c-2", 1, {"customer_id": "c-2", "tier": "gold"})
    )

    new_codec = AvroCodec(new_registry)
    reader = EventReader(
        KafkaRecordConsumer(kafka_settings, group_id),
        new_codec,
        DeadLetterQueue(producer, group_id),
    )
    reader.subscribe([topic])
    consumed = read_until(reader, lambda got: len(got) >= 2)
    reader.close()
    assert [dict(c.envelope.payload) for c in consumed] == [
        {"customer_id": "c-1", "tier": "standard"},
        {"customer_id": "c-2", "tier": "gold"},
    ]
    assert consumed[0].envelope.schema_ref != consumed[1].envelope.schema_ref
    assert reader.dead_lettered == {}


def test_poison_records_are_dead_lettered_and_the_partition_keeps_flowing(
    kafka_settings: KafkaSettings,
    admin: KafkaAdmin,
    codec: AvroCodec,
    producer: KafkaRecordProducer,
    create_topic: Callable[..., str],
    group_id: str,
) -> None:
    topic = create_topic("poison", partitions=1)
    publisher = EventPublisher(producer, codec, HybridLogicalClock("writer"))
    good_before = publisher.publish(topic, placed("order-1"))
    template = good_before.envelope.headers()

    def with_header(name: str, value: bytes) -> tuple[tuple[str, bytes], ...]:
        return tuple((k, value if k == name else v) for k, v in template)

    poison = [
        OutgoingRecord(topic, b"order-2", b"\x02\xff\xfe not avro", template),
        OutgoingRecord(
            topic, b"order-3", b"\x00", with_header("schema", f"{PLACED}@0123456789abcdef".encode())
        ),
        OutgoingRecord(topic, b"order-4", b"plain bytes, no headers", ()),
    ]
    poison_positions = producer.produce(poison)
    good_after = publisher.publish_all(topic, [placed(f"order-{n}") for n in range(5, 9)])

    reader = EventReader(
        KafkaRecordConsumer(kafka_settings, group_id), codec, DeadLetterQueue(producer, group_id)
    )
    reader.subscribe([topic])
    consumed = read_until(reader, lambda got: len(got) >= 5)
    reader.commit()
    reader.close()

    assert [c.envelope.event_id for c in consumed] == [
        p.envelope.event_id for p in [good_before, *good_after]
    ]
    assert reader.dead_lettered == {"undecodable": 2, "unknown_schema": 1}

    letters = [
        DeadLetter.from_record(r) for r in read_raw(kafka_settings, dead_letter_topic(topic), 3)
    ]
    assert [(letter.source, letter.reason) for letter in letters] == [
        (poison_positions[0], "undecodable"),
        (poison_positions[1], "unknown_schema"),
        (poison_positions[2], "undecodable"),
    ]
    assert [letter.record.value for letter in letters] == [r.value for r in poison]  # nothing lost
    assert all(letter.consumer_group == group_id for letter in letters)
    assert "missing headers" in letters[2].error
    # The group committed past the poison: a restart would not see it again.
    assert admin.committed_offsets(group_id, [topic]) == {TopicPartition(topic, 0): 8}


def test_restarted_consumer_resumes_after_its_last_commit(
    kafka_settings: KafkaSettings,
    codec: AvroCodec,
    producer: KafkaRecordProducer,
    create_topic: Callable[..., str],
    group_id: str,
) -> None:
    topic = create_topic("resume", partitions=2)
    publisher = EventPublisher(producer, codec, HybridLogicalClock("writer"))
    first = publisher.publish_all(topic, [placed(f"order-{n}") for n in range(6)])

    def reader() -> EventReader:
        made = EventReader(
            KafkaRecordConsumer(kafka_settings, group_id),
            codec,
            DeadLetterQueue(producer, group_id),
        )
        made.subscribe([topic])
        return made

    one = reader()
    seen = read_until(one, lambda got: len(got) >= len(first))
    one.commit()
    one.close()
    second = publisher.publish_all(topic, [placed(f"order-{n}") for n in range(6, 10)])
    two = reader()
    again = read_until(two, lambda got: len(got) >= len(second))
    two.close()
    assert {e.envelope.event_id for e in seen} == {p.envelope.event_id for p in first}
    assert {e.envelope.event_id for e in again} == {p.envelope.event_id for p in second}


def test_publishing_to_a_missing_topic_fails_clearly(
    kafka_settings: KafkaSettings,
    codec: AvroCodec,
) -> None:
    producer = KafkaRecordProducer(kafka_settings, delivery_timeout_ms=3000)
    publisher = EventPublisher(producer, codec, HybridLogicalClock("writer"))
    topic = f"test.missing.{uuid.uuid4().hex[:8]}"
    try:
        with pytest.raises(PublishError) as info:
            publisher.publish(topic, placed("order-1"))
    finally:
        producer.close(timeout=1)
    assert info.value.context["topic"] == topic


def test_admin_offsets_and_idempotent_topic_creation(
    admin: KafkaAdmin,
    create_topic: Callable[..., str],
    group_id: str,
) -> None:
    topic = create_topic("admin", partitions=4)
    admin.create_topics([topic], partitions=4)  # again: no error
    assert admin.end_offsets([topic]) == {TopicPartition(topic, p): 0 for p in range(4)}
    assert admin.committed_offsets(group_id, [topic]) == {}
    assert len(admin.partitions([topic])) == 4
