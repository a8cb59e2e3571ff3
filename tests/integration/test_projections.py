"""Projections, waiting and read-after-write against the real Kafka and Redis."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from connectors.kafka import KafkaRecordConsumer
from tests.integration.conftest import Endpoints
from tests.integration.helpers import running
from tests.order_stats import cancelled_event, order_stats, placed_event, replay
from toolkit.consistency import EventualConsistencyManager
from toolkit.envelope import Envelope, decode_record
from toolkit.errors import ConsistencyTimeout
from toolkit.positions import ConsistencyToken, Position, TopicPartition
from toolkit.projection import Projection
from toolkit.runtime.app import Kct

REPO = Path(__file__).resolve().parents[2]


def all_events(kct: Kct, topic: str, expected: int, timeout_s: float = 30) -> list[Envelope]:
    consumer = KafkaRecordConsumer(kct.settings.kafka, f"replay-{uuid.uuid4().hex[:8]}")
    consumer.subscribe([topic])
    events: list[Envelope] = []
    deadline = time.monotonic() + timeout_s
    while len(events) < expected and time.monotonic() < deadline:
        events.extend(decode_record(r, kct.codec).envelope for r in consumer.poll(500, 0.5))
    consumer.close()
    assert len(events) == expected
    return events


def order_events(count: int, prefix: str = "o") -> list[Envelope]:
    """Placed events, and a cancellation for every third order."""
    events: list[Envelope] = []
    for n in range(count):
        events.append(placed_event(f"{prefix}{n}", f"c{n % 5}", 100 + n))
        if n % 3 == 0:
            events.append(cancelled_event(f"{prefix}{n}"))
    return events


def test_waiter_is_woken_by_the_commit_and_returns_at_once_when_applied(
    kct: Kct, create_topic: Callable[..., str]
) -> None:
    topic = create_topic("wake")
    name = f"proj-{uuid.uuid4().hex[:8]}"
    projection = order_stats(name, [topic])
    published = kct.publisher.publish_all(topic, order_events(5))
    token = kct.publisher.token_of(published)
    # Kafka is checked at the start and then only after 20 s without an
    # announcement: a quick return proves the pub/sub announcement woke us.
    slow_fallback = EventualConsistencyManager(
        kct.tracker, kct.listener, first_check_after=20, max_check_interval=20
    )
    with running(kct.runner(projection)):
        started = time.monotonic()
        slow_fallback.wait_for_consistency(token, name, timeout=60)
        woken_after = time.monotonic() - started
    assert woken_after < 10
    assert kct.store.get(name, "order:o1") == {"status": "placed", "total": 101, "seq": 1}
    assert kct.store.get(name, "order:o0") == {"status": "cancelled", "total": 100, "seq": 2}
    # Already applied: one Kafka check, no waiting (no listener involved at all).
    no_listener = EventualConsistencyManager(kct.tracker, None, first_check_after=20)
    started = time.monotonic()
    no_listener.wait_for_consistency(token.to_string(), [name], timeout=0)
    assert time.monotonic() - started < 5


def test_timeout_names_the_lagging_projection_and_partitions(
    kct: Kct, create_topic: Callable[..., str]
) -> None:
    topic = create_topic("lag", partitions=3)
    published = kct.publisher.publish_all(topic, [placed_event(f"x{n}", "c", 1) for n in range(9)])
    token = kct.publisher.token_of(published)
    ghost = f"ghost-{uuid.uuid4().hex[:6]}"
    with pytest.raises(ConsistencyTimeout) as info:
        kct.consistency.wait_for_consistency(token, [ghost], timeout=0.5)
    behind = info.value.context["behind"]
    expected = {f"{topic}[{tp.partition}]": offset + 1 for tp, offset in token.items()}
    assert behind == {ghost: expected}
    assert ghost in str(info.value) and f"{topic}[" in str(info.value)
    assert kct.consistency.is_consistent(token, ghost, timeout=0.2) is False


def test_wait_for_an_event_known_only_by_id(kct: Kct, create_topic: Callable[..., str]) -> None:
    topic = create_topic("by-id")
    name = f"proj-{uuid.uuid4().hex[:8]}"
    published = kct.publisher.publish(topic, placed_event("o-id", "c", 5))
    with running(kct.runner(order_stats(name, [topic]))):
        kct.consistency.wait_for_event("o-id", published.envelope.event_id, name, timeout=30)
    assert kct.store.get(name, "order:o-id") is not None


def test_read_after_write_never_returns_a_stale_read(
    kct: Kct, create_topic: Callable[..., str]
) -> None:
    topic = create_topic("raw", partitions=3)
    name = f"proj-{uuid.uuid4().hex[:8]}"
    orders = [f"raw-{n}" for n in range(4)]
    raw = kct.read_after_write([name], timeout=30)
    stale = []
    with running(kct.runner(order_stats(name, [topic]))):
        for i in range(1000):
            order = orders[i % 4]
            sequence = i // 4 + 1

            def command(order: str = order, sequence: int = sequence) -> list[Position]:
                event = placed_event(order, "c", 1, sequence=sequence)
                return [kct.publisher.publish(topic, event).position]

            def query(order: str = order) -> dict[str, Any] | None:
                return kct.store.get(name, f"order:{order}")

            result = raw.execute(command, query)
            if result.value is None or result.value["seq"] < sequence:
                stale.append((i, result.value))
    assert stale == []


def _worker(endpoints: Endpoints, topic: str, group: str, *extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.integration.projection_worker",
            "--topic",
            topic,
            "--group",
            group,
            "--bootstrap",
            endpoints.kafka_bootstrap,
            "--redis",
            endpoints.redis_url,
            *extra,
        ],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


def _assert_equals_replay(kct: Kct, projection: Projection, topic: str, count: int) -> None:
    events = all_events(kct, topic, count)
    assert kct.store.dump(projection.name) == replay(projection, events)
    end = kct.admin.end_offsets([topic])
    assert kct.admin.committed_offsets(projection.name, [topic]) == {
        tp: o for tp, o in end.items() if o > 0
    }


def test_kill_9_between_apply_and_commit_then_restart_equals_a_replay(
    kct: Kct, endpoints: Endpoints, create_topic: Callable[..., str]
) -> None:
    topic = create_topic("crash", partitions=3)
    group = f"proj-{uuid.uuid4().hex[:8]}"
    events = order_events(150)
    kct.publisher.publish_all(topic, events)

    crashed = _worker(endpoints, topic, group, "--crash-after-batches", "3", "--max-batch", "20")
    assert crashed.wait(timeout=120) == -signal.SIGKILL
    partitions = [TopicPartition(topic, p) for p in range(3)]
    in_redis = kct.store.applied_offsets(group, partitions)
    in_kafka = kct.admin.committed_offsets(group, [topic])
    # The crash hit after Redis had the batch and before Kafka did.
    assert any(offset > in_kafka.get(tp, 0) for tp, offset in in_redis.items())

    finished = _worker(endpoints, topic, group, "--exit-when-caught-up")
    assert finished.wait(timeout=180) == 0
    _assert_equals_replay(kct, order_stats(group, [topic]), topic, len(events))


def test_random_kill_9_while_events_arrive_loses_and_duplicates_nothing(
    kct: Kct, endpoints: Endpoints, create_topic: Callable[..., str]
) -> None:
    topic = create_topic("chaos", partitions=3)
    group = f"proj-{uuid.uuid4().hex[:8]}"
    rng = random.Random(7)
    published = 0
    for round_ in range(4):
        worker = _worker(endpoints, topic, group, "--max-batch", "10")
        batch = order_events(60, prefix=f"r{round_}-")
        kct.publisher.publish_all(topic, batch)
        published += len(batch)
        time.sleep(rng.uniform(1.0, 3.0))
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=30)
    finished = _worker(endpoints, topic, group, "--exit-when-caught-up")
    assert finished.wait(timeout=180) == 0
    _assert_equals_replay(kct, order_stats(group, [topic]), topic, published)


def test_two_runners_split_partitions_and_survive_rebalances_without_double_apply(
    kct: Kct, create_topic: Callable[..., str]
) -> None:
    topic = create_topic("rebalance", partitions=4)
    name = f"proj-{uuid.uuid4().hex[:8]}"
    projection = order_stats(name, [topic])
    first = kct.runner(projection, max_batch=10)
    tokens: list[ConsistencyToken] = []

    def publish(prefix: str) -> None:
        published = kct.publisher.publish_all(topic, order_events(80, prefix=prefix))
        tokens.append(kct.publisher.token_of(published))

    with running(first):
        publish("a")  # the second runner joins while these are being applied
        second_app = Kct(kct.settings)
        try:
            with running(second_app.runner(projection, max_batch=10)) as second:
                deadline = time.monotonic() + 60
                while not (first.stats.owned and second.stats.owned):
                    assert time.monotonic() < deadline, "the group never split its partitions"
                    time.sleep(0.1)
                publish("b")
                kct.consistency.wait_for_consistency(tokens[-1], name, timeout=60)
                split = (set(first.stats.owned), set(second.stats.owned))
                assert split[0] and split[1] and not split[0] & split[1]
                assert second.stats.applied > 0
            publish("c")  # the second runner left: the first takes everything back
            kct.consistency.wait_for_consistency(tokens[-1], name, timeout=60)
        finally:
            second_app.close()
    total = sum(len(order_events(80)) for _ in range(3))
    _assert_equals_replay(kct, projection, topic, total)
