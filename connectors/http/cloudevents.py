"""Events and saga commands as CloudEvents 1.0 (structured JSON), and the
service's answers as read-model changes or step outcomes.

A projection's event becomes ``{"specversion": "1.0", "id": <event id>,
"source": "kct://<service>/<projection>", "type": <event type>, "subject":
<aggregate id>, "time": <HLC wall time>, "datacontenttype":
"application/json", "data": <payload>}`` plus the envelope's headers as
extension attributes (``aggregatetype``, ``aggregateid``, ``sequence``,
``hlc``, ``fence``, ``correlationid``, ``causationid``, ``traceparent``,
``tracestate``). Avro ``bytes`` values travel as ``{"$bytes": base64}``
(:func:`toolkit.envelope_json.encode_payload`). A saga command is the same
with ``type`` ``kct.saga.SagaCommand`` and ``data`` holding the saga id and
type, step, action (``EXECUTE``/``COMPENSATE``), action name, context and
attempt. The JSON Schemas of both answers are in
:data:`PROJECTION_ANSWER_SCHEMA` and :data:`STEP_ANSWER_SCHEMA` (served in
the sidecar's OpenAPI document).

Failure modes: an answer that is not one of these documents raises
``ServiceRejected`` naming what is wrong (the caller treats it as a handler
error); nothing of it is applied.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

from toolkit.envelope import Envelope
from toolkit.envelope_json import encode_payload
from toolkit.errors import ServiceRejected
from toolkit.read_model import ReadModelBatch

__all__ = [
    "CHANGE_SCHEMA",
    "PROJECTION_ANSWER_SCHEMA",
    "STEP_ANSWER_SCHEMA",
    "apply_changes",
    "event_document",
    "step_outcome",
]

RESERVED_PREFIX = "__kct."
MAX_CHANGES = 10_000

CHANGE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["op", "key"],
    "properties": {
        "op": {"enum": ["put", "merge", "delete", "increment"]},
        "key": {"type": "string", "minLength": 1, "maxLength": 1024},
        "document": {"type": "object", "description": "put: the document; merge: its fields"},
        "field": {"type": "string", "description": "increment: the counter"},
        "amount": {"type": "integer", "default": 1},
    },
}
PROJECTION_ANSWER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"changes": {"type": "array", "items": CHANGE_SCHEMA}},
    "description": "An empty body (or 204) means no change.",
}
STEP_ANSWER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["outcome"],
    "properties": {
        "outcome": {"enum": ["success", "failure"]},
        "context": {
            "type": "object",
            "additionalProperties": {"type": "string"},
            "description": "success of an EXECUTE: merged into the saga's context",
        },
        "error": {"type": "string", "description": "failure: the business reason"},
        "changes": {"type": "array", "items": CHANGE_SCHEMA},
    },
}


def _time(envelope: Envelope) -> str | None:
    if envelope.hlc is None:
        return None
    moment = dt.datetime.fromtimestamp(envelope.hlc.wall_ms / 1000, tz=dt.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def event_document(envelope: Envelope, source: str) -> dict[str, Any]:
    """The CloudEvents 1.0 structured form of ``envelope``."""
    document: dict[str, Any] = {
        "specversion": "1.0",
        "id": envelope.event_id,
        "source": source,
        "type": envelope.event_type,
        "subject": envelope.aggregate_id,
        "datacontenttype": "application/json",
        "aggregatetype": envelope.aggregate_type,
        "aggregateid": envelope.aggregate_id,
        "sequence": str(envelope.sequence),
        "data": encode_payload(envelope.payload, envelope.event_id),
    }
    optional = {
        "time": _time(envelope),
        "hlc": None if envelope.hlc is None else str(envelope.hlc),
        "fence": None if envelope.fence is None else str(envelope.fence),
        "correlationid": envelope.correlation_id,
        "causationid": envelope.causation_id,
        "traceparent": envelope.traceparent,
        "tracestate": envelope.tracestate,
    }
    document.update({k: v for k, v in optional.items() if v is not None})
    return document


def _key(change: Mapping[str, Any], at: str) -> str:
    key = change.get("key")
    if not isinstance(key, str) or not key or len(key) > 1024:
        raise ServiceRejected(f"{at}.key: expected a string of 1-1024 characters")
    if key.startswith(RESERVED_PREFIX):
        raise ServiceRejected(f"{at}.key: keys under {RESERVED_PREFIX!r} belong to kct")
    return key


def _document(change: Mapping[str, Any], at: str) -> dict[str, Any]:
    document = change.get("document")
    if not isinstance(document, dict):
        raise ServiceRejected(f"{at}.document: expected an object")
    return document


def apply_changes(changes: Any, batch: ReadModelBatch, where: str = "changes") -> int:
    """Record the answer's ``changes`` on ``batch``; all or nothing (ServiceRejected)."""
    if changes is None:
        return 0
    if not isinstance(changes, list) or len(changes) > MAX_CHANGES:
        raise ServiceRejected(f"{where}: expected a list of at most {MAX_CHANGES} changes")
    mark = batch.savepoint()
    try:
        for i, change in enumerate(changes):
            _apply_one(change, batch, f"{where}[{i}]")
    except ServiceRejected:
        batch.rollback(mark)
        raise
    return len(changes)


def _apply_one(change: Any, batch: ReadModelBatch, at: str) -> None:
    if not isinstance(change, dict):
        raise ServiceRejected(f"{at}: expected an object")
    op = change.get("op")
    key = _key(change, at)
    if op == "put":
        batch.put(key, _document(change, at))
    elif op == "merge":
        batch.put(key, {**(batch.get(key) or {}), **_document(change, at)})
    elif op == "delete":
        batch.delete(key)
    elif op == "increment":
        field, amount = change.get("field"), change.get("amount", 1)
        if not isinstance(field, str) or not field:
            raise ServiceRejected(f"{at}.field: expected a non-empty string")
        if type(amount) is not int:
            raise ServiceRejected(f"{at}.amount: expected an integer")
        batch.increment(key, field, amount)
    else:
        raise ServiceRejected(f"{at}.op: expected put, merge, delete or increment")


def step_outcome(answer: Any) -> tuple[bool, Mapping[str, str], str, Sequence[Any] | None]:
    """(success, context delta, error, changes) of a participant's answer."""
    if not isinstance(answer, dict):
        raise ServiceRejected("expected an object with 'outcome'")
    outcome = answer.get("outcome")
    if outcome not in ("success", "failure"):
        raise ServiceRejected("outcome: expected 'success' or 'failure'")
    context = answer.get("context") or {}
    if not isinstance(context, dict) or not all(isinstance(k, str) for k in context):
        raise ServiceRejected("context: expected an object of strings")
    error = answer.get("error") or ""
    if not isinstance(error, str):
        raise ServiceRejected("error: expected a string")
    return (
        outcome == "success",
        {k: str(v) for k, v in context.items()},
        error[:1000],
        answer.get("changes"),
    )
