"""Equivalences the throughput work relies on: same results as the plain code."""

import json
from typing import Any

import pytest

from connectors.redis.read_model import _DOCUMENT_ENCODER
from tests.fakes import InMemoryReadModelStore
from toolkit.ports import ReadModelChange
from toolkit.read_model import ReadModelBatch


@pytest.mark.parametrize(
    "document",
    [
        {"b": 1, "a": [1, 2, {"z": None, "y": 1.5}]},
        {"é": 'ü\n"', "k": True, "n": -3},
        {},
        {"x": float("inf")},
        None,
        "bare string",
    ],
)
def test_document_encoder_matches_json_dumps(document: Any) -> None:
    expected = json.dumps(document, separators=(",", ":"), sort_keys=True)
    assert _DOCUMENT_ENCODER.encode(document) == expected
    assert _DOCUMENT_ENCODER.encode(document).isascii()


def test_document_encoder_recovers_after_errors() -> None:
    circular: dict[str, Any] = {}
    circular["self"] = circular
    with pytest.raises(ValueError, match="Circular"):
        _DOCUMENT_ENCODER.encode(circular)
    _DOCUMENT_ENCODER.reset()
    with pytest.raises(TypeError):
        _DOCUMENT_ENCODER.encode({"a": object()})
    _DOCUMENT_ENCODER.reset()
    assert _DOCUMENT_ENCODER.encode({"a": [1]}) == '{"a":[1]}'


def test_batch_journal_keeps_every_change_in_order_and_rolls_back() -> None:
    batch = ReadModelBatch(InMemoryReadModelStore(), "p")
    batch.put("a", {"n": 1, "nested": {"x": [1]}})
    batch.increment("c", "x", 2)
    batch.delete("b")
    mark = batch.savepoint()
    batch.put("b", {"n": 3})
    batch.increment("c", "x", 5)
    batch.increment("c", "y")
    assert len(batch) == 6
    assert [c.kind for c in batch.changes] == [
        "put",
        "increment",
        "delete",
        "put",
        "increment",
        "increment",
    ]
    assert batch.changes[4] == ReadModelChange("increment", "c", field="x", amount=5)
    batch.rollback(mark)
    assert len(batch) == 3
    assert batch.get("b") is None
    assert batch.counters("c") == {"x": 2}
    assert batch.net_changes() == [
        ReadModelChange("put", "a", document={"n": 1, "nested": {"x": [1]}}),
        ReadModelChange("delete", "b"),
        ReadModelChange("increment", "c", field="x", amount=2),
    ]


def test_decoded_event_is_the_dataclasses_own() -> None:
    """decode_record sets the slots directly: the objects are equal to and refuse
    changes like ones built through ``__init__``."""
    import dataclasses

    from connectors.avro import AvroCodec, AvroSchemaRegistry, bundled_schema_dir
    from toolkit.envelope import ConsumedEvent, Envelope, decode_record, encode_envelope
    from toolkit.hlc import HLCTimestamp
    from toolkit.ports import ConsumedRecord
    from toolkit.positions import Position

    codec = AvroCodec(AvroSchemaRegistry.from_directories(bundled_schema_dir()))
    sent = Envelope(
        "kct.examples.orders.OrderCancelled",
        "order",
        "order-7",
        3,
        {"order_id": "order-7", "reason": "x"},
        fence=4,
    )
    stamped, record = encode_envelope("orders", sent, codec, HLCTimestamp(5, 1, "n"))
    consumed = ConsumedRecord("orders", 0, 17, b"order-7", record.value, record.headers)
    event = decode_record(consumed, codec)
    expected = ConsumedEvent(stamped, Position("orders", 0, 17), consumed)
    assert type(event) is ConsumedEvent and type(event.envelope) is Envelope
    assert type(event.envelope.hlc) is HLCTimestamp
    assert event == expected and event.envelope == stamped
    assert event.envelope.hlc == HLCTimestamp(5, 1, "n")
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.envelope.sequence = 9  # type: ignore[misc]


def test_batch_documents_are_copied_in_and_out_at_every_depth() -> None:
    """A handler mutating what it put, or what get() handed it, changes nothing in the batch."""
    batch = ReadModelBatch(InMemoryReadModelStore(), "p")
    document: dict[str, Any] = {"steps": [{"name": "a", "done": False}], "tags": ("x", ["y"])}
    batch.put("k", document)
    document["steps"][0]["done"] = True
    document["tags"][1].append("z")
    read = batch.get("k")
    assert read == {"steps": [{"name": "a", "done": False}], "tags": ("x", ["y"])}
    assert read is not None
    read["steps"].append({"name": "b"})
    assert batch.get("k") == {"steps": [{"name": "a", "done": False}], "tags": ("x", ["y"])}
