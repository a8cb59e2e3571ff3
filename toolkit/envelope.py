"""The event envelope and its Kafka headers.

An event travels as one Kafka record: key = aggregate id (so an aggregate's
events share a partition and stay in order), value = the payload serialised
by an :class:`~toolkit.ports.EventCodec` (Avro binary), and the metadata in
headers, each a UTF-8 string:

====================  ==========================================================
``event_id``          UUIDv7, unique per event (time-ordered, but never compared)
``event_type``        the payload schema's full name
``aggregate_type``    e.g. ``order``
``aggregate_id``      the record key, repeated for tools that ignore keys
``sequence``          the aggregate's version after this event (decimal)
``hlc``               hybrid logical clock, ``wall_ms:logical:node``
``schema``            the writer schema reference, ``full.name@fingerprint``
``fence``             fencing token of a strong write (decimal), when present
``correlation_id``    the flow this event belongs to (a saga, a request)
``causation_id``      the event or command that caused this one
``traceparent``       W3C trace context, when tracing is on
``tracestate``        W3C trace context, when present
====================  ==========================================================

Decoding fails with :class:`~toolkit.errors.SerializationError` (or its
subclass ``UnknownSchema``) when a required header is missing or malformed or
the payload does not decode; consumers route such records to the dead-letter
topic instead of stopping.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, NoReturn

from uuid6 import uuid7

from toolkit.errors import InvalidEvent, SerializationError
from toolkit.hlc import HLCTimestamp
from toolkit.ports import ConsumedRecord, EventCodec, Headers, OutgoingRecord
from toolkit.positions import Position
from toolkit.slotted import slot_setter

__all__ = ["ConsumedEvent", "Envelope", "HeaderName", "decode_record", "encode_envelope"]


class HeaderName:
    """Header names of the envelope (see the module docstring)."""

    EVENT_ID = "event_id"
    EVENT_TYPE = "event_type"
    AGGREGATE_TYPE = "aggregate_type"
    AGGREGATE_ID = "aggregate_id"
    SEQUENCE = "sequence"
    HLC = "hlc"
    SCHEMA = "schema"
    FENCE = "fence"
    CORRELATION_ID = "correlation_id"
    CAUSATION_ID = "causation_id"
    TRACEPARENT = "traceparent"
    TRACESTATE = "tracestate"


_REQUIRED = (
    HeaderName.EVENT_ID,
    HeaderName.EVENT_TYPE,
    HeaderName.AGGREGATE_TYPE,
    HeaderName.AGGREGATE_ID,
    HeaderName.SEQUENCE,
    HeaderName.HLC,
    HeaderName.SCHEMA,
)


def new_event_id() -> str:
    """A fresh UUIDv7 as a string."""
    return str(uuid7())


@dataclass(frozen=True, slots=True)
class Envelope:
    """One domain event with its metadata."""

    event_type: str
    aggregate_type: str
    aggregate_id: str
    sequence: int
    payload: Mapping[str, Any]
    event_id: str = field(default_factory=new_event_id)
    hlc: HLCTimestamp | None = None
    schema_ref: str | None = None
    fence: int | None = None
    correlation_id: str | None = None
    causation_id: str | None = None
    traceparent: str | None = None
    tracestate: str | None = None

    def __post_init__(self) -> None:
        if not self.aggregate_id:
            raise InvalidEvent(
                "an event needs a non-empty aggregate_id", event_type=self.event_type
            )
        if self.sequence < 0:
            raise InvalidEvent(
                f"sequence must be >= 0, got {self.sequence}", aggregate=self.aggregate_id
            )

    def with_changes(self, **changes: Any) -> Envelope:
        return replace(self, **changes)

    def headers(self) -> Headers:
        """The envelope's metadata as Kafka headers (requires hlc and schema_ref)."""
        if self.hlc is None or self.schema_ref is None:
            raise InvalidEvent("stamp hlc and schema_ref before building headers")
        pairs: list[tuple[str, str | None]] = [
            (HeaderName.EVENT_ID, self.event_id),
            (HeaderName.EVENT_TYPE, self.event_type),
            (HeaderName.AGGREGATE_TYPE, self.aggregate_type),
            (HeaderName.AGGREGATE_ID, self.aggregate_id),
            (HeaderName.SEQUENCE, str(self.sequence)),
            (HeaderName.HLC, str(self.hlc)),
            (HeaderName.SCHEMA, self.schema_ref),
            (HeaderName.FENCE, None if self.fence is None else str(self.fence)),
            (HeaderName.CORRELATION_ID, self.correlation_id),
            (HeaderName.CAUSATION_ID, self.causation_id),
            (HeaderName.TRACEPARENT, self.traceparent),
            (HeaderName.TRACESTATE, self.tracestate),
        ]
        return tuple((name, value.encode()) for name, value in pairs if value is not None)


@dataclass(frozen=True, slots=True)
class ConsumedEvent:
    """A decoded event, where it was read from, and the record it came in."""

    envelope: Envelope
    position: Position
    record: ConsumedRecord | None = field(default=None, compare=False, repr=False)


def encode_envelope(
    topic: str, envelope: Envelope, codec: EventCodec, hlc: HLCTimestamp
) -> tuple[Envelope, OutgoingRecord]:
    """Serialise an event for ``topic``: the stamped envelope and its record."""
    encoded = codec.encode(envelope.event_type, envelope.payload)
    stamped = replace(envelope, hlc=hlc, schema_ref=encoded.schema_ref)
    record = OutgoingRecord(
        topic=topic,
        key=envelope.aggregate_id.encode(),
        value=encoded.data,
        headers=stamped.headers(),
    )
    return stamped, record


def decode_record(record: ConsumedRecord, codec: EventCodec) -> ConsumedEvent:
    """Decode a consumed record into an event; raise SerializationError if it is not one.

    Every envelope header is validated (UTF-8, present once, non-empty ids,
    a canonical UUID as event id, ASCII decimal integers within 64 bits,
    bounded lengths), so whatever reaches a handler is a well-formed event.
    """
    if record.header_error is not None:
        raise SerializationError(
            f"headers unreadable: {record.header_error}", position=str(record.position)
        )
    # Hot path (once per consumed event): one dict comprehension for the
    # headers, a set comparison for the required ones, no per-header calls.
    try:
        text = {name: value.decode() for name, value in record.headers}
    except (UnicodeDecodeError, AttributeError):
        text = _header_strings(record)  # names the bad header
    if not text.keys() >= _REQUIRED_SET:
        missing = [name for name in _REQUIRED if name not in text]
        raise SerializationError(
            "record is not a kct event: missing headers",
            missing=",".join(missing),
            position=str(record.position),
        )
    if len(text) != len(record.headers):
        _check_duplicates(record)
    if record.value is None:
        raise SerializationError("event has no value", position=str(record.position))
    event_id = text[_EVENT_ID]
    if _UUID(event_id) is None:
        _invalid(record, _EVENT_ID, event_id, "is not a UUID")
    sequence = text[_SEQUENCE]
    if _DECIMAL(sequence) is None:
        _invalid(record, _SEQUENCE, sequence, _NOT_AN_INT64)
    fence = text.get(_FENCE)
    if fence is not None and _DECIMAL(fence) is None:
        _invalid(record, _FENCE, fence, _NOT_AN_INT64)
    hlc = _HLC_FORM(text[_HLC])
    if hlc is None:
        _invalid(record, _HLC, text[_HLC], "is not wall_ms:logical:node")
    event_type, aggregate_type = text[_EVENT_TYPE], text[_AGGREGATE_TYPE]
    aggregate_id, schema_ref = text[_AGGREGATE_ID], text[_SCHEMA]
    # One chained comparison on the hot path; the slow path names the header.
    if not (
        0 < len(event_type) <= _MAX_EVENT_TYPE_CHARS
        and 0 < len(aggregate_type) <= _MAX_AGGREGATE_TYPE_CHARS
        and 0 < len(aggregate_id) <= MAX_ID_CHARS
        and 0 < len(schema_ref) <= _MAX_SCHEMA_CHARS
    ):
        _check_lengths(text, record)
    payload = codec.decode(record.value, schema_ref)
    wall, logical, node = hlc.groups()
    # The checks above cover Envelope.__post_init__'s (aggregate_id non-empty,
    # sequence a non-negative decimal), so the fields are set directly.
    envelope = _new_envelope(
        event_type,
        aggregate_type,
        aggregate_id,
        int(sequence),
        payload,
        event_id,
        _new_hlc(int(wall), int(logical), node),
        schema_ref,
        None if fence is None else int(fence),
        text.get(_CORRELATION_ID) or None,
        text.get(_CAUSATION_ID) or None,
        text.get(_TRACEPARENT) or None,
        text.get(_TRACESTATE) or None,
    )
    position = _new_position(record.topic, record.partition, record.offset)
    return _new_consumed(envelope, position, record)


# Validation patterns (ASCII only: str.isdigit() also accepts "²" and "١٢").
# At most 18 digits (< 10**18, fits 64 bits): int() never sees a huge string.
_DECIMAL = re.compile(r"0|[1-9][0-9]{0,17}", re.ASCII).fullmatch
_UUID = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}", re.ASCII
).fullmatch
_HLC_FORM = re.compile(
    r"(0|[1-9][0-9]{0,17}):(0|[1-9][0-9]{0,17}):([^:\x00-\x1f]{1,256})", re.ASCII
).fullmatch
_NOT_AN_INT64 = "is not a non-negative decimal integer below 10**18"
# Text headers and their length limits (characters); present ones must be non-empty.
MAX_ID_CHARS = 1024
_MAX_EVENT_TYPE_CHARS = 512
_MAX_AGGREGATE_TYPE_CHARS = 256
_MAX_SCHEMA_CHARS = 600
_BOUNDED = (
    (HeaderName.EVENT_TYPE, _MAX_EVENT_TYPE_CHARS),
    (HeaderName.AGGREGATE_TYPE, _MAX_AGGREGATE_TYPE_CHARS),
    (HeaderName.AGGREGATE_ID, MAX_ID_CHARS),
    (HeaderName.SCHEMA, _MAX_SCHEMA_CHARS),
)


_REQUIRED_SET = frozenset(_REQUIRED)
_EVENT_ID = HeaderName.EVENT_ID
_EVENT_TYPE = HeaderName.EVENT_TYPE
_AGGREGATE_TYPE = HeaderName.AGGREGATE_TYPE
_AGGREGATE_ID = HeaderName.AGGREGATE_ID
_SEQUENCE = HeaderName.SEQUENCE
_HLC = HeaderName.HLC
_SCHEMA = HeaderName.SCHEMA
_FENCE = HeaderName.FENCE
_CORRELATION_ID = HeaderName.CORRELATION_ID
_CAUSATION_ID = HeaderName.CAUSATION_ID
_TRACEPARENT = HeaderName.TRACEPARENT
_TRACESTATE = HeaderName.TRACESTATE
_ENVELOPE_HEADERS = frozenset(v for k, v in vars(HeaderName).items() if k.isupper())


def _header_strings(record: ConsumedRecord) -> dict[str, str]:
    text: dict[str, str] = {}
    for name, value in record.headers:
        if not isinstance(name, str):
            raise SerializationError("header name is not text", position=str(record.position))
        try:
            text[name] = value.decode() if value is not None else ""
        except UnicodeDecodeError as exc:
            raise SerializationError(
                "header is not UTF-8", header=name[:40], position=str(record.position)
            ) from exc
    return text


def _check_duplicates(record: ConsumedRecord) -> None:
    """An envelope header sent twice with different values is ambiguous: refuse it."""
    seen: dict[str, bytes] = {}
    for name, value in record.headers:
        if name in _ENVELOPE_HEADERS and seen.setdefault(name, value) != value:
            raise SerializationError(
                "header sent twice with different values",
                header=name,
                position=str(record.position),
            )


def _check_lengths(text: Mapping[str, str], record: ConsumedRecord) -> None:
    for name, limit in _BOUNDED:
        value = text[name]
        if not 0 < len(value) <= limit:
            _invalid(record, name, value, f"must be 1 to {limit} characters")


def _invalid(record: ConsumedRecord, name: str, value: str, problem: str) -> NoReturn:
    raise SerializationError(
        f"header {name} {problem}",
        header=name,
        value=value[:40],
        position=str(record.position),
    )


# decode_record's checks cover Envelope.__post_init__'s; Kafka offsets are never negative.
_new_envelope = slot_setter(Envelope)
_new_hlc = slot_setter(HLCTimestamp)
_new_consumed = slot_setter(ConsumedEvent)
_new_position = slot_setter(Position)
