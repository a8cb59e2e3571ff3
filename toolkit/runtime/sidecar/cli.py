"""``kct sidecar --config kct.yaml``: the service's consumer sidecar and HTTP API."""

from __future__ import annotations

import sys
from pathlib import Path

import click

__all__ = ["sidecar"]


@click.command()
@click.option(
    "--config",
    "config_path",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="The service's kct.yaml (its sidecar section says what to run).",
)
@click.option("--listen", default=None, help="host:port to serve on (default: sidecar.listen).")
def sidecar(config_path: Path, listen: str | None) -> None:
    """Run the service's projections, saga participants and watchdog, and serve the
    HTTP API (publish, wait, reads, leases, sagas, status) until SIGTERM."""
    from toolkit.runtime.sidecar.server import run_sidecar

    sys.exit(run_sidecar(config_path, listen))
