"""The sidecar's monitor and metrics: ``/v1/status`` and ``/metrics`` from the last check.

A :class:`SidecarMonitoring` checks the projections the sidecar hosts (or the
``monitor.projections`` of ``kct.yaml`` when it names some) every
``monitor.interval`` seconds on a thread of its own, keeps the last
:class:`~toolkit.monitor.ConsistencyReport`, and renders the Prometheus text
once per check: the monitor's lag and status series, and the runtime
metrics that :attr:`interceptor` records on the same ``MeterProvider``
(events, batches, dead letters, conflicts, strong phases, waits, saga steps).
A request never calls Kafka or Redis.

Failure modes: a check that fails (a backend down) is logged and retried at
the next interval; the last good report stays served, with its time, so a
reader can see it is old.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from connectors.kafka.inspector import KafkaLogInspector, KafkaRecordTimestamps
from connectors.telemetry.metrics import MonitorMetrics, PrometheusEndpoint, meter_provider
from connectors.telemetry.runtime_metrics import OpenTelemetryMetricsInterceptor
from toolkit.config import KctConfig
from toolkit.errors import ToolkitError
from toolkit.monitor import ConsistencyMonitor, ConsistencyReport, MonitorTarget
from toolkit.runtime.app import Kct
from toolkit.runtime.monitor_cli import targets_from_config
from toolkit.runtime.sidecar.host import HostedLoop

__all__ = ["SidecarMonitoring"]

log = logging.getLogger(__name__)


class SidecarMonitoring:
    """Periodic checks of what the sidecar runs, and the metrics served from them."""

    def __init__(self, config: KctConfig) -> None:
        self._config = config
        self._provider, registry = meter_provider(config.service, otlp=config.monitor.otlp)
        self.interceptor = OpenTelemetryMetricsInterceptor(self._provider)
        self._metrics = MonitorMetrics(self._provider)
        self._endpoint = PrometheusEndpoint(registry)
        self._endpoint.refresh()
        self._last: ConsistencyReport | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._timestamps: KafkaRecordTimestamps | None = None

    def start(self, kct: Kct, loops: list[HostedLoop]) -> SidecarMonitoring:
        targets = targets_from_config(self._config) or _targets_of(loops)
        if not targets:
            return self
        self._timestamps = KafkaRecordTimestamps(kct.settings.kafka)
        monitor = ConsistencyMonitor(
            targets,
            KafkaLogInspector(kct.settings.kafka),
            self._timestamps,
            kct.store,
            window=self._config.monitor.window,
            timestamp_timeout=self._config.monitor.timestamp_timeout,
        )
        self._thread = threading.Thread(
            target=self._run, args=(monitor,), name="kct-sidecar-monitor", daemon=True
        )
        self._thread.start()
        return self

    def _run(self, monitor: ConsistencyMonitor) -> None:
        while not self._stop.is_set():
            try:
                report = monitor.check()
            except ToolkitError as exc:  # the check reports backend failures as ERR itself
                log.warning("sidecar monitor: check failed: %s", exc)
            else:
                self._last = report
                self._metrics.update(report)
                self._endpoint.refresh()
            self._stop.wait(self._config.monitor.interval)

    def report(self) -> dict[str, Any] | None:
        """The last check as JSON (with its ``checked_at``); None before the first."""
        last = self._last
        return None if last is None else last.to_dict()

    def prometheus(self) -> bytes:
        """The Prometheus text rendered at the last check (runtime metrics included)."""
        return self._endpoint.body

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._timestamps is not None:
            self._timestamps.close()
        self._provider.shutdown()


def _targets_of(loops: list[HostedLoop]) -> list[MonitorTarget]:
    """What the sidecar hosts: its projections (with read models) and participant groups."""
    targets = []
    for hosted in loops:
        if hosted.group is None or not hosted.topics:
            continue
        if hosted.kind in ("projection", "saga-state"):
            targets.append(
                MonitorTarget(hosted.name, hosted.topics, hosted.group, True, kind=hosted.kind)
            )
        elif hosted.kind == "participant":
            targets.append(
                MonitorTarget(hosted.name, hosted.topics, hosted.group, False, kind="participant")
            )
    return targets
