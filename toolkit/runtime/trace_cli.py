"""``kct trace ID``: a trace as a waterfall in the terminal, from Jaeger's query API.

``ID`` is a trace id (32 hex digits) or a saga id: a saga's trace id is read
from its state document (the saga-state projection in Redis, as ``kct saga
status`` does). The trace is fetched from ``/api/traces/{id}`` and drawn as
a tree of spans in start order: service, span, start offset and duration in
milliseconds, a bar on the trace's time line, status, and the attributes
worth reading (topic, partition, offset, aggregate, fence, saga step,
outcome, dead-letter reason). The local stack's Jaeger has no UI assets;
this is how to see a flow there. ``--wait`` retries while the trace is not
(yet) in Jaeger: spans are exported in the background, a second or so late.

Jaeger's address: ``--jaeger``, else the ``telemetry.query_url`` of
``--config``, else ``KCT_JAEGER_QUERY_URL``, else the local stack's (port
offset included).

Exit codes: 0 when drawn; 1 with ``error: ...`` when the saga has no trace
id (started without tracing), the trace is not in Jaeger, or Jaeger, Redis or
the configuration cannot be read.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from toolkit.errors import ConsistencyError

__all__ = ["trace"]

_TRACE_ID = re.compile(r"[0-9a-fA-F]{32}")
# Attributes shown in the waterfall, in this order, with a short label.
_SHOWN = (
    ("kct.saga.step", "step"),
    ("kct.saga.outcome", "outcome"),
    ("kct.saga.error", "error"),
    ("kct.dead_letter.reason", "reason"),
    ("kct.dead_letter.error", "error"),
    ("messaging.destination.partition.id", "partition"),
    ("messaging.kafka.offset", "offset"),
    ("kct.aggregate.id", "aggregate"),
    ("kct.fence", "fence"),
    ("kct.projections", "projections"),
    ("messaging.consumer.group.name", "group"),
    ("kct.saga.redelivered", "redelivered"),
    ("kct.saga.timed_out", "timed out"),
)
_BAR = 24


def _jaeger_url(explicit: str | None, config_path: Path | None) -> str:
    if explicit:
        return explicit
    if config_path is not None:
        from toolkit.config import load_config

        config = load_config(config_path)
        if config.telemetry is not None and config.telemetry.query_url:
            return config.telemetry.query_url
    if os.environ.get("KCT_JAEGER_QUERY_URL"):
        return os.environ["KCT_JAEGER_QUERY_URL"]
    from toolkit.runtime.stack import LocalStack

    return LocalStack().endpoints().jaeger_query_url


def _saga_trace_id(saga_id: str, projection: str, config_path: Path | None) -> str:
    from toolkit.runtime import saga_cli

    with saga_cli._store(config_path) as store:
        doc = saga_cli.saga_document(store, projection, saga_id)
    trace_id = doc.get("trace_id")
    if not trace_id:
        raise ConsistencyError(
            f"saga {saga_id!r} has no trace id: it was started without tracing",
            saga_id=saga_id,
        )
    return str(trace_id)


def _attributes(tags: Mapping[str, Any]) -> str:
    shown = []
    for key, label in _SHOWN:
        if key in tags and tags[key] not in ("", None):
            value = tags[key]
            text = ",".join(map(str, value)) if isinstance(value, list) else str(value)
            shown.append(f"{label}={text[:60]}")
    return " ".join(shown)


def _bar(start: float, duration: float, total: float) -> str:
    if total <= 0:
        return "█"
    left = int(start / total * _BAR)
    width = max(1, round(duration / total * _BAR))
    left = min(left, _BAR - 1)
    return " " * left + "█" * min(width, _BAR - left)


def render_trace(console: Console, found: Any) -> None:
    """Draw a :class:`~connectors.telemetry.JaegerTrace` as a waterfall."""
    spans = list(found.spans)
    if not spans:
        console.print("the trace has no spans")
        return
    origin = min(s.start_us for s in spans)
    end = max(s.start_us + s.duration_us for s in spans)
    ids = {s.span_id for s in spans}
    children: dict[str | None, list[Any]] = {}
    for span in spans:
        parent = span.parent_id if span.parent_id in ids else None
        children.setdefault(parent, []).append(span)
    ordered: list[tuple[int, Any]] = []

    def walk(parent: str | None, depth: int) -> None:
        for span in sorted(children.get(parent, []), key=lambda s: s.start_us):
            ordered.append((depth, span))
            walk(span.span_id, depth + 1)

    walk(None, 0)
    services = sorted({s.service for s in spans})
    console.print(
        Text(
            f"trace {found.trace_id}: {len(spans)} spans, {len(services)} services "
            f"({', '.join(services)}), {(end - origin) / 1000:.1f} ms",
            style="bold",
        )
    )
    table = Table(box=None, pad_edge=False, show_edge=False)
    for column, justify in (
        ("service", "left"),
        ("span", "left"),
        ("start ms", "right"),
        ("ms", "right"),
        ("", "left"),
        ("status", "left"),
        ("attributes", "left"),
    ):
        table.add_column(column, justify=justify, overflow="fold")  # type: ignore[arg-type]
    for depth, span in ordered:
        broken = span.parent_id is not None and span.parent_id not in ids
        name = "  " * depth + span.name + (" (parent missing)" if broken else "")
        table.add_row(
            Text(span.service, style="cyan"),
            Text(name),
            f"{(span.start_us - origin) / 1000:.1f}",
            f"{span.duration_us / 1000:.1f}",
            Text(_bar(span.start_us - origin, span.duration_us, end - origin), style="magenta"),
            Text("ERROR", style="bold red") if span.error else Text("ok", style="green"),
            Text(_attributes(span.tags), style="dim"),
        )
    console.print(table)


@click.command()
@click.argument("ident", metavar="ID")
@click.option("--jaeger", "jaeger_url", default=None, help="Jaeger query URL.")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="kct.yaml: Redis for saga ids, telemetry.query_url for Jaeger.",
)
@click.option(
    "--projection",
    default="kct-saga-state",
    show_default=True,
    help="The saga-state projection (for saga ids).",
)
@click.option(
    "--wait",
    default=0.0,
    show_default=True,
    type=click.FloatRange(0, 600),
    help="Seconds to keep asking while the trace is not in Jaeger yet.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the spans as JSON.")
def trace(
    ident: str,
    *,
    jaeger_url: str | None,
    config_path: Path | None,
    projection: str,
    wait: float,
    as_json: bool,
) -> None:
    """Show trace ID (a trace id, or a saga id) as a waterfall, from Jaeger."""
    from connectors.telemetry import JaegerQuery

    trace_id = (
        ident.lower()
        if _TRACE_ID.fullmatch(ident)
        else _saga_trace_id(ident, projection, config_path)
    )
    query = JaegerQuery(_jaeger_url(jaeger_url, config_path))
    deadline = time.monotonic() + wait
    found = query.trace(trace_id)
    while found is None and time.monotonic() < deadline:
        time.sleep(0.5)
        found = query.trace(trace_id)
    if found is None:
        raise ConsistencyError(
            f"trace {trace_id} is not in Jaeger at {query.url} (not sampled, not exported "
            "yet: try --wait 5, or expired)",
            trace_id=trace_id,
        )
    if as_json:
        click.echo(json.dumps([asdict(s) for s in found.spans], indent=2, default=str))
        return
    render_trace(Console(), found)
