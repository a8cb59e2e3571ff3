"""``kct dlq list | show | replay TOPIC.dlq``: dead letters, their reasons, and replay.

``list`` counts a dead-letter topic's records by reason and shows each one's
reason, source coordinates (topic, partition, offset), consumer group, time
of failure and event; ``show`` adds the error, the headers and the size of
each. ``replay`` writes them back to their source topic and partition, once
per event id (see :mod:`toolkit.dead_letter_replay`: a Redis mark keyed by
the event id decides; ``--force`` replays a record whose earlier replay died
half way, leaving a second copy possible, which a ``deduplicate`` conflict
policy drops). All three take ``--reason`` (repeatable) and ``--since`` (a
duration ago, ``10m``, or an ISO 8601 time). Connections come from the
environment (``KCT_KAFKA_BOOTSTRAP``, ``KCT_REDIS_URL``) or ``--config``.

Exit codes: 0 when shown or replayed (``replay`` exits 1 when a record could
not be replayed: in doubt or its original gone); 1 with ``error: ...`` for an
unknown topic, an invalid ``KCT_*`` or ``--config``, or a server that cannot
be reached; 2 for invalid options.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from toolkit.positions import is_valid_topic_name
from toolkit.runtime.cli_types import SINCE
from toolkit.runtime.config_cli import check_environment

if TYPE_CHECKING:
    from toolkit.dead_letter_replay import DeadLetterEntry, DeadLetterReplayer

__all__ = ["dlq"]

FAILED_OUTCOMES = frozenset({"in_doubt", "original_gone"})


def _topic(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    if not is_valid_topic_name(value) or len(value) > 249:
        raise click.BadParameter(f"{value[:80]!r} is not a Kafka topic name")
    return value


_topic_argument = click.argument("topic", callback=_topic)
_reason_option = click.option(
    "--reason", "reasons", multiple=True, help="Only this reason (repeatable), e.g. undecodable."
)
_since_option = click.option(
    "--since",
    type=SINCE,
    default=None,
    help="Only dead letters since then: a duration ago (10m, 2h) or an ISO 8601 time.",
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
def _replayer(config_path: Path | None) -> Iterator[DeadLetterReplayer]:
    from toolkit.runtime.app import Kct

    if config_path is not None:
        from toolkit.config import load_config

        kct = Kct.from_config(load_config(config_path))
    else:
        check_environment(names=("KCT_KAFKA_BOOTSTRAP", "KCT_REDIS_URL"))
        kct = Kct()
    try:
        yield kct.dead_letter_replayer()
    finally:
        kct.close()


def _time(ms: int | None) -> str:
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _source(entry: DeadLetterEntry) -> str:
    letter = entry.letter
    if letter is None:
        return "-"
    return f"{letter.source.topic}[{letter.source.partition}]@{letter.source.offset}"


def _where(entry: DeadLetterEntry) -> str:
    return f"{entry.position.partition}:{entry.position.offset}"


@click.group()
def dlq() -> None:
    """Dead letters: list them, show them, replay them to their source topic."""


def _print_list(console: Console, topic: str, entries: Sequence[DeadLetterEntry]) -> None:
    counts = Counter(e.reason or "(not a dead letter)" for e in entries)
    table = Table(title=f"dead letters in {topic} by reason", title_justify="left")
    table.add_column("reason")
    table.add_column("records", justify="right")
    for reason, count in sorted(counts.items()):
        table.add_row(Text(reason), str(count))
    console.print(table)
    rows = Table(title="dead letters (partition:offset in the dead-letter topic)")
    for column in ("at", "reason", "source", "group", "failed", "event", "truncated"):
        rows.add_column(column, overflow="fold")
    for e in entries:
        rows.add_row(
            Text(_where(e)),
            Text(e.reason or "-", style="red"),
            Text(_source(e)),
            Text(e.letter.consumer_group if e.letter else "-"),
            Text(_time(e.failed_at_ms)),
            Text(f"{(e.event_type or '-').rsplit('.', 1)[-1]} {e.event_id or ''}".strip()),
            Text(e.truncated or ""),
        )
    console.print(rows)


@dlq.command(name="list")
@_topic_argument
@_reason_option
@_since_option
@_config_option
@_json_option
def list_(
    *,
    topic: str,
    reasons: tuple[str, ...],
    since: int | None,
    config_path: Path | None,
    as_json: bool,
) -> None:
    """List the dead letters of TOPIC (e.g. orders.dlq) with reasons and sources."""
    with _replayer(config_path) as replayer:
        entries = replayer.letters(topic, reasons=reasons, since_ms=since)
    if as_json:
        click.echo(json.dumps([e.to_json() for e in entries], indent=2, sort_keys=True))
    else:
        _print_list(Console(), topic, entries)


@dlq.command()
@_topic_argument
@_reason_option
@_since_option
@_config_option
@_json_option
def show(
    *,
    topic: str,
    reasons: tuple[str, ...],
    since: int | None,
    config_path: Path | None,
    as_json: bool,
) -> None:
    """Show each dead letter of TOPIC in full: error, headers, size."""
    with _replayer(config_path) as replayer:
        entries = replayer.letters(topic, reasons=reasons, since_ms=since)
    if as_json:
        shown = [
            {
                **e.to_json(),
                "headers": {k: v.decode(errors="replace") for k, v in e.record.headers},
            }
            for e in entries
        ]
        click.echo(json.dumps(shown, indent=2, sort_keys=True))
        return
    console = Console()
    for e in entries:
        table = Table(title=f"{topic} {_where(e)}", title_justify="left", show_header=False)
        table.add_column(style="bold")
        table.add_column(overflow="fold")
        for label, value in (
            ("reason", e.reason or "(not a dead letter)"),
            ("error", e.letter.error if e.letter else "-"),
            ("source", _source(e)),
            ("consumer group", e.letter.consumer_group if e.letter else "-"),
            ("failed at", _time(e.failed_at_ms)),
            ("event", f"{e.event_type or '-'} {e.event_id or ''}".strip()),
            (
                "value",
                f"{len(e.record.value or b'')} bytes"
                + (f" (truncated: {e.truncated})" if e.truncated else ""),
            ),
        ):
            table.add_row(label, Text(value))
        for key, raw in e.record.headers:
            table.add_row(
                Text(f"header {key}", style="dim"), Text(raw.decode(errors="replace")[:300])
            )
        console.print(table)
    if not entries:
        console.print(Text(f"no dead letters in {topic} match"))


@dlq.command()
@_topic_argument
@_reason_option
@_since_option
@click.option("--dry-run", is_flag=True, help="Show what would be replayed; write nothing.")
@click.option(
    "--force", is_flag=True, help="Replay records whose earlier replay died half way (in doubt)."
)
@_config_option
@_json_option
def replay(
    *,
    topic: str,
    reasons: tuple[str, ...],
    since: int | None,
    dry_run: bool,
    force: bool,
    config_path: Path | None,
    as_json: bool,
) -> None:
    """Replay the dead letters of TOPIC to their source topics, once per event id."""
    with _replayer(config_path) as replayer:
        results = replayer.replay(
            topic, reasons=reasons, since_ms=since, dry_run=dry_run, force=force
        )
    if as_json:
        click.echo(json.dumps([r.to_json() for r in results], indent=2, sort_keys=True))
    else:
        for r in results:
            copy = f" -> {r.copy}" if r.copy else ""
            click.echo(
                f"{_where(r.entry)} {r.entry.reason or '-'} {_source(r.entry)}: {r.outcome}{copy}"
            )
        counts = Counter(r.outcome for r in results)
        click.echo(", ".join(f"{n} {o}" for o, n in sorted(counts.items())) or "nothing to replay")
    failed = sum(1 for r in results if r.outcome in FAILED_OUTCOMES)
    if failed:
        raise click.exceptions.Exit(1)
