"""EventReader and DeadLetterQueue against in-memory ports."""

import pytest

from connectors.avro import AvroCodec, AvroSchemaRegistry, bundled_schema_dir
from tests.fakes import InMemoryLog
from toolkit.dead_letter import DeadLetter, DeadLetterQueue
from toolkit.envelope import Envelope
from toolkit.errors import PublishError
from toolkit.hlc import HybridLogicalClock
from toolkit.ports import OutgoingRecord
from toolkit.positions import TopicPartition
from toolkit.publisher import EventPublisher
from toolkit.reader import EventReader

CANCELLED = "kct.examples.orders.OrderCancelled"


def _setup() -> tuple[InMemoryLog, EventPublisher, EventReader, AvroCodec]:
    log = InMemoryLog()
    codec = AvroCodec(AvroSchemaRegistry.from_directories(bundled_schema_dir()))
    publisher = EventPublisher(log, codec, HybridLogicalClock("writer"))
    reader = EventReader(log.consumer("g"), codec, DeadLetterQueue(log, "g"))
    reader.subscribe(["orders"])
    return log, publisher, reader, codec


def _cancelled(i: int) -> Envelope:
    return Envelope(CANCELLED, "order", f"o-{i}", 1, {"order_id": f"o-{i}", "reason": "r"})


def test_poison_record_goes_to_dead_letter_topic_and_reader_moves_on() -> None:
    log, publisher, reader, _ = _setup()
    publisher.publish("orders", _cancelled(1))
    log.produce([OutgoingRecord("orders", b"o-2", b"\x00garbage", (("event_id", b"x"),))])
    publisher.publish("orders", _cancelled(3))

    events = reader.poll()
    assert [e.envelope.aggregate_id for e in events] == ["o-1", "o-3"]
    assert reader.dead_lettered == {"undecodable": 1}
    reader.commit()
    assert log.committed["g"] == {TopicPartition("orders", 0): 3}

    (dead,) = log.topics["orders.dlq"]
    letter = DeadLetter.from_record(dead)
    assert letter.reason == "undecodable"
    assert "missing headers" in letter.error
    assert str(letter.source) == "orders[0]@1"
    assert letter.consumer_group == "g"
    assert dead.value == b"\x00garbage" and dead.key == b"o-2"


def test_unknown_schema_is_dead_lettered_with_its_own_reason() -> None:
    log, publisher, reader, _ = _setup()
    published = publisher.publish("orders", _cancelled(1))
    record = log.topics["orders"][0]
    headers = tuple(
        (k, b"kct.examples.orders.OrderCancelled@ffffffffffffffff" if k == "schema" else v)
        for k, v in record.headers
    )
    log.produce([OutgoingRecord("orders", record.key, record.value, headers)])
    events = reader.poll()
    assert [e.envelope.event_id for e in events] == [published.envelope.event_id]
    assert reader.dead_lettered == {"unknown_schema": 1}


def test_failed_dead_letter_write_rewinds_and_commits_nothing() -> None:
    log, publisher, reader, _ = _setup()
    publisher.publish("orders", _cancelled(1))
    log.produce([OutgoingRecord("orders", b"o-2", b"bad", ())])
    log.fail_topics.add("orders.dlq")
    with pytest.raises(PublishError):
        reader.poll()
    assert reader.commit() == {}
    # Once the dead-letter topic is writable again the same records come back.
    log.fail_topics.clear()
    events = reader.poll()
    assert [e.envelope.aggregate_id for e in events] == ["o-1"]
    assert reader.dead_lettered == {"undecodable": 1}


def test_reader_advances_its_clock_past_received_events() -> None:
    log, publisher, _, codec = _setup()
    published = publisher.publish("orders", _cancelled(1))
    clock = HybridLogicalClock("reader", lambda: 0)  # a wall clock far behind
    reader = EventReader(log.consumer("g2"), codec, DeadLetterQueue(log, "g2"), clock)
    reader.subscribe(["orders"])
    reader.poll()
    assert published.envelope.hlc is not None
    assert clock.now() > published.envelope.hlc


def _with_header(record: OutgoingRecord, name: str, value: bytes | None) -> OutgoingRecord:
    headers = tuple((k, v) for k, v in record.headers if k != name)
    if value is not None:
        headers += ((name, value),)
    return OutgoingRecord(record.topic, record.key, record.value, headers)


@pytest.mark.parametrize(
    ("header", "value", "expected"),
    [
        ("sequence", "\u00b2".encode(), "sequence is not a non-negative decimal integer"),
        ("sequence", "\u0661\u0662".encode(), "sequence is not a non-negative decimal integer"),
        ("sequence", b"9" * 5000, "sequence is not a non-negative decimal integer"),
        ("fence", "\u0663".encode(), "fence is not a non-negative decimal integer"),
        ("fence", b"7" * 5000, "fence is not a non-negative decimal integer"),
        ("hlc", "\u0661:0:n".encode(), "hlc is not wall_ms:logical:node"),
        ("hlc", b"1" * 5000 + b":0:n", "hlc is not wall_ms:logical:node"),
        ("aggregate_id", b"", "aggregate_id must be 1 to"),
        ("event_type", b"", "event_type must be 1 to"),
        ("event_id", b"", "event_id is not a UUID"),
        ("event_id", b"not-a-uuid", "event_id is not a UUID"),
        ("event_id", None, "missing headers"),
    ],
)
def test_each_malformed_header_is_dead_lettered_with_its_reason_between_good_events(
    header: str, value: bytes | None, expected: str
) -> None:
    log, publisher, reader, _ = _setup()
    publisher.publish("orders", _cancelled(1))
    good = publisher.publish("orders", _cancelled(2))
    (template,) = log.topics["orders"][good.position.offset :]
    log.topics["orders"].pop()
    as_outgoing = OutgoingRecord("orders", template.key, template.value, template.headers)
    log.produce([_with_header(as_outgoing, header, value)])
    publisher.publish("orders", _cancelled(3))

    events = reader.poll()
    assert [e.envelope.aggregate_id for e in events] == ["o-1", "o-3"]
    (dead,) = log.topics["orders.dlq"]
    letter = DeadLetter.from_record(dead)
    assert letter.reason == "undecodable"
    assert expected in letter.error
    assert str(letter.source) == "orders[0]@1"


def test_a_dead_letter_copy_too_large_for_the_broker_is_truncated_keeping_coordinates() -> None:
    log, _publisher, reader, _ = _setup()
    big = b"\x00" * 5000
    log.produce([OutgoingRecord("orders", b"o-9", big, (("event_id", b"x"),))])
    log.max_record_bytes = 5010  # the original fits; the copy with dlq headers does not
    assert reader.poll() == []
    reader.commit()
    (dead,) = log.topics["orders.dlq"]
    letter = DeadLetter.from_record(dead)
    assert dead.value is None and dead.key == b"o-9"
    assert dead.header("dlq_truncated") == b"value"
    assert dead.header("dlq_original_size") == str(5000 + 3 + len("event_id") + 1).encode()
    assert str(letter.source) == "orders[0]@0" and letter.reason == "undecodable"
    assert log.committed["g"] == {TopicPartition("orders", 0): 1}
