"""The consistency boundary: per aggregate, eventual or strong, as configured.

``ConsistencyBoundary.enforce(aggregate_id, operation, aggregate_type=...)``
runs ``operation(context)``; the operation reads what it needs and calls
``context.publish(event, ...)``; its events are written after it returns
(so an operation that raises writes nothing).

* **Eventual** aggregates: the events are written at once and the result
  carries their :class:`~toolkit.positions.ConsistencyToken`; nobody waits.
* **Strong** aggregates (named by the policy, i.e. ``kct.yaml``):

  1. take the aggregate's lock and its fencing token (``LockTimeout`` if
     another holder keeps it longer than the lock timeout);
  2. **barrier**: wait until the configured projections have applied
     everything written to the aggregate's topic before the lock was taken,
     including any transaction of an earlier holder that was still open.
     The operation therefore reads a read model that reflects every earlier
     holder's write (without this, a holder that lost its lock between its
     last check and its commit could still commit under the next holder's
     read: a lost update);
  3. run the operation, then write its events in one Kafka transaction,
     each carrying the fence header;
  4. confirm the lock is still held (waiting briefly while the ZooKeeper
     connection is suspended) before committing, asked while the records are
     being acknowledged; otherwise abort and raise ``LockLost``: nothing is
     published;
  5. commit, wait until every configured projection has applied the
     events (the events are indexed by id meanwhile), release the lock.

Projections keep the highest fence applied per aggregate and reject older
ones (see :mod:`toolkit.projection`), which stops writers that bypass or race
the check above.

With an :class:`~toolkit.interceptors.Interceptor`, ``enforce`` runs inside
its ``operation`` hook and each strong phase (``lock``, ``hold`` from acquired
to release, ``barrier``, ``operation``, ``transaction``) inside
``strong_phase``; the waits are the consistency manager's ``wait`` hooks.

Failure modes: ``LockTimeout``; ``LockLost`` (aborted, nothing visible);
``ConsistencyTimeout`` from the barrier (nothing written) or after commit
(the write is committed, projections are late; ``context["committed"]`` says
which); ``TransactionAborted`` / ``PublishError`` from Kafka; the lock is
released in every case.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_all
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from toolkit.consistency import EventualConsistencyManager
from toolkit.envelope import Envelope
from toolkit.errors import ConfigurationError, ConsistencyError, ConsistencyTimeout, LockLost
from toolkit.interceptors import Interceptor, OperationInfo, StrongPhase
from toolkit.ports import (
    LockLease,
    LockService,
    OffsetSource,
    RecordTransaction,
    TransactionalProducer,
)
from toolkit.positions import ConsistencyToken, Position
from toolkit.publisher import EventPublisher, PublishedEvent

__all__ = [
    "BoundaryResult",
    "ConsistencyBoundary",
    "ConsistencyPolicy",
    "OperationContext",
]

log = logging.getLogger(__name__)

T = TypeVar("T")


class ConsistencyPolicy(Protocol):
    """Which aggregates are strong and how long their operations may take
    (``toolkit.config.ConsistencyConfig`` is one)."""

    def is_strong(self, aggregate_type: str, aggregate_id: str) -> bool: ...

    def timeout_for(self, aggregate_type: str, aggregate_id: str) -> float: ...

    def lock_timeout_for(self, aggregate_type: str, aggregate_id: str) -> float: ...

    def projections_for(self, aggregate_type: str, aggregate_id: str) -> tuple[str, ...]: ...


class OperationContext:
    """What an operation sees: its aggregate, its fence, and where to publish."""

    def __init__(self, aggregate_type: str, aggregate_id: str, fence: int | None) -> None:
        self.aggregate_type = aggregate_type
        self.aggregate_id = aggregate_id
        self.fence = fence
        self._events: list[Envelope] = []

    @property
    def strong(self) -> bool:
        return self.fence is not None

    @property
    def events(self) -> tuple[Envelope, ...]:
        return tuple(self._events)

    def publish(self, *events: Envelope) -> None:
        """Queue events of this aggregate; written when the operation returns."""
        for event in events:
            if (event.aggregate_type, event.aggregate_id) != (
                self.aggregate_type,
                self.aggregate_id,
            ):
                raise ConsistencyError(
                    "an operation may only publish events of its own aggregate",
                    aggregate=f"{self.aggregate_type}/{self.aggregate_id}",
                    event_aggregate=f"{event.aggregate_type}/{event.aggregate_id}",
                )
            self._events.append(event)


@dataclass(frozen=True)
class BoundaryResult(Generic[T]):
    """What ``enforce`` returns: the operation's value and where its events went."""

    value: T
    published: tuple[PublishedEvent, ...]
    token: ConsistencyToken
    strong: bool
    fence: int | None = None
    # Seconds spent per phase (lock, barrier, operation, commit, wait), for metrics.
    timings: Mapping[str, float] = field(default_factory=dict)


class ConsistencyBoundary:
    """Runs operations on aggregates with the consistency their policy asks for."""

    def __init__(
        self,
        policy: ConsistencyPolicy,
        publisher: EventPublisher,
        topics: Mapping[str, str],
        *,
        locks: LockService | None = None,
        transactions: TransactionalProducer | None = None,
        consistency: EventualConsistencyManager | None = None,
        offsets: OffsetSource | None = None,
        suspended_grace: float = 1.0,
        before_commit: Callable[[OperationContext], None] | None = None,
        interceptor: Interceptor | None = None,
    ) -> None:
        self.interceptor = interceptor
        self._policy = policy
        self._publisher = publisher
        self._topics = dict(topics)
        self._locks = locks
        self._transactions = transactions
        self._consistency = consistency
        self._offsets = offsets
        self._suspended_grace = suspended_grace
        # Test hook: runs after the events are in the open transaction and
        # before the lock check and the commit.
        self._before_commit = before_commit
        # Runs the lock check while the records are acknowledged, and records
        # committed events by id while the caller waits for the projections
        # (helper threads, started on first use).
        self._indexer: ThreadPoolExecutor | None = None

    def topic_for(self, aggregate_type: str) -> str:
        try:
            return self._topics[aggregate_type]
        except KeyError:
            raise ConfigurationError(
                "no topic configured for this aggregate type",
                aggregate_type=aggregate_type,
                known=sorted(self._topics),
            ) from None

    def enforce(
        self,
        aggregate_id: str,
        operation: Callable[[OperationContext], T],
        *,
        aggregate_type: str,
    ) -> BoundaryResult[T]:
        """Run ``operation`` on one aggregate with its configured consistency."""
        topic = self.topic_for(aggregate_type)
        strong = self._policy.is_strong(aggregate_type, aggregate_id)
        hooks = self.interceptor
        if hooks is None:
            if not strong:
                return self._eventual(aggregate_type, aggregate_id, topic, operation)
            return self._strong(aggregate_type, aggregate_id, topic, operation)
        projections = self._policy.projections_for(aggregate_type, aggregate_id) if strong else ()
        info = OperationInfo(aggregate_type, aggregate_id, topic, strong, tuple(projections))
        if not strong:
            return hooks.operation(
                info, lambda: self._eventual(aggregate_type, aggregate_id, topic, operation)
            )
        return hooks.operation(
            info, lambda: self._strong(aggregate_type, aggregate_id, topic, operation, info)
        )

    def _phase(
        self,
        phase: StrongPhase,
        info: OperationInfo | None,
        fence: int | None,
        run: Callable[[], T],
    ) -> T:
        hooks = self.interceptor
        if hooks is None or info is None:
            return run()
        return hooks.strong_phase(phase, info, fence, run)

    def _eventual(
        self,
        aggregate_type: str,
        aggregate_id: str,
        topic: str,
        operation: Callable[[OperationContext], T],
    ) -> BoundaryResult[T]:
        started = time.perf_counter()
        context = OperationContext(aggregate_type, aggregate_id, fence=None)
        value = operation(context)
        ran = time.perf_counter()
        published = self._publisher.publish_all(topic, context.events) if context.events else []
        done = time.perf_counter()
        return BoundaryResult(
            value,
            tuple(published),
            EventPublisher.token_of(published),
            strong=False,
            timings={"operation": ran - started, "publish": done - ran},
        )

    def _strong(
        self,
        aggregate_type: str,
        aggregate_id: str,
        topic: str,
        operation: Callable[[OperationContext], T],
        info: OperationInfo | None = None,
    ) -> BoundaryResult[T]:
        if self._locks is None or self._transactions is None or self._consistency is None:
            raise ConfigurationError(
                "strong aggregates need a lock service, a transactional producer and a "
                "consistency manager",
                aggregate=f"{aggregate_type}/{aggregate_id}",
            )
        aggregate = f"{aggregate_type}/{aggregate_id}"
        projections = self._policy.projections_for(aggregate_type, aggregate_id)
        timeout = self._policy.timeout_for(aggregate_type, aggregate_id)
        lock_timeout = self._policy.lock_timeout_for(aggregate_type, aggregate_id)
        locks = self._locks
        assert locks is not None
        timings: dict[str, float] = {}
        started = time.perf_counter()
        lease = self._phase("lock", info, None, lambda: locks.acquire(aggregate, lock_timeout))
        try:
            timings["lock"] = time.perf_counter() - started
            return self._phase(
                "hold",
                info,
                lease.fence,
                lambda: self._held(
                    info,
                    lease,
                    where=(aggregate_type, aggregate_id, topic),
                    projections=projections,
                    timeout=timeout,
                    operation=operation,
                    timings=timings,
                ),
            )
        finally:
            lease.release()

    def _held(
        self,
        info: OperationInfo | None,
        lease: LockLease,
        *,
        where: tuple[str, str, str],
        projections: Sequence[str],
        timeout: float,
        operation: Callable[[OperationContext], T],
        timings: dict[str, float],
    ) -> BoundaryResult[T]:
        """Barrier, operation, transaction and wait, while the lock is held."""
        aggregate_type, aggregate_id, topic = where
        aggregate = f"{aggregate_type}/{aggregate_id}"
        fence = lease.fence
        mark = time.perf_counter()
        self._phase(
            "barrier", info, fence, lambda: self._barrier(topic, projections, timeout, aggregate)
        )
        timings["barrier"], mark = time.perf_counter() - mark, time.perf_counter()
        context = OperationContext(aggregate_type, aggregate_id, fence)
        value = self._phase("operation", info, fence, lambda: operation(context))
        timings["operation"], mark = time.perf_counter() - mark, time.perf_counter()
        published: list[PublishedEvent] = []
        if context.events:
            published = self._phase(
                "transaction", info, fence, lambda: self._commit(context, lease, topic, aggregate)
            )
        timings["commit"], mark = time.perf_counter() - mark, time.perf_counter()
        token = EventPublisher.token_of(published)
        indexed = self._index(published)
        try:
            if published and projections:
                self._wait_committed(token, projections, timeout, aggregate)
        finally:
            if indexed is not None:
                indexed.result()  # index() never raises; done before enforce returns
        timings["wait"] = time.perf_counter() - mark
        return BoundaryResult(
            value, tuple(published), token, strong=True, fence=fence, timings=timings
        )

    def _commit(
        self, context: OperationContext, lease: LockLease, topic: str, aggregate: str
    ) -> list[PublishedEvent]:
        """Write the operation's events in one transaction; commit only if the lock is held."""
        assert self._transactions is not None
        with self._transactions.begin() as transaction:
            published, held = self._write_and_check(context, lease, transaction, topic)
            if not held:
                raise LockLost(
                    "lock lost before commit; the transaction was aborted and "
                    "nothing was published",
                    aggregate=aggregate,
                    fence=lease.fence,
                )
            transaction.commit()
        return published

    def _write_and_check(
        self,
        context: OperationContext,
        lease: LockLease,
        transaction: RecordTransaction,
        topic: str,
    ) -> tuple[list[PublishedEvent], bool]:
        """Write the events into the transaction and ask whether the lock is held.

        The lock check (a ZooKeeper round trip) runs on a helper thread while
        the records are acknowledged, instead of after: its answer is at most
        one produce older, and the commit still waits for it. The check only
        aborts early; what keeps a writer that lost its lock from a lost update
        is the next holder's barrier (it waits for this transaction, open or
        not) and the projections' fences, with or without the overlap. With the
        ``before_commit`` test hook the check runs after the hook, as before.
        """

        def write() -> list[PublishedEvent]:
            return self._publisher.publish_in(transaction, topic, context.events, fence=lease.fence)

        if self._before_commit is not None:
            published = write()
            self._before_commit(context)
            return published, lease.is_held(timeout=self._suspended_grace)
        check = self._helper().submit(lease.is_held, self._suspended_grace)
        try:
            published = write()
        except BaseException:
            wait_all([check])  # the write's error is the one to report
            raise
        return published, check.result()

    def _helper(self) -> ThreadPoolExecutor:
        if self._indexer is None:
            # A few threads: one operation's index may overlap the next one's check.
            self._indexer = ThreadPoolExecutor(4, thread_name_prefix="kct-boundary")
        return self._indexer

    def _index(self, published: Sequence[PublishedEvent]) -> Future[None] | None:
        """Record the committed events by id (for waits by event id) on a helper
        thread, overlapping the wait for the projections (a Redis round trip
        saved); the caller joins it before returning."""
        if not published:
            return None
        return self._helper().submit(self._publisher.index, published)

    def _barrier(
        self, topic: str, projections: Sequence[str], timeout: float, aggregate: str
    ) -> None:
        """Wait until the projections reflect everything written before the lock."""
        if not projections or self._offsets is None or self._consistency is None:
            return
        ends = self._offsets.end_offsets([topic], include_open_transactions=True)
        token = ConsistencyToken.of(
            Position(tp.topic, tp.partition, end - 1) for tp, end in ends.items() if end > 0
        )
        if not token:
            return
        try:
            self._consistency.wait_for_consistency(token, projections, timeout)
        except ConsistencyTimeout as exc:
            raise ConsistencyTimeout(
                "projections did not catch up with earlier writes before the operation "
                "(an earlier holder's transaction may still be open); nothing was written",
                aggregate=aggregate,
                committed=False,
                behind=exc.context.get("behind"),
            ) from exc

    def _wait_committed(
        self, token: ConsistencyToken, projections: Sequence[str], timeout: float, aggregate: str
    ) -> None:
        assert self._consistency is not None
        try:
            self._consistency.wait_for_consistency(token, projections, timeout)
        except ConsistencyTimeout as exc:
            raise ConsistencyTimeout(
                "the write is committed but projections did not apply it in time",
                aggregate=aggregate,
                committed=True,
                token=token.to_string(),
                behind=exc.context.get("behind"),
            ) from exc
