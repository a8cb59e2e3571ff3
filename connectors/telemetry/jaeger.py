"""Reading traces back from Jaeger's query API (``/api/traces``), for ``kct trace`` and tests.

:class:`JaegerQuery` fetches one trace by id (``/api/traces/{id}``) or finds
traces of a service (``/api/traces?service=...&tags=...``) and returns them
as plain :class:`JaegerTrace`/:class:`JaegerSpan` values: service, name,
parent, start and duration in microseconds, tags, events (logs). The local
stack's Jaeger is built without UI assets but serves this API.

Failure modes: ``ConnectorError`` when Jaeger cannot be reached or answers
with something that is not its JSON; ``None`` from :meth:`JaegerQuery.trace`
for an unknown trace id (404).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from toolkit.errors import ConfigurationError, ConnectorError

__all__ = ["JaegerQuery", "JaegerSpan", "JaegerTrace"]


@dataclass(frozen=True)
class JaegerSpan:
    """One span as Jaeger stored it."""

    trace_id: str
    span_id: str
    parent_id: str | None  # the CHILD_OF reference, if any
    name: str
    service: str
    start_us: int
    duration_us: int
    tags: Mapping[str, Any] = field(default_factory=dict)
    events: tuple[tuple[int, Mapping[str, Any]], ...] = ()
    links: tuple[str, ...] = ()  # span ids of FOLLOWS_FROM references

    @property
    def kind(self) -> str:
        return str(self.tags.get("span.kind", "internal"))

    @property
    def error(self) -> bool:
        return self.tags.get("error") is True or self.tags.get("otel.status_code") == "ERROR"


@dataclass(frozen=True)
class JaegerTrace:
    """A trace's spans, ordered by start time."""

    trace_id: str
    spans: tuple[JaegerSpan, ...]

    @property
    def services(self) -> set[str]:
        return {s.service for s in self.spans}

    def named(self, prefix: str) -> list[JaegerSpan]:
        """Spans whose name starts with ``prefix``, by start time."""
        return [s for s in self.spans if s.name.startswith(prefix)]

    def span(self, span_id: str) -> JaegerSpan | None:
        return next((s for s in self.spans if s.span_id == span_id), None)

    def ancestors(self, span: JaegerSpan) -> list[JaegerSpan]:
        """The chain of parents of ``span``, nearest first (stops at a missing one)."""
        chain: list[JaegerSpan] = []
        parent = span.parent_id
        while parent is not None:
            found = self.span(parent)
            if found is None or found in chain:
                break
            chain.append(found)
            parent = found.parent_id
        return chain


def _tags(raw: Sequence[Mapping[str, Any]] | None) -> dict[str, Any]:
    return {str(t.get("key")): t.get("value") for t in raw or ()}


def _parse_trace(raw: Mapping[str, Any]) -> JaegerTrace:
    processes = {
        key: str(value.get("serviceName", "?"))
        for key, value in (raw.get("processes") or {}).items()
    }
    spans: list[JaegerSpan] = []
    for item in raw.get("spans") or ():
        references = list(item.get("references") or ())
        # Jaeger's parent: the CHILD_OF reference, else (as its UI reads it) the first
        # reference in the same trace; a link to the parent itself arrives as FOLLOWS_FROM.
        chosen = next((r for r in references if r.get("refType") == "CHILD_OF"), None)
        if chosen is None:
            chosen = next((r for r in references if r.get("traceID") == item.get("traceID")), None)
        parent = None if chosen is None else str(chosen.get("spanID"))
        links = [str(r.get("spanID")) for r in references if r is not chosen]
        spans.append(
            JaegerSpan(
                trace_id=str(item.get("traceID", "")).rjust(32, "0"),
                span_id=str(item.get("spanID")),
                parent_id=parent,
                name=str(item.get("operationName", "")),
                service=processes.get(str(item.get("processID")), "?"),
                start_us=int(item.get("startTime", 0)),
                duration_us=int(item.get("duration", 0)),
                tags=_tags(item.get("tags")),
                events=tuple(
                    (int(log.get("timestamp", 0)), _tags(log.get("fields")))
                    for log in item.get("logs") or ()
                ),
                links=tuple(links),
            )
        )
    spans.sort(key=lambda s: (s.start_us, s.name))
    trace_id = spans[0].trace_id if spans else str(raw.get("traceID", ""))
    return JaegerTrace(trace_id, tuple(spans))


class JaegerQuery:
    """A client of Jaeger's HTTP query API."""

    def __init__(self, base_url: str, timeout: float = 5.0) -> None:
        parts = urllib.parse.urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigurationError(
                "Jaeger query URL: expected an http:// or https:// URL", url=base_url[:200]
            )
        self._base = base_url.rstrip("/")
        self._timeout = timeout

    @property
    def url(self) -> str:
        return self._base

    def _get(self, path: str, query: Mapping[str, str] | None = None) -> Any:
        url = f"{self._base}{path}"
        if query:
            url += "?" + urllib.parse.urlencode(query)
        try:
            with urllib.request.urlopen(url, timeout=self._timeout) as response:
                body = response.read(64 * 1024 * 1024)
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise ConnectorError(f"Jaeger answered {exc.code}", url=self._base, path=path) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ConnectorError(
                f"cannot reach Jaeger's query API: {reason}", url=self._base
            ) from None
        try:
            return json.loads(body)
        except ValueError:
            raise ConnectorError("Jaeger's answer is not JSON", url=self._base) from None

    def trace(self, trace_id: str) -> JaegerTrace | None:
        """The trace with this id (32 hex digits), or None if Jaeger has none."""
        answer = self._get(f"/api/traces/{urllib.parse.quote(trace_id.lower())}")
        if not answer or not answer.get("data"):
            return None
        return _parse_trace(answer["data"][0])

    def traces(
        self,
        service: str,
        *,
        tags: Mapping[str, str] | None = None,
        operation: str | None = None,
        limit: int = 100,
        lookback: str = "1h",
    ) -> list[JaegerTrace]:
        """Recent traces holding a span of ``service`` (optionally with these tags)."""
        query = {"service": service, "limit": str(limit), "lookback": lookback}
        if tags:
            query["tags"] = json.dumps(dict(tags))
        if operation:
            query["operation"] = operation
        answer = self._get("/api/traces", query)
        return [_parse_trace(item) for item in (answer or {}).get("data") or ()]

    def services(self) -> list[str]:
        answer = self._get("/api/services")
        return sorted((answer or {}).get("data") or ())
