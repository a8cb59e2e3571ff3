"""A full batch's store step runs while the runner reads the next batch.

Its answer is taken after that poll and before anything of the new batch is
applied; a refused or failed step discards what was read meanwhile and
replays from the stored offsets. In-memory ports: the fake store runs a step
only when its answer is taken (the latest a real store may), so nothing here
depends on timing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from tests.fakes import FlakyReadModelStore
from tests.fakes.stores import Deferred
from tests.order_stats import order_stats, placed_event
from tests.unit.test_runner_recovery import CODEC, TP
from tests.unit.test_runner_recovery import World as RecoveryWorld
from toolkit.dead_letter import DeadLetterQueue
from toolkit.errors import ConnectorError
from toolkit.ports import PendingApply, ReadModelChange
from toolkit.positions import TopicPartition
from toolkit.projection import ProjectionRunner


class RecordingStore(FlakyReadModelStore):
    """Notes each store step: ``now`` (apply) or ``later`` (apply_later)."""

    def __init__(self) -> None:
        super().__init__()
        self.steps: list[str] = []

    def apply(
        self,
        projection: str,
        changes: Sequence[ReadModelChange],
        expected: Mapping[TopicPartition, int | None],
        offsets: Mapping[TopicPartition, int],
    ) -> bool:
        self.steps.append("now")
        return super().apply(projection, changes, expected, offsets)

    def apply_later(
        self,
        projection: str,
        changes: Sequence[ReadModelChange],
        expected: Mapping[TopicPartition, int | None],
        offsets: Mapping[TopicPartition, int],
    ) -> PendingApply:
        self.steps.append("later")
        # Run (when answered) as the base store's apply: not noted as a step of its own.
        kept = (list(changes), dict(expected), dict(offsets))
        return Deferred(lambda: FlakyReadModelStore.apply(self, projection, *kept))


class World(RecoveryWorld):
    """The recovery tests' world, its store noting steps and its runner's stores noted."""

    def __init__(self) -> None:
        super().__init__()
        self.store: RecordingStore = RecordingStore()
        self.stored: list[int] = []

    def runner(self, max_batch: int = 3, **options: Any) -> ProjectionRunner:
        return super().runner(
            max_batch=max_batch,
            after_store=lambda offsets: self.stored.append(offsets[TP]),
            **options,
        )

    def committed(self) -> int | None:
        return self.log.committed.get("stats", {}).get(TP)


def test_full_batches_are_stored_while_the_next_is_read_and_partial_ones_at_once() -> None:
    world = World()
    world.publish(7)
    runner = world.runner(max_batch=3)
    assert runner.run_once() == 3
    # Sent, not answered: nothing stored, committed or announced yet.
    assert world.store.steps == ["later"] and world.stored == []
    assert world.events_counted() == 0 and world.committed() is None
    assert runner.run_once() == 3  # answered after this poll, before applying it
    assert world.stored == [3] and world.committed() == 3
    assert world.events_counted() == 3
    assert runner.run_once() == 1  # a partial batch: nothing more waiting, stored at once
    assert world.store.steps == ["later", "later", "now"]
    assert world.stored == [3, 6, 7] and world.committed() == 7 and world.events_counted() == 7
    assert world.store.get("stats", "order:o6") is not None


def test_flush_and_close_finish_the_step_in_flight() -> None:
    world = World()
    world.publish(3)
    runner = world.runner(max_batch=3)
    runner.run_once()
    runner.flush()
    assert world.stored == [3] and world.committed() == 3 and world.events_counted() == 3
    world.publish(3, start=3)
    runner.run_once()
    runner.close()
    assert world.stored == [3, 6] and world.committed() == 6 and world.events_counted() == 6


def test_a_step_refused_at_its_answer_discards_what_was_read_meanwhile() -> None:
    """Another member stored the partition while this runner's step was in flight:
    the step changes nothing, the batch read meanwhile is not applied, and the
    runner continues from what the store holds: every event once."""
    world = World()
    world.publish(9)
    runner = world.runner(max_batch=3)
    runner.run_once()  # events 0-2 in flight
    other = world.runner(max_batch=9)  # same group: another member, by the store's account
    other.run_once()  # stores 0-8 itself
    other.flush()
    assert world.events_counted() == 9
    assert runner.run_once() == 0  # its step refused; 3-5 read meanwhile, discarded
    for _ in range(5):
        runner.run_once()
    runner.flush()
    assert world.events_counted() == 9  # nothing applied twice
    assert runner.stats.ownership_lost >= 1


def test_a_step_that_fails_at_its_answer_is_replayed_from_the_store() -> None:
    world = World()
    world.publish(9)
    runner = world.runner(max_batch=3)
    runner.run_once()  # 0-2 in flight
    world.store.down.set()
    try:
        runner.run_once()
    except ConnectorError:
        pass
    else:
        raise AssertionError("a failed store step must fail the cycle")
    world.store.down.clear()
    for _ in range(10):
        runner.run_once()  # no recovery call needed: it starts from the store's offsets
    runner.flush()
    assert world.events_counted() == 9 and world.committed() == 9


def test_run_survives_a_store_outage_with_steps_in_flight() -> None:
    world = World()
    world.publish(30)
    runner = world.runner(max_batch=4)
    runner.run_once()
    world.store.down.set()
    failures_before = world.store.failures
    for _ in range(3):
        try:
            runner.run_once()
        except ConnectorError as exc:
            runner._recover(exc, None)  # what run() does between cycles
    assert world.store.failures > failures_before
    world.store.down.clear()
    for _ in range(20):
        try:
            runner.run_once()
        except ConnectorError as exc:
            runner._recover(exc, None)
    runner.flush()
    assert world.events_counted() == 30 and world.committed() == 30


def test_a_partition_moved_back_while_read_drops_what_was_read_of_it() -> None:
    """The read model is reset right as the step in flight lands: the partition moved
    back, so the events of it read meanwhile (past where the store now is) are not
    applied; the other partition's are. Everything ends applied exactly once."""
    world = World()
    for i in range(8):
        world.publisher.publish("orders", placed_event(f"o{i}", "c1", 1))
    for i in range(4):
        world.publisher.publish("more", placed_event(f"m{i}", "c1", 1))
    resets: list[int] = []

    def reset_once(offsets: Mapping[TopicPartition, int]) -> None:
        if not resets:
            resets.append(1)
            world.store.reset("stats")

    runner = ProjectionRunner(
        order_stats("stats", ["orders", "more"]),
        world.log.consumer("stats"),
        CODEC,
        world.store,
        DeadLetterQueue(world.log, "stats"),
        notifier=world.positions,
        max_batch=6,
        store_check_interval=0.0,
        after_store=reset_once,
    )
    assert runner.run_once() == 6  # orders 0-5, in flight
    # Reads orders 6-7 and more 0-3; the landing step is followed by the reset.
    assert runner.run_once() == 4  # only more 0-3: orders moved back to nothing
    for _ in range(5):
        runner.run_once()
    runner.flush()
    assert world.events_counted() == 12
    assert runner.stats.store_rewinds == 1
