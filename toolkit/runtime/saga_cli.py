"""``kct saga status | show | list | retry | compensate``: inspect and operate sagas.

``status SAGA_ID`` reads the saga's document (``saga:<id>``) from the
projection's read model in Redis and shows its status, its current step, each
step's execute and compensate outcome, its context and any late replies.
``show SAGA_ID`` is its timeline: each step's execute and compensate with
when it was first asked for, how long it took, how often it ran, its last
error, and the saga's trace id. ``list`` shows the totals by final status and
the sagas with ``--status`` (``running``, ``completed``, ``compensated``,
``failed-compensation``, ``stuck``: running with its step overdue) whose last
change is ``--older-than`` a duration. ``retry`` re-drives a stuck step or a
compensation parked as ``FAILED_COMPENSATION``, ``compensate`` aborts a
running saga; both need the saga definitions (``--sagas sagas.yaml``) and
never run a step's effect twice (see :mod:`toolkit.saga.operations`).
Connections come from the environment (``KCT_*``) or ``--config``.

Exit codes: 0 when shown or done; 1 with ``error: ...`` on stderr when the saga
is unknown to the projection (a wrong id, another ``--projection``, or a start
the projection has not applied yet), the operation does not fit the saga's
state, ``KCT_*`` or ``--config`` is invalid, or a server cannot be reached; 2
for invalid options (``--limit -5``, ``--older-than soon``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from toolkit.ports import ReadModelStore
from toolkit.runtime.cli_types import DURATION
from toolkit.runtime.config_cli import check_environment
from toolkit.saga.operations import (
    STUCK,
    Operation,
    SagaSummary,
    list_sagas,
    saga_document,
    timeline,
)
from toolkit.saga.state import RUNNING_KEY, TOTALS_KEY, SagaStatus

if TYPE_CHECKING:
    from toolkit.runtime.app import Kct

__all__ = ["saga", "saga_document"]

STATUS_STYLE = {
    SagaStatus.RUNNING.value: "cyan",
    SagaStatus.COMPLETED.value: "green",
    SagaStatus.COMPENSATED.value: "yellow",
    SagaStatus.FAILED_COMPENSATION.value: "bold red",
}
OUTCOME_STYLE = {"SUCCESS": "green", "FAILURE": "red"}

# The composition root (and every driver) is imported only when a command runs.
DEFAULT_PROJECTION_SHOWN = "kct-saga-state"


def _default_projection() -> str:
    from toolkit.runtime.app import SAGA_STATE

    return SAGA_STATE


_projection_option = click.option(
    "--projection",
    default=_default_projection,
    help=f"The saga-state projection (read model) to read.  [default: {DEFAULT_PROJECTION_SHOWN}]",
)
_config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Connections from this kct.yaml instead of the environment.",
)
_json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


@contextmanager
def _kct(config_path: Path | None, names: tuple[str, ...]) -> Iterator[Kct]:
    """A Kct wired from ``--config`` or the environment (``names`` checked first)."""
    from toolkit.runtime.app import Kct

    if config_path is not None:
        from toolkit.config import load_config

        kct = Kct.from_config(load_config(config_path))
    else:
        check_environment(names=names)  # a bad URL: one line, not a traceback
        kct = Kct()
    try:
        yield kct
    finally:
        kct.close()


@contextmanager
def _store(config_path: Path | None) -> Iterator[ReadModelStore]:
    """The read-model store of a Kct wired from ``--config`` or the environment."""
    with _kct(config_path, ("KCT_REDIS_URL",)) as kct:
        yield kct.store


def _status_text(status: str) -> Text:
    return Text(status, style=STATUS_STYLE.get(status, ""))


def _outcome(value: str | None) -> Text:
    return Text("-" if value is None else value, style=OUTCOME_STYLE.get(value or "", "dim"))


def _current(doc: Mapping[str, Any]) -> str:
    current = doc.get("current")
    if current is None:
        return "-"
    return f"{current} (compensating)" if doc.get("compensating") else str(current)


def _time(ms: int | None) -> str:
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC"


def _mapping_table(title: str, values: Mapping[str, Any], *columns: str) -> Table:
    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column, overflow="fold")
    for key in sorted(values):
        table.add_row(Text(str(key)), Text(str(values[key])))
    return table


def _trace_text(doc: Mapping[str, Any]) -> Text:
    trace_id = doc.get("trace_id")
    if not trace_id:
        return Text("- (started without tracing)", style="dim")
    flags = str(doc.get("traceparent") or "")[-2:]
    try:
        kept = "" if int(flags, 16) & 1 else " (not sampled: not in Jaeger)"
    except ValueError:
        kept = ""
    return Text(f"{trace_id}{kept}  (kct trace {doc['saga_id']})")


def render_saga(console: Console, doc: Mapping[str, Any]) -> None:
    """Print one saga's state document."""
    overview = Table(show_header=False, box=None)
    overview.add_column(style="bold")
    overview.add_column(overflow="fold")
    started, updated = doc.get("started_at_ms"), doc.get("updated_at_ms")
    took = f" ({updated - started} ms after the start)" if started and updated else ""
    attention = doc.get("needs_attention", False)
    rows: list[tuple[str, Text]] = [
        ("saga", Text(str(doc["saga_id"]))),
        ("type", Text(str(doc["saga_type"]))),
        ("status", _status_text(str(doc["status"]))),
        (
            "needs attention",
            Text("yes: a compensation failed", style="bold red") if attention else Text("no"),
        ),
        ("current step", Text(_current(doc))),
        ("started", Text(_time(started))),
        ("last change", Text(_time(updated) + took)),
        ("trace", _trace_text(doc)),
    ]
    for label, value in rows:
        overview.add_row(label, value)
    console.print(overview)

    steps = Table(title="steps (in execution order)", title_justify="left")
    for column in ("#", "step", "participant", "execute", "compensate", "error"):
        steps.add_column(column, overflow="fold")
    for index, step in enumerate(doc.get("steps", [])):
        marker = " <" if step["name"] == doc.get("current") else ""
        steps.add_row(
            str(index + 1),
            Text(str(step["name"]) + marker),
            Text(str(step["participant"])),
            _outcome(step.get("execute")),
            _outcome(step.get("compensate")),
            Text(str(step.get("error") or "")),
        )
    console.print(steps)
    console.print(_mapping_table("context", doc.get("context", {}), "key", "value"))
    late = doc.get("late", [])
    if late:
        table = Table(
            title="late replies (after their step was decided; ignored)", title_justify="left"
        )
        for column in ("step", "action", "outcome", "at"):
            table.add_column(column)
        for reply in late:
            table.add_row(
                Text(str(reply["step"])),
                Text(str(reply["action"])),
                _outcome(reply.get("outcome")),
                _time(reply.get("at_ms")),
            )
        console.print(table)


def saga_overview(store: ReadModelStore, projection: str) -> dict[str, Any]:
    """Totals by final status and the ids of running sagas."""
    totals = store.counters(projection, TOTALS_KEY)
    running = sorted(s for s, n in store.counters(projection, RUNNING_KEY).items() if n > 0)
    return {"projection": projection, "totals": totals, "running": running}


@click.group()
def saga() -> None:
    """Inspect sagas: the state of one, the totals of all."""


@saga.command()
@click.argument("saga_id")
@_projection_option
@_config_option
@_json_option
def status(saga_id: str, projection: str, config_path: Path | None, as_json: bool) -> None:
    """Show the state of saga SAGA_ID: status, steps, context, late replies."""
    with _store(config_path) as store:
        doc = saga_document(store, projection, saga_id)
    if as_json:
        click.echo(json.dumps(doc, indent=2, sort_keys=True))
    else:
        render_saga(Console(), doc)


STATUS_CHOICES = {
    "running": SagaStatus.RUNNING.value,
    "completed": SagaStatus.COMPLETED.value,
    "compensated": SagaStatus.COMPENSATED.value,
    "failed-compensation": SagaStatus.FAILED_COMPENSATION.value,
    "stuck": STUCK,
}


def _age(ms: int, now_ms: int) -> str:
    seconds = max(0, now_ms - ms) // 1000
    if seconds >= 86400:
        return f"{seconds // 86400}d{seconds % 86400 // 3600}h"
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60}s"
    return f"{seconds}s"


@saga.command(name="list")
@_projection_option
@_config_option
@_json_option
@click.option(
    "--status",
    "statuses",
    multiple=True,
    type=click.Choice(sorted(STATUS_CHOICES)),
    help="Only sagas with this status (repeatable); stuck: running, its step overdue.",
)
@click.option(
    "--older-than",
    type=DURATION,
    default=None,
    help="Only sagas whose last change is at least this old (90s, 5m, 2h, 1d).",
)
@click.option(
    "--limit",
    default=20,
    show_default=True,
    type=click.IntRange(min=0),
    help="Sagas to show (oldest change first).",
)
def list_(
    *,
    projection: str,
    config_path: Path | None,
    as_json: bool,
    statuses: tuple[str, ...],
    older_than: timedelta | None,
    limit: int,
) -> None:
    """Show how many sagas ended in each status, and the sagas that match."""
    now = int(time.time() * 1000)
    with _store(config_path) as store:
        overview = saga_overview(store, projection)
        found = list_sagas(
            store,
            projection,
            [STATUS_CHOICES[s] for s in statuses],
            older_than_ms=int(older_than.total_seconds() * 1000) if older_than else 0,
            now_ms=now,
        )
    if as_json:
        overview["sagas"] = [s.to_json() for s in found[:limit]]
        overview["matched"] = len(found)
        click.echo(json.dumps(overview, indent=2, sort_keys=True))
        return
    console = Console()
    table = Table(title=f"sagas in {projection}", title_justify="left")
    table.add_column("status")
    table.add_column("sagas", justify="right")
    running = overview["running"]
    table.add_row(_status_text(SagaStatus.RUNNING.value), str(len(running)))
    for status_ in SagaStatus:
        if status_ is not SagaStatus.RUNNING:
            table.add_row(
                _status_text(status_.value), str(overview["totals"].get(status_.value, 0))
            )
    console.print(table)
    _print_sagas(console, found, limit, now)


def _print_sagas(console: Console, found: list[SagaSummary], limit: int, now: int) -> None:
    if not found:
        console.print(Text("no saga matches"))
        return
    table = Table(
        title=f"{len(found)} saga(s), oldest change first"
        + (f" (first {limit})" if len(found) > limit else ""),
        title_justify="left",
    )
    for column in ("saga", "type", "status", "current step", "started", "last change"):
        table.add_column(column, overflow="fold")
    for summary in found[:limit]:
        status_ = _status_text(summary.status)
        if summary.stuck:
            status_.append(" (stuck)", style="bold red")
        current = summary.current or "-"
        table.add_row(
            Text(summary.saga_id),
            Text(summary.saga_type),
            status_,
            Text(f"{current} (compensating)" if summary.compensating else current),
            Text(_time(summary.started_at_ms)),
            Text(f"{_age(summary.updated_at_ms, now)} ago"),
        )
    console.print(table)


def _duration(ms: int | None) -> str:
    if ms is None:
        return "-"
    return f"{ms} ms" if ms < 10_000 else f"{ms / 1000:.1f} s"


def render_timeline(console: Console, doc: Mapping[str, Any]) -> None:
    """Print one saga's overview and its steps' timeline."""
    overview = Table(show_header=False, box=None)
    overview.add_column(style="bold")
    overview.add_column(overflow="fold")
    for label, value in (
        ("saga", Text(str(doc["saga_id"]))),
        ("type", Text(str(doc["saga_type"]))),
        ("status", _status_text(str(doc["status"]))),
        ("current step", Text(_current(doc))),
        ("started", Text(_time(doc.get("started_at_ms")))),
        ("last change", Text(_time(doc.get("updated_at_ms")))),
        ("trace id", Text(str(doc.get("trace_id") or "-"))),
    ):
        overview.add_row(label, value)
    console.print(overview)
    table = Table(title="timeline", title_justify="left")
    for column in (
        "step",
        "participant",
        "action",
        "outcome",
        "first attempt",
        "took",
        "attempts",
        "last error",
    ):
        table.add_column(column, overflow="fold")
    for entry in timeline(doc):
        action = entry.action + (f" (retry {entry.attempt})" if entry.attempt > 1 else "")
        table.add_row(
            Text(entry.step),
            Text(entry.participant),
            Text(action),
            _outcome(entry.outcome) if entry.outcome else Text("pending", style="cyan"),
            Text(_time(entry.first_ms)),
            Text(_duration(entry.duration_ms)),
            Text(str(entry.attempts)),
            Text(entry.error or ""),
        )
    console.print(table)


@saga.command()
@click.argument("saga_id")
@_projection_option
@_config_option
@_json_option
def show(saga_id: str, projection: str, config_path: Path | None, as_json: bool) -> None:
    """Show the timeline of saga SAGA_ID: each step's execute and compensate."""
    with _store(config_path) as store:
        doc = saga_document(store, projection, saga_id)
    if as_json:
        shown = {"saga": doc, "timeline": [e.to_json() for e in timeline(doc)]}
        click.echo(json.dumps(shown, indent=2, sort_keys=True))
    else:
        render_timeline(Console(), doc)


_sagas_option = click.option(
    "--sagas",
    "sagas_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The saga definitions (sagas.yaml).",
)
_prefix_option = click.option(
    "--topic-prefix", default=None, help="Topic prefix of every saga (as the services use)."
)
_namespace_option = click.option(
    "--namespace", default="", help="Participants' read-model namespace (as the services use)."
)


@contextmanager
def _operator(
    sagas_path: Path,
    topic_prefix: str | None,
    namespace: str,
    projection: str,
    config_path: Path | None,
) -> Iterator[Any]:
    from toolkit.saga.definition import load_saga_definitions

    definitions = load_saga_definitions(sagas_path)
    if topic_prefix is not None:
        definitions = {
            t: d.model_copy(update={"topic_prefix": topic_prefix}) for t, d in definitions.items()
        }
    with _kct(config_path, ("KCT_REDIS_URL", "KCT_KAFKA_BOOTSTRAP", "KCT_DEPLOYMENT")) as kct:
        yield kct.saga_operator(definitions, projection, namespace=namespace)


def _report(operation: Operation, as_json: bool) -> None:
    if as_json:
        shown = {
            "saga_id": operation.saga_id,
            "done": list(operation.done),
            "published": operation.published,
        }
        click.echo(json.dumps(shown, indent=2, sort_keys=True))
        return
    for line in operation.done:
        click.echo(f"{operation.saga_id}: {line}")


@saga.command()
@click.argument("saga_id")
@_sagas_option
@_prefix_option
@_namespace_option
@_projection_option
@_config_option
@_json_option
def retry(
    *,
    saga_id: str,
    sagas_path: Path,
    topic_prefix: str | None,
    namespace: str,
    projection: str,
    config_path: Path | None,
    as_json: bool,
) -> None:
    """Re-drive saga SAGA_ID: its stuck step, or its failed compensations."""
    with _operator(sagas_path, topic_prefix, namespace, projection, config_path) as operator:
        _report(operator.retry(saga_id), as_json)


@saga.command()
@click.argument("saga_id")
@_sagas_option
@_prefix_option
@_namespace_option
@_projection_option
@_config_option
@_json_option
@click.option("--reason", default="", help="Why, recorded as the step's error.")
def compensate(
    *,
    saga_id: str,
    sagas_path: Path,
    topic_prefix: str | None,
    namespace: str,
    projection: str,
    config_path: Path | None,
    as_json: bool,
    reason: str,
) -> None:
    """Abort running saga SAGA_ID: fail its current step, undo the ones before."""
    with _operator(sagas_path, topic_prefix, namespace, projection, config_path) as operator:
        _report(operator.compensate(saga_id, reason[:500]), as_json)
