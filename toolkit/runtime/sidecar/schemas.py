"""The sidecar API's request documents (pydantic) and its OpenAPI 3.1 document.

Requests are validated by these models; every problem is reported at once
as ``"<field path>: <what was expected>"`` (never echoing the input, which
may hold anything). The OpenAPI document is built from the same models, so
it cannot drift from what is enforced; the service's handlers (what the
sidecar POSTs to the service) are described as OpenAPI ``webhooks``.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from connectors.http.cloudevents import PROJECTION_ANSWER_SCHEMA, STEP_ANSWER_SCHEMA

__all__ = [
    "AppendIn",
    "EventIn",
    "LeaseIn",
    "RenewIn",
    "SagaStartIn",
    "WaitIn",
    "openapi_document",
    "problems",
]

API_VERSION = "v1"
Name = Annotated[str, Field(min_length=1, max_length=255)]
Id = Annotated[str, Field(min_length=1, max_length=1024)]
# Projections to wait for: in POST /v1/wait and in publish's ``wait`` parameter.
Projections = Annotated[list[Name], Field(min_length=1, max_length=100)]
MAX_BULK = 1000


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)


class EventIn(_In):
    """One event to publish; ``payload`` must fit the Avro schema of ``event_type``."""

    event_type: Name
    aggregate_type: Name
    aggregate_id: Id
    sequence: Annotated[int, Field(ge=0, le=2**62)] = 0
    payload: dict[str, Any]
    event_id: (
        Annotated[
            str, Field(pattern=r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
        ]
        | None
    ) = None
    correlation_id: Name | None = None
    causation_id: Name | None = None
    traceparent: (
        Annotated[str, Field(pattern=r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")] | None
    ) = None
    tracestate: Annotated[str, Field(max_length=512)] | None = None


class WaitIn(_In):
    """Wait until ``projections`` applied ``token``, at most ``timeout`` seconds."""

    token: Annotated[str, Field(min_length=1, max_length=65536)]
    projections: Projections
    timeout: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 5.0


class LeaseIn(_In):
    """Take the lease of one aggregate for ``ttl`` seconds (default: ``sidecar.lease_ttl``)."""

    aggregate_type: Name
    aggregate_id: Id
    ttl: Annotated[float, Field(gt=0, le=3600, allow_inf_nan=False)] | None = None


class RenewIn(_In):
    ttl: Annotated[float, Field(gt=0, le=3600, allow_inf_nan=False)] | None = None


class AppendIn(_In):
    """Events of the lease's aggregate, written in one transaction; ``wait``: until
    the aggregate's projections applied them."""

    events: Annotated[list[EventIn], Field(min_length=1, max_length=MAX_BULK)]
    wait: bool = False


class SagaStartIn(_In):
    context: dict[Name, str | int | float | bool] = Field(default_factory=dict)
    saga_id: Id | None = None


def problems(exc: ValidationError, prefix: str = "") -> list[str]:
    """One ``path: message`` per problem, without the input's values."""
    out = []
    for error in exc.errors(include_input=False, include_url=False):
        path = ".".join(str(p) for p in error["loc"]) or "body"
        out.append(f"{prefix}{path}: {error['msg']}")
    return out[:50]


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str = "") -> dict[str, Any]:
    return {"description": description or "OK", "content": {"application/json": {"schema": schema}}}


def _body(name: str) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": _ref(name)}}}


_ERRORS = {
    "400": _json(_ref("Problem"), "invalid request: the reasons are listed"),
    "401": _json(_ref("Problem"), "missing or wrong bearer token"),
    "413": _json(_ref("Problem"), "body larger than sidecar.max_body_bytes"),
    "503": _json(_ref("Problem"), "a backend is unavailable"),
}


def _op(
    summary: str,
    ok: dict[str, Any],
    body: str | None = None,
    more: dict[str, Any] | None = None,
) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "responses": {"200": ok, **(more or {}), **_ERRORS}}
    if body is not None:
        op["requestBody"] = _body(body)
    return op


def _param(name: str, where: str = "path", required: bool = True) -> dict[str, Any]:
    return {"name": name, "in": where, "required": required, "schema": {"type": "string"}}


def openapi_document(version: str) -> dict[str, Any]:
    """The API's OpenAPI 3.1 document."""
    position = {
        "type": "object",
        "properties": {
            "topic": {"type": "string"},
            "partition": {"type": "integer"},
            "offset": {"type": "integer"},
        },
    }
    published = {
        "type": "object",
        "properties": {
            "event_id": {"type": "string"},
            "position": _ref("Position"),
            "error": {"type": "string"},
        },
    }
    schemas: dict[str, Any] = {
        "Event": EventIn.model_json_schema(),
        "Wait": WaitIn.model_json_schema(),
        "Lease": LeaseIn.model_json_schema(),
        "Renew": RenewIn.model_json_schema(),
        "Append": AppendIn.model_json_schema(ref_template="#/components/schemas/{model}"),
        "SagaStart": SagaStartIn.model_json_schema(),
        "Bulk": {
            "type": "object",
            "required": ["events"],
            "properties": {
                "events": {"type": "array", "maxItems": MAX_BULK, "items": _ref("Event")}
            },
        },
        "Position": position,
        "Published": published,
        "Problem": {
            "type": "object",
            "properties": {
                "error": {"type": "string"},
                "reasons": {"type": "array", "items": {"type": "string"}},
                "lagging": {"type": "array", "items": {"type": "object"}},
            },
        },
        "CloudEvent": {
            "type": "object",
            "required": ["specversion", "id", "source", "type", "data"],
            "description": "CloudEvents 1.0, structured JSON; the envelope's headers as "
            "extension attributes (aggregatetype, aggregateid, sequence, hlc, fence, "
            "correlationid, causationid, traceparent, tracestate)",
        },
        "ProjectionAnswer": PROJECTION_ANSWER_SCHEMA,
        "StepAnswer": STEP_ANSWER_SCHEMA,
    }
    schemas["Append"].pop("$defs", None)
    schemas["Append"]["properties"]["events"]["items"] = _ref("Event")
    token_ok = _json({"type": "object", "properties": {"token": {"type": "string"}}})
    paths: dict[str, Any] = {
        "/v1/publish/{topic}": {
            "post": {
                **_op(
                    "Publish one event",
                    _json(
                        {
                            "allOf": [
                                _ref("Published"),
                                {"properties": {"token": {"type": "string"}}},
                            ]
                        },
                        "its position and consistency token",
                    ),
                    "Event",
                ),
                "description": "With `wait` (projection names, comma-separated or repeated), "
                "the answer comes once those projections applied the event (read-your-writes "
                "in one request), at most `timeout` seconds; a 504 then still carries the "
                "event's position and token (it was published).",
                "parameters": [
                    _param("topic"),
                    _param("wait", "query", required=False),
                    _param("timeout", "query", required=False),
                ],
            }
        },
        "/v1/publish/{topic}/bulk": {
            "post": {
                **_op(
                    "Publish events; a result per entry",
                    _json(
                        {
                            "type": "object",
                            "properties": {
                                "results": {"type": "array", "items": _ref("Published")},
                                "token": {"type": "string"},
                            },
                        }
                    ),
                    "Bulk",
                ),
                "parameters": [_param("topic")],
            }
        },
        "/v1/wait": {
            "post": _op(
                "Wait until projections applied a token",
                token_ok,
                "Wait",
                more={"504": _json(_ref("Problem"), "lagging partitions named")},
            )
        },
        "/v1/read-models/{projection}/documents/{key}": {
            "get": {
                **_op(
                    "Read a document, after the token (read-your-writes)",
                    _json({"type": "object"}),
                    more={"404": _json(_ref("Problem")), "504": _json(_ref("Problem"))},
                ),
                "parameters": [
                    _param("projection"),
                    _param("key"),
                    _param("token", "query", False),
                    _param("timeout", "query", False),
                ],
            }
        },
        "/v1/read-models/{projection}/counters/{key}": {
            "get": {
                **_op(
                    "Read counters, after the token",
                    _json({"type": "object"}),
                    more={"504": _json(_ref("Problem"))},
                ),
                "parameters": [
                    _param("projection"),
                    _param("key"),
                    _param("token", "query", False),
                    _param("timeout", "query", False),
                ],
            }
        },
        "/v1/leases": {
            "post": _op(
                "Take an aggregate's lease (lock, fence, barrier)",
                _json({"type": "object"}),
                "Lease",
                more={
                    "409": _json(_ref("Problem"), "held elsewhere"),
                    "504": _json(_ref("Problem")),
                },
            )
        },
        "/v1/leases/{lease_id}/events": {
            "post": {
                **_op(
                    "Append events in one transaction while the lease holds",
                    token_ok,
                    "Append",
                    more={
                        "404": _json(_ref("Problem")),
                        "409": _json(_ref("Problem"), "lease lost"),
                    },
                ),
                "parameters": [_param("lease_id")],
            }
        },
        "/v1/leases/{lease_id}/renew": {
            "post": {
                **_op(
                    "Renew a lease",
                    _json({"type": "object"}),
                    "Renew",
                    more={"409": _json(_ref("Problem"), "lease lost")},
                ),
                "parameters": [_param("lease_id")],
            }
        },
        "/v1/leases/{lease_id}": {
            "delete": {
                **_op("Release a lease", _json({"type": "object"})),
                "parameters": [_param("lease_id")],
            }
        },
        "/v1/sagas/{saga_type}": {
            "post": {
                **_op("Start a saga", _json({"type": "object"}), "SagaStart"),
                "parameters": [_param("saga_type")],
            }
        },
        "/v1/sagas/{saga_id}": {
            "get": {
                **_op(
                    "A saga's state (with its trace id)",
                    _json({"type": "object"}),
                    more={"404": _json(_ref("Problem"))},
                ),
                "parameters": [_param("saga_id")],
            }
        },
        "/v1/sagas": {
            "get": _op("Totals by final status, running sagas", _json({"type": "object"}))
        },
        "/v1/status": {
            "get": _op(
                "Loops' health and the consistency monitor's report", _json({"type": "object"})
            )
        },
        "/v1/metadata": {
            "get": _op("What runs: loops, topics, groups, versions", _json({"type": "object"}))
        },
        "/v1/openapi.json": {"get": _op("This document", _json({"type": "object"}))},
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "responses": {"200": {"description": "text exposition format"}},
            }
        },
        "/healthz": {
            "get": {"summary": "Liveness", "responses": {"200": {"description": "alive"}}}
        },
        "/readyz": {
            "get": {
                "summary": "Readiness: connected, assigned, not paused by an outage",
                "responses": {
                    "200": _json({"type": "object"}),
                    "503": _json({"type": "object"}, "not ready"),
                },
            }
        },
    }
    webhooks = {
        "projection-event": {
            "post": {
                "summary": "The sidecar POSTs each event of an HTTP projection to the service",
                "requestBody": {
                    "content": {"application/cloudevents+json": {"schema": _ref("CloudEvent")}}
                },
                "responses": {
                    "200": _json(_ref("ProjectionAnswer"), "changes to apply"),
                    "4XX": {"description": "this event is refused: dead-lettered"},
                    "5XX": {"description": "retried; then the partition pauses"},
                },
            }
        },
        "saga-command": {
            "post": {
                "summary": "The sidecar POSTs each saga command of an HTTP participant",
                "requestBody": {
                    "content": {"application/cloudevents+json": {"schema": _ref("CloudEvent")}}
                },
                "responses": {
                    "200": _json(_ref("StepAnswer"), "the step's outcome"),
                    "4XX": {"description": "a technical failure (retried, then failed)"},
                    "5XX": {"description": "retried; then the partition pauses"},
                },
            }
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "kct sidecar",
            "version": version,
            "description": "Publish, wait, read-your-writes, leases and sagas over HTTP.",
        },
        "paths": paths,
        "webhooks": webhooks,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}, {}],
    }
