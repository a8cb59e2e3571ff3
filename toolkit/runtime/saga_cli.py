"""``kct saga status | list``: a saga's state as the saga-state projection folded it.

``status SAGA_ID`` reads the saga's document (``saga:<id>``) from the
projection's read model in Redis and shows its status, its current step, each
step's execute and compensate outcome, its context and any late replies.
``list`` shows the projection's totals by final status and the running sagas.
Connections come from the environment (``KCT_REDIS_URL``) or ``--config``.

Exit codes: 0 when shown; 1 with ``error: ...`` on stderr when the saga is
unknown to the projection (a wrong id, another ``--projection``, or a start the
projection has not applied yet), ``KCT_REDIS_URL`` or ``--config`` is invalid,
or Redis cannot be reached; 2 for invalid options (``--limit -5``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from toolkit.errors import ConsistencyError
from toolkit.ports import ReadModelStore
from toolkit.runtime.config_cli import check_environment
from toolkit.saga.state import RUNNING_KEY, TOTALS_KEY, SagaStatus, saga_key

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
def _store(config_path: Path | None) -> Iterator[ReadModelStore]:
    """The read-model store of a Kct wired from ``--config`` or the environment."""
    from toolkit.runtime.app import Kct

    if config_path is not None:
        from toolkit.config import load_config

        kct = Kct.from_config(load_config(config_path))
    else:
        check_environment(names=("KCT_REDIS_URL",))  # a bad URL: one line, not a traceback
        kct = Kct()
    try:
        yield kct.store
    finally:
        kct.close()


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


def saga_document(store: ReadModelStore, projection: str, saga_id: str) -> dict[str, Any]:
    """The saga's state document; ConsistencyError if the projection does not know it."""
    doc = store.get(projection, saga_key(saga_id))
    if doc is None:
        raise ConsistencyError(
            f"no saga {saga_id!r} in projection {projection!r}: a wrong id or projection, "
            "or the projection has not applied the saga's start yet",
            saga_id=saga_id,
            projection=projection,
        )
    return doc


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


@saga.command(name="list")
@_projection_option
@_config_option
@_json_option
@click.option(
    "--limit",
    default=20,
    show_default=True,
    type=click.IntRange(min=0),
    help="Running sagas to show by id.",
)
def list_(projection: str, config_path: Path | None, as_json: bool, limit: int) -> None:
    """Show how many sagas ended in each status, and which are running."""
    with _store(config_path) as store:
        overview = saga_overview(store, projection)
    if as_json:
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
    if running:
        shown = ", ".join(running[:limit]) + (" ..." if len(running) > limit else "")
        console.print(Text(f"running: {shown}"))
