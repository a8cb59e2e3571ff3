"""Conflict resolution faults on the real stack (issue 18).

* a restart behind a backlog (kill -9 and SIGTERM) that hides a missing
  sequence: the gap is not expired before the backlog delivers it;
* ``on_gap: dead_letter`` copies the events held behind an expired gap to the
  dead-letter topic with their source coordinates;
* each kind of bad merge function dead-letters its event and the runner goes on;
* ``[deduplicate, reorder, last_write_wins]`` applies a writer's out-of-order
  events (3 published before 2, so 3 has the older HLC) instead of dropping them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.balances import balance_event
from tests.integration.conflict_worker import applied_order
from tests.integration.conftest import Endpoints
from tests.integration.helpers import peek, running
from tests.integration.test_conflicts import configured
from tests.waiting import eventually
from toolkit.envelope import Envelope
from toolkit.positions import ConsistencyToken
from toolkit.publisher import PublishedEvent
from toolkit.runtime.app import Kct

pytestmark = pytest.mark.integration

ACCOUNTS = 20


def sequences(kct: Kct, name: str, account: str) -> list[int]:
    doc = kct.store.get(name, f"order:{account}") or {"sequences": []}
    found: list[int] = doc["sequences"]
    return found


@pytest.fixture
def worker(endpoints: Endpoints) -> Iterator[Callable[[str, str, float], subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []

    def start(topic: str, group: str, max_wait: float) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(
            [
                sys.executable, "-m", "tests.integration.conflict_worker",
                "--topic", topic, "--group", group, "--max-wait", str(max_wait),
                "--bootstrap", endpoints.kafka_bootstrap, "--redis", endpoints.redis_url,
            ]
        )  # fmt: skip
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.parametrize("stop_signal", [signal.SIGKILL, signal.SIGTERM])
def test_a_restart_behind_a_backlog_does_not_expire_the_gap_the_backlog_fills(
    endpoints: Endpoints,
    create_topic: Callable[..., str],
    kct: Kct,
    worker: Callable[[str, str, float], subprocess.Popen[bytes]],
    stop_signal: signal.Signals,
) -> None:
    topic = create_topic("accounts", partitions=1)
    name = f"order-{uuid.uuid4().hex[:8]}"
    max_wait = 6.0
    publisher = kct.publisher
    first = worker(topic, name, max_wait)
    publisher.publish(topic, balance_event("warm-up", 1, 1))
    eventually(lambda: sequences(kct, name, "warm-up") == [1], 60, "the worker to start", every=0.2)
    accounts = [f"acct-{n}" for n in range(ACCOUNTS)]
    missing = {a: balance_event(a, 2, 2) for a in accounts}
    published_at = time.monotonic()
    for account in accounts:
        publisher.publish_all(topic, [balance_event(account, 1, 1), balance_event(account, 3, 3)])
    eventually(
        lambda: all(sequences(kct, name, a) == [1] for a in accounts),
        20,
        "sequence 1 applied",
        every=0.2,
    )
    os.kill(first.pid, stop_signal)
    first.wait(timeout=30)
    # While it is down, within the wait in event time: a backlog, then every
    # missing sequence 2 behind it.
    backlog = [balance_event(f"other-{n % 50}", n, n // 50 + 1) for n in range(6_000)]
    for at in range(0, len(backlog), 500):
        publisher.publish_all(topic, backlog[at : at + 500])
    publisher.publish_all(topic, list(missing.values()))
    assert time.monotonic() - published_at < max_wait, "the backlog took longer than the wait"
    # Restart once the wait is over by the wall clock (the old timer expired it here).
    time.sleep(max(0.0, published_at + max_wait + 1 - time.monotonic()))
    worker(topic, name, max_wait)
    eventually(
        lambda: (
            all(len(sequences(kct, name, a)) >= 3 for a in accounts)
            and sequences(kct, name, "other-49") == list(range(1, len(backlog) // 50 + 1))
        ),
        60,
        "the backlog applied",
        every=0.2,
    )
    assert {a: sequences(kct, name, a) for a in accounts} == {a: [1, 2, 3] for a in accounts}
    assert peek(endpoints.kafka_bootstrap, f"{topic}.dlq", partitions=1, seconds=1) == []


def test_on_gap_dead_letter_copies_the_held_events_with_their_source(
    endpoints: Endpoints, create_topic: Callable[..., str]
) -> None:
    topic = create_topic("accounts", partitions=1)
    name = f"order-{uuid.uuid4().hex[:8]}"
    kct = configured(
        endpoints,
        {
            "account": {
                "strategies": ["deduplicate", "reorder"],
                "reorder_max_wait": 0.5,
                "on_gap": "dead_letter",
            }
        },
    )
    try:
        held = [kct.publisher.publish(topic, balance_event("acct-g", n, n)) for n in (2, 3)]
        time.sleep(1.0)  # event time moves with the next record's timestamp
        later = kct.publisher.publish(topic, balance_event("acct-h", 1, 1))
        runner = kct.runner(applied_order(name, topic))
        with running(runner):
            kct.consistency.wait_for_consistency(ConsistencyToken.of([later.position]), [name], 30)
        assert sequences(kct, name, "acct-h") == [1]
        assert sequences(kct, name, "acct-g") == []
        dead = peek(endpoints.kafka_bootstrap, f"{topic}.dlq", partitions=1)
        assert sorted(
            (
                d.headers["dlq_reason"],
                d.headers["dlq_source_topic"],
                int(d.headers["dlq_source_offset"]),
            )
            for d in dead
        ) == [("conflict_gap_dead_lettered", topic, p.position.offset) for p in held]
        assert {d.headers["event_id"] for d in dead} == {p.envelope.event_id for p in held}
    finally:
        kct.close()


class Unserializable:
    pass


def merge_raises(current: dict[str, Any] | None, incoming: Envelope) -> Envelope:
    raise RuntimeError("merge exploded")


def merge_returns_str(current: dict[str, Any] | None, incoming: Envelope) -> Any:
    return "garbage"


def merge_returns_none(current: dict[str, Any] | None, incoming: Envelope) -> Any:
    return None


def merge_returns_another_aggregate(current: dict[str, Any] | None, incoming: Envelope) -> Any:
    return incoming.with_changes(aggregate_id="elsewhere")


def merge_returns_unserializable(current: dict[str, Any] | None, incoming: Envelope) -> Any:
    return incoming.with_changes(payload={"balance": Unserializable()})


@pytest.mark.parametrize(
    ("merge", "error"),
    [
        ("merge_raises", "RuntimeError"),
        ("merge_returns_str", "ConfigurationError"),
        ("merge_returns_none", "ConfigurationError"),
        ("merge_returns_another_aggregate", "ConfigurationError"),
        ("merge_returns_unserializable", "SerializationError"),
    ],
)
def test_a_bad_merge_dead_letters_its_event_and_the_partition_goes_on(
    endpoints: Endpoints, create_topic: Callable[..., str], merge: str, error: str
) -> None:
    topic = create_topic("accounts", partitions=1)
    name = f"order-{uuid.uuid4().hex[:8]}"
    kct = configured(
        endpoints,
        {
            "account": {
                "strategies": ["deduplicate", "merge"],
                "merge": f"tests.integration.test_conflict_restarts:{merge}",
            }
        },
    )
    try:
        published: list[PublishedEvent] = [
            kct.publisher.publish(topic, balance_event("acct-m", balance, sequence))
            for balance, sequence in ((10, 1), (20, 1), (30, 2))  # the second claims 1 again
        ]
        runner = kct.runner(applied_order(name, topic))
        with running(runner):
            kct.consistency.wait_for_consistency(
                ConsistencyToken.of(p.position for p in published), [name], 30
            )
        assert sequences(kct, name, "acct-m") == [1, 2]
        (dead,) = peek(endpoints.kafka_bootstrap, f"{topic}.dlq", partitions=1)
        assert dead.headers["dlq_reason"] == "conflict_merge_error"
        assert dead.headers["dlq_error"].startswith(error)
        assert int(dead.headers["dlq_source_offset"]) == published[1].position.offset
        assert runner.stats.conflicts_rejected == {"merge_error": 1}
    finally:
        kct.close()


def test_reorder_then_last_write_wins_applies_a_writers_out_of_order_events(
    endpoints: Endpoints, create_topic: Callable[..., str]
) -> None:
    topic = create_topic("accounts", partitions=1)
    name = f"order-{uuid.uuid4().hex[:8]}"
    kct = configured(endpoints, {"account": ["deduplicate", "reorder", "last_write_wins"]})
    try:
        # One writer publishing 1, 3, 2, 5, 4: the later sequences get older HLCs.
        published = [
            kct.publisher.publish(topic, balance_event("acct-o", n, n)) for n in (1, 3, 2, 5, 4)
        ]
        runner = kct.runner(applied_order(name, topic))
        with running(runner):
            kct.consistency.wait_for_consistency(
                ConsistencyToken.of(p.position for p in published), [name], 30
            )
        assert sequences(kct, name, "acct-o") == [1, 2, 3, 4, 5]
        assert runner.stats.conflicts_rejected == {}
    finally:
        kct.close()
