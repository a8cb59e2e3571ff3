"""The conflict resolver inside a ProjectionRunner, over the in-memory ports.

Properties (hypothesis): for one writer publishing any permutation of its
sequences with duplicates, every recommended one-writer pipeline applies each
event exactly once, in sequence order, whatever the batch sizes; with gaps
expired in event time, a run interrupted anywhere and resumed, and a rebuild
from offset 0, end in the same read model byte for byte as an uninterrupted
run. Examples: gap dead-letters and bad merges reach the dead-letter topic
with their source coordinates; a backlog after a restart never expires a gap
its own records close; the batch journal keeps one copy of the dedup window.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connectors.avro import AvroCodec, AvroSchemaRegistry, bundled_schema_dir
from tests.balances import BALANCE_SET, balance_event
from tests.memory import InMemoryLog, InMemoryReadModelStore
from toolkit.conflicts import STATE_PREFIX, ConflictResolver, ResolverPolicy
from toolkit.dead_letter import DeadLetter, DeadLetterQueue
from toolkit.envelope import Envelope
from toolkit.hlc import HybridLogicalClock
from toolkit.projection import GAP_TICK, Projection, ProjectionRunner
from toolkit.publisher import EventPublisher
from toolkit.read_model import ReadModelBatch

CODEC = AvroCodec(AvroSchemaRegistry.from_directories(bundled_schema_dir()))
TOPIC = "accounts"
NAME = "applied"
ONE_WRITER_PIPELINES = [
    ("deduplicate", "reorder"),
    ("deduplicate", "reorder", "last_write_wins"),
    ("reorder",),
]
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def applied_order() -> Projection:
    projection = Projection(NAME, [TOPIC])

    @projection.on(BALANCE_SET)
    def record(event: Envelope, view: ReadModelBatch) -> None:
        key = f"applied:{event.aggregate_id}"
        doc = view.get(key) or {"sequences": []}
        view.put(key, {"sequences": [*doc["sequences"], event.sequence]})

    return projection


class World:
    """A log, a store and a publisher stamping HLCs at publish time (one writer)."""

    def __init__(self) -> None:
        self.log = InMemoryLog()
        self.store = InMemoryReadModelStore()
        self.publisher = EventPublisher(self.log, CODEC, HybridLogicalClock("writer"))

    def publish(self, event: Envelope, timestamp_ms: int = 1_000) -> None:
        self.publisher.publish(TOPIC, event)
        records = self.log.topics[TOPIC]
        records[-1] = dataclasses.replace(records[-1], timestamp_ms=timestamp_ms)

    def runner(
        self, resolver: ConflictResolver, store: InMemoryReadModelStore | None = None, **kw: Any
    ) -> ProjectionRunner:
        kw.setdefault("idle_expiry", None)  # decisions from the log only
        return ProjectionRunner(
            applied_order(),
            self.log.consumer(f"{NAME}-{id(store or self.store)}"),
            CODEC,
            store or self.store,
            DeadLetterQueue(self.log, NAME),
            resolver=resolver,
            **kw,
        )

    def drain(self, runner: ProjectionRunner) -> None:
        """Cycles until everything was read (a cycle may apply nothing: all buffered)."""
        for _ in range(len(self.log.topics.get(TOPIC, [])) + 2):
            runner.run_once()

    def applied(self, store: InMemoryReadModelStore | None = None) -> dict[str, list[int]]:
        dump = (store or self.store).dump(NAME)
        return {
            key.removeprefix("d:applied:"): doc["sequences"]
            for key, doc in dump.items()
            if key.startswith("d:applied:")
        }

    def dead_letters(self) -> list[DeadLetter]:
        return [DeadLetter.from_record(r) for r in self.log.topics.get(f"{TOPIC}.dlq", [])]


@st.composite
def one_writer_deliveries(draw: st.DrawFn) -> list[tuple[str, int]]:
    """(aggregate, sequence) per publish: every sequence at least once, any order."""
    deliveries = []
    for a in range(draw(st.integers(1, 3))):
        length = draw(st.integers(1, 8))
        for sequence in range(1, length + 1):
            deliveries += [(f"a{a}", sequence)] * draw(st.integers(1, 3))
    return draw(st.permutations(deliveries))


@FAST
@given(
    pipeline=st.sampled_from(ONE_WRITER_PIPELINES),
    deliveries=one_writer_deliveries(),
    max_batch=st.integers(1, 10),
)
def test_one_writer_events_apply_exactly_once_in_sequence_order(
    pipeline: tuple[str, ...], deliveries: list[tuple[str, int]], max_batch: int
) -> None:
    world = World()
    events = {key: balance_event(key[0], key[1], key[1]) for key in set(deliveries)}
    for key in deliveries:
        world.publish(events[key])  # a duplicate is the same event (same id) again
    resolver = ConflictResolver({"account": ResolverPolicy(pipeline)})
    world.drain(world.runner(resolver, max_batch=max_batch))
    lengths: dict[str, int] = {}
    for aggregate, sequence in deliveries:
        lengths[aggregate] = max(lengths.get(aggregate, 0), sequence)
    assert world.applied() == {a: list(range(1, n + 1)) for a, n in lengths.items()}
    assert world.dead_letters() == []


@st.composite
def gappy_deliveries(draw: st.DrawFn) -> list[tuple[str, int, int]]:
    """(aggregate, sequence, timestamp): some sequences missing, some late, time moving."""
    deliveries = []
    for a in range(draw(st.integers(1, 3))):
        for sequence in range(1, draw(st.integers(1, 8)) + 1):
            for _ in range(draw(st.integers(0, 2))):  # 0: a gap
                deliveries.append((f"a{a}", sequence))
    order = draw(st.permutations(deliveries))
    times, now = [], 0
    for _ in order:
        now += draw(st.integers(0, 400))
        times.append(now)
    return [(a, s, t) for (a, s), t in zip(order, times, strict=True)]


@FAST
@given(
    deliveries=gappy_deliveries(),
    on_gap=st.sampled_from(["skip", "dead_letter"]),
    batches=st.tuples(st.integers(1, 8), st.integers(1, 8)),
    crash_after=st.integers(0, 6),
)
def test_interrupted_resumed_and_rebuilt_runs_end_in_the_same_read_model(
    deliveries: list[tuple[str, int, int]],
    on_gap: str,
    batches: tuple[int, int],
    crash_after: int,
) -> None:
    world = World()
    events = {(a, s): balance_event(a, s, s) for a, s, _ in deliveries}
    for a, s, t in deliveries:
        world.publish(events[(a, s)], timestamp_ms=t)

    def resolver() -> ConflictResolver:
        policy = ResolverPolicy(
            ("deduplicate", "reorder"),
            reorder_max_wait_ms=500,
            on_gap=on_gap,  # type: ignore[arg-type]
        )
        return ConflictResolver({"account": policy}, clock=_no_wall_clock)

    world.drain(world.runner(resolver(), max_batch=batches[0]))
    reference = world.store.dump(NAME)

    # Interrupted after some cycles (its uncommitted work is lost), then resumed.
    interrupted = InMemoryReadModelStore()
    first = world.runner(resolver(), interrupted, max_batch=batches[1])
    for _ in range(crash_after):
        first.run_once()
    world.drain(world.runner(resolver(), interrupted, max_batch=batches[0]))
    assert json.dumps(interrupted.dump(NAME), sort_keys=True) == json.dumps(
        reference, sort_keys=True
    )

    # A rebuild from offset 0 into an empty store.
    rebuilt = InMemoryReadModelStore()
    world.drain(world.runner(resolver(), rebuilt, max_batch=batches[1]))
    assert json.dumps(rebuilt.dump(NAME), sort_keys=True) == json.dumps(reference, sort_keys=True)
    for sequences in world.applied().values():
        assert sequences == sorted(set(sequences))  # in order, each at most once


def _no_wall_clock() -> int:
    raise AssertionError("the runner must decide in event time, never by the wall clock")


def test_a_backlog_after_a_restart_does_not_expire_a_gap_its_own_records_close() -> None:
    world = World()
    policy = ResolverPolicy(("deduplicate", "reorder"), reorder_max_wait_ms=2_000)
    world.publish(balance_event("acct", 1, 1), timestamp_ms=10_000)
    world.publish(balance_event("acct", 3, 3), timestamp_ms=10_001)
    world.drain(world.runner(ConflictResolver({"account": policy})))
    assert world.applied() == {"acct": [1]}
    # While the runner is down: a backlog of other aggregates, then the missing
    # sequence, all within the wait in event time (however long ago by the wall clock).
    for n in range(300):
        world.publish(balance_event(f"other-{n % 7}", n, n // 7 + 1), timestamp_ms=10_002 + n)
    world.publish(balance_event("acct", 2, 2), timestamp_ms=11_500)
    restarted = world.runner(ConflictResolver({"account": policy}), max_batch=50, idle_expiry=0.0)
    world.drain(restarted)
    assert world.applied()["acct"] == [1, 2, 3]


def test_a_gap_expires_in_event_time_and_dead_letters_the_run_with_its_source() -> None:
    world = World()
    policy = ResolverPolicy(
        ("deduplicate", "reorder"), reorder_max_wait_ms=1_000, on_gap="dead_letter"
    )
    world.publish(balance_event("acct", 2, 2), timestamp_ms=5_000)
    world.publish(balance_event("acct", 3, 3), timestamp_ms=5_100)
    runner = world.runner(ConflictResolver({"account": policy}), max_batch=1)
    world.drain(runner)
    assert world.dead_letters() == []  # event time has not moved past the wait
    world.publish(balance_event("other", 1, 1), timestamp_ms=6_000)  # event time: 6,000
    world.drain(runner)
    dead = world.dead_letters()
    assert [(d.reason, d.source.offset) for d in dead] == [
        ("conflict_gap_dead_lettered", 0),
        ("conflict_gap_dead_lettered", 1),
    ]
    originals = world.log.topics[TOPIC]
    assert [d.record.value for d in dead] == [originals[0].value, originals[1].value]
    assert world.applied() == {"other": [1]}
    assert runner.stats.conflicts_rejected == {"gap_dead_lettered": 2}


def _raises(current: dict[str, Any] | None, incoming: Envelope) -> Envelope:
    raise RuntimeError("merge exploded")


class Unserializable:
    pass


BAD_MERGES: dict[str, Callable[[dict[str, Any] | None, Envelope], Any]] = {
    "raises": _raises,
    "returns a str": lambda current, incoming: "garbage",
    "returns None": lambda current, incoming: None,
    "returns another aggregate": lambda current, incoming: incoming.with_changes(
        aggregate_id="elsewhere"
    ),
    "returns an unserializable payload": lambda current, incoming: incoming.with_changes(
        payload={"balance": Unserializable()}
    ),
}


@pytest.mark.parametrize("kind", sorted(BAD_MERGES))
def test_a_bad_merge_dead_letters_its_event_and_the_runner_goes_on(kind: str) -> None:
    world = World()
    policy = ResolverPolicy(("deduplicate", "merge"), merge=BAD_MERGES[kind])
    world.publish(balance_event("acct", 10, 1))
    world.publish(balance_event("acct", 20, 1))  # a concurrent claim on sequence 1: merged
    world.publish(balance_event("acct", 30, 2))
    runner = world.runner(ConflictResolver({"account": policy}))
    world.drain(runner)
    assert world.applied() == {"acct": [1, 2]}
    (dead,) = world.dead_letters()
    assert (dead.reason, dead.source.offset) == ("conflict_merge_error", 1)
    assert dead.error.split(":")[0] in ("RuntimeError", "ConfigurationError", "SerializationError")
    assert dead.record.value == world.log.topics[TOPIC][1].value
    assert world.store.applied_offsets(NAME, [*runner.stats.owned]) != {}


def test_the_batch_journal_keeps_one_copy_of_the_dedup_window_per_batch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    world = World()
    for n in range(1, 401):
        world.publish(balance_event("acct", n, n))
    puts: list[str] = []
    original = ReadModelBatch.put

    def counting(self: ReadModelBatch, key: str, document: Any) -> None:
        puts.append(key)
        original(self, key, document)

    monkeypatch.setattr(ReadModelBatch, "put", counting)
    policy = ResolverPolicy(("deduplicate",), dedup_window=1_000)
    runner = world.runner(ConflictResolver({"account": policy}), max_batch=200)
    world.drain(runner)
    heads = [k for k in puts if k.startswith(STATE_PREFIX) and k.endswith("/account/acct")]
    assert len(heads) == 2  # one per batch of 200 events, not one per event
    assert world.applied() == {"acct": list(range(1, 401))}


def test_an_idle_partitions_gap_closes_through_a_tick_in_the_log_so_a_rebuild_decides_alike() -> (
    None
):
    world = World()
    world.log.clock_ms = lambda: 50_000  # the timestamp the log gives the runner's tick
    policy = ResolverPolicy(("deduplicate", "reorder"), reorder_max_wait_ms=1_000, on_gap="skip")
    world.publish(balance_event("acct", 1, 1), timestamp_ms=10_000)
    world.publish(balance_event("acct", 3, 3), timestamp_ms=10_001)
    runner = world.runner(
        ConflictResolver({"account": policy}),
        idle_expiry=0.0,
        expiry_interval=0.0,
        gap_ticks=world.publisher,
    )
    world.drain(runner)  # 3 waits; idle, overdue by the wall clock: a tick is written and read
    assert runner.stats.gap_ticks == 1
    (tick,) = [r for r in world.log.topics[TOPIC] if r.header("event_type") == GAP_TICK.encode()]
    assert tick.offset == 2 and tick.timestamp_ms == 50_000
    assert world.applied() == {"acct": [1, 3]}
    # The missing event arrives late, then the model is rebuilt from offset 0
    # by a runner that never decides by the wall clock: it decides alike.
    world.publish(balance_event("acct", 2, 2), timestamp_ms=60_000)
    world.drain(runner)
    live = world.applied()
    rebuilt_store = InMemoryReadModelStore()
    world.drain(world.runner(ConflictResolver({"account": policy}), store=rebuilt_store))
    assert world.applied(rebuilt_store) == live == {"acct": [1, 3]}
    assert runner.stats.gap_ticks == 1  # the gap closed: no more ticks


def test_without_a_gap_tick_schema_the_runner_closes_idle_gaps_directly() -> None:
    world = World()
    policy = ResolverPolicy(("deduplicate", "reorder"), reorder_max_wait_ms=1_000, on_gap="skip")
    world.publish(balance_event("acct", 1, 1), timestamp_ms=10_000)
    world.publish(balance_event("acct", 3, 3), timestamp_ms=10_001)
    no_tick_schema = AvroCodec(
        AvroSchemaRegistry.from_directories(bundled_schema_dir() / "accounts")
    )
    publisher = EventPublisher(world.log, no_tick_schema, HybridLogicalClock("runner"))
    runner = world.runner(
        ConflictResolver({"account": policy}),
        idle_expiry=0.0,
        expiry_interval=0.0,
        gap_ticks=publisher,
    )
    world.drain(runner)
    assert runner.stats.gap_ticks == 0
    assert world.applied() == {"acct": [1, 3]}
