"""Dead-letter listing and replay on in-memory ports: reasons, sources, filters,
truncated copies, and once-only replay by event id."""

from __future__ import annotations

import pytest

from connectors.avro import AvroCodec, AvroSchemaRegistry, bundled_schema_dir
from tests.fakes import InMemoryLog, InMemoryReplayMarkers, InMemoryTopicBrowser
from toolkit.dead_letter import DeadLetterQueue
from toolkit.dead_letter_replay import REPLAYED_FROM, DeadLetterReplayer
from toolkit.envelope import Envelope
from toolkit.errors import PublishError
from toolkit.hlc import HybridLogicalClock
from toolkit.ports import ConsumedRecord, OutgoingRecord
from toolkit.positions import Position
from toolkit.publisher import EventPublisher

CODEC = AvroCodec(AvroSchemaRegistry.from_directories(bundled_schema_dir()))
CANCELLED = "kct.examples.orders.OrderCancelled"


class Setup:
    def __init__(self) -> None:
        self.now = 1_000
        self.log = InMemoryLog()
        self.log.clock_ms = lambda: self.now
        self.publisher = EventPublisher(self.log, CODEC, HybridLogicalClock("writer"))
        self.markers = InMemoryReplayMarkers()
        self.browser = InMemoryTopicBrowser(self.log)
        self.replayer = DeadLetterReplayer(self.browser, self.log, self.markers)

    def publish(self, n: int, reason: str = "r") -> ConsumedRecord:
        payload = {"order_id": f"o-{n}", "reason": reason}
        event = Envelope(CANCELLED, "order", f"o-{n}", 1, payload)
        position = self.publisher.publish("orders", event).position
        return self.log.topics["orders"][position.offset]

    def dead_letter(self, record: ConsumedRecord, reason: str, group: str = "view") -> None:
        DeadLetterQueue(self.log, group).send(record, reason, f"{reason} happened")


def test_letters_show_reason_error_source_and_filter_by_reason_and_time() -> None:
    s = Setup()
    first, second = s.publish(1), s.publish(2)
    s.dead_letter(first, "handler_error")
    s.now = 5_000
    s.dead_letter(second, "stale_fence")
    letters = s.replayer.letters("orders.dlq")
    assert [(e.reason, e.letter and str(e.letter.source)) for e in letters] == [
        ("handler_error", "orders[0]@0"),
        ("stale_fence", "orders[0]@1"),
    ]
    assert letters[0].event_type == CANCELLED and letters[0].event_id
    assert letters[0].to_json()["error"] == "handler_error happened"
    assert [e.reason for e in s.replayer.letters("orders.dlq", reasons=["stale_fence"])] == [
        "stale_fence"
    ]
    assert len(s.replayer.letters("orders.dlq", since_ms=4_000)) == 1


def test_replay_writes_the_original_back_once_whoever_dead_lettered_it() -> None:
    s = Setup()
    original = s.publish(1)
    s.dead_letter(original, "handler_error", group="view-a")
    s.dead_letter(original, "handler_error", group="view-b")  # the same record, twice
    results = s.replayer.replay("orders.dlq")
    assert [r.outcome for r in results] == ["replayed", "already_replayed"]
    assert results[1].copy == results[0].copy == "orders:0:1"
    copy = s.log.topics["orders"][1]
    assert (copy.key, copy.value) == (original.key, original.value)
    assert not any(k.startswith("dlq_") and k != REPLAYED_FROM for k, _ in copy.headers)
    assert copy.header(REPLAYED_FROM) == b"orders.dlq:0:0"
    assert copy.header("event_id") == original.header("event_id")
    again = s.replayer.replay("orders.dlq")
    assert [r.outcome for r in again] == ["already_replayed", "already_replayed"]
    assert len(s.log.topics["orders"]) == 2


def test_a_replayed_copy_that_fails_again_can_be_replayed_again_once() -> None:
    s = Setup()
    s.dead_letter(s.publish(1), "handler_error")
    s.replayer.replay("orders.dlq")
    copy = s.log.topics["orders"][1]
    s.dead_letter(copy, "handler_error")  # the handler failed on the copy too
    results = s.replayer.replay("orders.dlq")
    assert [r.outcome for r in results] == ["already_replayed", "replayed"]
    assert [r.outcome for r in s.replayer.replay("orders.dlq")] == ["already_replayed"] * 2
    assert len(s.log.topics["orders"]) == 3


def test_a_truncated_copy_is_replayed_from_the_original_in_the_source_topic() -> None:
    s = Setup()
    original = s.publish(1, reason="x" * 5_000)
    s.log.max_record_bytes = 5_200  # the copy's headers push it over
    s.dead_letter(original, "handler_error")
    s.log.max_record_bytes = None
    (letter,) = s.replayer.letters("orders.dlq")
    assert letter.truncated == "value" and letter.record.value is None
    (result,) = s.replayer.replay("orders.dlq")
    assert result.outcome == "replayed"
    assert s.log.topics["orders"][-1].value == original.value


def test_a_truncated_copy_whose_original_is_gone_is_reported_and_not_marked() -> None:
    s = Setup()
    s.publish(1, reason="x" * 5_000)
    original = s.log.topics["orders"][0]
    s.log.max_record_bytes = 5_200
    s.dead_letter(original, "handler_error")
    s.log.max_record_bytes = None

    class Gone(InMemoryTopicBrowser):
        def fetch(self, position: Position, timeout: float) -> ConsumedRecord | None:
            return None

    replayer = DeadLetterReplayer(Gone(s.log), s.log, s.markers)
    assert [r.outcome for r in replayer.replay("orders.dlq")] == ["original_gone"]
    assert s.markers.marks == {}


def test_a_claim_left_by_a_dead_replayer_is_in_doubt_until_forced() -> None:
    s = Setup()
    s.dead_letter(s.publish(1), "handler_error")
    (letter,) = s.replayer.letters("orders.dlq")
    assert letter.mark_key is not None
    s.markers.claim(letter.mark_key, {"state": "claimed", "dlq": "x"})  # died after claiming
    assert [r.outcome for r in s.replayer.replay("orders.dlq")] == ["in_doubt"]
    assert [r.outcome for r in s.replayer.replay("orders.dlq", force=True)] == ["replayed"]
    assert [r.outcome for r in s.replayer.replay("orders.dlq", force=True)] == ["already_replayed"]


def test_dry_run_writes_and_marks_nothing_and_a_refused_write_releases_the_claim() -> None:
    s = Setup()
    s.dead_letter(s.publish(1), "handler_error")
    assert [r.outcome for r in s.replayer.replay("orders.dlq", dry_run=True)] == ["would_replay"]
    assert s.markers.marks == {} and len(s.log.topics["orders"]) == 1
    s.log.fail_topics.add("orders")
    with pytest.raises(PublishError):
        s.replayer.replay("orders.dlq")
    assert s.markers.marks == {}
    s.log.fail_topics.clear()
    assert [r.outcome for r in s.replayer.replay("orders.dlq")] == ["replayed"]


def test_a_record_without_dead_letter_headers_is_listed_and_never_replayed() -> None:
    s = Setup()
    s.log.produce([OutgoingRecord("orders.dlq", b"k", b"v")])
    (entry,) = s.replayer.letters("orders.dlq")
    assert entry.letter is None and entry.reason is None
    assert [r.outcome for r in s.replayer.replay("orders.dlq")] == ["not_a_dead_letter"]
