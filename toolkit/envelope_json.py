"""Events as JSON documents, for stores that keep whole events.

The conflict resolver keeps buffered and merged events in the read model, and
saga participants keep the messages a step produced in its dedup record; both
store them with :func:`envelope_to_document` and read them back with
:func:`envelope_from_document`, exactly.

Failure modes: a payload value JSON cannot hold (``Decimal``, ``datetime``,
``UUID``, sets, non-string keys, ...) raises ``SerializationError`` naming its
path instead of being stored as something that would read back differently;
``bytes`` (``{"$bytes": base64}``) and non-finite floats (``{"$float":
"nan"}``) are tagged and come back exactly, a mapping with ``$``-keys is
wrapped (``{"$dict": ...}``) so tags stay unambiguous, and tuples come back
as lists (Avro payloads only hold lists).
"""

from __future__ import annotations

import base64
import math
from collections.abc import Mapping
from typing import Any

from toolkit.envelope import Envelope
from toolkit.errors import SerializationError
from toolkit.hlc import HLCTimestamp

__all__ = ["decode_payload", "encode_payload", "envelope_from_document", "envelope_to_document"]

_BYTES, _DICT, _FLOAT = "$bytes", "$dict", "$float"
_OPTIONAL_TEXT = ("schema_ref", "correlation_id", "causation_id", "traceparent", "tracestate")


class _Unsupported(Exception):
    """A payload value with no JSON form; ``path`` is filled in on the way up."""

    def __init__(self, value: object, what: str = "value") -> None:
        super().__init__(what)
        self.value = value
        self.what = what
        self.path: list[str] = []

    def where(self) -> str:
        return "payload" + "".join(reversed(self.path))


def _encode(value: Any) -> Any:
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {_FLOAT: repr(value)}
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        tagged = False
        for key, item in value.items():
            if not isinstance(key, str):
                raise _Unsupported(key, "key")
            try:
                out[key] = _encode(item)
            except _Unsupported as exc:
                exc.path.append(f".{key}")
                raise
            tagged = tagged or key.startswith("$")
        # A user mapping with "$" keys is wrapped, so a one-key "$..." object
        # in a stored document is always one of our tags.
        return {_DICT: out} if tagged else out
    if isinstance(value, list | tuple):
        items: list[Any] = []
        for i, item in enumerate(value):
            try:
                items.append(_encode(item))
            except _Unsupported as exc:
                exc.path.append(f"[{i}]")
                raise
        return items
    if isinstance(value, bytes | bytearray | memoryview):
        return {_BYTES: base64.b64encode(value).decode("ascii")}
    raise _Unsupported(value)


def decode_payload(value: Any) -> Any:
    """The inverse of :func:`encode_payload`."""
    return _decode(value)


def _decode(value: Any) -> Any:
    if isinstance(value, dict):
        if len(value) == 1:
            ((tag, inner),) = value.items()
            if tag == _BYTES:
                return base64.b64decode(inner, validate=True)
            if tag == _DICT:
                return {k: _decode(v) for k, v in inner.items()}
            if tag == _FLOAT:
                return float(inner)
        return {k: _decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


def encode_payload(payload: Mapping[str, Any], event_id: str) -> Any:
    """The JSON form of a payload; SerializationError if a value has none."""
    try:
        return _encode(payload)
    except _Unsupported as exc:
        raise SerializationError(
            f"payload {exc.what} cannot be stored in a JSON document (the conflict "
            "resolver stores buffered and merged payloads; use str/int/float/bytes/"
            "lists/maps, e.g. a Decimal as a string)",
            event_id=event_id,
            path=exc.where(),
            type=type(exc.value).__name__,
        ) from None


def envelope_to_document(envelope: Envelope) -> dict[str, Any]:
    """The envelope as a JSON-serialisable document (see the module docstring)."""
    document: dict[str, Any] = {
        "event_type": envelope.event_type,
        "aggregate_type": envelope.aggregate_type,
        "aggregate_id": envelope.aggregate_id,
        "sequence": envelope.sequence,
        "event_id": envelope.event_id,
        "payload": encode_payload(envelope.payload, envelope.event_id),
    }
    if envelope.hlc is not None:
        document["hlc"] = str(envelope.hlc)
    if envelope.fence is not None:
        document["fence"] = envelope.fence
    for name in _OPTIONAL_TEXT:
        value = getattr(envelope, name)
        if value is not None:
            document[name] = value
    return document


def envelope_from_document(document: Mapping[str, Any]) -> Envelope:
    """The envelope :func:`envelope_to_document` stored; SerializationError if it is not one."""
    try:
        payload = decode_payload(document["payload"])
        if not isinstance(payload, dict):
            raise TypeError("payload is not an object")
        hlc = document.get("hlc")
        fence = document.get("fence")
        return Envelope(
            event_type=_text(document["event_type"]),
            aggregate_type=_text(document["aggregate_type"]),
            aggregate_id=_text(document["aggregate_id"]),
            sequence=_integer(document["sequence"]),
            payload=payload,
            event_id=_text(document["event_id"]),
            hlc=None if hlc is None else HLCTimestamp.parse(_text(hlc)),
            fence=None if fence is None else _integer(fence),
            **{n: _text(document[n]) for n in _OPTIONAL_TEXT if document.get(n) is not None},
        )
    except SerializationError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise SerializationError(
            "not an envelope document", error=f"{type(exc).__name__}: {exc}"[:200]
        ) from exc


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value


def _integer(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"expected an integer, got {type(value).__name__}")
    return value
