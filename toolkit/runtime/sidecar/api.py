"""The sidecar's HTTP API (v1), a Starlette application.

Why Starlette on uvicorn: the toolkit is thread-based (confluent-kafka,
kazoo and redis-py block), so the HTTP layer only has to parse, validate,
route and serialise, then hand each call to a worker thread. Starlette is
the small ASGI toolkit FastAPI is built on, without the dependency injection
and automatic 422 responses we would have to undo (validation errors here
are 400 with every reason); uvicorn with httptools parses HTTP in C, so the
added latency stays well under the 2 ms budget. aiohttp would bring a second
HTTP stack and client of its own for the same thread hand-off.

One concurrency rule: asyncio code in this module never touches a client;
every blocking call goes through :meth:`SidecarApi._blocking` onto a
bounded pool (``sidecar.threads``), so a long wait for consistency never
stalls other requests.

Errors: every response that is not a success is JSON ``{"error": <code>,
"reasons": [...]}``: 400 for a malformed body, an unknown topic, a payload
that does not fit its schema or a bad token; 401 without the bearer token
(when ``sidecar.auth_token_env`` is set); 404 for an unknown lease, saga or
document; 409 for a lock held elsewhere or a lease lost (nothing written);
413 for a body over ``sidecar.max_body_bytes``; 503 when a backend is
down; 504 when projections did not apply a token in time (``lagging`` names
each projection and partition). Messages are redacted like the CLI's and
never hold a secret; unexpected errors are logged and answered with 500.
"""

from __future__ import annotations

import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio
from pydantic import BaseModel, TypeAdapter, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from toolkit.config import KctConfig, SidecarConfig
from toolkit.consistency import as_token
from toolkit.dead_letter import dead_letter_topic
from toolkit.envelope import Envelope
from toolkit.envelope_json import decode_payload
from toolkit.errors import (
    ConfigurationError,
    ConnectorError,
    ConsistencyError,
    ConsistencyTimeout,
    InvalidEvent,
    LockLost,
    LockTimeout,
    SerializationError,
    ToolkitError,
)
from toolkit.positions import ConsistencyToken, is_valid_topic_name
from toolkit.publisher import EventPublisher, PublishedEvent
from toolkit.runtime.app import Kct
from toolkit.runtime.dashboard.state import DashboardSources, DashboardState
from toolkit.runtime.dashboard.web import PAGE_PATHS, Dashboard
from toolkit.runtime.redaction import redact
from toolkit.runtime.saga_cli import saga_overview
from toolkit.runtime.sidecar.host import SidecarHost
from toolkit.runtime.sidecar.leases import LeaseManager
from toolkit.runtime.sidecar.metrics import SidecarMetrics
from toolkit.runtime.sidecar.monitoring import SidecarMonitoring
from toolkit.runtime.sidecar.schemas import (
    MAX_BULK,
    AppendIn,
    EventIn,
    LeaseIn,
    Projections,
    RenewIn,
    SagaStartIn,
    WaitIn,
    openapi_document,
    problems,
)
from toolkit.saga.state import saga_key

__all__ = ["HttpProblem", "SidecarApi"]

_PROJECTIONS = TypeAdapter(Projections)
log = logging.getLogger(__name__)
M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")
_OPEN_PATHS = frozenset({"/healthz", "/readyz", *PAGE_PATHS})  # the page holds no data


class HttpProblem(Exception):
    """An answer other than success: status, error code and reasons."""

    def __init__(self, status: int, error: str, *reasons: str, **extra: Any) -> None:
        super().__init__(error)
        self.status = status
        self.error = error
        self.reasons = [redact(r) for r in reasons]
        self.extra = extra

    def response(self) -> JSONResponse:
        body: dict[str, Any] = {"error": self.error, "reasons": self.reasons, **self.extra}
        return JSONResponse(body, status_code=self.status)


def _reason(exc: ToolkitError) -> str:
    return redact(str(exc))[:2000]


def _lagging(exc: ConsistencyTimeout) -> list[dict[str, Any]]:
    lagging = []
    for projection, partitions in (exc.context.get("behind") or {}).items():
        for where, behind in partitions.items():
            topic, _, rest = where.rpartition("[")
            lagging.append(
                {
                    "projection": projection,
                    "topic": topic,
                    "partition": int(rest.rstrip("]") or 0),
                    "behind": behind,
                }
            )
    return lagging


def problem_of(exc: Exception) -> HttpProblem:
    """The one place where toolkit errors become HTTP answers."""
    if isinstance(exc, HttpProblem):
        return exc
    if isinstance(exc, ConsistencyTimeout):
        committed = exc.context.get("committed")
        extra = {} if committed is None else {"committed": committed}
        return HttpProblem(504, "timeout", _reason(exc), lagging=_lagging(exc), **extra)
    if isinstance(exc, LockTimeout):
        return HttpProblem(409, "lock_timeout", _reason(exc))
    if isinstance(exc, LockLost):
        return HttpProblem(409, "lease_lost", _reason(exc))
    if isinstance(exc, (ConfigurationError, InvalidEvent, SerializationError)):
        return HttpProblem(400, "invalid_request", _reason(exc))
    if isinstance(exc, ConnectorError):
        return HttpProblem(503, "unavailable", _reason(exc))
    if isinstance(exc, ToolkitError):
        return HttpProblem(500, "failed", _reason(exc))
    log.error("unexpected error in the sidecar API", exc_info=exc)
    return HttpProblem(500, "internal", f"unexpected {type(exc).__name__} (see the sidecar log)")


def _position(p: PublishedEvent) -> dict[str, Any]:
    pos = p.position
    return {
        "event_id": p.envelope.event_id,
        "position": {"topic": pos.topic, "partition": pos.partition, "offset": pos.offset},
    }


def envelope_of(event: EventIn) -> Envelope:
    payload = decode_payload(event.payload)
    fields: dict[str, Any] = {
        k: v
        for k, v in (
            ("event_id", event.event_id),
            ("correlation_id", event.correlation_id),
            ("causation_id", event.causation_id),
            ("traceparent", event.traceparent),
            ("tracestate", event.tracestate),
        )
        if v is not None
    }
    return Envelope(
        event.event_type,
        event.aggregate_type,
        event.aggregate_id,
        event.sequence,
        payload,
        **fields,
    )


class SidecarApi:
    """Routes of the API over one :class:`SidecarHost` (see the module docstring)."""

    def __init__(
        self,
        kct: Kct,
        config: KctConfig,
        host: SidecarHost,
        version: str,
        monitoring: SidecarMonitoring | None = None,
    ) -> None:
        self.kct = kct
        self.host = host
        self.monitoring = monitoring
        self.settings: SidecarConfig = config.sidecar or SidecarConfig()
        self.version = version
        self.config = config
        self._limiter = anyio.CapacityLimiter(self.settings.threads)
        self._token = self._bearer()
        self._topics = frozenset(self.settings.publish_topics)
        self.leases = LeaseManager(kct, config.consistency, self.settings.aggregates)
        self.metrics = SidecarMetrics(host, self.leases)
        self._status_cache: tuple[float, dict[str, Any]] | None = None
        self._openapi = openapi_document(version)
        self.dashboard = Dashboard(self._dashboard_state(), self._blocking)

    def _dashboard_state(self) -> DashboardState:
        sources = DashboardSources(
            service=self.config.service,
            monitor=self.monitoring.report if self.monitoring else lambda: None,
            store=self.kct.store,
            saga_projection=self.host.saga_state if self.host.definitions else None,
            dead_letters=self.kct.dead_letter_replayer(timeout=5.0),
            dlq_topics=self._dlq_topics,
            leases=self.leases.held,
        )
        return DashboardState(sources, self.config.monitor.interval)

    def _dlq_topics(self) -> list[str]:  # the loops exist once the host is built
        topics = {t for h in self.host.loops if h.kind != "saga-state" for t in h.topics}
        return sorted(dead_letter_topic(t) for t in topics)

    def _bearer(self) -> bytes | None:
        name = self.settings.auth_token_env
        if name is None:
            return None
        import os

        value = os.environ.get(name)
        if not value:
            raise ConfigurationError(
                f"sidecar.auth_token_env: variable {name} is not set", variable=name
            )
        return value.encode()

    # -- plumbing ----------------------------------------------------------
    async def _blocking(self, call: Callable[..., T], *args: Any) -> T:
        return await anyio.to_thread.run_sync(call, *args, limiter=self._limiter)

    async def _body(self, request: Request) -> Any:
        limit = self.settings.max_body_bytes
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            raise HttpProblem(413, "too_large", f"the body is larger than {limit} bytes")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise HttpProblem(413, "too_large", f"the body is larger than {limit} bytes")
            chunks.append(chunk)
        try:
            return json.loads(b"".join(chunks))
        except RecursionError:
            raise HttpProblem(400, "invalid_json", "the body is nested too deeply") from None
        except json.JSONDecodeError as exc:
            where = f" (line {exc.lineno}, column {exc.colno})"
            raise HttpProblem(400, "invalid_json", f"the body is not valid JSON{where}") from None
        except ValueError:  # not UTF-8
            raise HttpProblem(400, "invalid_json", "the body is not UTF-8 JSON") from None

    @staticmethod
    def _model(model: type[M], data: Any) -> M:
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            raise HttpProblem(400, "invalid_request", *problems(exc)) from None

    def _authorized(self, request: Request) -> bool:
        if self._token is None or request.url.path in _OPEN_PATHS:
            return True
        given = request.headers.get("authorization", "")
        scheme, _, value = given.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(value.encode(), self._token)

    def _route(
        self, path: str, endpoint: Callable[[Request], Awaitable[Response]], methods: list[str]
    ) -> Route:
        metrics = self.metrics

        async def handle(request: Request) -> Response:
            started = time.perf_counter()
            try:
                if not self._authorized(request):
                    raise HttpProblem(401, "unauthorized", "a valid bearer token is required")
                response = await endpoint(request)
            except Exception as exc:
                response = problem_of(exc).response()
            metrics.observe(
                path, request.method, response.status_code, time.perf_counter() - started
            )
            return response

        return Route(path, handle, methods=methods)

    def app(self) -> Starlette:
        r = self._route
        routes = [
            r("/v1/publish/{topic}", self.publish, ["POST"]),
            r("/v1/publish/{topic}/bulk", self.publish_bulk, ["POST"]),
            r("/v1/wait", self.wait, ["POST"]),
            r("/v1/read-models/{projection}/documents/{key:path}", self.document, ["GET"]),
            r("/v1/read-models/{projection}/counters/{key:path}", self.counters, ["GET"]),
            r("/v1/leases", self.lease, ["POST"]),
            r("/v1/leases/{lease_id}/events", self.append, ["POST"]),
            r("/v1/leases/{lease_id}/renew", self.renew, ["POST"]),
            r("/v1/leases/{lease_id}", self.release, ["DELETE"]),
            r("/v1/sagas", self.saga_list, ["GET"]),
            r("/v1/sagas/{name}", self.saga_start, ["POST"]),
            r("/v1/sagas/{name}", self.saga_status, ["GET"]),
            r("/v1/status", self.status, ["GET"]),
            r("/v1/metadata", self.metadata, ["GET"]),
            r("/v1/openapi.json", self.openapi, ["GET"]),
            r("/metrics", self.prometheus, ["GET"]),
            r("/healthz", self.healthz, ["GET"]),
            r("/readyz", self.readyz, ["GET"]),
            *self.dashboard.routes(r),
        ]
        return Starlette(routes=routes)

    # -- publish -----------------------------------------------------------
    def _topic(self, request: Request) -> str:
        topic = str(request.path_params["topic"])
        if not is_valid_topic_name(topic) or topic not in self._topics:
            raise HttpProblem(
                400, "unknown_topic", f"topic {topic[:255]!r} is not one of sidecar.publish_topics"
            )
        return topic

    async def publish(self, request: Request) -> Response:
        topic = self._topic(request)
        projections = self._wait_for(request)
        timeout = self._timeout(request.query_params.get("timeout")) if projections else 0.0
        event = envelope_of(self._model(EventIn, await self._body(request)))
        # Publish and wait in one worker-thread hop: one request, one hand-over.
        published, late = await self._blocking(
            self._publish_and_wait, topic, event, projections, timeout
        )
        answer = {**_position(published), "token": EventPublisher.token_of([published]).to_string()}
        if late is not None:  # published, not applied in time: say where it is anyway
            problem = problem_of(late)
            problem.extra.update(answer)
            return problem.response()
        return JSONResponse(answer)

    def _wait_for(self, request: Request) -> list[str]:
        """The ``wait`` query parameter: projection names (comma-separated or repeated),
        held to the limits of ``POST /v1/wait``'s ``projections``."""
        names = [
            name.strip()
            for given in request.query_params.getlist("wait")
            for name in given.split(",")
            if name.strip()
        ]
        if not names:
            return []
        try:
            return _PROJECTIONS.validate_python(names)
        except ValidationError as exc:
            raise HttpProblem(400, "invalid_request", *problems(exc, "wait.")) from None

    def _publish_and_wait(
        self, topic: str, event: Envelope, projections: list[str], timeout: float
    ) -> tuple[PublishedEvent, ConsistencyTimeout | None]:
        published = self.kct.publisher.publish(topic, event)
        if projections:
            try:
                self.kct.consistency.wait_for_consistency(published.position, projections, timeout)
            except ConsistencyTimeout as exc:
                return published, exc
        return published, None

    async def publish_bulk(self, request: Request) -> Response:
        topic = self._topic(request)
        body = await self._body(request)
        entries = body.get("events") if isinstance(body, dict) else None
        if not isinstance(entries, list) or not entries or len(entries) > MAX_BULK:
            raise HttpProblem(
                400, "invalid_request", f"events: expected a list of 1-{MAX_BULK} events"
            )
        results: list[dict[str, Any]] = [{} for _ in entries]
        valid: list[tuple[int, Envelope]] = []
        for i, entry in enumerate(entries):
            try:
                event = envelope_of(EventIn.model_validate(entry))
                self.kct.codec.encode(event.event_type, event.payload)  # its schema fits
            except ValidationError as exc:
                results[i] = {"error": "; ".join(problems(exc, f"events[{i}]."))}
            except ToolkitError as exc:
                results[i] = {"error": f"events[{i}]: {_reason(exc)}"}
            else:
                valid.append((i, event))
        published: list[PublishedEvent] = []
        if valid:
            published = await self._blocking(
                self.kct.publisher.publish_all, topic, [e for _, e in valid]
            )
            for (i, _), p in zip(valid, published, strict=True):
                results[i] = _position(p)
        token = EventPublisher.token_of(published).to_string()
        return JSONResponse(
            {
                "results": results,
                "published": len(published),
                "failed": len(entries) - len(published),
                "token": token,
            }
        )

    # -- consistency -------------------------------------------------------
    def _timeout(self, value: float | str | None) -> float:
        if value is None:
            return self.config.consistency.default_timeout
        try:
            seconds = float(value)
        except ValueError:
            raise HttpProblem(400, "invalid_request", "timeout: expected seconds") from None
        if not 0 < seconds <= self.settings.max_wait:
            raise HttpProblem(
                400,
                "invalid_request",
                f"timeout: expected 0 < seconds <= {self.settings.max_wait:g}",
            )
        return seconds

    async def wait(self, request: Request) -> Response:
        wanted = self._model(WaitIn, await self._body(request))
        timeout = self._timeout(wanted.timeout)
        token = as_token(wanted.token)
        await self._blocking(
            self.kct.consistency.wait_for_consistency, token, wanted.projections, timeout
        )
        return JSONResponse({"applied": True, "token": token.to_string()})

    def _scoped(self, projection: str, token: ConsistencyToken) -> ConsistencyToken:
        """The token's positions on topics the projection reads (when it runs here)."""
        for hosted in self.host.loops:
            if hosted.group == projection and hosted.topics:
                return ConsistencyToken(
                    {tp: o for tp, o in token.items() if tp.topic in hosted.topics}
                )
        return token

    async def _after_token(self, request: Request, projection: str) -> str | None:
        text = request.query_params.get("token") or request.headers.get("x-kct-token")
        if not text:
            return None
        timeout = self._timeout(request.query_params.get("timeout"))
        token = self._scoped(projection, as_token(text))
        if token:
            await self._blocking(
                self.kct.consistency.wait_for_consistency, token, [projection], timeout
            )
        return text

    async def document(self, request: Request) -> Response:
        projection, key = str(request.path_params["projection"]), str(request.path_params["key"])
        token = await self._after_token(request, projection)
        found = await self._blocking(self.kct.store.get, projection, key)
        if found is None:
            raise HttpProblem(404, "not_found", f"no document {key[:200]!r} in {projection!r}")
        headers = {"x-kct-token": token} if token else None
        return JSONResponse(
            {"projection": projection, "key": key, "document": found}, headers=headers
        )

    async def counters(self, request: Request) -> Response:
        projection, key = str(request.path_params["projection"]), str(request.path_params["key"])
        await self._after_token(request, projection)
        found = await self._blocking(self.kct.store.counters, projection, key)
        return JSONResponse({"projection": projection, "key": key, "counters": found})

    # -- leases ------------------------------------------------------------
    async def lease(self, request: Request) -> Response:
        wanted = self._model(LeaseIn, await self._body(request))
        ttl = wanted.ttl or self.settings.lease_ttl
        lease = await self._blocking(
            self.leases.acquire, wanted.aggregate_type, wanted.aggregate_id, ttl
        )
        return JSONResponse(lease.describe(), status_code=201)

    def _lease_id(self, request: Request) -> str:
        return str(request.path_params["lease_id"])

    async def append(self, request: Request) -> Response:
        wanted = self._model(AppendIn, await self._body(request))
        lease_id = self._lease_id(request)
        try:
            lease = self.leases.get(lease_id)
        except ConsistencyError as exc:
            raise HttpProblem(404, "not_found", _reason(exc)) from None
        events = [envelope_of(e) for e in wanted.events]
        try:
            published = await self._blocking(self.leases.append, lease_id, events)
        except ConsistencyError as exc:
            if isinstance(exc, (ConsistencyTimeout, LockLost)):
                raise
            raise HttpProblem(400, "invalid_request", _reason(exc)) from None
        token = EventPublisher.token_of(published)
        if wanted.wait:
            await self._blocking(self.leases.wait_applied, lease, token)
        return JSONResponse(
            {
                "results": [_position(p) for p in published],
                "fence": lease.fence,
                "token": token.to_string(),
            }
        )

    async def renew(self, request: Request) -> Response:
        wanted = self._model(RenewIn, await self._body(request))
        try:
            lease = await self._blocking(self.leases.renew, self._lease_id(request), wanted.ttl)
        except LockLost:
            raise
        except ConsistencyError as exc:
            raise HttpProblem(404, "not_found", _reason(exc)) from None
        return JSONResponse(lease.describe())

    async def release(self, request: Request) -> Response:
        released = await self._blocking(self.leases.release, self._lease_id(request))
        return JSONResponse({"released": released})

    # -- sagas -------------------------------------------------------------
    def _sagas(self) -> Any:
        if self.host.sagas is None:
            raise HttpProblem(404, "not_found", "this sidecar has no sagas (sidecar.sagas)")
        return self.host.sagas

    async def saga_start(self, request: Request) -> Response:
        client = self._sagas()
        saga_type = str(request.path_params["name"])
        wanted = self._model(SagaStartIn, await self._body(request))
        context = {
            k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in wanted.context.items()
        }
        client.definition(saga_type)  # 400 for an unknown type, before any thread
        saga_id = await self._blocking(
            lambda: client.start(saga_type, context, saga_id=wanted.saga_id)
        )
        return JSONResponse({"saga_id": saga_id, "saga_type": saga_type}, status_code=202)

    async def saga_status(self, request: Request) -> Response:
        self._sagas()
        saga_id = str(request.path_params["name"])
        found = await self._blocking(self.kct.store.get, self.host.saga_state, saga_key(saga_id))
        if found is None:
            raise HttpProblem(404, "not_found", f"no saga {saga_id[:200]!r} (yet)")
        return JSONResponse(found)

    async def saga_list(self, request: Request) -> Response:
        self._sagas()
        overview = await self._blocking(saga_overview, self.kct.store, self.host.saga_state)
        return JSONResponse(overview)

    # -- operations --------------------------------------------------------
    async def healthz(self, request: Request) -> Response:
        dead = [h.name for h in self.host.loops if h.error is not None]
        if dead:
            return JSONResponse({"alive": False, "dead": dead}, status_code=503)
        return JSONResponse({"alive": True})

    async def readyz(self, request: Request) -> Response:
        readiness = self.host.readiness()
        return JSONResponse(
            {"ready": readiness.ready, "reasons": list(readiness.reasons)},
            status_code=200 if readiness.ready else 503,
        )

    async def status(self, request: Request) -> Response:
        readiness = self.host.readiness()
        body = {
            "service": self.config.service,
            "ready": readiness.ready,
            "reasons": list(readiness.reasons),
            "loops": self.host.describe(),
            "leases": self.leases.count(),
            # The monitor's last check (lag, status, order, integrity); null before it.
            "monitor": None if self.monitoring is None else self.monitoring.report(),
        }
        return JSONResponse(body)

    async def metadata(self, request: Request) -> Response:
        return JSONResponse(
            {
                "api": "v1",
                "version": self.version,
                "service": self.config.service,
                "deployment": self.kct.settings.deployment,
                "node_id": self.kct.settings.node_id,
                "loops": [
                    {
                        k: v
                        for k, v in h.describe().items()
                        if k in ("name", "kind", "group", "topics", "handler")
                    }
                    for h in self.host.loops
                ],
                "publish_topics": sorted(self._topics),
                "aggregates": dict(self.settings.aggregates),
                "sagas": sorted(self.host.definitions),
            }
        )

    async def openapi(self, request: Request) -> Response:
        return JSONResponse(self._openapi)

    async def prometheus(self, request: Request) -> Response:
        body, content_type = self.metrics.render()
        if self.monitoring is not None:  # rendered at the monitor's last check
            body += self.monitoring.prometheus()
        return Response(body, media_type=content_type)
