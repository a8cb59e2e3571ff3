"""A reorder gap on an idle partition closes through a gap tick in the log (real stack).

The wall clock is the only thing that can close a gap nobody fills on an
idle partition. The runner writes that decision into the partition as a
``kct.control.GapTick`` and takes it when it reads the tick back, so a
rebuild from offset 0, even after the missing event finally arrived,
decides exactly as the live run did.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import pytest

from connectors.kafka import KafkaRecordConsumer
from tests.balances import BALANCE_SET, balance_event
from tests.integration.helpers import end_token, running
from tests.waiting import eventually
from toolkit.conflicts import ConflictResolver, ResolverPolicy
from toolkit.envelope import Envelope, decode_record
from toolkit.projection import GAP_TICK, Projection
from toolkit.read_model import ReadModelBatch
from toolkit.runtime.app import Kct

pytestmark = pytest.mark.integration


def sequences(name: str, topic: str) -> Projection:
    projection = Projection(name, [topic])

    @projection.on(BALANCE_SET)
    def record(event: Envelope, view: ReadModelBatch) -> None:
        key = f"applied:{event.aggregate_id}"
        doc = view.get(key) or {"sequences": []}
        view.put(key, {"sequences": [*doc["sequences"], event.sequence]})

    return projection


def test_an_idle_gap_closes_through_a_tick_and_a_rebuild_decides_alike(
    kct: Kct, create_topic: Callable[..., str]
) -> None:
    topic = create_topic("ticks", partitions=1)
    policy = ResolverPolicy(("deduplicate", "reorder"), reorder_max_wait_ms=500, on_gap="skip")
    resolver = ConflictResolver({"account": policy})
    live = f"live-{uuid.uuid4().hex[:8]}"
    kct.publisher.publish_all(topic, [balance_event("acct", 1, 1), balance_event("acct", 3, 3)])
    runner = kct.runner(sequences(live, topic), resolver=resolver, idle_expiry=0.5)
    with running(runner):
        eventually(
            lambda: (kct.store.get(live, "applied:acct") or {}).get("sequences") == [1, 3], 30
        )
        assert runner.stats.gap_ticks == 1
        kct.publisher.publish(topic, balance_event("acct", 2, 2))  # too late
        kct.consistency.wait_for_consistency(end_token(kct, topic), [live], 30)
    assert kct.store.get(live, "applied:acct") == {"sequences": [1, 3]}
    ticks = [e for e in _events(kct, topic) if e.event_type == GAP_TICK]
    assert len(ticks) == 1 and ticks[0].payload["projection"] == live

    rebuilt = f"rebuilt-{uuid.uuid4().hex[:8]}"
    never_by_wall_clock = ConflictResolver({"account": policy})
    with running(
        kct.runner(sequences(rebuilt, topic), resolver=never_by_wall_clock, idle_expiry=None)
    ):
        kct.consistency.wait_for_consistency(end_token(kct, topic), [rebuilt], 30)
    assert kct.store.get(rebuilt, "applied:acct") == {"sequences": [1, 3]}


def _events(kct: Kct, topic: str) -> list[Envelope]:
    consumer = KafkaRecordConsumer(kct.settings.kafka, f"read-{uuid.uuid4().hex[:8]}")
    consumer.subscribe([topic])
    found: list[Envelope] = []
    deadline = time.monotonic() + 15
    try:
        while len(found) < 4 and time.monotonic() < deadline:
            found.extend(decode_record(r, kct.codec).envelope for r in consumer.poll(100, 0.5))
    finally:
        consumer.close()
    return found
