"""Tracing on the interceptor seam, with the SDK's in-memory exporter: W3C context in
headers, messaging-convention names and attributes, one saga = one trace, sampling."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import SpanKind

from connectors.avro import AvroCodec, AvroSchemaRegistry, bundled_schema_dir
from connectors.telemetry import Attr, OpenTelemetryTracingInterceptor, TracingSettings
from examples.order_fulfillment.services import ACTIONS, SAGA_TYPE
from examples.order_fulfillment.services import definitions as example_definitions
from tests.fakes import (
    InMemoryLog,
    InMemoryOffsets,
    InMemoryPositions,
    InMemoryReadModelStore,
    InMemorySagaStepStore,
    InMemoryTransactionalProducer,
)
from tests.order_stats import order_stats, placed_event
from toolkit.config import parse_config
from toolkit.consistency import EventualConsistencyManager, ReadAfterWrite
from toolkit.dead_letter import DeadLetterQueue
from toolkit.envelope import decode_record
from toolkit.errors import ConfigurationError
from toolkit.hlc import HybridLogicalClock
from toolkit.interceptors import trace_id_of
from toolkit.ports import OutgoingRecord, ReadModelChange
from toolkit.projection import ProjectionRunner
from toolkit.publisher import EventPublisher
from toolkit.saga.client import SagaClient
from toolkit.saga.participant import SagaParticipant
from toolkit.saga.state import saga_state_projection
from toolkit.saga.watchdog import SagaWatchdog
from toolkit.tracker import ProjectionTracker

CODEC = AvroCodec(AvroSchemaRegistry.from_directories(bundled_schema_dir()))


class Tracing:
    """One tracer provider per simulated service, all exporting to one list."""

    def __init__(self, ratio: float = 1.0) -> None:
        self.exporter = InMemorySpanExporter()
        self.ratio = ratio
        self.made: list[OpenTelemetryTracingInterceptor] = []

    def interceptor(
        self, service: str, ratio: float | None = None
    ) -> OpenTelemetryTracingInterceptor:
        from opentelemetry.sdk.resources import Resource

        provider = TracerProvider(
            resource=Resource.create({"service.name": service}),
            sampler=ParentBased(TraceIdRatioBased(self.ratio if ratio is None else ratio)),
        )
        provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        made = OpenTelemetryTracingInterceptor(provider)
        self.made.append(made)
        return made

    @property
    def spans(self) -> list[ReadableSpan]:
        return sorted(self.exporter.get_finished_spans(), key=lambda s: s.start_time or 0)

    def named(self, prefix: str) -> list[ReadableSpan]:
        return [s for s in self.spans if s.name.startswith(prefix)]


@pytest.fixture
def tracing() -> Iterator[Tracing]:
    made = Tracing()
    yield made
    for interceptor in made.made:
        interceptor.close()


def _attrs(span: ReadableSpan) -> Mapping[str, Any]:
    return span.attributes or {}


def _parent(span: ReadableSpan) -> int | None:
    return None if span.parent is None else span.parent.span_id


def _service(span: ReadableSpan) -> str:
    return str(span.resource.attributes["service.name"])


# -- publish and process ----------------------------------------------------------


def _projection_world(tracing: Tracing) -> tuple[InMemoryLog, EventPublisher, ProjectionRunner]:
    log = InMemoryLog()
    hooks = tracing.interceptor("orders-svc")
    publisher = EventPublisher(log, CODEC, HybridLogicalClock("w"), interceptor=hooks)
    runner = ProjectionRunner(
        order_stats("stats", ["orders"]),
        log.consumer("stats"),
        CODEC,
        InMemoryReadModelStore(),
        DeadLetterQueue(log, "stats", interceptor=hooks),
        notifier=InMemoryPositions(),
        interceptor=hooks,
    )
    return log, publisher, runner


def test_send_span_context_travels_in_the_headers_with_messaging_attributes(
    tracing: Tracing,
) -> None:
    log, publisher, _ = _projection_world(tracing)
    written = publisher.publish("orders", placed_event("o1", "c1", 100))
    (send,) = tracing.named("send")
    assert send.name == "send orders"
    assert send.kind is SpanKind.PRODUCER
    assert _attrs(send)[Attr.SYSTEM] == "kafka"
    assert _attrs(send)[Attr.OPERATION_TYPE] == "send"
    assert _attrs(send)[Attr.DESTINATION] == "orders"
    assert _attrs(send)[Attr.PARTITION] == "0"
    assert _attrs(send)[Attr.OFFSET] == written.position.offset
    assert _attrs(send)[Attr.KEY] == "o1"
    assert _attrs(send)[Attr.MESSAGE_ID] == written.envelope.event_id
    # The record carries the send span's W3C context; the returned envelope too.
    (record,) = log.topics["orders"]
    headers = dict(record.headers)
    context = send.get_span_context()
    assert context is not None
    expected = f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"
    assert context.trace_flags & 1  # sampled
    assert headers["traceparent"] == expected.encode()
    assert written.envelope.traceparent == expected
    assert decode_record(record, CODEC).envelope.traceparent == expected


def test_process_span_is_the_send_spans_child_and_lasts_the_handler(tracing: Tracing) -> None:
    _, publisher, runner = _projection_world(tracing)
    publisher.publish("orders", placed_event("o1", "c1", 100))
    publisher.publish("orders", placed_event("o2", "c1", 50))
    assert runner.run_once() == 2
    sends, processes = tracing.named("send"), tracing.named("process")
    assert [p.name for p in processes] == ["process orders", "process orders"]
    for send, process in zip(sends, processes, strict=True):
        assert process.kind is SpanKind.CONSUMER
        assert process.context is not None and send.context is not None
        assert process.context.trace_id == send.context.trace_id
        assert _parent(process) == send.context.span_id
        assert _attrs(process)[Attr.GROUP] == "stats"
        assert _attrs(process)[Attr.OPERATION_TYPE] == "process"
        assert _attrs(process)[Attr.DESTINATION] == "orders"
        assert _attrs(process)[Attr.PARTITION] == "0"
        assert _attrs(process)[Attr.KEY] == _attrs(send)[Attr.KEY]
        assert _attrs(process)[Attr.OFFSET] == _attrs(send)[Attr.OFFSET]
    # Two traces in one batch: the batch span is a root linking both.
    (batch,) = tracing.named("apply")
    assert batch.name == "apply stats" and batch.parent is None
    assert _attrs(batch)[Attr.BATCH_COUNT] == 2
    linked = {link.context.span_id for link in batch.links}
    assert linked == {s.context.span_id for s in sends if s.context is not None}
    # An empty poll makes no span.
    before = len(tracing.spans)
    assert runner.run_once() == 0
    assert len(tracing.spans) == before


def test_a_batch_of_one_flow_is_a_child_in_its_trace(tracing: Tracing) -> None:
    _, publisher, runner = _projection_world(tracing)
    publisher.publish_all("orders", [placed_event("o1", "c1", 100), placed_event("o2", "c1", 100)])
    sends = tracing.named("send")
    assert len({s.context.trace_id for s in sends if s.context}) == 2  # one root per event
    tracing.exporter.clear()
    publisher.publish("orders", placed_event("o3", "c1", 1))
    (send,) = tracing.named("send")
    runner.run_once()  # reads o1, o2 and o3: mixed
    tracing.exporter.clear()
    publisher.publish("orders", placed_event("o4", "c1", 1))
    (send,) = tracing.named("send")
    runner.run_once()
    (batch,) = tracing.named("apply")
    assert send.context is not None and batch.context is not None
    assert batch.context.trace_id == send.context.trace_id
    assert _parent(batch) == send.context.span_id


def test_a_poison_record_is_dead_lettered_in_a_span_with_the_reason(tracing: Tracing) -> None:
    log, _publisher, runner = _projection_world(tracing)
    log.produce([OutgoingRecord("orders", b"k", b"\x00garbage", (("event_id", b"x"),))])
    runner.run_once()
    (span,) = tracing.named("dead-letter")
    assert span.name == "dead-letter orders"
    assert _attrs(span)[Attr.DLQ_REASON] == "undecodable"
    assert "missing headers" in str(_attrs(span)[Attr.DLQ_ERROR])
    assert _attrs(span)[Attr.DESTINATION] == "orders.dlq"
    assert _attrs(span)[Attr.DLQ_SOURCE] == "orders[0]@0"
    assert span.status.status_code.name == "ERROR"


def test_unsampled_flows_make_no_span_but_carry_their_context(tracing: Tracing) -> None:
    tracing.ratio = 0.0
    _log, publisher, runner = _projection_world(tracing)
    written = publisher.publish("orders", placed_event("o1", "c1", 100))
    assert written.envelope.traceparent is not None
    assert not int(written.envelope.traceparent[-2:], 16) & 1  # not sampled, whole trace
    assert runner.run_once() == 1
    assert tracing.spans == []


def test_a_runner_skips_the_process_hook_for_unsampled_flows_only(tracing: Tracing) -> None:
    """The runner asks ``observes`` per event: an unsampled message's handler runs
    without the hook (nothing would be recorded), a sampled one inside it."""
    log = InMemoryLog()
    sampled_writer = EventPublisher(
        log, CODEC, HybridLogicalClock("w"), interceptor=tracing.interceptor("a", 1.0)
    )
    unsampled_writer = EventPublisher(
        log, CODEC, HybridLogicalClock("w"), interceptor=tracing.interceptor("b", 0.0)
    )
    hooks = tracing.interceptor("stats-svc", 0.0)
    processed: list[str] = []
    real_process = hooks.process

    def counting(event: Any, consumer: str, proceed: Any) -> Any:
        processed.append(event.envelope.aggregate_id)
        return real_process(event, consumer, proceed)

    hooks.process = counting  # type: ignore[method-assign]
    store = InMemoryReadModelStore()
    runner = ProjectionRunner(
        order_stats("stats", ["orders"]),
        log.consumer("stats"),
        CODEC,
        store,
        DeadLetterQueue(log, "stats"),
        notifier=InMemoryPositions(),
        interceptor=hooks,
    )
    sampled_writer.publish("orders", placed_event("o1", "c1", 100))
    unsampled_writer.publish("orders", placed_event("o2", "c1", 50))
    first = log.topics["orders"][0]
    no_context = tuple(h for h in first.headers if h[0] != "traceparent")
    # The same event again without a context: a root, this service's sampler decides.
    log.produce([OutgoingRecord("orders", first.key, first.value, no_context)])
    assert runner.run_once() == 3
    assert processed == ["o1", "o1"]  # the sampled one and the one without context
    assert sorted(s.name for s in tracing.named("process")) == ["process orders"]
    assert store.counters("stats", "customer:c1") == {"orders": 3, "cents": 250}  # all ran


def test_read_after_write_wait_joins_the_commands_trace(tracing: Tracing) -> None:
    log, publisher, runner = _projection_world(tracing)
    hooks = tracing.made[0]
    manager = EventualConsistencyManager(ProjectionTracker(InMemoryOffsets(log)), interceptor=hooks)
    raw = ReadAfterWrite(manager, ["stats"], timeout=1.0)

    def command() -> list[Any]:
        position = publisher.publish("orders", placed_event("o1", "c1", 5)).position
        runner.run_once()  # the projection applies it meanwhile
        return [position]

    raw.execute(command, lambda: None)
    (outer,) = tracing.named("read-after-write")
    (wait,) = tracing.named("wait")
    (process,) = tracing.named("process")
    assert outer.context is not None
    trace_id = outer.context.trace_id
    assert {s.context.trace_id for s in (wait, process) if s.context} == {trace_id}
    assert _parent(wait) == outer.context.span_id
    assert _attrs(wait)[Attr.PROJECTIONS] == ("stats",)
    assert str(_attrs(wait)[Attr.TOKEN]).startswith("1")


# -- sagas ------------------------------------------------------------------------


class TracedShop:
    """The order fulfillment example on in-memory ports, each service with its own
    tracer provider (service name) as if in its own process."""

    def __init__(self, tracing: Tracing, shop_ratio: float | None = None) -> None:
        self.definitions = example_definitions()
        self.log = InMemoryLog()
        self.store = InMemorySagaStepStore()
        self.transactions = InMemoryTransactionalProducer(self.log)
        shop = tracing.interceptor("shop", shop_ratio)
        self.shop_hooks = shop
        self.publisher = EventPublisher(self.log, CODEC, HybridLogicalClock("s"), interceptor=shop)
        self.client = SagaClient(
            self.definitions,
            transactions=self.transactions,
            publisher=self.publisher,
            states=self.store,
            state_projection="sagas",
            interceptor=shop,
        )
        self.runner = ProjectionRunner(
            saga_state_projection("sagas", self.definitions, shop),
            self.log.consumer("sagas"),
            CODEC,
            self.store,
            DeadLetterQueue(self.log, "sagas", interceptor=shop),
            interceptor=shop,
        )
        self.participants = {}
        for name, actions in ACTIONS.items():
            hooks = tracing.interceptor(name)
            group = f"saga-{name}"
            self.participants[name] = SagaParticipant(
                name,
                self.definitions,
                actions,
                consumer=self.log.consumer(group),
                transactions=self.transactions,
                publisher=EventPublisher(
                    self.log, CODEC, HybridLogicalClock(name), interceptor=hooks
                ),
                codec=CODEC,
                store=self.store,
                dead_letters=DeadLetterQueue(self.log, group, interceptor=hooks),
                group_metadata=lambda group=group: group,  # type: ignore[misc]
                sleep=lambda _seconds: None,
                interceptor=hooks,
            )
        seed = [ReadModelChange("put", "stock:widget", document={"available": 10})]
        self.store.record_once("inventory", "seed", seed, {})
        seed = [ReadModelChange("put", "wallet:c1", document={"balance": 10_000})]
        self.store.record_once("payment", "seed", seed, {})

    def start(self, n: int, **context: str) -> str:
        base = {"order_id": f"o-{n}", "sku": "widget", "quantity": "2", "customer": "c1"}
        base |= {"amount_cents": "1500", "card": "ok", **context}
        return self.client.start(SAGA_TYPE, base, saga_id=f"s-{n}")

    def settle(self, *, participants: bool = True) -> None:
        for _ in range(50):
            moved = self.runner.run_once()
            if participants:
                moved += sum(p.run_once() for p in self.participants.values())
            if not moved:
                return
        raise AssertionError("the saga did not settle")

    def state(self, saga_id: str) -> dict[str, Any]:
        found = self.client.status(saga_id)
        assert found is not None
        return found


def _of_saga(tracing: Tracing, trace_id: int) -> list[ReadableSpan]:
    return [s for s in tracing.spans if s.context is not None and s.context.trace_id == trace_id]


def test_one_saga_is_one_trace_across_its_services(tracing: Tracing) -> None:
    shop = TracedShop(tracing)
    saga_id = shop.start(1)
    shop.settle()
    (root,) = tracing.named("saga")
    assert root.name == f"saga {SAGA_TYPE}" and root.parent is None
    assert root.context is not None
    assert {s.context.trace_id for s in tracing.spans if s.context} == {root.context.trace_id}
    assert {_service(s) for s in tracing.spans} == {"shop", "inventory", "payment", "order"}
    # An unbroken parent chain: every parent is a span of the trace.
    ids = {s.context.span_id for s in tracing.spans if s.context}
    assert all(s.parent is None or s.parent.span_id in ids for s in tracing.spans)
    executes = tracing.named("execute")
    assert [s.name for s in executes] == [
        "execute ReserveInventory",
        "execute ProcessPayment",
        "execute ConfirmOrder",
    ]
    assert [_service(s) for s in executes] == ["inventory", "payment", "order"]
    for step in executes:
        assert _attrs(step)[Attr.SAGA_ID] == saga_id
        assert _attrs(step)["kct.saga.outcome"] == "SUCCESS"
        (process,) = [s for s in tracing.spans if s.context and s.context.span_id == _parent(step)]
        assert process.name.startswith("process saga.") and process.kind is SpanKind.CONSUMER
    state = shop.state(saga_id)
    assert state["trace_id"] == f"{root.context.trace_id:032x}"
    assert trace_id_of(state["traceparent"]) == state["trace_id"]


def test_a_saga_not_sampled_at_its_start_leaves_no_span_in_any_service(
    tracing: Tracing,
) -> None:
    shop = TracedShop(tracing, shop_ratio=0.0)  # the participants would keep every root
    saga_id = shop.start(3, confirm="fail")
    shop.settle()
    assert shop.state(saga_id)["status"] == "COMPENSATED"
    assert tracing.spans == []
    replies = shop.log.topics[shop.definitions[SAGA_TYPE].reply_topic]
    flags = {dict(r.headers)["traceparent"][-2:] for r in replies}
    assert all(not int(f, 16) & 1 for f in flags)
    assert shop.state(saga_id)["trace_id"] is not None


def test_a_declined_payment_compensates_in_reverse_order_in_the_same_trace(
    tracing: Tracing,
) -> None:
    shop = TracedShop(tracing)
    saga_id = shop.start(2, card="declined")
    shop.settle()
    assert shop.state(saga_id)["status"] == "COMPENSATED"
    (root,) = tracing.named("saga")
    assert root.context is not None
    assert len(_of_saga(tracing, root.context.trace_id)) == len(tracing.spans)
    steps = [s for s in tracing.spans if s.name.split(" ")[0] in ("execute", "compensate")]
    assert [s.name for s in steps] == [
        "execute ReserveInventory",
        "execute ProcessPayment",
        "compensate ReserveInventory",
    ]
    failed = steps[1]
    assert _attrs(failed)["kct.saga.outcome"] == "FAILURE"
    assert "declined" in str(_attrs(failed)["kct.saga.error"])


def test_a_watchdog_timeout_and_the_late_command_join_the_saga_trace(tracing: Tracing) -> None:
    shop = TracedShop(tracing)
    saga_id = shop.start(1)
    shop.settle(participants=False)
    now = [shop.state(saga_id)["step_started_ms"] + 60_000]
    dog = SagaWatchdog(
        shop.definitions,
        steps=shop.store,
        states=shop.store,
        state_projection="sagas",
        transactions=shop.transactions,
        publisher=shop.publisher,
        clock_ms=lambda: now[0],
        interceptor=tracing.interceptor("watchdog"),
    )
    assert dog.check_once() == [saga_id]
    shop.settle()
    (root,) = tracing.named("saga")
    assert root.context is not None
    (timeout,) = tracing.named("watchdog timeout")
    assert timeout.name == "watchdog timeout ReserveInventory"
    # A child of the saga's start message (its state keeps that context).
    (start,) = [s for s in tracing.spans if s.context and s.context.span_id == _parent(timeout)]
    assert start.name.startswith("send saga.") and _parent(start) == root.context.span_id
    assert _attrs(timeout)["kct.saga.timed_out"] is True
    assert len(_of_saga(tracing, root.context.trace_id)) == len(tracing.spans)
    (late,) = tracing.named("execute")  # the command arrived after the timeout
    assert _attrs(late)["kct.saga.redelivered"] is True
    assert _attrs(late)["kct.saga.outcome"] == "FAILURE"


# -- settings ---------------------------------------------------------------------


def test_settings_file_first_then_otel_variables_then_defaults() -> None:
    config = parse_config(
        "version: 1\nservice: orders\nkafka: {bootstrap_servers: 'k:1'}\n"
        "telemetry: {sampling_ratio: 0.25, endpoint: 'http://collector:4318/'}\n"
    )
    env = {
        "OTEL_SERVICE_NAME": "from-env",
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://other:4318",
        "OTEL_TRACES_SAMPLER_ARG": "0.5",
    }
    settings = TracingSettings.from_config(config.telemetry, config.service, env)
    assert settings.enabled
    assert settings.traces_endpoint == "http://collector:4318/v1/traces"
    assert settings.sampling_ratio == 0.25
    assert settings.service_name == "from-env"  # the file left it unset
    assert TracingSettings.from_config(config.telemetry, "orders", {}).service_name == "orders"
    off = TracingSettings.from_config(config.telemetry, "orders", {"OTEL_SDK_DISABLED": "true"})
    assert not off.enabled
    absent = TracingSettings.from_config(None, "orders", {})
    assert not absent.enabled
    from_env = TracingSettings.from_env(
        "x",
        {
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://t:1/v1/traces",
            "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
            "OTEL_TRACES_SAMPLER_ARG": "0.01",
        },
    )
    assert from_env.enabled and from_env.traces_endpoint == "http://t:1/v1/traces"
    assert from_env.sampling_ratio == 0.01
    with pytest.raises(ConfigurationError, match="OTEL_TRACES_SAMPLER_ARG"):
        TracingSettings.from_env("x", {"OTEL_TRACES_SAMPLER_ARG": "lots"})


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("{sampling_ratio: 1.5}", "telemetry.sampling_ratio"),
        ("{endpoint: 'ftp://x'}", "telemetry.endpoint"),
        ("{endpoint: 'http://user:pw@x:4318'}", "credentials"),
        ("{nope: 1}", "telemetry.nope"),
    ],
)
def test_telemetry_section_errors(body: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        parse_config(f"version: 1\nkafka: {{bootstrap_servers: 'k:1'}}\ntelemetry: {body}\n")
