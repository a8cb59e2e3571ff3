"""ProjectionRunner, ReadModelBatch and the consistency manager on in-memory ports."""

import threading
from collections.abc import Mapping
from typing import Any

import pytest

from connectors.avro import AvroCodec, AvroSchemaRegistry, bundled_schema_dir
from tests.fakes import (
    InMemoryConsumer,
    InMemoryLog,
    InMemoryOffsets,
    InMemoryPositions,
    InMemoryReadModelStore,
)
from tests.order_stats import cancelled_event, order_stats, placed_event, replay
from toolkit.conflicts import ConflictResolver, ResolverPolicy
from toolkit.consistency import EventualConsistencyManager, ReadAfterWrite
from toolkit.dead_letter import DeadLetter, DeadLetterQueue
from toolkit.envelope import Envelope
from toolkit.errors import ConsistencyTimeout, ConsumeError
from toolkit.hlc import HybridLogicalClock
from toolkit.ports import OutgoingRecord
from toolkit.positions import ConsistencyToken, Position, TopicPartition
from toolkit.projection import ProjectionRunner, fence_key, resolutions_key
from toolkit.publisher import EventPublisher
from toolkit.read_model import ReadModelBatch
from toolkit.tracker import ProjectionTracker

CODEC = AvroCodec(AvroSchemaRegistry.from_directories(bundled_schema_dir()))
TP = TopicPartition("orders", 0)


class World:
    def __init__(self) -> None:
        self.log = InMemoryLog()
        self.store = InMemoryReadModelStore()
        self.positions = InMemoryPositions()
        self.publisher = EventPublisher(self.log, CODEC, HybridLogicalClock("w"))
        self.projection = order_stats("stats", ["orders"])

    def runner(self, **kwargs: Any) -> ProjectionRunner:
        kwargs.setdefault("notifier", self.positions)
        return ProjectionRunner(
            self.projection,
            self.log.consumer("stats"),
            CODEC,
            self.store,
            DeadLetterQueue(self.log, "stats"),
            **kwargs,
        )

    def publish(self, *events: Envelope) -> list[Position]:
        return [p.position for p in self.publisher.publish_all("orders", list(events))]


def test_batch_reads_its_own_pending_changes_and_rolls_back() -> None:
    store = InMemoryReadModelStore()
    batch = ReadModelBatch(store, "p")
    batch.put("a", {"n": 1})
    mark = batch.savepoint()
    batch.put("a", {"n": 2})
    batch.increment("c", "x", 5)
    assert batch.get("a") == {"n": 2}
    assert batch.counters("c") == {"x": 5}
    batch.rollback(mark)
    assert batch.get("a") == {"n": 1}
    assert batch.counters("c") == {}
    assert len(batch) == 1


def test_runner_applies_commits_and_announces() -> None:
    world = World()
    positions = world.publish(placed_event("o1", "c1", 100), placed_event("o2", "c1", 50))
    runner = world.runner()
    assert runner.run_once() == 2
    assert world.store.get("stats", "order:o1") == {"status": "placed", "total": 100, "seq": 1}
    assert world.store.counters("stats", "customer:c1") == {"orders": 2, "cents": 150}
    assert world.log.committed["stats"] == {TP: 2}
    assert world.positions.latest("stats") == {TP: 2}
    assert ConsistencyToken.of(positions).is_applied_by(world.log.committed["stats"])


def test_crash_between_store_and_commit_does_not_double_apply() -> None:
    world = World()
    world.publish(placed_event("o1", "c1", 100), placed_event("o2", "c2", 10))

    class Crash(Exception):
        pass

    def crash(_: object) -> None:
        raise Crash

    with pytest.raises(Crash):
        world.runner(after_store=crash).run_once()
    assert world.log.committed["stats"] == {}  # Kafka never heard of the batch
    world.publish(cancelled_event("o1"))

    restarted = world.runner()
    restarted.run_once()
    assert restarted.stats.applied == 1  # only the new event
    events = [e.envelope for e in _all_events(world)]
    assert world.store.dump("stats") == replay(world.projection, events)
    assert world.log.committed["stats"] == {TP: 3}


def test_runner_with_wiped_read_model_rebuilds_from_the_beginning() -> None:
    world = World()
    world.publish(placed_event("o1", "c1", 100))
    world.runner().run_once()
    before = world.store.dump("stats")
    world.store.reset("stats")
    world.runner().run_once()
    assert world.store.dump("stats") == before


def test_handler_error_dead_letters_the_event_without_partial_changes() -> None:
    world = World()

    @world.projection.on("kct.examples.orders.OrderConfirmed")
    def confirmed(event: Envelope, view: ReadModelBatch) -> None:
        view.increment("totals", "events")
        raise RuntimeError("boom")

    bad = Envelope(
        "kct.examples.orders.OrderConfirmed",
        "order",
        "o1",
        2,
        {"order_id": "o1", "reservation_id": "r", "payment_id": "p"},
    )
    world.publish(placed_event("o1", "c1", 5), bad, placed_event("o3", "c1", 5))
    runner = world.runner()
    runner.run_once()
    assert world.store.counters("stats", "totals") == {"events": 2}
    assert runner.stats.handler_errors == 1
    (letter,) = [DeadLetter.from_record(r) for r in world.log.topics["orders.dlq"]]
    assert letter.reason == "handler_error" and "boom" in letter.error
    assert world.log.committed["stats"] == {TP: 3}


def test_poison_record_only_advances_offsets() -> None:
    world = World()
    world.log.produce([OutgoingRecord("orders", b"x", b"junk", ())])
    world.publish(placed_event("o1", "c1", 5))
    world.runner().run_once()
    assert world.store.applied_offsets("stats", [TP]) == {TP: 2}
    assert len(world.log.topics["orders.dlq"]) == 1


def test_a_runner_whose_stored_offsets_moved_ahead_follows_them_and_applies_once() -> None:
    world = World()
    world.publish(placed_event("o1", "c1", 1))
    zombie = world.runner()  # assigned the partition at subscribe time
    owner = world.runner()
    owner.run_once()
    world.publish(placed_event("o2", "c1", 1))
    zombie.run_once()  # sees the store ahead of what it believed: follows it, never re-applies o1
    assert zombie.stats.ownership_lost == 1
    assert world.store.counters("stats", "totals") == {"events": 2}
    owner.run_once()  # its conditional write is refused; it follows the store in turn
    owner.run_once()
    assert owner.stats.ownership_lost == 1
    assert world.store.counters("stats", "totals") == {"events": 2}
    assert world.store.applied_offsets("stats", [TP]) == {TP: 2}


def test_a_conditional_write_refused_discards_the_batch_and_resyncs() -> None:
    world = World()
    world.publish(placed_event("o1", "c1", 1))
    runner = world.runner(store_check_interval=3600.0)
    runner.run_once()
    world.publish(placed_event("o2", "c1", 1))
    # Another member stores past o2 behind this runner's back.
    world.store.apply("stats", [], {TP: 1}, {TP: 2})
    runner.run_once()  # its write of o2 is refused: nothing applied twice
    assert runner.stats.ownership_lost == 1
    assert world.store.counters("stats", "totals") == {"events": 1}
    world.publish(placed_event("o3", "c1", 1))
    runner.run_once()
    assert world.store.counters("stats", "totals") == {"events": 2}
    assert world.store.applied_offsets("stats", [TP]) == {TP: 3}


def _all_events(world: World) -> list:  # type: ignore[type-arg]
    from toolkit.envelope import decode_record

    return [decode_record(r, CODEC) for r in world.log.topics["orders"]]


# -- waiting --------------------------------------------------------------------


def _manager(
    world: World,
    offsets: InMemoryOffsets,
    *,
    first_check_after: float = 0.02,
    max_check_interval: float = 1.0,
) -> EventualConsistencyManager:
    return EventualConsistencyManager(
        ProjectionTracker(offsets),
        world.positions,
        first_check_after=first_check_after,
        max_check_interval=max_check_interval,
    )


def test_wait_returns_at_once_when_already_applied() -> None:
    world = World()
    positions = world.publish(placed_event("o1", "c1", 1))
    world.runner().run_once()
    offsets = InMemoryOffsets(world.log)
    _manager(world, offsets).wait_for_consistency(positions[0], "stats", timeout=0)
    assert offsets.queries <= 1


def test_waiter_is_woken_by_the_announcement_not_by_polling() -> None:
    world = World()
    positions = world.publish(placed_event("o1", "c1", 1))
    offsets = InMemoryOffsets(world.log)
    # Kafka is checked once at the start, then only after 30 s of silence:
    # returning quickly proves the announcement woke the waiter.
    manager = _manager(world, offsets, first_check_after=30, max_check_interval=30)
    runner = world.runner()
    done = threading.Event()

    def wait() -> None:
        manager.wait_for_consistency(ConsistencyToken.of(positions), ["stats"], timeout=20)
        done.set()

    waiter = threading.Thread(target=wait)
    waiter.start()
    runner.run_once()
    assert done.wait(5)
    waiter.join()
    assert offsets.queries == 1


def test_without_announcements_kafka_offsets_are_the_fallback() -> None:
    world = World()
    positions = world.publish(placed_event("o1", "c1", 1))
    world.runner(notifier=None).run_once()
    offsets = InMemoryOffsets(world.log)
    manager = EventualConsistencyManager(ProjectionTracker(offsets), listener=None)
    manager.wait_for_consistency(positions[0], "stats", timeout=1)


def test_timeout_names_the_projection_partition_and_lag() -> None:
    world = World()
    positions = world.publish(*[placed_event(f"o{i}", "c", 1) for i in range(3)])
    manager = _manager(world, InMemoryOffsets(world.log), first_check_after=0.01)
    with pytest.raises(ConsistencyTimeout) as info:
        manager.wait_for_consistency(ConsistencyToken.of(positions), ["stats"], timeout=0.1)
    assert info.value.context["behind"] == {"stats": {"orders[0]": 3}}
    assert "stats behind on orders[0] by 3" in str(info.value)
    assert not manager.is_consistent(positions[-1], "stats", timeout=0.05)


def test_read_after_write_waits_for_the_command_and_the_callers_earlier_token() -> None:
    world = World()
    runner = world.runner()
    raw = ReadAfterWrite(_manager(world, InMemoryOffsets(world.log)), ["stats"], timeout=5)
    earlier = ConsistencyToken.of(world.publish(placed_event("o0", "c", 7)))
    stop = threading.Event()
    thread = threading.Thread(target=lambda: [runner.run_once() for _ in iter(stop.is_set, True)])
    thread.start()
    try:
        result = raw.execute(
            lambda: world.publish(placed_event("o1", "c", 3)),
            lambda: world.store.counters("stats", "customer:c"),
            after=earlier.to_string(),
        )
    finally:
        stop.set()
        thread.join()
    assert result.value == {"orders": 2, "cents": 10}
    assert result.token.covers(Position("orders", 0, 1))


def test_net_changes_have_the_same_effect_as_all_changes() -> None:
    store_all, store_net = InMemoryReadModelStore(), InMemoryReadModelStore()
    batch = ReadModelBatch(store_all, "p")
    batch.put("a", {"n": 1})
    batch.increment("c", "x", 2)
    batch.put("a", {"n": 2})
    batch.delete("b")
    batch.increment("c", "x", 3)
    batch.increment("c", "y", -1)
    batch.put("b", {"n": 9})
    batch.delete("a")
    store_all.apply("p", batch.changes, {}, {})
    store_net.apply("p", batch.net_changes(), {}, {})
    assert store_all.dump("p") == store_net.dump("p") == {"d:b": {"n": 9}, "c:c": {"x": 5, "y": -1}}
    assert len(batch.net_changes()) == 4


def test_an_event_with_an_older_fence_than_applied_is_dead_lettered_and_counted() -> None:
    world = World()
    runner = world.runner()
    first = placed_event("o-1", "c1", 100).with_changes(fence=7)
    stale = cancelled_event("o-1", 2).with_changes(fence=5)
    newer = cancelled_event("o-1", 3).with_changes(fence=9)
    world.publish(first, stale, newer)
    runner.run_once()
    assert runner.stats.fence_rejected == 1
    dead = [DeadLetter.from_record(r) for r in world.log.topics.get("orders.dlq", [])]
    assert [(d.reason, d.source.offset) for d in dead] == [("stale_fence", 1)]
    # The stale event changed nothing; the newer holder's did.
    assert world.store.get("stats", "order:o-1") == {"status": "cancelled", "total": 100, "seq": 3}
    assert world.store.get("stats", fence_key("order", "o-1")) == {"fence": 9}


def test_events_go_through_the_resolver_and_its_rejections_are_audited() -> None:
    world = World()
    resolver = ConflictResolver({"order": ResolverPolicy(("deduplicate", "last_write_wins"))})
    runner = world.runner(resolver=resolver)
    placed = placed_event("o-2", "c1", 250)
    world.publish(placed)
    # A redelivery of the same event (same id) must not count the order twice.
    world.publish(placed)
    runner.run_once()
    assert world.store.counters("stats", "customer:c1") == {"orders": 1, "cents": 250}
    assert runner.stats.conflicts_rejected == {"duplicate": 1}
    trail = world.store.get("stats", resolutions_key("order", "o-2"))
    assert trail is not None
    assert [e["reason"] for e in trail["entries"]] == ["duplicate"]


class _CommitFails(InMemoryConsumer):
    """Kafka's commit failing (a group coordinator away) while all else works."""

    failing = True

    def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        if self.failing:
            raise ConsumeError("commit failed: coordinator unreachable", group=self.group)
        super().commit(offsets)


def test_waiters_hear_a_stored_batch_without_waiting_for_the_kafka_commit() -> None:
    world = World()
    consumer = _CommitFails(world.log, "stats")
    runner = ProjectionRunner(
        world.projection,
        consumer,
        CODEC,
        world.store,
        DeadLetterQueue(world.log, "stats"),
        notifier=world.positions,
    )
    token = ConsistencyToken.of(world.publish(placed_event("o1", "c1", 100)))
    assert runner.run_once() == 1
    # Stored with its offsets: announced, although Kafka's commit failed.
    assert world.positions.latest("stats") == {TP: 1}
    assert token.is_applied_by(world.positions.latest("stats"))
    assert world.log.committed["stats"] == {}
    assert runner.stats.commit_failures == 1
    consumer.failing = False
    runner.run_once()  # the commit is retried with the next cycle
    assert world.log.committed["stats"] == {TP: 1}
