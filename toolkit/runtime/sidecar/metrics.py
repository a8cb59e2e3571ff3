"""The sidecar's Prometheus metrics (``GET /metrics``), on a registry of its own.

Requests: ``kct_sidecar_requests_total{route,method,code}`` and the latency
histogram ``kct_sidecar_request_seconds{route}``. Loops, read at scrape time
from their ``health`` and stats (nothing is called on Kafka or Redis):
``kct_sidecar_ready``, ``kct_sidecar_loop_healthy{loop,kind}``,
``kct_sidecar_loop_failures{loop,kind}``, ``kct_sidecar_events_applied_total``,
``kct_sidecar_handler_errors_total`` and ``kct_sidecar_failed_cycles_total``
per projection, and ``kct_sidecar_leases``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from toolkit.runtime.sidecar.host import SidecarHost
    from toolkit.runtime.sidecar.leases import LeaseManager

__all__ = ["SidecarMetrics"]

_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class _Loops(Collector):
    def __init__(self, host: SidecarHost, leases: LeaseManager) -> None:
        self._host = host
        self._leases = leases

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        ready = GaugeMetricFamily("kct_sidecar_ready", "1 when the sidecar is ready")
        ready.add_metric([], 1.0 if self._host.readiness().ready else 0.0)
        yield ready
        healthy = GaugeMetricFamily(
            "kct_sidecar_loop_healthy",
            "1 when the loop's last cycle succeeded",
            labels=["loop", "kind"],
        )
        failures = GaugeMetricFamily(
            "kct_sidecar_loop_failures", "consecutive failed cycles", labels=["loop", "kind"]
        )
        applied = CounterMetricFamily(
            "kct_sidecar_events_applied", "events applied", labels=["loop"]
        )
        errors = CounterMetricFamily(
            "kct_sidecar_handler_errors", "events dead-lettered by a handler error", labels=["loop"]
        )
        failed = CounterMetricFamily(
            "kct_sidecar_failed_cycles",
            "cycles rewound after a backend or service failure",
            labels=["loop"],
        )
        for hosted in self._host.loops:
            health = hosted.health
            labels = [hosted.name, hosted.kind]
            healthy.add_metric(labels, 1.0 if health.healthy and not hosted.error else 0.0)
            failures.add_metric(labels, float(health.failures))
            stats = getattr(hosted.loop, "stats", None)
            if stats is not None and not isinstance(stats, Mapping):
                applied.add_metric([hosted.name], float(stats.applied))
                errors.add_metric([hosted.name], float(stats.handler_errors))
                failed.add_metric([hosted.name], float(stats.failed_cycles))
        yield from (healthy, failures, applied, errors, failed)
        leases = GaugeMetricFamily("kct_sidecar_leases", "leases held")
        leases.add_metric([], float(self._leases.count()))
        yield leases


class SidecarMetrics:
    """Request metrics and the loops' state, rendered for Prometheus."""

    def __init__(self, host: SidecarHost, leases: LeaseManager) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self._requests = Counter(
            "kct_sidecar_requests",
            "HTTP requests answered",
            ["route", "method", "code"],
            registry=self.registry,
        )
        self._latency = Histogram(
            "kct_sidecar_request_seconds",
            "time to answer a request",
            ["route"],
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_Loops(host, leases))

    def observe(self, route: str, method: str, code: int, seconds: float) -> None:
        self._requests.labels(route, method, str(code)).inc()
        self._latency.labels(route).observe(seconds)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
