"""Hostile records on the real stack: each is dead-lettered, none stops its partition.

Every kind of poison record found by attacking the toolkit sits between good
events on one partition. The runner must apply every good event exactly
once, copy each poison record to the dead-letter topic with its reason,
commit up to the end of the log and stay alive, without a restart. The
record whose header name is not UTF-8 is written with kcat (Python clients
cannot write one); confluent-kafka crashes the process if such headers are
read twice.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Callable

from confluent_kafka import Producer

from tests.integration.conftest import Endpoints
from tests.integration.helpers import running
from tests.order_stats import order_stats, placed_event
from tests.waiting import eventually
from toolkit.dead_letter import DeadLetter, dead_letter_topic
from toolkit.envelope import encode_envelope
from toolkit.hlc import HLCTimestamp
from toolkit.positions import TopicPartition
from toolkit.runtime.app import Kct

from .waiting import read_topic

Headers = list[tuple[str, str | bytes | None]]


def _with(headers: Headers, name: str, value: bytes | None) -> Headers:
    return [*(h for h in headers if h[0] != name), (name, value)]


# name -> how a good event's headers are spoiled (and what the dead letter says)
POISONS: dict[str, tuple[Callable[[Headers], Headers], str]] = {
    "superscript sequence": (lambda h: _with(h, "sequence", "\u00b2".encode()), "sequence"),
    "arabic-indic sequence": (lambda h: _with(h, "sequence", "\u0661\u0662".encode()), "sequence"),
    "5,000-digit sequence": (lambda h: _with(h, "sequence", b"9" * 5000), "sequence"),
    "5,000-digit hlc": (lambda h: _with(h, "hlc", b"1" * 5000 + b":0:n"), "hlc"),
    "arabic-indic fence": (lambda h: _with(h, "fence", "\u0663".encode()), "fence"),
    "empty aggregate_id": (lambda h: _with(h, "aggregate_id", b""), "aggregate_id"),
    "null event_id": (lambda h: _with(h, "event_id", None), "event_id"),
    "event_id not a uuid": (lambda h: _with(h, "event_id", b"not-a-uuid"), "event_id"),
    "empty event_type": (lambda h: _with(h, "event_type", b""), "event_type"),
}


def test_every_poison_kind_between_good_events_is_dead_lettered_and_the_runner_lives(
    kct: Kct, create_topic: Callable[..., str], endpoints: Endpoints
) -> None:
    topic = create_topic("poison", partitions=1)
    name = f"poison-{uuid.uuid4().hex[:8]}"
    raw = Producer({"bootstrap.servers": endpoints.kafka_bootstrap, "message.max.bytes": 2_000_000})
    good_count = 0
    poison_offsets: dict[int, str] = {}

    def good() -> None:
        nonlocal good_count
        kct.publisher.publish(topic, placed_event(f"o{good_count}", "c1", 1))
        good_count += 1

    def offset_of_next() -> int:
        return sum(kct.admin.end_offsets([topic]).values())

    template = encode_envelope(
        topic, placed_event("bad", "c1", 1000), kct.codec, HLCTimestamp(1, 0, "attacker")
    )[1]
    good()
    for kind, (spoil, _header) in POISONS.items():
        poison_offsets[offset_of_next()] = kind
        original: Headers = list(template.headers)
        spoiled = spoil(original)
        raw.produce(topic, template.value, template.key, headers=spoiled)
        raw.flush(10)
        good()
    # A header name that is not UTF-8, written with kcat.
    poison_offsets[offset_of_next()] = "non-UTF-8 header name"
    subprocess.run(
        [
            b"kcat",
            b"-P",
            b"-b",
            endpoints.kafka_bootstrap.encode(),
            b"-t",
            topic.encode(),
            b"-k",
            b"bad",
            b"-H",
            b"\xff\xfename=value",
            b"-H",
            b"event_id=x",
        ],
        input=b"not an event\n",
        check=True,
        timeout=30,
    )
    good()
    # A value close to the broker's message.max.bytes: the dead-letter copy
    # (with its added headers) is too large and must be truncated.
    poison_offsets[offset_of_next()] = "value near message.max.bytes"
    big_headers: Headers = list(template.headers)
    raw.produce(topic, b"\x07" * 1_047_000, b"big", headers=big_headers)
    raw.flush(10)
    good()
    end = offset_of_next()
    assert end == good_count + len(poison_offsets)

    runner = kct.runner(order_stats(name, [topic]))
    with running(runner):
        eventually(lambda: kct.admin.committed_offsets(name, [topic]) == {_tp(topic): end}, 60)
        assert runner.health.healthy, runner.health
    assert kct.store.counters(name, "totals") == {"events": good_count}
    assert kct.store.counters(name, "customer:c1") == {"orders": good_count, "cents": good_count}
    assert kct.store.applied_offsets(name, [_tp(topic)]) == {_tp(topic): end}

    letters = [DeadLetter.from_record(r) for r in read_topic(kct, dead_letter_topic(topic), 12)]
    by_offset = {letter.source.offset: letter for letter in letters}
    assert sorted(by_offset) == sorted(poison_offsets), (by_offset, poison_offsets)
    for offset, kind in poison_offsets.items():
        letter = by_offset[offset]
        assert letter.reason == "undecodable", kind
        assert letter.source.topic == topic and letter.consumer_group == name
        header = POISONS[kind][1] if kind in POISONS else None
        assert header is None or header in letter.error, (kind, letter.error)
    truncated = by_offset[max(poison_offsets)]
    assert truncated.record.value is None
    assert truncated.record.header("dlq_truncated") is not None
    unreadable = by_offset[sorted(poison_offsets)[-2]]
    assert "headers unreadable" in unreadable.error


def _tp(topic: str) -> TopicPartition:
    return TopicPartition(topic, 0)
