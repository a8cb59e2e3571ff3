import pytest

from connectors.avro import AvroCodec, AvroSchemaRegistry, bundled_schema_dir
from toolkit.envelope import Envelope, HeaderName, decode_record, encode_envelope
from toolkit.errors import SerializationError, UnknownSchema
from toolkit.hlc import HLCTimestamp
from toolkit.ports import ConsumedRecord

ORDER_CANCELLED = "kct.examples.orders.OrderCancelled"


@pytest.fixture
def codec() -> AvroCodec:
    return AvroCodec(AvroSchemaRegistry.from_directories(bundled_schema_dir()))


def _event(**changes: object) -> Envelope:
    base = Envelope(
        event_type=ORDER_CANCELLED,
        aggregate_type="order",
        aggregate_id="order-7",
        sequence=3,
        payload={"order_id": "order-7", "reason": "payment declined"},
        correlation_id="saga-1",
        causation_id="cmd-9",
        fence=12,
        traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    )
    return base.with_changes(**changes)


def _consumed(
    topic: str, record_value: bytes | None, headers: tuple[tuple[str, bytes], ...]
) -> ConsumedRecord:
    return ConsumedRecord(topic, 0, 17, b"order-7", record_value, headers)


def test_headers_carry_the_envelope(codec: AvroCodec) -> None:
    stamp = HLCTimestamp(1_700_000_000_000, 2, "node-a")
    stamped, record = encode_envelope("orders", _event(), codec, stamp)
    headers = {k: v.decode() for k, v in record.headers}
    assert record.key == b"order-7"
    assert headers[HeaderName.EVENT_TYPE] == ORDER_CANCELLED
    assert headers[HeaderName.AGGREGATE_TYPE] == "order"
    assert headers[HeaderName.AGGREGATE_ID] == "order-7"
    assert headers[HeaderName.SEQUENCE] == "3"
    assert headers[HeaderName.HLC] == "1700000000000:2:node-a"
    assert headers[HeaderName.FENCE] == "12"
    assert headers[HeaderName.CORRELATION_ID] == "saga-1"
    assert headers[HeaderName.CAUSATION_ID] == "cmd-9"
    assert headers[HeaderName.TRACEPARENT].startswith("00-")
    assert HeaderName.TRACESTATE not in headers  # absent values are not sent
    name, _, fingerprint = headers[HeaderName.SCHEMA].partition("@")
    assert name == ORDER_CANCELLED and len(fingerprint) == 16
    assert stamped.schema_ref == headers[HeaderName.SCHEMA]


def test_event_id_is_a_uuid7() -> None:
    import uuid

    first, second = _event(), Envelope(ORDER_CANCELLED, "order", "o", 0, {})
    assert uuid.UUID(first.event_id).version == 7
    assert first.event_id != second.event_id


def test_round_trip_through_a_record(codec: AvroCodec) -> None:
    stamp = HLCTimestamp(5, 0, "n")
    stamped, record = encode_envelope("orders", _event(), codec, stamp)
    consumed = _consumed("orders", record.value, record.headers)
    event = decode_record(consumed, codec)
    assert event.envelope == stamped
    assert str(event.position) == "orders[0]@17"


def test_missing_headers_are_named(codec: AvroCodec) -> None:
    _, record = encode_envelope("orders", _event(), codec, HLCTimestamp(1, 0, "n"))
    headers = tuple((k, v) for k, v in record.headers if k not in ("hlc", "sequence"))
    with pytest.raises(SerializationError, match="missing headers") as info:
        decode_record(_consumed("orders", record.value, headers), codec)
    assert info.value.context["missing"] == "sequence,hlc"


def test_malformed_sequence_is_rejected(codec: AvroCodec) -> None:
    _, record = encode_envelope("orders", _event(), codec, HLCTimestamp(1, 0, "n"))
    headers = tuple((k, b"-1" if k == "sequence" else v) for k, v in record.headers)
    with pytest.raises(SerializationError, match="non-negative decimal integer"):
        decode_record(_consumed("orders", record.value, headers), codec)


def test_unknown_schema_fingerprint(codec: AvroCodec) -> None:
    _, record = encode_envelope("orders", _event(), codec, HLCTimestamp(1, 0, "n"))
    headers = tuple(
        (k, f"{ORDER_CANCELLED}@0000000000000000".encode() if k == "schema" else v)
        for k, v in record.headers
    )
    with pytest.raises(UnknownSchema):
        decode_record(_consumed("orders", record.value, headers), codec)


def test_envelope_validates_its_fields() -> None:
    with pytest.raises(ValueError):
        Envelope(ORDER_CANCELLED, "order", "", 0, {})
    with pytest.raises(ValueError):
        Envelope(ORDER_CANCELLED, "order", "o", -1, {})
