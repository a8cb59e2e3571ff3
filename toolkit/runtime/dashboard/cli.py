"""``kct dashboard --config kct.yaml``: the live dashboard on its own, without a sidecar.

It watches what ``kct.yaml``'s ``monitor.projections`` names, with the same
monitor wiring as the sidecar (a check every ``monitor.interval`` seconds on a
thread of its own), reads sagas from the first ``kind: saga-state``
projection there, and counts the dead letters of each watched topic's
``.dlq`` topic. Locks held are the sidecar's leases, so its own dashboard
shows them; this one does not. Served by uvicorn (Starlette) at
``http://<listen>/dashboard`` until Ctrl-C or SIGTERM.

Errors: a missing or invalid ``kct.yaml``, an empty ``monitor.projections``
or a port in use are one ``error:`` line before anything starts.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import click

from toolkit.errors import ConfigurationError

__all__ = ["dashboard"]

DEFAULT_LISTEN = "127.0.0.1:8790"


def _address(_ctx: click.Context, _param: click.Parameter, listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit() or int(port) > 65535:
        raise click.BadParameter(f"expected host:port, got {listen[:100]!r}")
    return host.strip("[]"), int(port)


def serve(config_path: Path, address: tuple[str, int], interval: float | None) -> None:
    """Wire the monitor, Kafka and Redis from ``config_path`` and serve until stopped."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.responses import RedirectResponse
    from starlette.routing import Route

    from toolkit.config import load_config
    from toolkit.dead_letter import dead_letter_topic
    from toolkit.runtime.app import Kct
    from toolkit.runtime.dashboard.state import DashboardSources, DashboardState
    from toolkit.runtime.dashboard.web import Dashboard
    from toolkit.runtime.sidecar.monitoring import SidecarMonitoring

    config = load_config(config_path)
    watched = config.monitor.projections
    if not watched:
        raise ConfigurationError(
            f"{config_path}: monitor.projections is empty: name the projections to show",
            file=str(config_path),
        )
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)  # a port in use: one line, before anything starts
    except OSError as exc:
        sock.close()
        where = f"{address[0]}:{address[1]}"
        raise ConfigurationError(f"cannot listen on {where}: {exc.strerror}") from None
    monitoring = SidecarMonitoring(config)
    kct = Kct.from_config(config)
    try:
        monitoring.start(kct, [])  # the targets of monitor.projections
        sagas = [name for name, entry in watched.items() if entry.kind == "saga-state"]
        topics = sorted({dead_letter_topic(t) for entry in watched.values() for t in entry.topics})
        sources = DashboardSources(
            service=config.service,
            monitor=monitoring.report,
            store=kct.store,
            saga_projection=sagas[0] if sagas else None,
            dead_letters=kct.dead_letter_replayer(timeout=5.0),
            dlq_topics=lambda: topics,
        )
        board = Dashboard(DashboardState(sources, interval or config.monitor.interval))

        async def home(_request: object) -> RedirectResponse:
            return RedirectResponse("/dashboard")

        app = Starlette(routes=[Route("/", home, methods=["GET"]), *board.routes()])
        host, port = sock.getsockname()[:2]
        click.echo(f"kct dashboard on http://{host}:{port}/dashboard", err=True)
        server = uvicorn.Server(
            uvicorn.Config(app, log_level="warning", lifespan="off", http="httptools")
        )
        server.run(sockets=[sock])
    finally:
        monitoring.close()
        kct.close()
        sock.close()


@click.command()
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=lambda: os.environ.get("KCT_CONFIG") or "kct.yaml",
    help="The kct.yaml naming what to show.  [default: $KCT_CONFIG or ./kct.yaml]",
)
@click.option(
    "--listen",
    "address",
    default=DEFAULT_LISTEN,
    show_default=True,
    callback=_address,
    help="host:port to serve on.",
)
@click.option(
    "--interval",
    type=click.FloatRange(0.2, 3600),
    default=None,
    help="Seconds between refreshes of sagas and dead letters  [default: monitor.interval]",
)
def dashboard(config_path: Path, address: tuple[str, int], interval: float | None) -> None:
    """Serve the live dashboard: projections, sagas, dead letters (no sidecar needed)."""
    serve(config_path, address, interval)
