"""The dashboard's HTTP side: the page, its two assets and the JSON it polls.

Served by the sidecar (``GET /dashboard``) and by ``kct dashboard`` on its
own, both Starlette on uvicorn. The page is plain HTML, CSS and JavaScript
shipped in the package (``static/``): no CDN, nothing fetched from the
internet. It polls ``GET /dashboard/state.json`` every refresh interval and
redraws; the JSON is :meth:`DashboardState.snapshot` (cached, so polling
never multiplies the calls to Kafka or Redis).

The page and its assets hold no data and are open; the JSON is behind the
sidecar's bearer token when one is configured: the page sends the token it
finds in its URL fragment (``/dashboard#token=...``, never sent to the
server by the browser). A snapshot that cannot be made is answered 503 with
a one-line reason; the page shows it and keeps polling.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from toolkit.errors import ToolkitError
from toolkit.runtime.dashboard.state import DashboardState
from toolkit.runtime.redaction import redact

__all__ = ["ASSETS", "PAGE_PATHS", "STATE_PATH", "Dashboard"]

STATE_PATH = "/dashboard/state.json"
ASSETS = {"dashboard.css": "text/css", "dashboard.js": "text/javascript"}
PAGE_PATHS = frozenset({"/dashboard", *(f"/dashboard/{name}" for name in ASSETS)})

Endpoint = Callable[[Request], Awaitable[Response]]
RouteMaker = Callable[[str, Endpoint, list[str]], Route]


def _read(name: str) -> bytes:
    return resources.files("toolkit.runtime.dashboard").joinpath("static", name).read_bytes()


def _plain_route(path: str, endpoint: Endpoint, methods: list[str]) -> Route:
    return Route(path, endpoint, methods=methods)


class Dashboard:
    """The dashboard's routes over one :class:`DashboardState`."""

    def __init__(
        self,
        state: DashboardState,
        blocking: Callable[[Callable[[], dict[str, Any]]], Awaitable[dict[str, Any]]] | None = None,
    ) -> None:
        self.state = state
        self._blocking = blocking or anyio.to_thread.run_sync
        self._page = _read("dashboard.html")
        self._assets = {name: _read(name) for name in ASSETS}

    def routes(self, route: RouteMaker = _plain_route) -> list[Route]:
        """``GET /dashboard``, its assets and the JSON; ``route`` wraps each (auth, metrics)."""
        return [
            route("/dashboard", self.page, ["GET"]),
            route(STATE_PATH, self.snapshot, ["GET"]),
            *(route(f"/dashboard/{name}", self.asset, ["GET"]) for name in ASSETS),
        ]

    async def page(self, request: Request) -> Response:
        return Response(self._page, media_type="text/html", headers=_NO_STORE)

    async def asset(self, request: Request) -> Response:
        name = request.url.path.rsplit("/", 1)[-1]
        return Response(self._assets[name], media_type=ASSETS[name], headers=_NO_STORE)

    async def snapshot(self, request: Request) -> Response:
        try:
            body = await self._blocking(self.state.snapshot)
        except ToolkitError as exc:
            reason = redact(str(exc))[:300]
            return JSONResponse({"error": "unavailable", "reasons": [reason]}, status_code=503)
        return JSONResponse(body, headers=_NO_STORE)


_NO_STORE = {"cache-control": "no-store"}
