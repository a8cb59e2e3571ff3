"""Projections: consume events, apply them to a read model, then commit.

A :class:`Projection` names a read model (its name is the consumer group id),
the topics it reads and a handler per event type. A
:class:`ProjectionRunner` runs one member of that group:

1. poll a batch (records that are not valid events are dead-lettered by the
   reader and only advance the offsets);
2. apply every event of the batch to a :class:`~toolkit.read_model.ReadModelBatch`;
3. write the batch's changes **and** the offsets they cover in one atomic
   store step, conditional on the stored offsets being the ones this runner
   last saw (so a runner that lost its partitions to a rebalance cannot
   overwrite the new owner's work);
4. commit the same offsets to Kafka and announce them to waiters.

Guarantees: the read model's own stored offsets say exactly which events it
contains. On assignment a runner starts each partition at the stored offset
(or from the beginning when the read model holds nothing of it), so a crash
anywhere (between apply and commit included) neither loses nor double-applies
an event: effectively-once read models. The Kafka committed offset, the
projection's public position, only ever moves to offsets already applied.

Strong writes carry a fencing token (``fence`` header). The runner keeps the
highest fence applied per aggregate in the read model and rejects an event
whose fence is older (a lock holder that lost its lock and wrote anyway):
counted in ``stats.fence_rejected`` and dead-lettered as ``stale_fence``.

Failure modes: a handler that raises on an event dead-letters that event
(reason ``handler_error``) with nothing of it applied, and the runner moves
on. A store that keeps failing raises ``ProjectionError`` after bounded
retries, without committing anything it did not store. A failed Kafka commit
is retried by the next cycle (the store already has the offsets).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from toolkit.conflicts import STATE_PREFIX, ConflictResolver, Reason, Resolution
from toolkit.dead_letter import DeadLetterQueue
from toolkit.envelope import ConsumedEvent, Envelope
from toolkit.errors import ConnectorError, ProjectionError
from toolkit.hlc import HybridLogicalClock
from toolkit.ports import (
    FROM_BEGINNING,
    CheckpointedReadModelStore,
    EventCodec,
    PositionNotifier,
    RecordConsumer,
)
from toolkit.positions import TopicPartition
from toolkit.read_model import ReadModelBatch
from toolkit.reader import EventReader

__all__ = [
    "FENCE_KEY_PREFIX",
    "Handler",
    "PartitionState",
    "Projection",
    "ProjectionRunner",
    "RunnerStats",
    "fence_key",
    "resolutions_key",
]

# Read-model keys under this prefix belong to the toolkit, not to handlers.
FENCE_KEY_PREFIX = "__kct.fence/"


RESOLUTIONS_KEY_PREFIX = "__kct.resolutions/"
# Conflict decisions worth a dead-letter copy of the rejected event.
DEAD_LETTER_REASONS = frozenset({Reason.REJECTED_CONFLICT, Reason.GAP_DEAD_LETTERED})
# Decisions not worth an audit entry: the ordinary case.
QUIET_REASONS = frozenset({Reason.APPLIED, Reason.NO_POLICY, Reason.RELEASED})


def fence_key(aggregate_type: str, aggregate_id: str) -> str:
    """Where a projection keeps the highest fence it applied for an aggregate."""
    return f"{FENCE_KEY_PREFIX}{aggregate_type}/{aggregate_id}"


def resolutions_key(aggregate_type: str, aggregate_id: str) -> str:
    """Where a projection keeps the audit trail of an aggregate's conflict decisions."""
    return f"{RESOLUTIONS_KEY_PREFIX}{aggregate_type}/{aggregate_id}"


class PartitionState:
    """The resolver's state for one partition: an aggregate lives in one
    partition, so its owner alone decides for it, also after a rebalance."""

    __slots__ = ("_batch", "_prefix")

    def __init__(self, batch: ReadModelBatch, tp: TopicPartition) -> None:
        self._batch = batch
        self._prefix = f"{STATE_PREFIX}{tp.topic}[{tp.partition}]/"

    def _key(self, key: str) -> str:
        return self._prefix + key.removeprefix(STATE_PREFIX)

    def get(self, key: str) -> dict[str, Any] | None:
        return self._batch.get(self._key(key))

    def put(self, key: str, document: Mapping[str, Any]) -> None:
        self._batch.put(self._key(key), document)

    def delete(self, key: str) -> None:
        self._batch.delete(self._key(key))


log = logging.getLogger(__name__)

Handler = Callable[[Envelope, ReadModelBatch], None]


class Projection:
    """A read model: its name (= consumer group), its topics and its handlers."""

    def __init__(self, name: str, topics: Sequence[str]) -> None:
        if not name or not topics:
            raise ValueError("a projection needs a name and at least one topic")
        self.name = name
        self.topics = tuple(topics)
        self._handlers: dict[str, Handler] = {}

    def on(self, *event_types: str) -> Callable[[Handler], Handler]:
        """Decorator: ``@projection.on("kct.examples.orders.OrderPlaced")``."""

        def register(handler: Handler) -> Handler:
            for event_type in event_types:
                if event_type in self._handlers:
                    raise ValueError(f"{self.name}: two handlers for {event_type}")
                self._handlers[event_type] = handler
            return handler

        return register

    def handler_for(self, event_type: str) -> Handler | None:
        return self._handlers.get(event_type)

    @property
    def event_types(self) -> frozenset[str]:
        return frozenset(self._handlers)


@dataclass
class RunnerStats:
    """What a runner has done since it started."""

    applied: int = 0
    skipped_already_applied: int = 0
    handler_errors: int = 0
    fence_rejected: int = 0
    conflicts_rejected: dict[str, int] = field(default_factory=dict)
    batches: int = 0
    ownership_lost: int = 0
    commit_failures: int = 0
    owned: set[TopicPartition] = field(default_factory=set)


class ProjectionRunner:
    """One member of a projection's consumer group."""

    def __init__(
        self,
        projection: Projection,
        consumer: RecordConsumer,
        codec: EventCodec,
        store: CheckpointedReadModelStore,
        dead_letters: DeadLetterQueue,
        *,
        notifier: PositionNotifier | None = None,
        clock: HybridLogicalClock | None = None,
        max_batch: int = 500,
        poll_timeout: float = 0.1,
        store_retries: int = 5,
        after_store: Callable[[Mapping[TopicPartition, int]], None] | None = None,
        resolver: ConflictResolver | None = None,
        audit_entries: int = 50,
        expiry_interval: float = 0.25,
    ) -> None:
        self.projection = projection
        self.stats = RunnerStats()
        self._reader = EventReader(consumer, codec, dead_letters, clock)
        self._store = store
        self._dead_letters = dead_letters
        self._notifier = notifier
        self._max_batch = max_batch
        self._poll_timeout = poll_timeout
        self._store_retries = store_retries
        # Test and metrics hook: runs after the store step, before the Kafka commit.
        self._after_store = after_store
        # Per owned partition: the next offset the store says is applied (None: nothing yet).
        self._stored: dict[TopicPartition, int | None] = {}
        # Stored offsets Kafka has not been told yet (after assignment or a failed commit).
        self._uncommitted: dict[TopicPartition, int] = {}
        self._resolver = resolver
        self._audit_entries = audit_entries
        self._expiry_interval = expiry_interval
        self._next_expiry = 0.0
        self._stopping = threading.Event()
        self._reader.subscribe(projection.topics, self._on_assign, self._on_revoke)

    # -- group membership -------------------------------------------------
    def _on_assign(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        stored = self._store.applied_offsets(self.projection.name, partitions)
        starts: dict[TopicPartition, int] = {}
        for tp in partitions:
            self._stored[tp] = stored.get(tp)
            starts[tp] = stored.get(tp, FROM_BEGINNING)
            if tp in stored:
                # The store may be ahead of Kafka (crash between apply and commit).
                self._uncommitted[tp] = stored[tp]
        self.stats.owned = set(self._stored)
        log.info("%s: assigned %s, starting at %s", self.projection.name, partitions, starts)
        return starts

    def _on_revoke(self, partitions: list[TopicPartition]) -> None:
        # Still the owner here: tell Kafka what the store already has.
        self._commit_uncommitted()
        self._drop(partitions)
        log.info("%s: revoked %s", self.projection.name, partitions)

    def _drop(self, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self._stored.pop(tp, None)
            self._uncommitted.pop(tp, None)
        self._reader.forget(partitions)
        self.stats.owned = set(self._stored)

    # -- the loop ---------------------------------------------------------
    def run(self, stop: threading.Event | None = None) -> None:
        """Run cycles until :meth:`stop` (or ``stop`` is set)."""
        while not self._stopping.is_set() and not (stop is not None and stop.is_set()):
            self.run_once()

    def stop(self) -> None:
        self._stopping.set()

    def run_once(self) -> int:
        """One poll-apply-store-commit cycle; returns how many events were applied."""
        events = self._reader.poll(self._max_batch, self._poll_timeout)
        polled = {
            tp: offset
            for tp, offset in self._reader.next_offsets(self._stored).items()
            if offset > (self._stored[tp] or 0)
        }
        applied = 0
        batch = ReadModelBatch(self._store, self.projection.name)
        if polled:
            applied = self._apply(events, batch)
        if self._resolver is not None and time.monotonic() >= self._next_expiry:
            self._next_expiry = time.monotonic() + self._expiry_interval
            applied += self._expire(batch, polled)
        if polled:
            self._store_batch(batch, polled)
        self._reader.forget([tp for tp in self._reader.pending_offsets if tp not in polled])
        self._commit_uncommitted()
        return applied

    def _apply(self, events: Iterable[ConsumedEvent], batch: ReadModelBatch) -> int:
        applied = 0
        stored = self._stored
        resolver = self._resolver
        handler_for = self.projection.handler_for
        for event in events:
            position = event.position
            tp = TopicPartition(position.topic, position.partition)
            if tp not in stored:
                continue  # revoked while this batch was in flight
            already = stored[tp]
            if already is not None and position.offset < already:
                self.stats.skipped_already_applied += 1
                continue
            envelope = event.envelope
            if envelope.fence is not None and not self._admit_fence(event, batch):
                continue
            if resolver is not None:
                resolution = resolver.resolve(envelope, PartitionState(batch, tp))
                applied += self._settle(resolution, event, batch)
                continue
            # _handle, inlined: this is the per-event hot path.
            handler = handler_for(envelope.event_type)
            if handler is None:
                continue
            mark = batch.savepoint()
            try:
                handler(envelope, batch)
            except Exception as exc:  # a handler bug or a poison event: isolate it
                self._handler_failed(exc, envelope, event, batch, mark)
                continue
            applied += 1
        self.stats.applied += applied
        return applied

    def _handle(
        self, envelope: Envelope, event: ConsumedEvent | None, batch: ReadModelBatch
    ) -> int:
        """Run the event's handler; 1 if applied, 0 if none or it failed (dead-lettered)."""
        handler = self.projection.handler_for(envelope.event_type)
        if handler is None:
            return 0
        mark = batch.savepoint()
        try:
            handler(envelope, batch)
        except Exception as exc:  # a handler bug or a poison event: isolate it
            self._handler_failed(exc, envelope, event, batch, mark)
            return 0
        return 1

    def _handler_failed(
        self,
        exc: Exception,
        envelope: Envelope,
        event: ConsumedEvent | None,
        batch: ReadModelBatch,
        mark: int,
    ) -> None:
        """Undo what the failed handler recorded and dead-letter its event."""
        batch.rollback(mark)
        self.stats.handler_errors += 1
        if event is not None and event.record is not None:
            self._dead_letters.send(event.record, "handler_error", f"{type(exc).__name__}: {exc}")
        log.warning(
            "%s: handler failed on %s %s, dead-lettered: %s",
            self.projection.name,
            envelope.event_type,
            envelope.event_id,
            exc,
        )

    def _settle(
        self, resolution: Resolution, event: ConsumedEvent | None, batch: ReadModelBatch
    ) -> int:
        """Apply what the resolver accepted, dead-letter or audit what it rejected."""
        applied = 0
        for accepted in resolution.accepted:
            current = event if event is not None and accepted is event.envelope else None
            applied += self._handle(accepted, current, batch)
        for rejected, reason in resolution.rejected:
            self.stats.conflicts_rejected[reason] = self.stats.conflicts_rejected.get(reason, 0) + 1
            record = event.record if event is not None and rejected is event.envelope else None
            if reason in DEAD_LETTER_REASONS:
                if record is not None:
                    self._dead_letters.send(record, f"conflict_{reason}", resolution.reason)
                else:  # released from a reorder buffer of an earlier batch
                    log.warning(
                        "%s: %s of %s/%s rejected (%s); kept in the audit trail only",
                        self.projection.name,
                        rejected.event_id,
                        rejected.aggregate_type,
                        rejected.aggregate_id,
                        reason,
                    )
        if resolution.reason not in QUIET_REASONS or resolution.rejected:
            self._audit(resolution, batch)
        return applied

    def _audit(self, resolution: Resolution, batch: ReadModelBatch) -> None:
        aggregate_type, aggregate_id = resolution.aggregate
        key = resolutions_key(aggregate_type, aggregate_id)
        trail = batch.get(key) or {"entries": []}
        entries = [*trail["entries"], resolution.to_audit()][-self._audit_entries :]
        batch.put(key, {"entries": entries})

    def _expire(self, batch: ReadModelBatch, offsets: dict[TopicPartition, int]) -> int:
        """Release reorder buffers whose wait is over, partition by partition."""
        assert self._resolver is not None
        applied = 0
        for tp, stored in self._stored.items():
            if stored is None and tp not in offsets:
                continue  # nothing of this partition stored yet: nothing buffered either
            resolutions = self._resolver.expire(PartitionState(batch, tp))
            for resolution in resolutions:
                applied += self._settle(resolution, None, batch)
            if resolutions and tp not in offsets and stored is not None:
                offsets[tp] = stored  # same offsets: the store step still checks ownership
        self.stats.applied += applied
        return applied

    def _admit_fence(self, event: ConsumedEvent, batch: ReadModelBatch) -> bool:
        """Apply a strong write only if no newer lock holder has written its aggregate.

        The highest fence applied per aggregate is kept in the read model
        itself, so it is stored atomically with the offsets (a replay decides
        the same way). A stale holder's event is dead-lettered (``stale_fence``).
        """
        envelope = event.envelope
        assert envelope.fence is not None
        key = fence_key(envelope.aggregate_type, envelope.aggregate_id)
        seen = batch.get(key)
        highest = int(seen["fence"]) if seen is not None else -1
        if envelope.fence >= highest:
            if envelope.fence > highest:
                batch.put(key, {"fence": envelope.fence})
            return True
        self.stats.fence_rejected += 1
        if event.record is not None:
            self._dead_letters.send(
                event.record,
                "stale_fence",
                f"fence {envelope.fence} < {highest} already applied for "
                f"{envelope.aggregate_type}/{envelope.aggregate_id}",
            )
        log.warning(
            "%s: rejected %s of %s/%s: fence %d older than %d",
            self.projection.name,
            event.position,
            envelope.aggregate_type,
            envelope.aggregate_id,
            envelope.fence,
            highest,
        )
        return False

    def _store_batch(self, batch: ReadModelBatch, offsets: Mapping[TopicPartition, int]) -> None:
        expected = {tp: self._stored.get(tp) for tp in offsets}
        delay = 0.05
        for attempt in range(1, self._store_retries + 1):
            try:
                ok = self._store.apply(self.projection.name, batch.net_changes(), expected, offsets)
                break
            except ConnectorError as exc:
                if attempt == self._store_retries:
                    raise ProjectionError(
                        "read-model store keeps failing; nothing of the batch was committed",
                        projection=self.projection.name,
                        attempts=attempt,
                    ) from exc
                log.warning("%s: store failed (%s), retrying", self.projection.name, exc)
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
        self.stats.batches += 1
        if not ok:
            # Someone else stored these partitions since we were assigned them:
            # we are a zombie for them. Drop them; the group will sort it out.
            self.stats.ownership_lost += 1
            log.warning("%s: lost %s to another runner", self.projection.name, list(offsets))
            self._drop(list(offsets))
            return
        self._stored.update(offsets)
        self._uncommitted.update(offsets)
        if self._after_store is not None:
            self._after_store(offsets)

    def _commit_uncommitted(self) -> None:
        owned = {tp: o for tp, o in self._uncommitted.items() if tp in self._stored}
        if not owned:
            return
        try:
            self._reader.commit(owned)
        except ConnectorError as exc:
            self.stats.commit_failures += 1
            log.warning("%s: commit failed (will retry): %s", self.projection.name, exc)
            return
        for tp, offset in owned.items():
            if self._uncommitted.get(tp) == offset:
                del self._uncommitted[tp]
        if self._notifier is not None:
            try:
                self._notifier.publish(self.projection.name, owned)
            except ConnectorError as exc:  # waiters fall back to Kafka's offsets
                log.warning("%s: position notification failed: %s", self.projection.name, exc)

    def close(self) -> None:
        """Commit what is stored, then leave the group."""
        self._commit_uncommitted()
        self._reader.close()
