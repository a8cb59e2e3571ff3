import json
from pathlib import Path

import pytest

from connectors.avro import AvroCodec, AvroSchemaRegistry, bundled_schema_dir
from toolkit.errors import ConfigurationError, SerializationError, UnknownSchema

PLACED = "kct.examples.orders.OrderPlaced"
V1 = {
    "type": "record",
    "name": "CustomerRegistered",
    "namespace": "kct.test",
    "fields": [{"name": "customer_id", "type": "string"}],
}
V2 = {
    **V1,
    "fields": [
        {"name": "customer_id", "type": "string"},
        {"name": "tier", "type": "string", "default": "standard"},
    ],
}


def _placed() -> dict[str, object]:
    return {
        "order_id": "o-1",
        "customer_id": "c-1",
        "lines": [{"sku": "apple", "quantity": 2, "unit_price_cents": 150}],
        "total_cents": 300,
        "currency": "EUR",
    }


@pytest.fixture
def codec() -> AvroCodec:
    return AvroCodec(AvroSchemaRegistry.from_directories(bundled_schema_dir()))


def test_bundled_schemas_cover_the_example_domain_and_sagas(codec: AvroCodec) -> None:
    names = set(codec.registry.names)
    for expected in [
        "kct.examples.orders.OrderPlaced",
        "kct.examples.orders.OrderConfirmed",
        "kct.examples.orders.OrderCancelled",
        "kct.examples.inventory.InventoryReserved",
        "kct.examples.inventory.InventoryReleased",
        "kct.examples.payments.PaymentCharged",
        "kct.examples.payments.PaymentRefunded",
        "kct.saga.SagaCommand",
        "kct.saga.SagaReply",
    ]:
        assert expected in names


def test_round_trip(codec: AvroCodec) -> None:
    encoded = codec.encode(PLACED, _placed())
    assert codec.decode(encoded.data, encoded.schema_ref) == _placed()


def test_payload_not_matching_schema_is_rejected_before_writing(codec: AvroCodec) -> None:
    bad = _placed() | {"total_cents": "three hundred"}
    with pytest.raises(SerializationError, match="does not match") as info:
        codec.encode(PLACED, bad)
    assert info.value.context["event_type"] == PLACED


def test_unknown_event_type(codec: AvroCodec) -> None:
    with pytest.raises(UnknownSchema):
        codec.encode("kct.nope.Nothing", {})


@pytest.mark.parametrize(
    "data",
    [b"", b"\x02", b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", b"\x06abc\x06abc\x02"],
)
def test_bytes_that_do_not_decode(codec: AvroCodec, data: bytes) -> None:
    ref = codec.registry.current(PLACED).ref
    with pytest.raises(SerializationError):
        codec.decode(data, ref)


def test_trailing_bytes_are_rejected(codec: AvroCodec) -> None:
    encoded = codec.encode(PLACED, _placed())
    with pytest.raises(SerializationError, match="trailing"):
        codec.decode(encoded.data + b"\x00", encoded.schema_ref)


def test_reader_with_newer_schema_reads_old_events() -> None:
    writer_side = AvroSchemaRegistry()
    writer_side.register(V1)
    old = AvroCodec(writer_side).encode("kct.test.CustomerRegistered", {"customer_id": "c-9"})

    reader_side = AvroSchemaRegistry()
    reader_side.register(V1, current=False)
    reader_side.register(V2)
    decoded = AvroCodec(reader_side).decode(old.data, old.schema_ref)
    assert decoded == {"customer_id": "c-9", "tier": "standard"}


def test_history_folder_holds_writer_only_versions(tmp_path: Path) -> None:
    (tmp_path / "history").mkdir()
    (tmp_path / "history" / "CustomerRegistered.v1.avsc").write_text(json.dumps(V1))
    (tmp_path / "CustomerRegistered.avsc").write_text(json.dumps(V2))
    registry = AvroSchemaRegistry.from_directories(tmp_path)
    current = registry.current("kct.test.CustomerRegistered")
    assert [f["name"] for f in current.parsed["fields"]] == ["customer_id", "tier"]
    assert len({registry.resolve(r).fingerprint for r in [current.ref]}) == 1


def test_two_current_versions_of_one_name_are_a_configuration_error(tmp_path: Path) -> None:
    (tmp_path / "a.avsc").write_text(json.dumps(V1))
    (tmp_path / "b.avsc").write_text(json.dumps(V2))
    with pytest.raises(ConfigurationError, match="history"):
        AvroSchemaRegistry.from_directories(tmp_path)


def test_invalid_schema_file_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "broken.avsc"
    bad.write_text('{"type": "record", "name": "X", "fields": [{"name": "a", "type": "nope"}]}')
    with pytest.raises(ConfigurationError) as info:
        AvroSchemaRegistry.from_directories(tmp_path)
    assert info.value.context["path"] == str(bad)


def test_not_json_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "broken.avsc"
    bad.write_text("{not json")
    with pytest.raises(ConfigurationError) as info:
        AvroSchemaRegistry.from_directories(tmp_path)
    assert info.value.context["path"] == str(bad)
