"""Metrics through OpenTelemetry: the monitor's last report, and a Prometheus endpoint.

:class:`MonitorMetrics` exposes a :class:`~toolkit.monitor.ConsistencyReport`
as OpenTelemetry observable instruments on a ``MeterProvider`` made by
:func:`meter_provider` (configured from ``kct.yaml``'s ``monitor`` section
and the standard ``OTEL_*`` variables: ``OTEL_SERVICE_NAME``,
``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_EXPORTER_OTLP_METRICS_ENDPOINT`` /
``OTEL_EXPORTER_OTLP_ENDPOINT``, ``OTEL_METRIC_EXPORT_INTERVAL``,
``OTEL_SDK_DISABLED``). Readers: OpenTelemetry's Prometheus reader, on a
registry of its own, and an OTLP/HTTP exporter when configured.

Attributes follow OpenTelemetry's messaging conventions:
``messaging.consumer.group.name``, ``messaging.destination.name``,
``messaging.destination.partition.id``; plus ``kct.projection``.

:class:`PrometheusEndpoint` serves ``GET /metrics`` from text rendered when
a check ends (:meth:`PrometheusEndpoint.refresh`): a scrape returns bytes
already made, never calls Kafka or Redis, and costs the same whatever the
number of series.

Failure modes: instruments never raise into the monitor (an observation
callback without a report yet reports nothing); an OTLP collector that is
down loses those exports only (the SDK logs and retries); a port already in
use raises ``OSError`` from :meth:`PrometheusEndpoint.start`.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider, ObservableCounter, ObservableGauge
from opentelemetry.sdk.metrics.export import (
    CardinalityLimits,
    MetricReader,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import Resource
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from toolkit.monitor import ConsistencyReport, PartitionReport, ProjectionReport
from toolkit.monitor_rules import Status

__all__ = [
    "GROUP",
    "PARTITION",
    "TOPIC",
    "MonitorMetrics",
    "PrometheusEndpoint",
    "meter_provider",
]

GROUP = "messaging.consumer.group.name"
TOPIC = "messaging.destination.name"
PARTITION = "messaging.destination.partition.id"
PROJECTION = "kct.projection"
# Partitions x series per partition can exceed the SDK's default of 2,000 points.
_CARDINALITY = 1_000_000


def meter_provider(
    service: str,
    *,
    otlp: bool = False,
    cardinality: int = _CARDINALITY,
) -> tuple[MeterProvider, CollectorRegistry]:
    """A MeterProvider with a Prometheus reader on its own registry (returned),
    plus OTLP/HTTP export when ``otlp`` (endpoint and interval from ``OTEL_*``)."""
    registry = CollectorRegistry(auto_describe=False)
    limits: CardinalityLimits = {ObservableGauge: cardinality, ObservableCounter: cardinality}
    readers: list[MetricReader] = [
        PrometheusMetricReader(
            registry=registry,
            scope_info_enabled=False,
            cardinality_limits=limits,
        )
    ]
    if otlp:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

        readers.append(PeriodicExportingMetricReader(OTLPMetricExporter()))
    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME") or service})
    return MeterProvider(metric_readers=readers, resource=resource), registry


def _partition_attrs(report: ProjectionReport, part: PartitionReport) -> dict[str, Any]:
    return {
        PROJECTION: report.name,
        GROUP: report.group,
        TOPIC: part.topic,
        PARTITION: str(part.partition),
    }


class MonitorMetrics:
    """The last :class:`ConsistencyReport` as OpenTelemetry instruments.

    Per partition: ``kct.monitor.lag`` (events behind the last stable offset),
    ``kct.monitor.lag_time`` (seconds), ``kct.monitor.partition.status``
    (severity: 0 OK, 1 WARN, 2 REWIND, 3 STALL, 4 STOP, 5 ERR) and
    ``kct.monitor.offset`` by ``kct.offset`` (log_start, last_stable,
    log_end, committed, stored). Per projection: ``kct.monitor.status``,
    ``kct.monitor.members``, ``kct.monitor.order.violations`` by
    ``kct.violation``. Overall: ``kct.monitor.health`` (0 healthy, 1 degraded,
    2 failing) and ``kct.monitor.check.duration``.
    """

    def __init__(self, provider: MeterProvider) -> None:
        self._report: ConsistencyReport | None = None
        meter = provider.get_meter("kct.monitor")
        gauges = [
            ("kct.monitor.lag", "{event}", "Events not yet applied (vs the last stable offset)",
             self._lag),
            ("kct.monitor.lag_time", "s", "Age of the first record not yet applied (0: caught up)",
             self._lag_time),
            ("kct.monitor.partition.status", "1",
             "Partition status: 0 OK, 1 WARN, 2 REWIND, 3 STALL, 4 STOP, 5 ERR", self._partition),
            ("kct.monitor.offset", "1", "Offsets by kct.offset", self._offsets),
            ("kct.monitor.status", "1",
             "Projection status: 0 OK, 1 WARN, 2 REWIND, 3 STALL, 4 STOP, 5 ERR", self._status),
            ("kct.monitor.members", "{member}", "Live members of the consumer group",
             self._members),
            ("kct.monitor.health", "1", "0 healthy, 1 degraded, 2 failing", self._health),
            ("kct.monitor.check.duration", "s", "How long the last check took", self._duration),
        ]  # fmt: skip
        for name, unit, description, callback in gauges:
            meter.create_observable_gauge(
                name, callbacks=[callback], unit=unit, description=description
            )
        meter.create_observable_counter(
            "kct.monitor.order.violations",
            callbacks=[self._violations],
            unit="{event}",
            description="Order violations the projection's runners counted, by kct.violation",
        )

    def update(self, report: ConsistencyReport) -> None:
        self._report = report

    def _partitions(self) -> Iterator[tuple[ProjectionReport, PartitionReport]]:
        report = self._report
        if report is None:
            return
        for projection in report.projections:
            for part in projection.partitions:
                yield projection, part

    def _lag(self, _options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(p.lag_events, _partition_attrs(r, p)) for r, p in self._partitions()]

    def _lag_time(self, _options: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(p.lag_seconds, _partition_attrs(r, p))
            for r, p in self._partitions()
            if p.lag_seconds is not None
        ]

    def _partition(self, _options: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(p.status.severity, _partition_attrs(r, p)) for r, p in self._partitions()
        ]

    def _offsets(self, _options: CallbackOptions) -> Iterable[Observation]:
        out = []
        for r, p in self._partitions():
            attrs = _partition_attrs(r, p)
            for kind, value in (
                ("log_start", p.log_start),
                ("last_stable", p.last_stable),
                ("log_end", p.log_end),
                ("committed", p.committed),
                ("stored", p.stored),
            ):
                if value is not None:
                    out.append(Observation(value, {**attrs, "kct.offset": kind}))
        return out

    def _projections(self) -> list[ProjectionReport]:
        return [] if self._report is None else list(self._report.projections)

    def _status(self, _options: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(r.status.severity, {PROJECTION: r.name, GROUP: r.group, "kct.kind": r.kind})
            for r in self._projections()
        ]

    def _members(self, _options: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(r.members, {PROJECTION: r.name, GROUP: r.group})
            for r in self._projections()
            if r.members is not None
        ]

    def _violations(self, _options: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(n, {PROJECTION: r.name, GROUP: r.group, "kct.violation": category})
            for r in self._projections()
            if r.order is not None
            for category, n in r.order.counts.items()
            if not category.startswith("reason:")
        ]

    def _health(self, _options: CallbackOptions) -> Iterable[Observation]:
        report = self._report
        return [] if report is None else [Observation(report.health.exit_code)]

    def _duration(self, _options: CallbackOptions) -> Iterable[Observation]:
        report = self._report
        return [] if report is None else [Observation(report.duration)]


STATUS_SEVERITY = {status.value: status.severity for status in Status}


class PrometheusEndpoint:
    """``GET /metrics`` from text rendered at the last :meth:`refresh` (one per check)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry
        self._body = b""
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def refresh(self) -> bytes:
        """Render the registry now (collects every instrument once) and serve that."""
        self._body = generate_latest(self._registry)
        return self._body

    @property
    def body(self) -> bytes:
        return self._body

    def start(self, host: str = "127.0.0.1", port: int = 9464) -> tuple[str, int]:
        """Serve on a daemon thread; returns the bound (host, port) (port 0: any free one)."""
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?")[0] not in ("/metrics", "/"):
                    self.send_error(404)
                    return
                body = endpoint.body
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE_LATEST)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="kct-metrics", daemon=True
        )
        self._thread.start()
        bound = self._server.server_address
        return str(bound[0]), int(bound[1])

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
