"""Conflict resolution in a projection on the real stack, configured by kct.yaml."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
import yaml

from tests.balances import BALANCE_SET, balance_event, balances
from tests.integration.conftest import Endpoints
from tests.integration.helpers import running
from toolkit.config import parse_config
from toolkit.envelope import Envelope
from toolkit.hlc import HybridLogicalClock
from toolkit.positions import ConsistencyToken
from toolkit.projection import Projection, resolutions_key
from toolkit.publisher import EventPublisher, PublishedEvent
from toolkit.read_model import ReadModelBatch
from toolkit.runtime.app import Kct

pytestmark = pytest.mark.integration


def configured(endpoints: Endpoints, conflicts: dict[str, Any]) -> Kct:
    text = yaml.safe_dump(
        {
            "version": 1,
            "service": "conflict-tests",
            "kafka": {"bootstrap_servers": endpoints.kafka_bootstrap},
            "zookeeper": {"hosts": endpoints.zookeeper_hosts},
            "redis": {"url": endpoints.redis_url},
            "conflicts": conflicts,
        }
    )
    return Kct.from_config(parse_config(text, source="test-kct.yaml"))


def skewed_publisher(kct: Kct, node: str, skew_ms: int) -> EventPublisher:
    """A writer whose wall clock is ``skew_ms`` off (it never sees the other's events)."""
    clock = HybridLogicalClock(node, lambda: time.time_ns() // 1_000_000 + skew_ms)
    return EventPublisher(kct.producer, kct.codec, clock)


def test_skewed_clocks_end_in_the_hlc_order_and_rejections_are_audited(
    endpoints: Endpoints, create_topic: Callable[..., str]
) -> None:
    topic = create_topic("accounts")
    name = f"balances-{uuid.uuid4().hex[:8]}"
    kct = configured(endpoints, {"account": "last_write_wins"})
    try:
        ahead = skewed_publisher(kct, "writer-ahead", +5_000)
        behind = skewed_publisher(kct, "writer-behind", -5_000)
        published: list[PublishedEvent] = []
        for n in range(1, 7):
            # Real time order: ahead, behind, ahead, ... The later writes of the
            # writer whose clock is behind carry older HLCs and must lose.
            writer, who = (ahead, "ahead") if n % 2 else (behind, "behind")
            published.append(writer.publish(topic, balance_event("acct-c", 100 * n, n, who)))
        runner = kct.runner(balances(name, topic))
        with running(runner):
            kct.consistency.wait_for_consistency(
                ConsistencyToken.of(p.position for p in published), [name], 20
            )
        winner = max(published, key=lambda p: p.envelope.hlc or 0)
        assert winner.envelope.payload["writer"] == "ahead"
        doc = kct.store.get(name, "account:acct-c")
        assert doc == {"balance": winner.envelope.payload["balance"], "seq": 5}
        losers = {
            p.envelope.event_id for p in published if p.envelope.payload["writer"] == "behind"
        }
        assert runner.stats.conflicts_rejected == {"stale_hlc": len(losers)}
        trail = kct.store.get(name, resolutions_key("account", "acct-c"))
        assert trail is not None
        rejected = {
            r["event_id"]: r["reason"] for entry in trail["entries"] for r in entry["rejected"]
        }
        assert rejected == dict.fromkeys(losers, "stale_hlc")
        assert kct.resolver is not None
        assert kct.resolver.counts[("last_write_wins", "stale_hlc")] == len(losers)
    finally:
        kct.close()


def applied_order(name: str, topic: str) -> Projection:
    projection = Projection(name, [topic])

    @projection.on(BALANCE_SET)
    def record(event: Envelope, view: ReadModelBatch) -> None:
        key = f"order:{event.aggregate_id}"
        doc = view.get(key) or {"sequences": []}
        view.put(key, {"sequences": [*doc["sequences"], event.sequence]})

    return projection


def test_duplicates_and_out_of_order_events_apply_once_in_sequence_order_and_gaps_are_reported(
    endpoints: Endpoints, create_topic: Callable[..., str]
) -> None:
    topic = create_topic("accounts")
    name = f"order-{uuid.uuid4().hex[:8]}"
    kct = configured(
        endpoints,
        {
            "account": {
                "strategies": ["deduplicate", "reorder", "last_write_wins"],
                # Event time: the gap before 3 is measured in record timestamps, so
                # it must outlast publishing 3, 1, 1 and 2 on a loaded machine.
                "reorder_max_wait": 3.0,
                "on_gap": "skip",
            }
        },
    )
    try:
        events = {n: balance_event("acct-r", n, n) for n in range(1, 7)}
        base = time.time_ns() // 1_000_000

        def stamped_at_its_sequence(n: int) -> PublishedEvent:
            # Each event keeps the HLC it had when written (in sequence order);
            # only its delivery is out of order, as after a retry or a replay.
            clock = HybridLogicalClock("writer", lambda: base + 10 * n)
            return EventPublisher(kct.producer, kct.codec, clock).publish(topic, events[n])

        # Delivered: 3, 1, 1 again (same event id), 2, then 6 and 5 with 4 never sent.
        stamped = [stamped_at_its_sequence(n) for n in (3, 1, 1, 2, 6, 5)]
        runner = kct.runner(applied_order(name, topic))
        with running(runner):
            kct.consistency.wait_for_consistency(
                ConsistencyToken.of(p.position for p in stamped), [name], 20
            )
            deadline = time.monotonic() + 20  # the gap before 5 closes after 3 s idle
            while time.monotonic() < deadline:
                doc = kct.store.get(name, "order:acct-r") or {"sequences": []}
                if doc["sequences"][-1:] == [6]:
                    break
                time.sleep(0.1)
        assert doc["sequences"] == [1, 2, 3, 5, 6]
        trail = kct.store.get(name, resolutions_key("account", "acct-r"))
        assert trail is not None
        reasons = [entry["reason"] for entry in trail["entries"]]
        assert "duplicate" in reasons
        gaps = [entry["gap"] for entry in trail["entries"] if entry["gap"]]
        assert gaps == [[4, 4]]
    finally:
        kct.close()
