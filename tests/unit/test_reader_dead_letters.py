"""EventReader and DeadLetterQueue against in-memory ports."""

import pytest

from connectors.avro import AvroCodec, AvroSchemaRegistry, bundled_schema_dir
from tests.memory import InMemoryLog
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
