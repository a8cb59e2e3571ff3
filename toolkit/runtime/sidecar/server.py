"""``kct sidecar``: load ``kct.yaml``, start the loops and serve the API until SIGTERM.

Lifecycle: the listening socket is bound first (a port in use is a one-line
error before anything starts), then the loops start and uvicorn serves.
SIGTERM or SIGINT starts the drain at once: uvicorn stops accepting
connections and finishes the requests in flight, every loop finishes its
cycle, commits what it stored and leaves its group, leases are released, all
within ``sidecar.drain_timeout`` (a loop still busy then is abandoned: what
it had not committed is read again by the partition's next owner, which the
store's offsets keep from applying twice). ``kill -9`` loses nothing for the
same reason. The exit code is 0 after a complete drain, 1 otherwise.
SIGUSR1 prints every thread's stack to stderr, to see where a sidecar that
looks stuck is waiting.
"""

from __future__ import annotations

import asyncio
import faulthandler
import logging
import signal
import socket
import threading
import time
from collections.abc import Coroutine, Generator
from contextlib import contextmanager
from dataclasses import replace
from importlib import metadata
from pathlib import Path
from types import FrameType
from typing import Any

import click
import uvicorn

from toolkit.config import KctConfig, SidecarConfig, load_config
from toolkit.errors import ConfigurationError
from toolkit.runtime.app import Kct, KctSettings
from toolkit.runtime.gc_tuning import tune_gc
from toolkit.runtime.sidecar.api import SidecarApi
from toolkit.runtime.sidecar.host import SidecarHost
from toolkit.runtime.sidecar.monitoring import SidecarMonitoring
from toolkit.runtime.switch_interval import shorten_switch_interval

__all__ = ["Sidecar", "run_sidecar"]

log = logging.getLogger(__name__)


def _version() -> str:
    try:
        return metadata.version("kafka-consistency-toolkit")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a checkout
        return "0+unknown"


def _address(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit() or int(port) > 65535:
        raise ConfigurationError("listen: expected host:port", listen=listen[:100])
    return host.strip("[]"), int(port)


class _Server(uvicorn.Server):
    """uvicorn, with SIGTERM/SIGINT also starting the loops' drain (and not re-raised)."""

    def __init__(self, config: uvicorn.Config, on_signal: threading.Event) -> None:
        super().__init__(config)
        self.on_signal = on_signal
        self.signalled_at: float | None = None

    @contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handle(signum: int, frame: FrameType | None) -> None:
            if self.signalled_at is None:
                self.signalled_at = time.monotonic()
            self.on_signal.set()
            self.should_exit = True

        previous = {s: signal.signal(s, handle) for s in (signal.SIGTERM, signal.SIGINT)}
        faulthandler.register(signal.SIGUSR1, all_threads=True)
        try:
            yield
        finally:
            faulthandler.unregister(signal.SIGUSR1)
            for s, handler in previous.items():
                signal.signal(s, handler)


class Sidecar:
    """One sidecar process: the Kct wiring, its loops and its API."""

    def __init__(self, config: KctConfig, listen: str | None = None) -> None:
        self.config = config
        self.settings: SidecarConfig = config.sidecar or SidecarConfig()
        base = Path(config.source).parent if config.source != "<string>" else Path()
        kct_settings = KctSettings.from_config(config)
        if self.settings.schemas:
            dirs = tuple(base / d for d in self.settings.schemas)
            kct_settings = replace(kct_settings, schema_dirs=dirs)
        # Runtime metrics are recorded from the start, on the monitor's MeterProvider.
        self.monitoring = SidecarMonitoring(config)
        self.kct = Kct(kct_settings, config, interceptors=[self.monitoring.interceptor])
        self.host = SidecarHost(self.kct, config)
        self.api = SidecarApi(self.kct, config, self.host, _version(), self.monitoring)
        address = _address(listen or self.settings.listen)
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        # proto=IPPROTO_TCP: asyncio sets TCP_NODELAY on accepted connections only then;
        # without it Nagle holds each kept-alive response's body for the client's
        # delayed ACK (+40 ms per request).
        self.socket = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.socket.bind(address)  # OSError (in use, not permitted) before anything starts
        self.address = self.socket.getsockname()[:2]

    def run(self) -> int:
        self.host.build()
        tune_gc()  # start-up state built: keep the collector off it (see gc_tuning)
        # The loops' threads hold the GIL while they decode and apply; an API thread
        # would wait up to 5 ms for it per hand-over (see switch_interval).
        shorten_switch_interval()
        self.host.start()
        self.monitoring.start(self.kct, self.host.loops)
        if self.settings.aggregates or self.host.definitions:
            _ = self.kct.transactions  # init_transactions now, not in a lease's first append
        config = uvicorn.Config(
            self.api.app(),
            log_level="warning",
            access_log=self.settings.access_log,
            lifespan="off",
            http="httptools",
            proxy_headers=False,  # nothing reads client addresses: skip that middleware
            timeout_graceful_shutdown=max(1, int(self.settings.drain_timeout)),
        )
        server = _Server(config, self.host.stopping)
        host, port = self.address
        click.echo(
            f"kct sidecar listening on http://{host}:{port} ({len(self.host.loops)} loops)",
            err=True,
        )
        started = time.monotonic()
        try:
            _run_loop(server.serve(sockets=[self.socket]))
        finally:
            since = server.signalled_at or time.monotonic()
            left = max(0.0, self.settings.drain_timeout - (time.monotonic() - since))
            late = self.host.drain(left)
            self.monitoring.close()
            self.api.leases.close()
            self.kct.close()
        drained = time.monotonic() - (server.signalled_at or started)
        if late:
            click.echo(f"kct sidecar: drain deadline passed; abandoned {', '.join(late)}", err=True)
            return 1
        click.echo(f"kct sidecar: drained in {drained:.2f} s", err=True)
        return 0


def _run_loop(main: Coroutine[Any, Any, None]) -> None:
    """Run the API's event loop: uvloop (libuv; about a third less time per request
    than asyncio's loop here) where it is installed, asyncio's loop elsewhere."""
    try:
        import uvloop
    except ImportError:  # e.g. Windows: uvloop is not built for it
        asyncio.run(main)
    else:
        uvloop.run(main)


def run_sidecar(config_path: Path, listen: str | None = None) -> int:
    return Sidecar(load_config(config_path), listen).run()
