"""The strong path over in-memory ports: what overlaps what, and what still waits."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from datetime import timedelta

import pytest

from connectors.avro import AvroCodec, AvroSchemaRegistry, bundled_schema_dir
from tests.balances import balance_event
from tests.fakes import (
    InMemoryEventPositionIndex,
    InMemoryLockService,
    InMemoryLog,
    InMemoryOffsets,
    InMemoryTransaction,
    InMemoryTransactionalProducer,
)
from toolkit.boundary import ConsistencyBoundary, OperationContext
from toolkit.config import ConsistencyConfig, StrongRule
from toolkit.consistency import EventualConsistencyManager, Target
from toolkit.errors import LockLost
from toolkit.hlc import HybridLogicalClock
from toolkit.ports import OutgoingRecord
from toolkit.positions import Position
from toolkit.publisher import EventPublisher
from toolkit.tracker import ProjectionTracker

CODEC = AvroCodec(AvroSchemaRegistry.from_directories(bundled_schema_dir()))


class _Index(InMemoryEventPositionIndex):
    def __init__(self) -> None:
        super().__init__()
        self.recorded = threading.Event()
        self.waiting = threading.Event()  # set once the wait for projections began
        self.during_wait: list[bool] = []
        self.threads: list[str] = []

    def record(self, entries: Sequence[tuple[str, Position]]) -> None:
        self.during_wait.append(self.waiting.wait(2))
        super().record(entries)
        self.threads.append(threading.current_thread().name)
        self.recorded.set()


class _Waits(EventualConsistencyManager):
    """Returns once the events are indexed: only possible if indexing overlaps the wait."""

    def __init__(self, log: InMemoryLog, index: _Index) -> None:
        super().__init__(ProjectionTracker(InMemoryOffsets(log)))
        self.index = index
        self.overlapped: list[bool] = []

    def wait_for_consistency(
        self,
        target: Target,
        projections: str | Sequence[str],
        timeout: float | timedelta = 5.0,
    ) -> None:
        self.index.waiting.set()
        self.overlapped.append(self.index.recorded.wait(5))


def test_strong_write_is_indexed_while_waiting_for_the_projections() -> None:
    log, index = InMemoryLog(), _Index()
    waits = _Waits(log, index)
    publisher = EventPublisher(log, CODEC, HybridLogicalClock("w"), index=index)
    policy = ConsistencyConfig(
        default_timeout=5.0,
        lock_timeout=5.0,
        projections=("balances",),
        strong=(StrongRule(type="account", pattern="*"),),
    )
    boundary = ConsistencyBoundary(
        policy,
        publisher,
        {"account": "accounts"},
        locks=InMemoryLockService(),
        transactions=InMemoryTransactionalProducer(log),
        consistency=waits,
    )

    def deposit(ctx: OperationContext) -> int:
        ctx.publish(balance_event(ctx.aggregate_id, 10, 1))
        return 10

    result = boundary.enforce("a-1", deposit, aggregate_type="account")

    assert result.strong and result.value == 10 and result.fence is not None
    assert index.during_wait == [True]  # indexed while the wait was running
    assert waits.overlapped == [True]
    (event,) = result.published
    assert index.lookup(event.envelope.event_id) == event.position  # done before return
    assert index.threads and index.threads[0].startswith("kct-boundary")


def _boundary(
    log: InMemoryLog,
    locks: InMemoryLockService,
    waits: EventualConsistencyManager,
    transactions: InMemoryTransactionalProducer | None = None,
) -> ConsistencyBoundary:
    policy = ConsistencyConfig(
        default_timeout=5.0,
        lock_timeout=5.0,
        projections=("balances",),
        strong=(StrongRule(type="account", pattern="*"),),
    )
    publisher = EventPublisher(log, CODEC, HybridLogicalClock("w"))
    return ConsistencyBoundary(
        policy,
        publisher,
        {"account": "accounts"},
        locks=locks,
        transactions=transactions or InMemoryTransactionalProducer(log),
        consistency=waits,
        suspended_grace=0.0,
    )


class _SlowTransaction(InMemoryTransaction):
    """Acknowledges records only once the lock check has been asked (or after 2 s)."""

    def __init__(self, owner: _SlowTransactions) -> None:
        super().__init__(owner)
        self._slow = owner

    def produce(self, records: Sequence[OutgoingRecord]) -> list[Position]:
        self._slow.acknowledged_after_check.append(self._slow.asked.wait(2))
        return super().produce(records)


class _SlowTransactions(InMemoryTransactionalProducer):
    def __init__(self, log: InMemoryLog, asked: threading.Event) -> None:
        super().__init__(log)
        self.asked = asked
        self.acknowledged_after_check: list[bool] = []

    def begin(self) -> InMemoryTransaction:
        return _SlowTransaction(self)


class _Locks(InMemoryLockService):
    def __init__(self, asked: threading.Event) -> None:
        super().__init__()
        self.asked = asked
        self.armed = False  # set by the operation: later holder() calls are lock checks

    def holder(self, aggregate_id: str) -> int | None:
        if self.armed:
            self.asked.set()
        return super().holder(aggregate_id)


def test_lock_check_runs_while_the_records_are_acknowledged() -> None:
    asked = threading.Event()
    log, locks, index = InMemoryLog(), _Locks(asked), _Index()
    index.recorded.set()  # this boundary indexes nothing: the wait returns at once
    transactions = _SlowTransactions(log, asked)
    boundary = _boundary(log, locks, _Waits(log, index), transactions)

    def operation(ctx: OperationContext) -> None:
        ctx.publish(balance_event("a-1", 1, 1))
        locks.armed = True

    result = boundary.enforce("a-1", operation, aggregate_type="account")

    assert result.published and transactions.acknowledged_after_check == [True]


def test_lock_lost_before_commit_aborts_with_the_overlapped_check() -> None:
    log, locks = InMemoryLog(), InMemoryLockService()
    waits = _Waits(log, _Index())
    boundary = _boundary(log, locks, waits)

    def lose_the_lock(ctx: OperationContext) -> None:
        ctx.publish(balance_event("a-1", 1, 1))
        locks.expire("account/a-1")  # the session ends before the commit

    with pytest.raises(LockLost):
        boundary.enforce("a-1", lose_the_lock, aggregate_type="account")
    # Aborted: nothing below the last stable offset for read_committed readers.
    assert all(end == 0 for end in InMemoryOffsets(log).end_offsets(["accounts"]).values())
    assert waits.overlapped == []  # nothing committed, nothing waited for
