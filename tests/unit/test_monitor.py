"""ConsistencyMonitor over the in-memory ports: lag in events and seconds, statuses,
order violations counted by runners, failures as ERR (no servers)."""

from __future__ import annotations

import dataclasses

from tests.balances import balance_event
from tests.fakes import InMemoryLog, InMemoryLogInspector, InMemoryReadModelStore
from tests.unit.test_conflict_runner import CODEC, NAME, TOPIC, World
from toolkit.conflicts import ConflictResolver, ResolverPolicy
from toolkit.monitor import ConsistencyMonitor, MonitorTarget
from toolkit.monitor_order import ORDER_COUNTS_KEY
from toolkit.monitor_rules import Health, Status, Thresholds
from toolkit.ports import GroupMembers, OutgoingRecord
from toolkit.positions import TopicPartition

TP = TopicPartition("t", 0)


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def write(log: InMemoryLog, stamps_ms: list[int], topic: str = "t") -> None:
    for stamp in stamps_ms:
        log.clock_ms = lambda stamp=stamp: stamp  # type: ignore[misc]
        log.produce([OutgoingRecord(topic, b"k", b"v")])


def monitor(
    log: InMemoryLog, clock: Clock, window: int = 3, **target: object
) -> tuple[ConsistencyMonitor, InMemoryLogInspector]:
    inspector = InMemoryLogInspector(log)
    made = ConsistencyMonitor(
        [MonitorTarget("g", ("t",), read_model=False, **target)],  # type: ignore[arg-type]
        inspector,
        inspector,
        window=window,
        clock=clock,
    )
    return made, inspector


def test_lag_in_events_and_exact_seconds_from_the_first_unapplied_record() -> None:
    log = InMemoryLog()
    write(log, [1_000_000 + i * 1_000 for i in range(10)])  # one record a second
    log.committed["g"] = {TP: 4}
    clock = Clock(1_020.0)
    made, inspector = monitor(log, clock)
    part = made.check().projection("g").partitions[0]
    assert (part.lag_events, part.committed, part.last_stable) == (6, 4, 10)
    assert part.lag_seconds == 1_020.0 - 1_004.0  # the record at offset 4
    clock.now = 1_030.0
    assert made.check().projection("g").partitions[0].lag_seconds == 26.0  # keeps rising
    assert inspector.reads == 1  # a record never changes: read once
    log.committed["g"] = {TP: 10}
    part = made.check().projection("g").partitions[0]
    assert (part.lag_events, part.lag_seconds) == (0, 0.0)


def test_no_committed_offset_counts_from_the_log_start() -> None:
    log = InMemoryLog()
    write(log, [5_000, 6_000, 7_000])
    made, inspector = monitor(log, Clock(10.0))
    inspector.start["t"] = 1  # retention removed offset 0
    part = made.check().projection("g").partitions[0]
    assert (part.committed, part.lag_events, part.lag_seconds) == (None, 2, 4.0)


def test_stop_for_an_empty_group_stall_for_a_live_one_never_for_caught_up() -> None:
    log = InMemoryLog()
    write(log, [1_000] * 5)
    log.committed["g"] = {TP: 2}
    made, inspector = monitor(log, Clock(10.0))
    assert [made.check().projection("g").status for _ in range(3)][-1] is Status.STOP
    inspector.members["g"] = GroupMembers("stable", 1, frozenset({TP}))
    report = made.check()
    assert report.projection("g").status is Status.STALL
    assert report.health is Health.FAILING
    log.committed["g"] = {TP: 5}
    inspector.members.clear()
    assert {made.check().projection("g").status for _ in range(5)} == {Status.OK}


def test_thresholds_change_health() -> None:
    log = InMemoryLog()
    write(log, [1_000] * 5)
    made, _ = monitor(log, Clock(100.0), thresholds=Thresholds(max_lag_seconds=60))
    report = made.check()
    assert report.projection("g").status is Status.WARN
    assert report.health is Health.DEGRADED
    assert "max_lag_seconds" in report.projection("g").reason


def test_kafka_unreachable_is_err_for_every_target_and_never_raises() -> None:
    log = InMemoryLog()
    made, inspector = monitor(log, Clock(1.0))
    inspector.fail = True
    report = made.check()
    assert report.projection("g").status is Status.ERR
    assert "injected failure" in report.projection("g").reason
    assert report.to_dict()["health"] == "failing"


def test_a_missing_topic_is_err() -> None:
    made, _ = monitor(InMemoryLog(), Clock(1.0))
    assert made.check().projection("g").status is Status.ERR


def test_order_violations_counted_by_the_runner_reach_the_monitor() -> None:
    world = World()
    world.publish(balance_event("a1", 1, 1))
    world.publish(balance_event("a1", 3, 3))  # ahead of 2: out of order
    late = balance_event("a1", 2, 2)
    world.publish(late)
    world.publish(late)  # the same event again: duplicate
    resolver = ConflictResolver({"account": ResolverPolicy(("deduplicate", "reorder"))})
    runner = world.runner(resolver, max_batch=1)
    world.drain(runner)
    counts = world.store.counters(NAME, ORDER_COUNTS_KEY)
    assert counts["out_of_order"] == 1 and counts["duplicate"] == 1
    inspector = InMemoryLogInspector(world.log)
    made = ConsistencyMonitor(
        [MonitorTarget(NAME, (TOPIC,), group=f"{NAME}-{id(world.store)}")],
        inspector,
        inspector,
        world.store,
    )
    report = made.check().projection(NAME)
    assert report.order is not None and report.order.total == 2
    assert {e["category"] for e in report.order.examples} == {"out_of_order", "duplicate"}
    example = next(e for e in report.order.examples if e["category"] == "duplicate")
    assert (example["aggregate_id"], example["sequence"], example["offset"]) == ("a1", 2, 3)
    part = report.partitions[0]
    assert (part.stored, part.committed, part.divergence) == (4, 4, 0)


def test_rebuilt_counts_equal_the_first_run() -> None:
    world = World()
    for sequence in (2, 1, 1, 3):
        world.publish(balance_event("a1", sequence, sequence))
    resolver = ConflictResolver({"account": ResolverPolicy(("deduplicate", "reorder"))})
    world.drain(world.runner(resolver, max_batch=1))
    rebuilt = InMemoryReadModelStore()
    world.drain(world.runner(resolver, store=rebuilt, max_batch=3))
    assert rebuilt.counters(NAME, ORDER_COUNTS_KEY) == world.store.counters(NAME, ORDER_COUNTS_KEY)


def test_report_is_json_ready() -> None:
    log = InMemoryLog()
    write(log, [1_000])
    made, _ = monitor(log, Clock(2.0))
    view = made.check().to_dict()
    assert view["projections"][0]["partitions"][0]["lag_seconds"] == 1.0
    assert dataclasses.is_dataclass(made.last)
    assert CODEC is not None
