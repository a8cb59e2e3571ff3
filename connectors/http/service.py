"""Calls a service's HTTP handlers: the sidecar's side of "any language".

:class:`HttpServiceClient` POSTs a CloudEvents document (``Content-Type:
application/cloudevents+json``) to ``<service url><path>`` and returns the
parsed JSON answer. Every call carries the W3C ``traceparent`` (and
``tracestate``) of the event or, with tracing on, of the current span, so the
service's spans join the event's trace.

:class:`HttpProjectionHandler` is a projection ``Handler``: it sends the
event and records the answer's read-model changes on the runner's batch, so
they are stored with the batch's offsets in one step (the projection's
once-only guarantee). :class:`HttpStepAction` is a saga ``StepAction``: it
sends the command and turns the answer into the step's outcome, its context
delta and its read-model changes, recorded once with the step's dedup record.

Failure modes: a refused connection, a timeout, a 5xx or a 429 is retried
``retries`` times with doubling back-off, then raises ``ServiceUnavailable``
(a ``ConnectorError``): the runner or participant rewinds the cycle, reports
itself unhealthy and backs off in its group; the event or command is never
skipped. A stop request ends the retries early the same way. A 4xx other
than 429, or an answer that is not a valid document, raises
``ServiceRejected``: the projection dead-letters that event
(``handler_error``), the participant counts a technical failure (retried,
then the step fails). Errors name the URL (which holds no credentials) and
the status, never the token or the body.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Mapping
from typing import Any

import httpx

from connectors.http.cloudevents import apply_changes, event_document, step_outcome
from connectors.http.settings import ServiceSettings
from toolkit.envelope import Envelope
from toolkit.errors import ServiceRejected, ServiceUnavailable, StepFailed
from toolkit.read_model import ReadModelBatch
from toolkit.saga.messages import COMMAND
from toolkit.saga.participant import StepContext

__all__ = ["HttpProjectionHandler", "HttpServiceClient", "HttpStepAction"]

log = logging.getLogger(__name__)

_CONTENT_TYPE = "application/cloudevents+json"
_MAX_ANSWER_BYTES = 16 * 1024 * 1024


def _current_trace_headers() -> dict[str, str]:
    """The current span's W3C context (empty without tracing or outside a span)."""
    try:
        from opentelemetry import propagate
    except ImportError:  # pragma: no cover - opentelemetry is a dependency
        return {}
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


class HttpServiceClient:
    """POSTs CloudEvents to one service, with retries; one per loop (thread)."""

    def __init__(
        self,
        settings: ServiceSettings,
        *,
        stopping: threading.Event | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.settings = settings
        self._stopping = stopping or threading.Event()
        headers = {"Content-Type": _CONTENT_TYPE, "Accept": "application/json"}
        if settings.token is not None:
            headers["Authorization"] = f"Bearer {settings.token.get_secret_value()}"
        self._client = httpx.Client(
            base_url=settings.url,
            headers=headers,
            timeout=settings.timeout,
            transport=transport,
            follow_redirects=False,
        )

    def post(self, path: str, document: Mapping[str, Any]) -> Any:
        """The service's JSON answer (None for an empty one); see the module docstring."""
        body = json.dumps(document, separators=(",", ":")).encode()
        headers = _current_trace_headers()
        if "traceparent" not in headers and isinstance(document.get("traceparent"), str):
            headers["traceparent"] = document["traceparent"]
            if isinstance(document.get("tracestate"), str):
                headers["tracestate"] = document["tracestate"]
        url = f"{self.settings.url}{path}"
        wait = self.settings.backoff
        attempts = self.settings.retries + 1
        problem = ""
        for attempt in range(1, attempts + 1):
            if self._stopping.is_set():
                problem = "the sidecar is stopping"
                break
            try:
                response = self._client.post(path, content=body, headers=headers)
            except httpx.HTTPError as exc:  # refused, reset, timed out, ...
                problem = f"{type(exc).__name__}"
            else:
                status = response.status_code
                if status < 300:
                    return self._answer(response, url)
                if status != 429 and status < 500:
                    raise ServiceRejected(
                        f"the service refused it with HTTP {status}", url=url, status=status
                    )
                problem = f"HTTP {status}"
            if attempt < attempts and self._stopping.wait(wait):
                problem = "the sidecar is stopping"
                break
            wait = min(wait * 2, self.settings.max_backoff)
        raise ServiceUnavailable(
            f"the service did not answer after {attempts} attempt(s): {problem}", url=url
        )

    @staticmethod
    def _answer(response: httpx.Response, url: str) -> Any:
        content = response.content
        if not content.strip():
            return None
        if len(content) > _MAX_ANSWER_BYTES:
            raise ServiceRejected("the answer is too large", url=url)
        try:
            return json.loads(content)
        except (ValueError, RecursionError):
            raise ServiceRejected("the answer is not JSON", url=url) from None

    def close(self) -> None:
        self._client.close()


class HttpProjectionHandler:
    """A projection handler answered by the service: ``{"changes": [...]}``."""

    def __init__(self, client: HttpServiceClient, path: str, source: str) -> None:
        self._client = client
        self._path = path
        self._source = source

    def __call__(self, envelope: Envelope, batch: ReadModelBatch) -> None:
        answer = self._client.post(self._path, event_document(envelope, self._source))
        if answer is None:
            return
        if not isinstance(answer, dict):
            raise ServiceRejected("expected an object with 'changes'", url=self._path)
        apply_changes(answer.get("changes"), batch)


class HttpStepAction:
    """A saga step action (or compensation) answered by the service."""

    def __init__(
        self,
        client: HttpServiceClient,
        path: str,
        source: str,
        name: str,
    ) -> None:
        self._client = client
        self._path = path
        self._source = source
        self.name = name

    def document(self, ctx: StepContext) -> dict[str, Any]:
        step_id = f"{ctx.saga_id}/{ctx.step}/{ctx.action.value}/{ctx.attempt}"
        return {
            "specversion": "1.0",
            "id": step_id,
            "source": self._source,
            "type": COMMAND,
            "subject": ctx.saga_id,
            "datacontenttype": "application/json",
            "sagatype": ctx.saga_type,
            "data": {
                "saga_id": ctx.saga_id,
                "saga_type": ctx.saga_type,
                "step": ctx.step,
                "action": ctx.action.value,
                "name": self.name,
                "context": dict(ctx.context),
                "attempt": ctx.attempt,
            },
        }

    def __call__(self, ctx: StepContext, batch: ReadModelBatch) -> Mapping[str, str] | None:
        answer = self._client.post(self._path, self.document(ctx))
        success, delta, error, changes = step_outcome(answer)
        if not success:
            raise StepFailed(error or "the service reported a failure")
        apply_changes(changes, batch)
        return delta
