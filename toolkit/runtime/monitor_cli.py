"""``kct status``, ``kct lag`` and ``kct monitor verify|serve``: the consistency monitor.

What is watched comes from ``kct.yaml``'s ``monitor`` section (``--config``,
default ``$KCT_CONFIG`` or ``./kct.yaml``): each projection, saga-state
projection or participant group with its topics and thresholds.

* ``kct status [--json]``: ``--checks`` checks (default 3) ``--every`` seconds
  apart, the window being those checks, then a table (or JSON) of the last
  one. Exit code 0 healthy, 1 degraded (WARN, REWIND), 2 failing (STALL,
  STOP, ERR). For decisions over a longer window run ``kct monitor serve``.
* ``kct lag [--watch]``: lag per partition; ``--watch`` redraws it in place
  every ``monitor.interval`` seconds until Ctrl-C.
* ``kct monitor verify PROJECTION [--sample N]``: rebuilds the projection
  (its ``definition`` import path) from the log into a scratch namespace and
  compares it key by key; exit code 1 on any difference.
* ``kct monitor serve``: checks every ``monitor.interval`` seconds and serves
  the last check's metrics on ``http://<monitor.listen>/metrics``
  (Prometheus text; OTLP too with ``monitor.otlp``).
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from toolkit.errors import ConfigurationError
from toolkit.monitor_rules import Status, Thresholds

if TYPE_CHECKING:
    from toolkit.config import KctConfig
    from toolkit.monitor import ConsistencyMonitor, ConsistencyReport, MonitorTarget
    from toolkit.projection import Projection

__all__ = ["lag", "monitor", "status", "targets_from_config"]

STATUS_STYLE = {
    "OK": "green",
    "WARN": "yellow",
    "REWIND": "magenta",
    "STALL": "bold red",
    "STOP": "bold red",
    "ERR": "bold red",
}

_config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=lambda: os.environ.get("KCT_CONFIG") or "kct.yaml",
    help="The kct.yaml naming what to watch.  [default: $KCT_CONFIG or ./kct.yaml]",
)


def targets_from_config(config: KctConfig) -> list[MonitorTarget]:
    """The monitor's targets: ``monitor.projections`` with defaults filled in."""
    from toolkit.monitor import MonitorTarget

    section = config.monitor
    out = []
    for name, entry in section.projections.items():
        thresholds = Thresholds(
            entry.max_lag_events if entry.max_lag_events is not None else section.max_lag_events,
            entry.max_lag_seconds if entry.max_lag_seconds is not None else section.max_lag_seconds,
            Status(entry.on_breach or section.on_breach),
        )
        out.append(
            MonitorTarget(
                name,
                tuple(entry.topics),
                entry.group or name,
                entry.has_read_model,
                thresholds,
                entry.kind,
            )
        )
    return out


def _load(config_path: Path) -> KctConfig:
    from toolkit.config import load_config

    config = load_config(config_path)
    if not config.monitor.projections:
        raise ConfigurationError(
            f"{config_path}: monitor.projections is empty: name the projections to watch",
            file=str(config_path),
        )
    return config


@contextmanager
def _monitor(config_path: Path, window: int | None = None) -> Iterator[ConsistencyMonitor]:
    """A monitor wired to the configuration's Kafka and Redis (closed afterwards)."""
    from connectors.kafka.inspector import KafkaLogInspector, KafkaRecordTimestamps
    from toolkit.monitor import ConsistencyMonitor
    from toolkit.runtime.app import Kct

    config = _load(config_path)
    kct = Kct.from_config(config)
    timestamps = KafkaRecordTimestamps(kct.settings.kafka)
    try:
        yield ConsistencyMonitor(
            targets_from_config(config),
            KafkaLogInspector(kct.settings.kafka),
            timestamps,
            kct.store,
            window=window or config.monitor.window,
            timestamp_timeout=config.monitor.timestamp_timeout,
        )
    finally:
        timestamps.close()
        kct.close()


def _seconds(value: float | None) -> str:
    if value is None:
        return "?"
    if value < 0.0005:
        return "0"
    return f"{value:.3f}" if value < 10 else f"{value:.1f}"


def _status_text(status: Status) -> Text:
    return Text(status.value, style=STATUS_STYLE[status.value])


def status_table(report: ConsistencyReport) -> Table:
    table = Table(title=f"kct status: {report.health.value} ({report.status.value})")
    for column in ("projection", "partitions", "lag", "lag s", "status", "offset unchanged"):
        table.add_column(column, justify="right" if column.startswith("lag") else "left")
    for p in report.projections:
        order = "" if p.order is None or not p.order.total else f" · {p.order.total} order"
        age = p.last_commit_age
        table.add_row(
            f"{p.name}{order}",
            str(len(p.partitions)),
            str(p.lag_events),
            _seconds(p.lag_seconds),
            _status_text(p.status),
            "-" if age is None else f"{_seconds(age)}s",
        )
    return table


def lag_table(report: ConsistencyReport) -> Table:
    table = Table(title=f"kct lag at {time.strftime('%H:%M:%S')}: {report.health.value}")
    for column in (
        "projection", "partition", "start", "stable", "end", "committed", "stored", "lag",
        "lag s", "status",
    ):  # fmt: skip
        table.add_column(column, justify="left" if column in ("projection", "status") else "right")
    for p in report.projections:
        if not p.partitions:
            table.add_row(p.name, "-", "", "", "", "", "", "", "", _status_text(p.status))
        for part in p.partitions:
            table.add_row(
                p.name,
                f"{part.topic}[{part.partition}]",
                str(part.log_start),
                str(part.last_stable),
                str(part.log_end),
                "-" if part.committed is None else str(part.committed),
                "-" if part.stored is None else str(part.stored),
                str(part.lag_events),
                _seconds(part.lag_seconds),
                _status_text(part.status),
            )
    return table


def _checks(monitor: ConsistencyMonitor, count: int, every: float) -> ConsistencyReport:
    report = monitor.check()
    for _ in range(count - 1):
        time.sleep(every)
        report = monitor.check()
    return report


@click.command()
@_config_option
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option(
    "--checks", default=3, show_default=True, type=click.IntRange(2, 100),
    help="Checks to make (the window of the status rules).",
)  # fmt: skip
@click.option(
    "--every", default=1.0, show_default=True, type=click.FloatRange(0.0, 60.0),
    help="Seconds between checks.",
)  # fmt: skip
def status(config_path: Path, as_json: bool, checks: int, every: float) -> None:
    """Health of every watched projection; exit 0 healthy, 1 degraded, 2 failing."""
    with _monitor(config_path, window=checks) as monitor:
        report = _checks(monitor, checks, every)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        console = Console()
        console.print(status_table(report))
        for p in report.projections:
            if p.status is not Status.OK:
                console.print(f"{p.name}: {p.reason}", highlight=False)
    sys.exit(report.health.exit_code)  # click's Exit would be swallowed by main()


@click.command()
@_config_option
@click.option("--watch", is_flag=True, help="Redraw in place every monitor.interval seconds.")
def lag(config_path: Path, watch: bool) -> None:
    """Lag per partition: offsets, events and seconds behind, status."""
    from rich.live import Live

    with _monitor(config_path) as monitor:
        if not watch:
            Console().print(lag_table(monitor.check()))
            return
        interval = _load(config_path).monitor.interval
        with Live(lag_table(monitor.check()), auto_refresh=False) as live:
            while True:
                time.sleep(interval)
                live.update(lag_table(monitor.check()), refresh=True)


@click.group()
def monitor() -> None:
    """Verify read models; serve the monitor's metrics."""


def _definition(path: str, name: str, topics: tuple[str, ...]) -> Projection:
    """The Projection at ``module:attr``: a Projection, or a callable (name, topics) -> one."""
    from toolkit.projection import Projection

    module_name, _, attribute = path.partition(":")
    try:
        found: Any = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise ConfigurationError(f"cannot import the projection {path!r}: {exc}") from None
    if isinstance(found, Projection):
        return found
    if callable(found):
        made = found(name, topics)
        if isinstance(made, Projection):
            return made
    raise ConfigurationError(f"{path!r} is neither a Projection nor makes one from (name, topics)")


@monitor.command()
@_config_option
@click.argument("projection")
@click.option("--sample", type=click.IntRange(1, 1_000_000), default=None,
              help="Rebuild only N aggregates picked at random.")  # fmt: skip
@click.option("--seed", type=int, default=None, help="Seed of the random sample.")
def verify(config_path: Path, projection: str, sample: int | None, seed: int | None) -> None:
    """Rebuild PROJECTION from the log and compare it key by key (exit 1 on a difference)."""
    from rich.progress import Progress

    from connectors.kafka.consumer import KafkaRecordConsumer
    from connectors.kafka.inspector import KafkaLogInspector
    from toolkit.conflicts import resolver_from_config
    from toolkit.monitor_verify import ReadModelVerifier
    from toolkit.runtime.app import Kct

    config = _load(config_path)
    entry = config.monitor.projections.get(projection)
    if entry is None or entry.definition is None:
        raise ConfigurationError(
            f"monitor.projections.{projection}.definition is not set: "
            "verify needs the projection's handlers ('module:attr')"
        )
    definition = _definition(entry.definition, projection, tuple(entry.topics))
    kct = Kct.from_config(config)
    inspector = KafkaLogInspector(kct.settings.kafka)
    verifier = ReadModelVerifier(
        kct.store,
        kct.codec,
        lambda group: KafkaRecordConsumer(kct.settings.kafka, group),
        inspector.partitions,
        lambda: resolver_from_config(config.conflicts) if config.conflicts else None,
    )
    try:
        with Progress(transient=True) as progress:
            task = progress.add_task(f"rebuilding {projection}", total=None)
            report = verifier.verify(
                definition,
                projection,
                sample=sample,
                seed=seed,
                progress=lambda done, total: progress.update(task, completed=done, total=total),
            )
    finally:
        inspector.delete_groups(verifier.scratch_groups)
        kct.close()
    console = Console()
    scope = "all aggregates" if report.sample is None else f"{len(report.sample)} aggregates"
    for difference in report.differences:
        console.print(
            f"[red]differs[/red] {difference.key}: live {json.dumps(difference.live)} "
            f"!= rebuilt {json.dumps(difference.rebuilt)}",
            markup=True,
            highlight=False,
        )
    verdict = "[green]OK[/green]" if report.ok else f"[red]{len(report.differences)} differ[/red]"
    console.print(f"{projection}: {report.compared} keys compared ({scope}): {verdict}")
    sys.exit(0 if report.ok else 1)


def _serve_loop(
    monitor_: ConsistencyMonitor,
    interval: float,
    after_check: Callable[[ConsistencyReport], None],
    stop: threading.Event,
) -> None:
    while not stop.is_set():
        after_check(monitor_.check())
        stop.wait(interval)


@monitor.command()
@_config_option
@click.option("--listen", default=None, help="host:port of /metrics  [default: monitor.listen]")
def serve(config_path: Path, listen: str | None) -> None:
    """Check every monitor.interval seconds; serve the last check on /metrics."""
    from connectors.telemetry.metrics import MonitorMetrics, PrometheusEndpoint, meter_provider

    config = _load(config_path)
    host, _, port = (listen or config.monitor.listen).rpartition(":")
    provider, registry = meter_provider(config.service, otlp=config.monitor.otlp)
    metrics = MonitorMetrics(provider)
    endpoint = PrometheusEndpoint(registry)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())

    def after_check(report: ConsistencyReport) -> None:
        metrics.update(report)
        endpoint.refresh()

    with _monitor(config_path) as monitor_:
        bound = endpoint.start(host or "127.0.0.1", int(port))
        click.echo(f"serving http://{bound[0]}:{bound[1]}/metrics", err=True)
        try:
            _serve_loop(monitor_, config.monitor.interval, after_check, stop)
        except KeyboardInterrupt:
            pass
        finally:
            endpoint.close()
            provider.shutdown()
