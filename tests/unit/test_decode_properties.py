"""Property: whatever a record holds, reading it yields a valid event or a dead letter.

Hostile producers can put anything in a record's headers and value. The
decode path must turn each record into a well-formed ``Envelope`` or a
``SerializationError`` (which the reader dead-letters with the reason), and
the reader must never raise anything else, so one record never stops a
partition.
"""

from __future__ import annotations

import re
import uuid

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connectors.avro import AvroCodec, AvroSchemaRegistry, bundled_schema_dir
from tests.fakes import InMemoryLog
from toolkit.dead_letter import DeadLetter, DeadLetterQueue
from toolkit.envelope import Envelope, HeaderName, decode_record, encode_envelope
from toolkit.errors import SerializationError
from toolkit.hlc import HLCTimestamp
from toolkit.ports import ConsumedRecord, OutgoingRecord
from toolkit.reader import EventReader

CODEC = AvroCodec(AvroSchemaRegistry.from_directories(bundled_schema_dir()))
CANCELLED = "kct.examples.orders.OrderCancelled"
_GOOD = encode_envelope(
    "orders",
    Envelope(CANCELLED, "order", "o-1", 3, {"order_id": "o-1", "reason": "r"}),
    CODEC,
    HLCTimestamp(1_700_000_000_000, 0, "n"),
)[1]
ENVELOPE_NAMES = [v for k, v in vars(HeaderName).items() if k.isupper()]

# Values a hostile producer might send: any bytes, any text (incl. non-ASCII
# digits), huge numbers, empty, null.
hostile_text = st.one_of(
    st.text(max_size=30),
    st.sampled_from(
        ["", "\u00b2", "\u0661\u0662", "-1", "9" * 5000, "0x10", " 1", "1 ", "1\n", "\U0001d7d9"]
    ),
    st.integers(min_value=0, max_value=2**80).map(str),
)
hostile_value = st.one_of(
    st.binary(max_size=40), hostile_text.map(lambda t: t.encode()), st.just(b"\xff\xfe")
)
header_name = st.one_of(st.sampled_from(ENVELOPE_NAMES), st.text(max_size=12))


@st.composite
def records(draw: st.DrawFn) -> ConsumedRecord:
    """A well-formed event's headers, then some replaced, dropped, added or doubled."""
    headers = list(_GOOD.headers)
    for _ in range(draw(st.integers(0, 4))):
        action = draw(st.sampled_from(["replace", "drop", "add", "duplicate"]))
        if action == "replace" and headers:
            index = draw(st.integers(0, len(headers) - 1))
            headers[index] = (headers[index][0], draw(hostile_value))
        elif action == "drop" and headers:
            headers.pop(draw(st.integers(0, len(headers) - 1)))
        elif action == "add":
            headers.append((draw(header_name), draw(hostile_value)))
        elif action == "duplicate" and headers:
            headers.append(headers[draw(st.integers(0, len(headers) - 1))])
    value = draw(st.one_of(st.just(_GOOD.value), st.binary(max_size=60), st.none()))
    key = draw(st.one_of(st.just(_GOOD.key), st.binary(max_size=10), st.none()))
    return ConsumedRecord("orders", 0, 5, key, value, tuple(headers))


_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.I | re.A)


def _assert_well_formed(envelope: Envelope) -> None:
    assert _UUID.fullmatch(envelope.event_id) and uuid.UUID(envelope.event_id)
    assert envelope.event_type and envelope.aggregate_type and envelope.aggregate_id
    assert 0 <= envelope.sequence < 10**18
    assert envelope.hlc is not None and envelope.hlc.node
    assert envelope.fence is None or 0 <= envelope.fence < 10**18


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records())
def test_decoding_any_record_gives_a_valid_envelope_or_a_serialization_error(
    record: ConsumedRecord,
) -> None:
    try:
        event = decode_record(record, CODEC)
    except SerializationError as exc:
        assert str(exc)  # a reason to put in the dead letter
    else:
        _assert_well_formed(event.envelope)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(records(), min_size=1, max_size=6))
def test_the_reader_returns_good_events_and_dead_letters_the_rest(
    batch: list[ConsumedRecord],
) -> None:
    log = InMemoryLog()
    log.produce([OutgoingRecord("orders", r.key, r.value, r.headers) for r in batch])
    reader = EventReader(log.consumer("g"), CODEC, DeadLetterQueue(log, "g"))
    reader.subscribe(["orders"])
    events = reader.poll(max_events=100)
    letters = [DeadLetter.from_record(r) for r in log.topics.get("orders.dlq", [])]
    # Every record is accounted for exactly once: an event or a dead letter.
    assert sorted([e.position.offset for e in events] + [d.source.offset for d in letters]) == list(
        range(len(batch))
    )
    for event in events:
        _assert_well_formed(event.envelope)
    assert all(d.reason in {"undecodable", "unknown_schema"} and d.error for d in letters)


def test_unreadable_headers_are_dead_lettered_without_them() -> None:
    log = InMemoryLog()
    reader = EventReader(log.consumer("g"), CODEC, DeadLetterQueue(log, "g"))
    record = ConsumedRecord("orders", 0, 0, b"k", b"v", (), header_error="client could not read")
    log.topics["orders"] = [record]
    reader.subscribe(["orders"])
    assert reader.poll() == []
    (dead,) = log.topics["orders.dlq"]
    letter = DeadLetter.from_record(dead)
    assert letter.reason == "undecodable" and "headers unreadable" in letter.error
    assert dead.value == b"v"
