"""Tracing on the real stack, read back from Jaeger's query API (not an in-memory exporter):
one saga across three service processes is one trace; a strong write, a read-after-write
and a dead-lettered poison record show their spans."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from connectors.kafka import KafkaSettings
from connectors.redis import RedisSettings
from connectors.telemetry import JaegerQuery, JaegerTrace, TracingSettings
from connectors.zookeeper import ZooKeeperSettings
from examples.order_fulfillment.services import PARTICIPANTS, SAGA_TYPE
from examples.order_fulfillment.shop import Shop
from tests.balances import balance_event, balances
from tests.integration.conftest import Endpoints
from tests.integration.helpers import running
from tests.integration.test_strong_boundary import Policy
from tests.order_stats import order_stats, placed_event
from toolkit.boundary import OperationContext
from toolkit.ports import OutgoingRecord
from toolkit.runtime.app import Kct, KctSettings
from toolkit.saga.state import SagaStatus

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def run_id() -> str:
    return uuid.uuid4().hex[:8]


@pytest.fixture
def jaeger(endpoints: Endpoints) -> JaegerQuery:
    return JaegerQuery(endpoints.jaeger_query_url)


@pytest.fixture
def traced(endpoints: Endpoints) -> Iterator[Callable[[str], Kct]]:
    """Makes composition roots that export spans to the stack's Jaeger as ``service``."""
    made: list[Kct] = []
    lock_root = f"/kct-test/{uuid.uuid4().hex[:10]}"

    def make(service: str) -> Kct:
        app = Kct(
            KctSettings(
                kafka=KafkaSettings(bootstrap_servers=endpoints.kafka_bootstrap),
                redis=RedisSettings(url=endpoints.redis_url),
                zookeeper=ZooKeeperSettings(hosts=endpoints.zookeeper_hosts, lock_root=lock_root),
                node_id=f"{service}-{uuid.uuid4().hex[:6]}",
                tracing=TracingSettings(
                    service_name=service,
                    traces_endpoint=f"{endpoints.otlp_http}/v1/traces",
                    query_url=endpoints.jaeger_query_url,
                ),
            )
        )
        made.append(app)
        return app

    yield make
    for app in made:
        app.close()


def _flush(*apps: Kct) -> None:
    for app in apps:
        assert app.tracing is not None
        assert app.tracing.flush()


def _wait_for(
    jaeger: JaegerQuery,
    find: Callable[[], JaegerTrace | None],
    ready: Callable[[JaegerTrace], bool],
    seconds: float = 15.0,
) -> JaegerTrace:
    """Ask Jaeger until ``find`` returns a trace ``ready`` accepts (ingestion is async)."""
    deadline = time.monotonic() + seconds
    found = None
    while time.monotonic() < deadline:
        found = find()
        if found is not None and ready(found):
            return found
        time.sleep(0.3)
    spans = [] if found is None else [(s.service, s.name) for s in found.spans]
    raise AssertionError(f"no such trace in Jaeger at {jaeger.url}; last seen: {spans}")


def _unbroken(found: JaegerTrace) -> None:
    ids = {s.span_id for s in found.spans}
    orphans = [(s.service, s.name) for s in found.spans if s.parent_id and s.parent_id not in ids]
    assert orphans == [], f"spans whose parent is missing: {orphans}"
    roots = [s for s in found.spans if s.parent_id is None]
    assert len(roots) == 1, [(s.service, s.name) for s in roots]


def _raw_traces(jaeger: JaegerQuery, service: str, tags: dict[str, str]) -> list[str]:
    """Trace ids of ``/api/traces?service=...&tags=...``, straight from the API."""
    query = urllib.parse.urlencode(
        {"service": service, "tags": json.dumps(tags), "limit": "50", "lookback": "1h"}
    )
    with urllib.request.urlopen(f"{jaeger.url}/api/traces?{query}", timeout=5) as answer:
        data = json.loads(answer.read())["data"] or []
    return sorted({str(t["traceID"]) for t in data})


# -- one saga, three service processes, one trace --------------------------------------


def _service(endpoints: Endpoints, shop: Shop, participant: str, service: str) -> Any:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "examples.order_fulfillment.service",
            "--run-id",
            shop.run_id,
            "--participant",
            participant,
        ],
        cwd=REPO,
        env={
            **os.environ,
            "PYTHONPATH": str(REPO),
            "KCT_KAFKA_BOOTSTRAP": endpoints.kafka_bootstrap,
            "KCT_REDIS_URL": endpoints.redis_url,
            "OTEL_EXPORTER_OTLP_ENDPOINT": endpoints.otlp_http,
            "OTEL_SERVICE_NAME": service,
            "OTEL_BSP_SCHEDULE_DELAY": "200",
        },
        stdout=subprocess.PIPE,
    )
    assert process.stdout is not None
    assert process.stdout.readline().strip() == b"ready"
    return process


def test_a_saga_across_three_service_processes_is_one_trace_with_reverse_compensation(
    endpoints: Endpoints,
    traced: Callable[[str], Kct],
    jaeger: JaegerQuery,
    run_id: str,
) -> None:
    shop = Shop(run_id=run_id)
    app = traced(f"shop-{run_id}")
    shop.prepare(app, partitions=1)
    services = {p: f"{p}-{run_id}" for p in PARTICIPANTS}
    processes = {p: _service(endpoints, shop, p, services[p]) for p in PARTICIPANTS}
    try:
        client = app.saga_client(shop.definitions, shop.state_projection)
        with shop.running(app, participants=()):  # the saga-state projection and a watchdog
            context = {
                "sku": "widget",
                "quantity": "1",
                "customer": "customer-1",
                "amount_cents": "700",
            }
            ok, declined, unconfirmed = client.start_many(
                [
                    (SAGA_TYPE, {**context, "order_id": "o-ok", "card": "ok"}, f"{run_id}-ok"),
                    (SAGA_TYPE, {**context, "order_id": "o-d", "card": "declined"}, None),
                    (SAGA_TYPE, {**context, "order_id": "o-u", "confirm": "fail"}, None),
                ]
            )
            states = client.wait([ok, declined, unconfirmed], 60)
    finally:
        for process in processes.values():
            process.send_signal(signal.SIGTERM)  # a clean stop flushes its spans
        for process in processes.values():
            process.wait(timeout=30)
    _flush(app)
    assert states[ok]["status"] == SagaStatus.COMPLETED
    assert states[declined]["status"] == SagaStatus.COMPENSATED
    assert states[unconfirmed]["status"] == SagaStatus.COMPENSATED

    # Exactly one trace holds the saga's spans in every participant service.
    trace_id = states[ok]["trace_id"]
    assert trace_id and len(trace_id) == 32
    for service in services.values():
        found = _wait_for(
            jaeger,
            lambda service=service: next(  # type: ignore[misc]
                iter(jaeger.traces(service, tags={"kct.saga.id": ok})), None
            ),
            lambda t: True,
        )
        assert found.trace_id == trace_id
        assert _raw_traces(jaeger, service, {"kct.saga.id": ok}) == [trace_id]
    everyone = {f"shop-{run_id}", *services.values()}
    whole = _wait_for(
        jaeger,
        lambda: jaeger.trace(trace_id),
        lambda t: everyone <= t.services and len(t.named("execute")) == 3,
    )
    _unbroken(whole)
    (root,) = whole.named("saga")
    assert root.service == f"shop-{run_id}" and root.tags["kct.saga.id"] == ok
    executes = whole.named("execute")
    assert [(s.name, s.service) for s in executes] == [
        ("execute ReserveInventory", services["inventory"]),
        ("execute ProcessPayment", services["payment"]),
        ("execute ConfirmOrder", services["order"]),
    ]
    for step in executes:  # each step: a child of its command's process span ...
        process = whole.span(step.parent_id or "")
        assert process is not None and process.name.startswith("process ")
        assert process.kind == "consumer" and process.tags["messaging.system"] == "kafka"
        send = whole.span(process.parent_id or "")  # ... which is the child of its send
        assert send is not None and send.name == process.name.replace("process", "send", 1)
        assert root in whole.ancestors(step)

    # A declined payment: its compensation in the same trace.
    declined_trace = _wait_for(
        jaeger,
        lambda: jaeger.trace(states[declined]["trace_id"]),
        lambda t: len(t.named("compensate")) == 1,
    )
    _unbroken(declined_trace)
    assert [s.name for s in declined_trace.named("execute")] == [
        "execute ReserveInventory",
        "execute ProcessPayment",
    ]
    (payment,) = declined_trace.named("execute ProcessPayment")
    assert payment.tags["kct.saga.outcome"] == "FAILURE"
    assert "declined" in str(payment.tags["kct.saga.error"])

    # The order cannot be confirmed: payment, then inventory compensated (reverse order).
    undone = _wait_for(
        jaeger,
        lambda: jaeger.trace(states[unconfirmed]["trace_id"]),
        lambda t: len(t.named("compensate")) == 2,
    )
    _unbroken(undone)
    compensations = undone.named("compensate")
    assert [(s.name, s.service) for s in compensations] == [
        ("compensate ProcessPayment", services["payment"]),
        ("compensate ReserveInventory", services["inventory"]),
    ]
    assert compensations[0].start_us + compensations[0].duration_us <= compensations[1].start_us


# -- strong write, read-after-write, dead letters ------------------------------------------


def test_a_strong_write_shows_lock_barrier_transaction_and_wait_under_one_operation_span(
    traced: Callable[[str], Kct],
    create_topic: Callable[..., str],
    jaeger: JaegerQuery,
    run_id: str,
) -> None:
    topic = create_topic("traced-accounts", partitions=1)
    name = f"balances-{run_id}"
    app = traced(f"strong-{run_id}")
    boundary = app.boundary(Policy(frozenset({"acct-1"}), (name,)), {"account": topic})

    def deposit(ctx: OperationContext) -> None:
        ctx.publish(balance_event(ctx.aggregate_id, 10, 1))

    with running(app.runner(balances(name, topic))):
        result = boundary.enforce("acct-1", deposit, aggregate_type="account")
    _flush(app)
    found = _wait_for(
        jaeger,
        lambda: next(iter(jaeger.traces(f"strong-{run_id}", operation="operation account")), None),
        lambda t: bool(t.named("process")),
    )
    (operation,) = found.named("operation account")
    assert operation.tags["kct.consistency"] == "strong"
    assert operation.tags["kct.aggregate.id"] == "acct-1"
    for phase in ("lock acquire", "lock hold", "barrier", "run", "transaction", "wait"):
        spans = [s for s in found.spans if s.name == phase]
        assert spans, f"no {phase} span: {[s.name for s in found.spans]}"
        for span in spans:
            assert operation in found.ancestors(span), phase
    (lock,) = found.named("lock acquire")
    assert lock.tags["kct.fence"] == result.fence
    (send,) = found.named(f"send {topic}")
    assert send.tags["kct.fence"] == result.fence
    assert send.tags["kct.transactional"] is True
    # The projection's apply of the strong write is in the operation's trace too.
    (process,) = found.named(f"process {topic}")
    assert process.parent_id == send.span_id
    assert process.tags["messaging.consumer.group.name"] == name
    _unbroken(found)


def test_a_read_after_write_shows_the_projections_apply_in_the_commands_trace(
    traced: Callable[[str], Kct],
    create_topic: Callable[..., str],
    jaeger: JaegerQuery,
    run_id: str,
) -> None:
    topic = create_topic("traced-orders", partitions=1)
    name = f"stats-{run_id}"
    app = traced(f"raw-{run_id}")
    with running(app.runner(order_stats(name, [topic]))):
        result = app.read_after_write([name]).execute(
            lambda: [app.publisher.publish(topic, placed_event("o1", "c1", 5)).position],
            lambda: app.store.get(name, "order:o1"),
        )
    assert result.value is not None
    _flush(app)
    found = _wait_for(
        jaeger,
        lambda: next(iter(jaeger.traces(f"raw-{run_id}", operation="read-after-write")), None),
        lambda t: bool(t.named("process")) and bool(t.named("apply")),
    )
    _unbroken(found)
    (outer,) = found.named("read-after-write")
    (wait,) = found.named("wait")
    (process,) = found.named(f"process {topic}")
    (apply,) = found.named(f"apply {name}")
    assert wait.parent_id == outer.span_id
    assert outer in found.ancestors(process) and outer in found.ancestors(apply)
    assert process.tags["messaging.destination.name"] == topic
    assert process.tags["messaging.destination.partition.id"] == "0"
    assert process.tags["messaging.kafka.message.key"] == "o1"
    assert process.tags["messaging.kafka.offset"] == 0
    # The wait ends once the projection's apply has committed.
    assert wait.start_us + wait.duration_us >= apply.start_us


def test_a_poison_records_dead_lettering_is_a_span_with_the_reason(
    traced: Callable[[str], Kct],
    create_topic: Callable[..., str],
    jaeger: JaegerQuery,
    run_id: str,
) -> None:
    topic = create_topic("traced-poison", partitions=1)
    name = f"stats-{run_id}"
    app = traced(f"poison-{run_id}")
    runner = app.runner(order_stats(name, [topic]))
    app.producer.produce([OutgoingRecord(topic, b"o9", b"\xff not avro", ())])
    app.publisher.publish(topic, placed_event("o1", "c1", 5))
    deadline = time.monotonic() + 20
    while runner.stats.applied < 1 and time.monotonic() < deadline:
        runner.run_once()
    runner.close()
    _flush(app)
    found = _wait_for(
        jaeger,
        lambda: next(
            iter(jaeger.traces(f"poison-{run_id}", tags={"kct.dead_letter.reason": "undecodable"})),
            None,
        ),
        lambda t: True,
    )
    (span,) = found.named(f"dead-letter {topic}")
    assert span.error
    assert span.tags["kct.dead_letter.reason"] == "undecodable"
    assert "missing headers" in str(span.tags["kct.dead_letter.error"])
    assert span.tags["messaging.destination.name"] == f"{topic}.dlq"
    assert span.tags["kct.dead_letter.source"] == f"{topic}[0]@0"
    assert span.kind == "producer"
