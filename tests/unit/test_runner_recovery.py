"""A projection runner rides out store outages and follows its stored offsets.

In-memory ports: a store that fails on demand (like Redis down), and one
whose offsets move back under the runner (like Redis restored from an older
AOF, or ``store.reset``). The runner must never stop, never lose or repeat an
event, and heal without a restart.
"""

from __future__ import annotations

import contextlib
import copy
import threading
from typing import Any

from connectors.avro import AvroCodec, AvroSchemaRegistry, bundled_schema_dir
from tests.fakes import FlakyReadModelStore, InMemoryLog, InMemoryPositions
from tests.order_stats import order_stats, placed_event
from tests.waiting import eventually
from toolkit.dead_letter import DeadLetterQueue
from toolkit.errors import StoreError
from toolkit.hlc import HybridLogicalClock
from toolkit.positions import TopicPartition
from toolkit.projection import ProjectionRunner
from toolkit.publisher import EventPublisher

CODEC = AvroCodec(AvroSchemaRegistry.from_directories(bundled_schema_dir()))
TP = TopicPartition("orders", 0)


class World:
    def __init__(self) -> None:
        self.log = InMemoryLog()
        self.store = FlakyReadModelStore()
        self.positions = InMemoryPositions()
        self.publisher = EventPublisher(self.log, CODEC, HybridLogicalClock("w"))

    def runner(self, **options: Any) -> ProjectionRunner:
        """The world's runner: its store checked every cycle, short back-offs;
        ``options``: further ProjectionRunner keywords."""
        return ProjectionRunner(
            order_stats("stats", ["orders"]),
            self.log.consumer("stats"),
            CODEC,
            self.store,
            DeadLetterQueue(self.log, "stats"),
            notifier=self.positions,
            store_check_interval=0.0,
            max_backoff=0.05,
            **options,
        )

    def publish(self, count: int, start: int = 0) -> None:
        for i in range(start, start + count):
            self.publisher.publish("orders", placed_event(f"o{i}", "c1", 1))

    def events_counted(self) -> int:
        return self.store.counters("stats", "totals").get("events", 0)


def test_a_store_outage_of_any_length_is_waited_out_and_nothing_is_lost_or_doubled() -> None:
    world = World()
    runner = world.runner()
    world.publish(5)
    stop = threading.Event()
    thread = threading.Thread(target=runner.run, args=(stop,))
    thread.start()
    try:
        eventually(lambda: world.events_counted() == 5, 5.0, every=0.01)
        assert runner.health.healthy
        world.store.down.set()
        world.publish(7, start=5)
        eventually(
            lambda: world.store.failures > 20, 5.0, every=0.01
        )  # many cycles failed, the loop lives
        health = runner.health
        assert not health.healthy and health.reason is not None
        assert "StoreError" in health.reason and health.failures > 1
        assert thread.is_alive()
        world.store.down.clear()
        eventually(lambda: world.events_counted() == 12, 5.0, every=0.01)
        eventually(lambda: runner.health.healthy, 5.0, every=0.01)
    finally:
        stop.set()
        thread.join(5)
    assert world.store.applied_offsets("stats", [TP]) == {TP: 12}
    assert world.log.committed["stats"] == {TP: 12}
    assert runner.stats.failed_cycles > 0


def test_a_store_down_at_assignment_applies_nothing_until_it_can_tell_where_to_start() -> None:
    world = World()
    world.publish(3)
    world.store.down.set()
    runner = world.runner()  # assignment happens now; the store cannot answer
    stop = threading.Event()
    thread = threading.Thread(target=runner.run, args=(stop,))
    thread.start()
    try:
        eventually(lambda: world.store.failures > 5, 5.0, every=0.01)
        assert world.events_counted() == 0
        world.store.down.clear()
        eventually(lambda: world.events_counted() == 3, 5.0, every=0.01)
    finally:
        stop.set()
        thread.join(5)
    assert world.store.applied_offsets("stats", [TP]) == {TP: 3}


def test_a_reset_under_a_running_runner_rebuilds_the_model_and_rewinds_the_group() -> None:
    world = World()
    runner = world.runner()
    world.publish(4)
    runner.run_once()
    assert world.events_counted() == 4
    assert world.positions.latest("stats") == {TP: 4}
    world.store.reset("stats")
    runner.run_once()  # notices at once (check interval 0), rewinds, replays
    runner.run_once()
    assert world.events_counted() == 4
    assert world.store.applied_offsets("stats", [TP]) == {TP: 4}
    assert runner.stats.store_rewinds == 1


def test_stored_offsets_moving_back_rewind_kafka_and_waiters_before_the_replay() -> None:
    world = World()
    runner = world.runner()
    world.publish(3)
    runner.run_once()
    snapshot = copy.deepcopy((world.store.counter_values, world.store.offsets))
    world.publish(3, start=3)
    runner.run_once()
    assert world.events_counted() == 6 and world.log.committed["stats"] == {TP: 6}
    # The store comes back from an older copy: it lost the last three events.
    world.store.counter_values, world.store.offsets = snapshot
    world.store.down.set()  # and stays down a moment: nothing may be replayed blindly
    runner_thread_stop = threading.Event()
    thread = threading.Thread(target=runner.run, args=(runner_thread_stop,))
    thread.start()
    try:
        eventually(lambda: world.store.failures > 2, 5.0, every=0.01)
        world.store.down.clear()
        eventually(lambda: world.events_counted() == 6, 5.0, every=0.01)
    finally:
        runner_thread_stop.set()
        thread.join(5)
    assert world.store.applied_offsets("stats", [TP]) == {TP: 6}
    assert runner.stats.store_rewinds == 1
    assert world.log.committed["stats"] == {TP: 6}


def test_a_rewind_announcement_lowers_what_waiters_heard() -> None:
    world = World()
    runner = world.runner()
    world.publish(3)
    runner.run_once()
    assert world.positions.latest("stats") == {TP: 3}
    world.store.reset("stats")
    world.store.down.set()
    for _ in range(3):
        with contextlib.suppress(StoreError):
            runner.run_once()
    world.store.down.clear()
    runner.run_once()  # resync: commits and announces 0 as a rewind before replaying
    assert world.log.committed["stats"][TP] in (0, 3)
    heard = world.positions.latest("stats")[TP]
    assert heard in (0, 3) and world.store.applied_offsets("stats", [TP]).get(TP, 0) >= heard
