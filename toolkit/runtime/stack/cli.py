"""``kct stack up | down | status``: the command-line face of :class:`LocalStack`.

Exit codes: ``up`` and ``down`` exit 0 on success and 1 with the error (which
names the service, port and log) on stderr; ``status`` exits 0 when every
server is healthy and 1 otherwise, so scripts can wait on it.

``--port-offset`` defaults to the offset recorded by the last ``up`` in the
state directory (0 for a fresh one), so ``status``/``down`` of a shifted stack
need only ``--state-dir``.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from toolkit.errors import ToolkitError
from toolkit.runtime.stack.local import (
    LocalStack,
    StackStatus,
    default_port_offset,
    default_state_dir,
)

__all__ = ["stack"]

_state_dir_option = click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="State directory (data, logs, pids). Default: $KCT_STATE_DIR or ~/.local/state/kct.",
)
_offset_option = click.option(
    "--port-offset",
    type=click.IntRange(0, 20_000),
    default=None,
    help="Added to every port, to run a second stack beside the first.",
)
_json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


def _make_stack(
    state_dir: Path | None, port_offset: int | None, cluster: bool | None = None
) -> LocalStack:
    state = state_dir or default_state_dir()
    if port_offset is None:
        recorded = LocalStack.recorded_port_offset(state)
        port_offset = default_port_offset() if recorded is None else recorded
    return LocalStack(state_dir=state, port_offset=port_offset, cluster=cluster)


def _setup_logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("toolkit.runtime")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # the kct CLI's root handler would print each line twice


def _fail(exc: ToolkitError) -> None:
    click.echo(f"error: {exc}", err=True)
    sys.exit(1)


def _print_status(status: StackStatus, as_json: bool, with_detail: bool = False) -> None:
    if as_json:
        click.echo(json.dumps(status.to_json(), indent=2))
        return
    kind = "cluster, " if status.cluster else ""
    table = Table(title=f"kct stack ({kind}{status.state_dir}, port offset {status.port_offset})")
    table.add_column("service")
    table.add_column("endpoint", no_wrap=True)
    for column in ("pid", "running", "healthy"):
        table.add_column(column)
    if with_detail:
        table.add_column("")
    for svc in status.services.values():
        endpoint = "\n".join([svc.endpoint, *(f"{k}: {v}" for k, v in svc.extra.items())])
        row = [
            svc.name,
            endpoint,
            str(svc.pid) if svc.pid is not None else "-",
            "[green]yes[/]" if svc.running else "[red]no[/]",
            "[green]yes[/]" if svc.healthy else "[red]no[/]",
        ]
        if with_detail:
            row.append(svc.detail)
        table.add_row(*row)
    Console().print(table)


@click.group()
def stack() -> None:
    """Run Kafka, ZooKeeper, Redis and Jaeger locally on 127.0.0.1 (no Docker)."""


@stack.command()
@_state_dir_option
@_offset_option
@click.option(
    "--cluster",
    is_flag=True,
    help="Three Kafka nodes (replication factor 3, min.insync.replicas 2), a three-node "
    "ZooKeeper ensemble and Redis, instead of one of each.",
)
@_json_option
def up(state_dir: Path | None, port_offset: int | None, cluster: bool, as_json: bool) -> None:
    """Provision and start the stack; wait until every server answers. Idempotent."""
    _setup_logging()
    started = time.monotonic()
    try:
        status = _make_stack(state_dir, port_offset, cluster).up()
    except ToolkitError as exc:
        _fail(exc)
        return
    _print_status(status, as_json, with_detail=True)
    if not as_json:
        click.echo(f"up in {time.monotonic() - started:.1f} s", err=True)


@stack.command()
@_state_dir_option
@_offset_option
@click.option("--purge", is_flag=True, help="Also delete data, logs and rendered configs.")
def down(state_dir: Path | None, port_offset: int | None, purge: bool) -> None:
    """Stop the servers that `up` started in this state directory."""
    _setup_logging()
    try:
        _make_stack(state_dir, port_offset).down(purge=purge)
    except ToolkitError as exc:
        _fail(exc)


@stack.command()
@_state_dir_option
@_offset_option
@_json_option
def status(state_dir: Path | None, port_offset: int | None, as_json: bool) -> None:
    """Show every server; exit code 0 only when all are healthy."""
    try:
        result = _make_stack(state_dir, port_offset).status()
    except ToolkitError as exc:
        _fail(exc)
        return
    _print_status(result, as_json)
    sys.exit(0 if result.all_healthy else 1)


if __name__ == "__main__":
    stack()
