"""`kct demo`: Avro events through Kafka on the local stack, with their positions.

Publishes a few order events, reads them back as a consumer group (through
the same dead-letter-aware reader projections use, with one poison record
thrown in), commits, and shows that the group's committed offsets now cover
the consistency token of the writes. Later issues grow this into the order
fulfillment saga demo.
"""

from __future__ import annotations

import time
import uuid

from rich.console import Console
from rich.table import Table

from connectors.avro import AvroCodec, AvroSchemaRegistry, bundled_schema_dir
from connectors.kafka import KafkaAdmin, KafkaRecordConsumer, KafkaRecordProducer, KafkaSettings
from toolkit.dead_letter import DeadLetterQueue, dead_letter_topic
from toolkit.envelope import ConsumedEvent, Envelope
from toolkit.errors import ToolkitError
from toolkit.hlc import HybridLogicalClock
from toolkit.ports import OutgoingRecord
from toolkit.positions import ConsistencyToken, TopicPartition
from toolkit.publisher import EventPublisher
from toolkit.reader import EventReader

ORDERS_TOPIC = "kct.demo.orders"


def _order_events(count: int) -> list[Envelope]:
    """OrderPlaced for each order, then a confirmation or cancellation."""
    events: list[Envelope] = []
    orders = [f"order-{uuid.uuid4().hex[:6]}" for _ in range(max(1, count // 2))]
    for n, order_id in enumerate(orders):
        events.append(
            Envelope(
                "kct.examples.orders.OrderPlaced",
                "order",
                order_id,
                1,
                {
                    "order_id": order_id,
                    "customer_id": f"customer-{n % 3}",
                    "lines": [{"sku": "widget", "quantity": n + 1, "unit_price_cents": 250}],
                    "total_cents": 250 * (n + 1),
                    "currency": "EUR",
                },
                correlation_id=order_id,
            )
        )
    for n, order_id in enumerate(orders[: count - len(orders)]):
        if n % 2 == 0:
            payload = {"order_id": order_id, "reservation_id": f"r-{n}", "payment_id": f"p-{n}"}
            events.append(
                Envelope("kct.examples.orders.OrderConfirmed", "order", order_id, 2, payload)
            )
        else:
            payload = {"order_id": order_id, "reason": "payment declined"}
            events.append(
                Envelope("kct.examples.orders.OrderCancelled", "order", order_id, 2, payload)
            )
    return events


def run_demo(events: int = 6, start_stack: bool = True) -> None:
    console = Console()
    if start_stack:
        from toolkit.runtime.stack import LocalStack

        local = LocalStack()
        console.print(
            "[bold]kct demo[/]: bringing the local stack up (first run downloads and builds)…"
        )
        local.up()
        settings = KafkaSettings(bootstrap_servers=local.endpoints().kafka_bootstrap)
    else:
        settings = KafkaSettings.from_env()

    admin = KafkaAdmin(settings)
    admin.create_topics([ORDERS_TOPIC, dead_letter_topic(ORDERS_TOPIC)], partitions=3)
    codec = AvroCodec(AvroSchemaRegistry.from_directories(bundled_schema_dir()))
    producer = KafkaRecordProducer(settings)
    publisher = EventPublisher(producer, codec, HybridLogicalClock(f"demo-{uuid.uuid4().hex[:4]}"))
    try:
        published = publisher.publish_all(ORDERS_TOPIC, _order_events(events))
        # A poison record: the reader must dead-letter it and keep going.
        (poison,) = producer.produce([OutgoingRecord(ORDERS_TOPIC, b"poison", b"\x00not avro", ())])
        token = publisher.token_of(published)

        table = Table(title=f"published to {ORDERS_TOPIC} (acks=all)")
        for column in ("event", "aggregate", "seq", "position", "hlc"):
            table.add_column(column)
        for p in published:
            e = p.envelope
            table.add_row(
                e.event_type.rsplit(".", 1)[-1],
                e.aggregate_id,
                str(e.sequence),
                str(p.position),
                str(e.hlc),
            )
        console.print(table)
        console.print(f"consistency token: [cyan]{token}[/]")

        group = f"kct-demo-{uuid.uuid4().hex[:8]}"
        reader = EventReader(
            KafkaRecordConsumer(settings, group), codec, DeadLetterQueue(producer, group)
        )
        reader.subscribe([ORDERS_TOPIC])
        # A new group reads the topic from its start, earlier demo runs included:
        # read until this run's events and its poison record are behind us.
        consumed = _read(reader, token.including(poison), timeout_s=60)
        committed = admin.committed_offsets(group, [ORDERS_TOPIC])
        reader.close()
    finally:
        producer.close()

    table = Table(title=f"consumed by group {group} (read_committed)")
    for column in ("event", "aggregate", "position", "event id"):
        table.add_column(column)
    for c in consumed:
        table.add_row(
            c.envelope.event_type.rsplit(".", 1)[-1],
            c.envelope.aggregate_id,
            str(c.position),
            c.envelope.event_id,
        )
    console.print(table)
    console.print(f"dead-lettered to {dead_letter_topic(ORDERS_TOPIC)}: {reader.dead_lettered}")
    ids_out = {p.envelope.event_id for p in published}
    ids_in = {c.envelope.event_id for c in consumed}
    if not ids_out <= ids_in or not token.including(poison).is_applied_by(committed):
        raise ToolkitError(
            "demo failed: not every published event was consumed and committed",
            published=len(ids_out),
            missing=len(ids_out - ids_in),
            behind=str(token.behind(committed)),
        )
    console.print(
        f"[green]ok[/]: all {len(ids_out)} events of this run consumed ({len(consumed)} in the "
        f"topic so far); the group's committed offsets "
        f"{ {str(tp): o for tp, o in committed.items()} } cover the token."
    )


def _read(reader: EventReader, until: ConsistencyToken, timeout_s: float) -> list[ConsumedEvent]:
    """Poll and commit until the committed offsets cover ``until``."""
    consumed: list[ConsumedEvent] = []
    deadline = time.monotonic() + timeout_s
    committed: dict[TopicPartition, int] = {}
    while time.monotonic() < deadline and not until.is_applied_by(committed):
        consumed.extend(reader.poll(max_events=500, timeout=0.5))
        committed.update(reader.commit())
    return consumed
