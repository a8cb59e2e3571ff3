"""`kct demo`: Avro events through Kafka on the local stack, then a saga.

Part one publishes a few order events, reads them back as a consumer group
(through the same dead-letter-aware reader projections use, with one poison
record thrown in), commits, and shows that the group's committed offsets now
cover the consistency token of the writes.

Part two runs the order fulfillment saga of :mod:`toolkit.runtime.demo_shop`
(ReserveInventory -> ProcessPayment -> ConfirmOrder across an inventory, a
payment and an order service; shipped with the package, so the demo runs
from an installed wheel, and re-exported by ``examples/order_fulfillment``)
on a fresh shop with its own topics: a batch of orders, about a quarter with
a declined card, with the participants, the saga-state projection and a
watchdog running on threads. It waits until every saga ended, shows the
outcomes, and checks that stock and money are conserved (every declined
order's reservation was released).

Failure modes: a ``ToolkitError`` (exit 1) when an event was not consumed and
committed, a saga did not finish in time, or an invariant does not hold.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import Counter
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from connectors.avro import AvroCodec, AvroSchemaRegistry, bundled_schema_dir
from connectors.kafka import KafkaAdmin, KafkaRecordConsumer, KafkaRecordProducer, KafkaSettings
from connectors.redis import RedisSettings
from connectors.telemetry import TracingSettings
from connectors.zookeeper import ZooKeeperSettings
from toolkit.dead_letter import DeadLetterQueue, dead_letter_topic
from toolkit.envelope import ConsumedEvent, Envelope
from toolkit.errors import ConsistencyError, ConsistencyTimeout, ToolkitError
from toolkit.hlc import HybridLogicalClock
from toolkit.ports import OutgoingRecord
from toolkit.positions import ConsistencyToken, TopicPartition
from toolkit.publisher import EventPublisher
from toolkit.reader import EventReader
from toolkit.runtime.app import Kct, KctSettings
from toolkit.runtime.demo_shop.shop import Shop
from toolkit.saga.state import SagaStatus

log = logging.getLogger(__name__)

ORDERS_TOPIC = "kct.demo.orders"
PARTICIPANTS = ("inventory", "payment", "order")  # each its own service name in traces
DECLINE_RATIO = 0.25  # share of saga orders paid with a declined card
STATUS_MEANING = {
    SagaStatus.COMPLETED: "stock reserved, card charged, order confirmed",
    SagaStatus.COMPENSATED: "a step failed; the steps before it were undone",
    SagaStatus.FAILED_COMPENSATION: "an undo kept failing: needs attention",
    SagaStatus.RUNNING: "not finished",
}
STATUS_STYLE = {
    SagaStatus.COMPLETED: "green",
    SagaStatus.COMPENSATED: "yellow",
    SagaStatus.FAILED_COMPENSATION: "bold red",
    SagaStatus.RUNNING: "cyan",
}


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


def run_demo(events: int = 6, orders: int = 20, start_stack: bool = True) -> None:
    console = Console()
    settings = _settings(console, start_stack)
    _events_demo(console, settings.kafka, events)
    _saga_demo(console, settings, orders)


def _settings(console: Console, start_stack: bool) -> KctSettings:
    """Connections to the local stack (brought up first) or from the environment."""
    if not start_stack:
        return KctSettings.from_env()
    from toolkit.runtime.stack import LocalStack

    local = LocalStack()
    console.print(
        "[bold]kct demo[/]: bringing the local stack up (first run downloads and builds)…"
    )
    local.up()
    found = local.endpoints()
    return KctSettings(
        kafka=KafkaSettings(bootstrap_servers=found.kafka_bootstrap),
        redis=RedisSettings(url=found.redis_url),
        zookeeper=ZooKeeperSettings(hosts=found.zookeeper_hosts),
        tracing=TracingSettings(
            service_name="shop",
            traces_endpoint=f"{found.otlp_http}/v1/traces",
            query_url=found.jaeger_query_url,
        ),
    )


def _events_demo(console: Console, settings: KafkaSettings, events: int) -> None:
    """Part one: events out and back in, committed offsets covering the token."""
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


# -- part two: the order fulfillment saga -------------------------------------------


def _saga_demo(console: Console, settings: KctSettings, orders: int) -> None:
    """Part two: a batch of order sagas on a fresh shop, then the invariants."""
    shop = Shop()
    console.print(
        f"\n[bold]order fulfillment saga[/] on shop {shop.run_id} (topics {shop.topic_prefix}.*): "
        f"{orders} orders, about {DECLINE_RATIO:.0%} paid with a declined card"
    )
    kct = Kct(settings)
    # Each participant under its own service name in the traces.
    apps = {
        name: Kct(
            replace(
                settings,
                node_id=f"demo-{name}-{uuid.uuid4().hex[:6]}",
                tracing=replace(settings.tracing, service_name=name),
            )
        )
        for name in PARTICIPANTS
    }
    try:
        shop.prepare(kct)
        states, seconds = _run_sagas(kct, shop, orders, apps)
        problems = shop.invariants(kct, states)
        _print_outcomes(console, states, seconds)
        _print_conservation(console, kct, shop)
        if not problems:  # kept on failure, for a look; the saga states stay in Redis
            _delete_topics(kct, shop)
    finally:
        for app in apps.values():
            app.close()
        kct.close()  # flushes the spans
    if problems:
        raise ConsistencyError("demo failed: the saga's invariants do not hold", problems=problems)
    counts = Counter(s["status"] for s in states.values())
    console.print(
        "[green]ok[/]: stock and money conserved: "
        f"{counts[SagaStatus.COMPLETED]} completed order(s) reserved, charged and confirmed once "
        f"each; {counts[SagaStatus.COMPENSATED]} compensated order(s) left nothing behind."
    )
    console.print(
        f"inspect one: kct saga status --projection {shop.state_projection} {next(iter(states))}"
    )
    _print_trace(console, settings, states)


def _print_trace(
    console: Console, settings: KctSettings, states: Mapping[str, Mapping[str, Any]]
) -> None:
    """One saga's trace id and the command that draws it (a completed one: its trace
    holds all four services)."""
    if not settings.tracing.enabled:
        return
    ordered = sorted(states.values(), key=lambda s: s["status"] != SagaStatus.COMPLETED.value)
    traced = [s for s in ordered if s.get("trace_id")]
    if not traced:
        return
    chosen = traced[0]
    services = "shop, inventory, payment and order"
    if chosen["status"] != SagaStatus.COMPLETED.value:
        services = "the services it reached"
    console.print(
        f"saga {chosen['saga_id']} ({chosen['status'].lower()}) is one trace across "
        f"{services}: trace id {chosen['trace_id']}"
    )
    console.print(f"see it: kct trace {chosen['trace_id']}")


def _delete_topics(kct: Kct, shop: Shop) -> None:
    """The run's topics (and their dead-letter topics): each run would add a dozen."""
    topics = [t for d in shop.definitions.values() for t in d.topics]
    try:
        kct.admin.delete_topics([*topics, *(dead_letter_topic(t) for t in topics)])
    except ToolkitError as exc:
        log.warning("demo topics of shop %s not deleted: %s", shop.run_id, exc)


def _run_sagas(
    kct: Kct, shop: Shop, orders: int, apps: Mapping[str, Kct]
) -> tuple[dict[str, dict[str, Any]], float]:
    """Start every order in one transaction and wait until each saga ended."""
    client = kct.saga_client(shop.definitions, shop.state_projection)
    timeout = max(60.0, orders / 5)
    started = time.monotonic()
    with shop.running(kct, apps=apps):
        ids = client.start_many(shop.orders(orders, DECLINE_RATIO))
        try:
            states = client.wait(ids, timeout)
        except ConsistencyTimeout as exc:
            raise ConsistencyTimeout(
                f"demo failed: {exc.message} (see kct saga status --projection "
                f"{shop.state_projection} <saga id>)",
                **exc.context,
            ) from None
    return {saga_id: states[saga_id] for saga_id in ids}, time.monotonic() - started


def _step_cell(step: Mapping[str, Any]) -> Text:
    """One step's outcome: done / failed (why) / done, undone / not run."""
    execute, compensate = step.get("execute"), step.get("compensate")
    if execute is None:
        return Text("-", style="dim")
    if execute != "SUCCESS":
        return Text(f"failed: {step.get('error') or '?'}", style="red")
    if compensate is None:
        return Text("done", style="green")
    if compensate == "SUCCESS":
        return Text("done, undone", style="yellow")
    return Text("done, undo FAILED", style="bold red")


def _print_outcomes(
    console: Console, states: Mapping[str, Mapping[str, Any]], seconds: float
) -> None:
    counts = Counter(s["status"] for s in states.values())
    table = Table(title=f"sagas by final status ({len(states)} in {seconds:.1f} s)")
    for column in ("status", "sagas", "meaning"):
        table.add_column(column)
    for status in (SagaStatus.COMPLETED, SagaStatus.COMPENSATED, SagaStatus.FAILED_COMPENSATION):
        table.add_row(
            Text(status.value, style=STATUS_STYLE[status]),
            str(counts[status]),
            STATUS_MEANING[status],
        )
    console.print(table)

    examples: list[Mapping[str, Any]] = []
    for status in (SagaStatus.COMPLETED, SagaStatus.COMPENSATED, SagaStatus.FAILED_COMPENSATION):
        examples += [s for s in states.values() if s["status"] == status][:2]
    if not examples:
        return
    table = Table(title="example sagas: each step's outcome")
    table.add_column("saga", no_wrap=True, min_width=max(len(s["saga_id"]) for s in examples))
    table.add_column("status")
    for step in examples[0]["steps"]:
        table.add_column(str(step["name"]))
    for state in examples:
        status = SagaStatus(state["status"])
        table.add_row(
            Text(str(state["saga_id"])),
            Text(status.value, style=STATUS_STYLE[status]),
            *(_step_cell(step) for step in state["steps"]),
        )
    console.print(table)


def _print_conservation(console: Console, kct: Kct, shop: Shop) -> None:
    """Initial = available + held by completed orders, for each sku and for all money."""
    store = kct.saga_steps
    inventory, payment = shop.read_model("inventory"), shop.read_model("payment")
    table = Table(title="conservation (initial = available + held by completed orders)")
    for column in ("resource", "initial", "available", "held", "conserved"):
        table.add_column(column)
    rows: list[tuple[str, int, int, int]] = []
    reserved = store.counters(inventory, "reserved")
    for sku, initial in shop.skus.items():
        available = (store.get(inventory, f"stock:{sku}") or {"available": 0})["available"]
        rows.append((f"{sku} (units)", initial, int(available), reserved.get(sku, 0)))
    captured = store.counters(payment, "captured")
    balances = sum(
        int((store.get(payment, f"wallet:{c}") or {"balance": 0})["balance"])
        for c in shop.customers
    )
    rows.append(
        (
            f"money (cents, {len(shop.customers)} wallets)",
            sum(shop.customers.values()),
            balances,
            sum(captured.values()),
        )
    )
    for name, initial, available, held in rows:
        ok = available + held == initial
        table.add_row(
            name,
            str(initial),
            str(available),
            str(held),
            Text("yes", style="green") if ok else Text("NO", style="bold red"),
        )
    console.print(table)
