"""Runtime metrics on the interceptor seam, read back with the SDK's in-memory reader.

The real core components (publisher, runner, resolver, dead-letter queue,
consistency manager) run on the in-memory ports with the metrics
interceptor installed; the test reads what the MeterProvider recorded.
"""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from connectors.avro import AvroCodec, AvroSchemaRegistry, bundled_schema_dir
from connectors.telemetry.runtime_metrics import OpenTelemetryMetricsInterceptor
from tests.fakes import InMemoryLog, InMemoryOffsets, InMemoryPositions, InMemoryReadModelStore
from tests.order_stats import order_stats, placed_event
from toolkit.conflicts import ConflictResolver, ResolverPolicy
from toolkit.consistency import EventualConsistencyManager
from toolkit.dead_letter import DeadLetterQueue
from toolkit.errors import ConsistencyTimeout
from toolkit.hlc import HybridLogicalClock
from toolkit.interceptors import OperationInfo, SagaInfo, StepInfo, WatchdogInfo
from toolkit.ports import OutgoingRecord
from toolkit.positions import TopicPartition
from toolkit.projection import ProjectionRunner
from toolkit.publisher import EventPublisher
from toolkit.tracker import ProjectionTracker

CODEC = AvroCodec(AvroSchemaRegistry.from_directories(bundled_schema_dir()))


def points(reader: InMemoryMetricReader) -> dict[str, list[tuple[dict[str, Any], Any]]]:
    """Metric name -> (attributes, value or histogram count) per point."""
    found: dict[str, list[tuple[dict[str, Any], Any]]] = {}
    data = reader.get_metrics_data()
    assert data is not None
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    value = getattr(point, "value", None)
                    if value is None:
                        value = getattr(point, "count", None)
                    found.setdefault(metric.name, []).append((dict(point.attributes or {}), value))
    return found


@pytest.fixture
def reader() -> InMemoryMetricReader:
    return InMemoryMetricReader()


@pytest.fixture
def metrics(reader: InMemoryMetricReader) -> OpenTelemetryMetricsInterceptor:
    return OpenTelemetryMetricsInterceptor(MeterProvider(metric_readers=[reader]))


def test_a_projection_cycle_counts_events_dead_letters_conflicts_and_times_the_batch(
    reader: InMemoryMetricReader, metrics: OpenTelemetryMetricsInterceptor
) -> None:
    log = InMemoryLog()
    publisher = EventPublisher(log, CODEC, HybridLogicalClock("w"), interceptor=metrics)
    placed = placed_event("o1", "c1", 5)
    publisher.publish("orders", placed)
    publisher.publish("orders", placed)  # a redelivery: deduplicated
    log.produce([OutgoingRecord("orders", b"x", b"junk", ())])  # a poison record
    publisher.publish("orders", placed_event("o2", "c1", 7))
    runner = ProjectionRunner(
        order_stats("stats", ["orders"]),
        log.consumer("stats"),
        CODEC,
        InMemoryReadModelStore(),
        DeadLetterQueue(log, "stats", interceptor=metrics),
        resolver=ConflictResolver({"order": ResolverPolicy(("deduplicate",))}),
        interceptor=metrics,
    )
    runner.run_once()
    found = points(reader)
    processed = {
        (a["messaging.consumer.group.name"], a["kct.outcome"]): v
        for a, v in found["kct.events.processed"]
    }
    assert processed == {("stats", "ok"): 2}
    assert found["kct.batch.events"] == [({"kct.projection": "stats"}, 3)]  # poison: reader
    ((batch_attrs, batches),) = found["kct.batch.duration"]
    assert batch_attrs == {"kct.projection": "stats", "kct.outcome": "ok"} and batches == 1
    reasons = {a["kct.dead_letter.reason"]: v for a, v in found["kct.dead_letters"]}
    assert reasons == {"undecodable": 1}
    conflicts = {a["kct.conflict.reason"]: v for a, v in found["kct.conflicts"]}
    assert conflicts == {"duplicate": 1}
    publishes = sum(v for a, v in found["kct.publish.duration"] if not a["kct.transactional"])
    assert publishes == 3


def test_a_wait_that_times_out_is_counted(
    reader: InMemoryMetricReader, metrics: OpenTelemetryMetricsInterceptor
) -> None:
    log = InMemoryLog()
    publisher = EventPublisher(log, CODEC, HybridLogicalClock("w"))
    written = publisher.publish("orders", placed_event("o1", "c1", 5))
    manager = EventualConsistencyManager(
        ProjectionTracker(InMemoryOffsets(log)), InMemoryPositions(), interceptor=metrics
    )
    with pytest.raises(ConsistencyTimeout):
        manager.wait_for_consistency(written.position, "nobody", timeout=0.05)
    log.committed["nobody"] = {TopicPartition("orders", 0): 1}
    manager.wait_for_consistency(written.position, "nobody", timeout=1)
    found = points(reader)
    assert found["kct.wait.timeouts"] == [({}, 1)]
    outcomes = {a["kct.outcome"]: v for a, v in found["kct.wait.duration"]}
    assert outcomes == {"timeout": 1, "applied": 1}


def test_strong_phases_operations_and_saga_steps_are_timed_with_their_outcome(
    reader: InMemoryMetricReader, metrics: OpenTelemetryMetricsInterceptor
) -> None:
    op = OperationInfo("account", "a-1", "accounts", strong=True)
    metrics.operation(op, lambda: metrics.strong_phase("lock", op, None, lambda: "held"))
    with pytest.raises(RuntimeError):
        metrics.strong_phase("transaction", op, 7, _raise)
    step = StepInfo("s-1", "Order", "Pay", "EXECUTE", "payment", 1)
    metrics.saga_start(SagaInfo("s-1", "Order", "Reserve"), lambda: None)
    metrics.saga_step(step, lambda: ["reply"])
    timed_out = WatchdogInfo("s-1", "Order", "Pay", "payment", 5.0, None)
    metrics.watchdog(timed_out, lambda: ["failure reply"])
    metrics.watchdog(timed_out, list)  # the step ran meanwhile: nothing recorded
    found = points(reader)
    phases = {(a["kct.phase"], a["kct.outcome"]): v for a, v in found["kct.strong.phase.duration"]}
    assert phases == {("lock", "ok"): 1, ("transaction", "error"): 1}
    assert found["kct.operation.duration"] == [({"kct.strong": True, "kct.outcome": "ok"}, 1)]
    assert found["kct.saga.started"] == [({"kct.saga.type": "Order"}, 1)]
    ((step_attrs, steps),) = found["kct.saga.step.duration"]
    assert step_attrs["kct.saga.step"] == "Pay" and step_attrs["kct.outcome"] == "ok" and steps == 1
    assert found["kct.saga.timeouts"] == [({"kct.saga.type": "Order", "kct.saga.step": "Pay"}, 1)]


def _raise() -> None:
    raise RuntimeError("commit failed")
