"""Redis lost under running projections and saga participants, on the real stack.

Nothing is restarted by hand but Redis itself: the runner and the
participants must wait the outage out, heal by themselves, and end with
every event applied exactly once. Redis restored from an older append-only
file (a host crash with ``appendfsync everysec``, a failover to a lagging
replica) must be detected and replayed, and no waiter may report a write as
applied while the read model lacks it, beyond the detection window.
"""

from __future__ import annotations

import shutil
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import redis

from examples.order_fulfillment.shop import Shop
from tests.integration.conftest import Endpoints
from tests.integration.helpers import end_token, running
from tests.order_stats import order_stats, placed_event
from tests.waiting import eventually
from toolkit.envelope import Envelope
from toolkit.projection import Handler, Projection, ProjectionRunner
from toolkit.read_model import ReadModelBatch
from toolkit.runtime.app import Kct
from toolkit.saga.participant import SagaParticipant
from toolkit.saga.state import SagaStatus

from .servers import kill_9, redis_data_dir, restart_stack, wait_for_redis

# How long after Redis answers again a waiter may still trust stale offsets.
DETECTION_WINDOW = 2.5


def _slow(projection: Projection, seconds: float) -> Projection:
    """The same read model, applied ``seconds`` per event (so a replay takes a while)."""
    slowed = Projection(projection.name, projection.topics)
    for event_type in projection.event_types:
        handler = projection.handler_for(event_type)
        assert handler is not None

        def wrapped(event: Envelope, view: ReadModelBatch, handler: Handler = handler) -> None:
            time.sleep(seconds)
            handler(event, view)

        slowed.on(event_type)(wrapped)
    return slowed


def _orders(start: int, count: int) -> list[Envelope]:
    return [placed_event(f"o{n}", f"c{n % 7}", 1) for n in range(start, start + count)]


def _publish_slowly(kct: Kct, topic: str, events: list[Envelope], stop: threading.Event) -> None:
    for start in range(0, len(events), 50):
        if stop.is_set():
            return
        kct.publisher.publish_all(topic, events[start : start + 50])
        time.sleep(0.05)


def test_redis_killed_mid_projection_the_runner_waits_it_out_and_heals_by_itself(
    kct: Kct, create_topic: Callable[..., str]
) -> None:
    topic = create_topic("redis-kill")
    name = f"kill-{uuid.uuid4().hex[:8]}"
    events = _orders(0, 3000)
    runner = kct.runner(order_stats(name, [topic]))
    stop = threading.Event()
    publisher = threading.Thread(target=_publish_slowly, args=(kct, topic, events, stop))
    with running(runner):
        publisher.start()
        eventually(lambda: kct.store.counters(name, "totals").get("events", 0) > 600, 60)
        kill_9("redis")
        time.sleep(3)  # an outage several back-off periods long
        assert not runner.health.healthy and "StoreError" in (runner.health.reason or "")
        restart_stack()
        publisher.join(120)
        kct.consistency.wait_for_consistency(end_token(kct, topic), [name], 60)
        eventually(lambda: runner.health.healthy, 10, "runner healthy again")
    stop.set()
    assert kct.store.counters(name, "totals") == {"events": 3000}
    cents = sum(kct.store.counters(name, f"customer:c{c}").get("cents", 0) for c in range(7))
    assert cents == 3000
    assert runner.stats.failed_cycles > 0
    ends = kct.admin.end_offsets([topic])
    assert kct.store.applied_offsets(name, list(ends)) == ends
    assert kct.admin.committed_offsets(name, [topic]) == ends


def test_redis_killed_mid_sagas_participants_heal_and_every_saga_ends_once(kct: Kct) -> None:
    shop = Shop(customers={f"customer-{n}": 1_000_000 for n in range(10)})
    shop.prepare(kct)
    client = kct.saga_client(shop.definitions, shop.state_projection)
    with shop.running(kct) as members:
        ids = client.start_many(shop.orders(200, decline_ratio=0.2, seed=11))
        time.sleep(0.3)
        kill_9("redis")
        time.sleep(3)
        loops = [m for m in members if isinstance(m, SagaParticipant | ProjectionRunner)]
        unhealthy = [m for m in loops if not m.health.healthy]
        restart_stack()
        states = client.wait(ids, 180)
    assert unhealthy, "no participant noticed the outage: nothing was tested"
    statuses = Counter(s["status"] for s in states.values())
    assert set(statuses) <= {SagaStatus.COMPLETED, SagaStatus.COMPENSATED}, statuses
    assert shop.invariants(kct, states) == []
    inventory = kct.saga_steps.counters(shop.read_model("inventory"), "moves")
    ran = sum(1 for s in states.values() if s["steps"][0]["execute"] == "SUCCESS")
    assert inventory.get("reservations", 0) == ran


def _snapshot_aof(url: str, into: Path) -> None:
    """A consistent copy of Redis's append-only files, as a host crash would leave them."""
    client = redis.Redis.from_url(url)
    try:
        client.bgrewriteaof()
        eventually(lambda: int(client.info("persistence")["aof_rewrite_in_progress"]) == 0, 30)
        eventually(lambda: int(client.info("persistence")["aof_rewrite_scheduled"]) == 0, 30)
        time.sleep(1.2)  # appendfsync everysec
    finally:
        client.close()
    shutil.copytree(redis_data_dir() / "appendonlydir", into)


def test_redis_restored_from_an_older_aof_is_detected_replayed_and_never_reported_applied(
    kct: Kct, create_topic: Callable[..., str], endpoints: Endpoints, tmp_path: Path
) -> None:
    topic = create_topic("aof")
    name = f"aof-{uuid.uuid4().hex[:8]}"
    # Replaying the lost writes takes longer than the detection window, so a
    # waiter that trusted stale offsets would be caught saying "applied".
    runner = kct.runner(_slow(order_stats(name, [topic]), 0.012), max_batch=20)
    with running(runner):
        kct.publisher.publish_all(topic, _orders(0, 300))
        kct.consistency.wait_for_consistency(end_token(kct, topic), [name], 60)
        _snapshot_aof(endpoints.redis_url, tmp_path / "older")
        kct.publisher.publish_all(topic, _orders(300, 300))
        later = end_token(kct, topic)
        kct.consistency.wait_for_consistency(later, [name], 60)
        assert kct.store.counters(name, "totals") == {"events": 600}

        # The host "crashes": Redis comes back from the older files.
        kill_9("redis")
        live = redis_data_dir() / "appendonlydir"
        shutil.rmtree(live)
        shutil.copytree(tmp_path / "older", live)
        (redis_data_dir() / "dump.rdb").unlink(missing_ok=True)
        restart_stack()
        wait_for_redis(endpoints.redis_url)
        back = time.monotonic()
        assert kct.store.counters(name, "totals").get("events", 0) == 300  # writes were lost

        # Every answer "applied" after the window must be true of the read model.
        false_claims: list[tuple[float, int]] = []
        deadline = back + 60
        while time.monotonic() < deadline:
            applied = kct.consistency.is_consistent(later, [name], timeout=0)
            held = kct.store.counters(name, "totals").get("events", 0)
            since = time.monotonic() - back
            if applied and held != 600 and since > DETECTION_WINDOW:
                false_claims.append((round(since, 2), held))
            if applied and held == 600:
                break
            time.sleep(0.02)
        assert false_claims == []
        kct.consistency.wait_for_consistency(later, [name], 60)
    assert kct.store.counters(name, "totals") == {"events": 600}
    cents = sum(kct.store.counters(name, f"customer:c{c}").get("cents", 0) for c in range(7))
    assert cents == 600
    assert runner.stats.store_rewinds >= 1
    ends = kct.admin.end_offsets([topic])
    assert kct.admin.committed_offsets(name, [topic]) == ends


def test_a_reset_under_a_running_runner_rebuilds_the_model_exactly(
    kct: Kct, create_topic: Callable[..., str]
) -> None:
    topic = create_topic("reset")
    name = f"reset-{uuid.uuid4().hex[:8]}"
    runner = kct.runner(order_stats(name, [topic]))
    stop = threading.Event()
    events = _orders(0, 2000)
    publisher = threading.Thread(target=_publish_slowly, args=(kct, topic, events, stop))
    with running(runner):
        publisher.start()
        eventually(lambda: kct.store.counters(name, "totals").get("events", 0) > 500, 60)
        kct.store.reset(name)  # while events keep arriving
        publisher.join(120)
        kct.consistency.wait_for_consistency(end_token(kct, topic), [name], 60)
    assert kct.store.counters(name, "totals") == {"events": 2000}
    cents = sum(kct.store.counters(name, f"customer:c{c}").get("cents", 0) for c in range(7))
    assert cents == 2000
    assert runner.stats.store_rewinds >= 1
