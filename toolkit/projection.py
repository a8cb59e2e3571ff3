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
4. announce the same offsets to waiters, then commit them to Kafka (a
   waiter needs the store step, not Kafka's commit: announcing first keeps
   the commit's round trip off read-after-write's path).

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

The read model's stored offsets are the truth, watched while running: every
``store_check_interval`` (0.5 s), idle or busy, the runner compares them with
what it last stored. Stored offsets that moved back (the model was reset or
wiped, or Redis came back with fewer writes than it acknowledged: an older
AOF after a host crash, a failover to a lagging replica) make it seek back
to them, move the group's committed offsets back to match, announce the
rewind to waiters and replay. Stored offsets that moved ahead (another member
wrote them) are adopted the same way. A conditional store step that finds
the offsets changed does the same instead of giving the partition up.

Pipelining: a full batch (more is waiting) is sent to the store with
``apply_later`` and the next batch is polled and decoded while the store
runs it; the answer is taken right after that poll (which then waits for
nothing), before anything of the new batch is applied, and the commit and
announcement follow it. A step refused or failed at its answer discards the
new batch's events of the partitions concerned (they resume from the stored
offsets); a batch that is not full is stored and committed at once.

With an :class:`~toolkit.interceptors.Interceptor`, each handler call of an
event the interceptor ``observes`` runs inside its ``process`` hook (the
others run directly: a tracing interceptor observes sampled flows only) and
each cycle over a non-empty poll (apply,
store, commit, announce) inside ``apply_batch``; without one the loop does
not touch the seam.

Failure modes: a handler that raises on an event dead-letters that event
(reason ``handler_error``) with nothing of it applied, and the runner moves
on; a handler that raises a ``ConnectorError`` (a backend it reads, or the
service behind an HTTP handler, is down) fails the cycle instead, like any
backend failure below: the event is never skipped. Any backend failure in a
cycle (the store, Kafka, the dead-letter topic) does not end
:meth:`ProjectionRunner.run`: nothing of the cycle is committed, the
partitions are rewound to the stored offsets, the runner reports itself
unhealthy (:attr:`ProjectionRunner.health`) and waits with capped back-off,
staying in its group, then tries again and heals by itself. A failed Kafka
commit is retried by the next cycle (the store already has the offsets).
"""

from __future__ import annotations

import base64
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from toolkit.conflicts import STATE_PREFIX, ConflictResolver, Reason, Resolution
from toolkit.dead_letter import DeadLetterQueue
from toolkit.envelope import ConsumedEvent, Envelope
from toolkit.errors import ConfigurationError, ConnectorError, SerializationError
from toolkit.hlc import HybridLogicalClock
from toolkit.interceptors import Interceptor
from toolkit.monitor_order import OrderViolations
from toolkit.ports import (
    FROM_BEGINNING,
    CheckpointedReadModelStore,
    ConsumedRecord,
    EventCodec,
    PendingApply,
    PositionNotifier,
    RecordConsumer,
)
from toolkit.positions import TopicPartition
from toolkit.publisher import EventPublisher
from toolkit.read_model import ReadModelBatch
from toolkit.reader import EventReader
from toolkit.supervision import Backoff, Health, LoopHealth

__all__ = [
    "FENCE_KEY_PREFIX",
    "GAP_TICK",
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
DEAD_LETTER_REASONS = frozenset(
    {Reason.REJECTED_CONFLICT, Reason.GAP_DEAD_LETTERED, Reason.MERGE_ERROR}
)
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
    partition, so its owner alone decides for it, also after a rebalance.

    It keeps what it read and what the resolver wrote, and writes the latter
    to the batch once, in :meth:`flush` (before the batch is stored): the
    batch's change journal then holds one copy of each resolver document per
    batch, not one per event (a busy aggregate's dedup window is one long
    string, rewritten by every event). Documents are handed out as shallow
    copies: the resolver never changes a nested value in place.
    """

    __slots__ = ("_batch", "_cache", "_dirty", "_prefix")

    def __init__(self, batch: ReadModelBatch, tp: TopicPartition) -> None:
        self._batch = batch
        self._prefix = f"{STATE_PREFIX}{tp.topic}[{tp.partition}]/"
        self._cache: dict[str, dict[str, Any] | None] = {}
        self._dirty: set[str] = set()

    def _key(self, key: str) -> str:
        return self._prefix + key.removeprefix(STATE_PREFIX)

    def get(self, key: str) -> dict[str, Any] | None:
        full = self._key(key)
        if full in self._cache:
            found = self._cache[full]
        else:
            found = self._cache[full] = self._batch.get(full)
        return None if found is None else dict(found)

    def put(self, key: str, document: Mapping[str, Any]) -> None:
        full = self._key(key)
        self._cache[full] = dict(document)
        self._dirty.add(full)

    def delete(self, key: str) -> None:
        full = self._key(key)
        self._cache[full] = None
        self._dirty.add(full)

    def flush(self) -> None:
        """Write what changed to the batch."""
        for key in self._dirty:
            document = self._cache[key]
            if document is None:
                self._batch.delete(key)
            else:
                self._batch.put(key, document)
        self._dirty.clear()


def _bytes_to_text(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode("ascii")


def _text_to_bytes(text: str | None) -> bytes | None:
    return None if text is None else base64.b64decode(text)


def record_source(record: ConsumedRecord) -> dict[str, Any]:
    """A record as JSON, kept with a buffered event so it can be dead-lettered later."""
    return {
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "timestamp_ms": record.timestamp_ms,
        "key": _bytes_to_text(record.key),
        "value": _bytes_to_text(record.value),
        "headers": [[name, _bytes_to_text(value)] for name, value in record.headers],
    }


def record_from_source(source: Mapping[str, Any] | None) -> ConsumedRecord | None:
    """The record :func:`record_source` described (None: no or an unreadable source)."""
    if source is None:
        return None
    try:
        return ConsumedRecord(
            source["topic"],
            source["partition"],
            source["offset"],
            _text_to_bytes(source["key"]),
            _text_to_bytes(source["value"]),
            tuple((name, _text_to_bytes(value) or b"") for name, value in source["headers"]),
            source.get("timestamp_ms"),
        )
    except (KeyError, TypeError, ValueError):
        return None


log = logging.getLogger(__name__)

# The control event a runner writes to an idle partition whose reorder gap is
# overdue by the wall clock: read back, its timestamp closes the gap there, so
# every replay and rebuild decides at the same place in the log.
GAP_TICK = "kct.control.GapTick"
GAP_TICK_AGGREGATE_TYPE = "kct.control"

# A believed stored offset that is not known (never a real offset).
_UNKNOWN = -1

Handler = Callable[[Envelope, ReadModelBatch], None]
# The document keys a handler will get() for an event: read ahead for a whole batch.
KeysRead = Callable[[Envelope], Iterable[str]]


class Projection:
    """A read model: its name (= consumer group), its topics and its handlers."""

    def __init__(self, name: str, topics: Sequence[str]) -> None:
        if not name or not topics:
            raise ConfigurationError("a projection needs a name and at least one topic")
        self.name = name
        self.topics = tuple(topics)
        self._handlers: dict[str, Handler] = {}
        self._reads: dict[str, KeysRead] = {}

    def on(self, *event_types: str) -> Callable[[Handler], Handler]:
        """Decorator: ``@projection.on("kct.examples.orders.OrderPlaced")``."""

        def register(handler: Handler) -> Handler:
            for event_type in event_types:
                if event_type in self._handlers:
                    raise ConfigurationError(
                        "two handlers for one event type",
                        projection=self.name,
                        event_type=event_type,
                    )
                self._handlers[event_type] = handler
            return handler

        return register

    def reads(self, *event_types: str) -> Callable[[KeysRead], KeysRead]:
        """Decorator naming the document keys the handler of these event types reads
        (``view.get``): the runner reads them for a whole batch in one round trip
        before applying it, instead of one per event. Only for documents that the
        projection's own partitions write (such as a document per aggregate), since
        they are read when the batch starts, not when the handler runs."""

        def register(keys: KeysRead) -> KeysRead:
            for event_type in event_types:
                self._reads[event_type] = keys
            return keys

        return register

    def keys_read(self, events: Iterable[Envelope]) -> list[str]:
        """The document keys handlers will read for ``events`` (registered with
        :meth:`reads`); an event whose key function raises is left to its handler."""
        reads = self._reads
        keys: list[str] = []
        for envelope in events:
            keys_of = reads.get(envelope.event_type)
            if keys_of is None:
                continue
            try:
                keys.extend(keys_of(envelope))
            except Exception:  # a malformed event: its handler decides (and dead-letters it)
                continue
        return keys

    @property
    def reads_ahead(self) -> bool:
        return bool(self._reads)

    def handler_for(self, event_type: str) -> Handler | None:
        return self._handlers.get(event_type)

    @property
    def event_types(self) -> frozenset[str]:
        return frozenset(self._handlers)


@dataclass(frozen=True)
class _InFlight:
    """A batch's store step sent, not answered: what it expects and sets."""

    pending: PendingApply
    expected: dict[TopicPartition, int | None]
    offsets: dict[TopicPartition, int]


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
    # Partitions whose stored offsets moved back under the runner (lost writes, a reset).
    store_rewinds: int = 0
    # Cycles that failed on a backend and were retried.
    failed_cycles: int = 0
    # Gap ticks written to idle partitions (see _send_gap_tick).
    gap_ticks: int = 0
    # Assignments received (an empty one included): > 0 once the runner joined its group.
    assignments: int = 0
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
        store_check_interval: float = 0.5,
        max_backoff: float = 1.0,
        after_store: Callable[[Mapping[TopicPartition, int]], None] | None = None,
        resolver: ConflictResolver | None = None,
        audit_entries: int = 50,
        expiry_interval: float = 0.25,
        idle_expiry: float | None = 5.0,
        gap_ticks: EventPublisher | None = None,
        interceptor: Interceptor | None = None,
    ) -> None:
        self.projection = projection
        self._hooks = interceptor
        self.stats = RunnerStats()
        self._reader = EventReader(consumer, codec, dead_letters, clock)
        self._store = store
        self._dead_letters = dead_letters
        self._notifier = notifier
        self._max_batch = max_batch
        self._poll_timeout = poll_timeout
        self._store_check_interval = store_check_interval
        self._next_store_check = 0.0
        self._backoff = Backoff(0.05, max_backoff)
        self._health = LoopHealth()
        # Owned partitions not to apply until the store tells where they stand
        # (assigned during an outage, or after a failed cycle), with the offset
        # last believed stored (None: nothing; _UNKNOWN: not known).
        self._unsynced: dict[TopicPartition, int | None] = {}
        # Partitions whose next announcement replaces what waiters heard (moved back).
        self._rewound: set[TopicPartition] = set()
        # Test and metrics hook: runs after the store step, before the Kafka commit.
        self._after_store = after_store
        # Per owned partition: the next offset the store says is applied (None: nothing yet).
        self._stored: dict[TopicPartition, int | None] = {}
        # Stored offsets Kafka has not been told yet (after assignment or a failed commit).
        self._uncommitted: dict[TopicPartition, int] = {}
        self._resolver = resolver
        # Order violations the resolver decided in this cycle, stored with its batch.
        self._order = OrderViolations()
        self._audit_entries = audit_entries
        self._expiry_interval = expiry_interval
        self._next_expiry = 0.0
        # Reorder gaps close in event time as records are read; a partition
        # that read nothing for idle_expiry seconds (None: never) falls back to
        # the wall clock. _quiet_since: when each owned partition last read.
        self._idle_expiry = idle_expiry
        self._quiet_since: dict[TopicPartition, float] = {}
        # Where an idle partition's wall-clock decision is written as a gap tick
        # (None: decide directly, which a rebuild may not reproduce).
        self._gap_ticks = gap_ticks
        self._next_tick: dict[TopicPartition, float] = {}
        self._stopping = threading.Event()
        # A store step sent while the next batch is read (see _store_batch), its
        # answer not yet taken; partitions resynced since the last poll.
        self._in_flight: _InFlight | None = None
        self._moved: set[TopicPartition] = set()
        self._reader.subscribe(projection.topics, self._on_assign, self._on_revoke)

    # -- group membership -------------------------------------------------
    def _on_assign(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        # Runs inside the consumer's poll: it must not raise.
        self.stats.assignments += 1
        try:
            stored = self._store.applied_offsets(self.projection.name, partitions)
        except ConnectorError as exc:
            log.warning(
                "%s: assigned %s but the store cannot say where they stand (%s); "
                "applying nothing of them until it can",
                self.projection.name,
                partitions,
                exc,
            )
            for tp in partitions:
                self._unsynced[tp] = _UNKNOWN
            self._owned_changed()
            return {}
        starts: dict[TopicPartition, int] = {}
        for tp in partitions:
            self._stored[tp] = stored.get(tp)
            self._unsynced.pop(tp, None)
            starts[tp] = stored.get(tp, FROM_BEGINNING)
            if tp in stored:
                # The store may be ahead of Kafka (crash between apply and commit).
                self._uncommitted[tp] = stored[tp]
        self._owned_changed()
        log.info("%s: assigned %s, starting at %s", self.projection.name, partitions, starts)
        return starts

    def _on_revoke(self, partitions: list[TopicPartition]) -> None:
        # Still the owner here: finish the store step in flight, then tell Kafka
        # what the store already has. Runs inside the consumer's poll: no raising.
        self._flush_quietly("revocation")
        self._commit_uncommitted()
        self._drop(partitions)
        log.info("%s: revoked %s", self.projection.name, partitions)

    def _drop(self, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self._stored.pop(tp, None)
            self._unsynced.pop(tp, None)
            self._uncommitted.pop(tp, None)
            self._rewound.discard(tp)
        self._reader.forget(partitions)
        self._owned_changed()

    def _owned_changed(self) -> None:
        self.stats.owned = set(self._stored) | set(self._unsynced)

    # -- the loop ---------------------------------------------------------
    @property
    def health(self) -> Health:
        """Whether the last cycles succeeded, and if not, why (for readiness probes)."""
        return self._health.current

    def run(self, stop: threading.Event | None = None) -> None:
        """Run cycles until :meth:`stop` (or ``stop`` is set); backend failures are
        waited out (see the module docstring), never raised."""
        while not self._stopping.is_set() and not (stop is not None and stop.is_set()):
            try:
                self.run_once()
            except ConnectorError as exc:
                self._recover(exc, stop)
            else:
                if self._health.recovered():
                    log.info("%s: healthy again", self.projection.name)
                    self._backoff.reset()

    def stop(self) -> None:
        self._stopping.set()

    def _recover(self, exc: ConnectorError, stop: threading.Event | None) -> None:
        """After a failed cycle: apply nothing until the store says where each
        partition stands, and wait (in the group, fetching nothing)."""
        self.stats.failed_cycles += 1
        self._health.failed(f"{type(exc).__name__}: {exc}")
        wait = self._backoff.next()
        log.warning(
            "%s: cycle failed, nothing of it committed; retrying in %.2fs: %s",
            self.projection.name,
            wait,
            exc,
        )
        self._reader.wait_in_group(
            wait, lambda: self._stopping.is_set() or (stop is not None and stop.is_set())
        )

    def _distrust_progress(self) -> None:
        """After a failed cycle: what was polled, applied or sent to the store may or
        may not be stored, so every owned partition continues from what the store
        says (the next cycle asks it first); nothing of the failed cycle is applied."""
        if self._in_flight is not None:  # unknown outcome: the stored offsets will say
            self._in_flight.pending.abandon()
            self._in_flight = None
        for tp, offset in self._stored.items():
            self._unsynced[tp] = offset
        self._stored.clear()
        self._reader.forget(list(self._reader.pending_offsets))
        self._next_store_check = 0.0

    def _watch_store(self) -> None:
        """Follow the store's offsets: resync what was unknown or moved under us."""
        if self._unsynced:
            self._resync(dict(self._unsynced))
        now = time.monotonic()
        if now < self._next_store_check or not self._stored:
            return
        self._next_store_check = now + self._store_check_interval
        stored = self._store.applied_offsets(self.projection.name, list(self._stored))
        moved = {tp: mine for tp, mine in self._stored.items() if stored.get(tp) != mine}
        if moved:
            self._resync(moved, stored)

    def _resync(
        self,
        believed: Mapping[TopicPartition, int | None],
        stored: Mapping[TopicPartition, int] | None = None,
    ) -> None:
        """Continue each partition from the offset its read model holds: seek there,
        move the group's committed offset there and announce it as a rewind."""
        partitions = list(believed)
        self._moved.update(partitions)
        if stored is None:
            stored = self._store.applied_offsets(self.projection.name, partitions)
        self._reader.rewind({tp: stored.get(tp, FROM_BEGINNING) for tp in partitions})
        for tp in partitions:
            offset = stored.get(tp)
            previous = believed[tp]
            if previous == _UNKNOWN:
                pass
            elif previous is not None and (offset is None or offset < previous):
                self.stats.store_rewinds += 1
                log.warning(
                    "%s: read model of %s holds offset %s but %s was stored: it lost "
                    "writes (reset, or restored from an older copy); replaying from there",
                    self.projection.name,
                    tp,
                    offset,
                    previous,
                )
            elif offset is not None and (previous is None or offset > previous):
                self.stats.ownership_lost += 1
                log.warning(
                    "%s: another member stored %s up to %s; following",
                    self.projection.name,
                    tp,
                    offset,
                )
            self._unsynced.pop(tp, None)
            self._stored[tp] = offset
            # Kafka's committed offset (what waiters trust) follows the store,
            # also backwards: 0 when the model holds nothing of the partition.
            self._uncommitted[tp] = 0 if offset is None else offset
            self._rewound.add(tp)
        self._owned_changed()

    def run_once(self) -> int:
        """One poll-apply-store-commit cycle; returns how many events were applied.

        Raises ConnectorError when a backend fails (:meth:`run` waits it out); the
        next call then starts from the offsets the store holds.
        """
        try:
            return self._run_cycle()
        except ConnectorError:
            self._distrust_progress()
            raise

    def _run_cycle(self) -> int:
        if self._in_flight is None:
            self._watch_store()
        self._moved.clear()
        # With a step in flight, take only what is already fetched (no wait): when
        # the backlog ends, the step's commit and announcement are not held back.
        timeout = 0.0 if self._in_flight is not None else self._poll_timeout
        events = self._reader.poll(self._max_batch, timeout)
        if self._in_flight is not None:
            # The previous batch's store step ran while this one was read: take its
            # answer (commit, announce), then see whether offsets moved meanwhile.
            self.flush()
            self._watch_store()
        if self._moved:  # read from where this runner was, not from where the store is
            events = [e for e in events if e.position.topic_partition not in self._moved]
        polled = {
            tp: offset
            for tp, offset in self._reader.next_offsets(self._stored).items()
            if offset > (self._stored[tp] or 0)
        }
        hooks = self._hooks
        if hooks is None or not events:
            return self._cycle(events, polled)
        return hooks.apply_batch(self.projection.name, events, lambda: self._cycle(events, polled))

    def _cycle(self, events: list[ConsumedEvent], polled: dict[TopicPartition, int]) -> int:
        """Apply what was polled, store it with its offsets, commit and announce."""
        applied = 0
        batch = ReadModelBatch(self._store, self.projection.name)
        self._order.clear()
        if polled:
            if self.projection.reads_ahead:
                self._read_ahead(events, batch)
            applied = self._apply(events, batch)
        if self._resolver is not None:
            applied += self._expire(batch, polled)
        if polled:
            self._order.flush(batch)
            # A full batch: more is waiting, so read it while the store works; the
            # answer is taken after that poll, before anything of it is applied.
            later = len(events) >= self._max_batch and self._resolver is None
            self._store_batch(batch, polled, later=later)
        self._reader.forget([tp for tp in self._reader.pending_offsets if tp not in polled])
        self._commit_uncommitted()
        return applied

    def _read_ahead(self, events: list[ConsumedEvent], batch: ReadModelBatch) -> None:
        """One ``get_many`` for the documents the batch's handlers will read."""
        keys = self.projection.keys_read(e.envelope for e in events)
        if keys:
            batch.read_ahead(keys, self._store.get_many(self.projection.name, keys))

    def _apply(self, events: Iterable[ConsumedEvent], batch: ReadModelBatch) -> int:
        applied = 0
        stored = self._stored
        resolver = self._resolver
        states: dict[TopicPartition, PartitionState] = {}
        handler_for = self.projection.handler_for
        hooks = self._hooks
        observes = None if hooks is None else hooks.observes
        name = self.projection.name
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
                state = states.get(tp)
                if state is None:
                    state = states[tp] = PartitionState(batch, tp)
                applied += self._resolve(event, state, batch)
                continue
            # _handle, inlined: this is the per-event hot path.
            handler = handler_for(envelope.event_type)
            if handler is None:
                continue
            mark = batch.savepoint()
            try:
                if observes is None or not observes(event):
                    handler(envelope, batch)
                else:
                    assert hooks is not None
                    hooks.process(event, name, partial(handler, envelope, batch))
            except ConnectorError:  # a backend (or the service) is down: retry the cycle
                raise
            except Exception as exc:  # a handler bug or a poison event: isolate it
                self._handler_failed(exc, envelope, event, batch, mark)
                continue
            applied += 1
        for state in states.values():
            state.flush()
        self.stats.applied += applied
        return applied

    def _resolve(self, event: ConsumedEvent, state: PartitionState, batch: ReadModelBatch) -> int:
        """Resolve one event in event time, then close the gaps its timestamp made overdue.

        Event time is the partition's highest record timestamp, kept in the
        resolver state: expiry is a function of the log, so a restart behind a
        backlog, a replay and a rebuild decide as the first run did.
        """
        resolver = self._resolver
        assert resolver is not None
        record = event.record
        now = resolver.observe(state, None if record is None else record.timestamp_ms)
        source = None if record is None else (lambda: record_source(record))
        try:
            resolution = resolver.resolve(event.envelope, state, now, source=source)
        except Exception as exc:  # e.g. a payload the reorder buffer cannot store
            self._resolver_failed(exc, event)
            applied = 0
        else:
            applied = self._settle(resolution, event, batch)
        for expired in resolver.expire(state, now):
            applied += self._settle(expired, None, batch)
        return applied

    def _resolver_failed(self, exc: Exception, event: ConsumedEvent) -> None:
        """Dead-letter an event the resolver could not decide (it stored nothing of it)."""
        reason = "resolver_error"
        self.stats.conflicts_rejected[reason] = self.stats.conflicts_rejected.get(reason, 0) + 1
        if event.record is not None:
            self._dead_letters.send(
                event.record, f"conflict_{reason}", f"{type(exc).__name__}: {exc}"
            )
        log.warning(
            "%s: resolver failed on %s %s, dead-lettered: %s",
            self.projection.name,
            event.envelope.event_type,
            event.envelope.event_id,
            exc,
        )

    def _handle(
        self, envelope: Envelope, event: ConsumedEvent | None, batch: ReadModelBatch
    ) -> int:
        """Run the event's handler; 1 if applied, 0 if none or it failed (dead-lettered)."""
        handler = self.projection.handler_for(envelope.event_type)
        if handler is None:
            return 0
        mark = batch.savepoint()
        hooks = self._hooks
        try:
            if hooks is None or event is None or not hooks.observes(event):
                handler(envelope, batch)
            else:
                # The accepted envelope (it may be a buffered one, released now).
                hooks.process(
                    event
                    if event.envelope is envelope
                    else ConsumedEvent(envelope, event.position, event.record),
                    self.projection.name,
                    partial(handler, envelope, batch),
                )
        except ConnectorError:  # a backend (or the service) is down: retry the cycle
            raise
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
        """Apply what the resolver accepted, dead-letter or audit what it rejected.

        An event released from the reorder buffer is dead-lettered from the
        record stored with it (its source coordinates and bytes).
        """
        applied = 0
        for accepted in resolution.accepted:
            applied += self._handle(accepted, self._origin(resolution, accepted, event), batch)
        hooks = self._hooks
        for rejected, reason in resolution.rejected:
            self.stats.conflicts_rejected[reason] = self.stats.conflicts_rejected.get(reason, 0) + 1
            if hooks is not None:
                hooks.note(
                    "conflict", {"reason": reason, "aggregate_type": rejected.aggregate_type}
                )
            if reason not in DEAD_LETTER_REASONS:
                continue
            origin = self._origin(resolution, rejected, event)
            error = resolution.error_of(rejected) or resolution.reason
            if origin is not None and origin.record is not None:
                self._dead_letters.send(origin.record, f"conflict_{reason}", error)
            else:  # buffered without its record (by an older version): nothing to copy
                log.warning(
                    "%s: %s of %s/%s rejected (%s) without its record; in the audit trail only",
                    self.projection.name,
                    rejected.event_id,
                    rejected.aggregate_type,
                    rejected.aggregate_id,
                    reason,
                )
        if resolution.reason not in QUIET_REASONS or resolution.rejected:
            if hooks is not None and not resolution.rejected:  # buffered, merged, a gap...
                aggregate_type = resolution.aggregate[0]
                hooks.note(
                    "conflict", {"reason": resolution.reason, "aggregate_type": aggregate_type}
                )
            self._audit(resolution, batch)
            record = None if event is None else event.record
            self._order.note(
                resolution,
                None if event is None else event.position,
                None if record is None else record.timestamp_ms,
            )
        return applied

    @staticmethod
    def _origin(
        resolution: Resolution, decided: Envelope, event: ConsumedEvent | None
    ) -> ConsumedEvent | None:
        """The consumed event ``decided`` came from: the trigger or a buffered record."""
        if event is not None and (
            decided is event.envelope or decided.event_id == event.envelope.event_id
        ):
            return event
        record = record_from_source(resolution.source_of(decided))
        return None if record is None else ConsumedEvent(decided, record.position, record)

    def _audit(self, resolution: Resolution, batch: ReadModelBatch) -> None:
        aggregate_type, aggregate_id = resolution.aggregate
        key = resolutions_key(aggregate_type, aggregate_id)
        trail = batch.get(key) or {"entries": []}
        entries = [*trail["entries"], resolution.to_audit()][-self._audit_entries :]
        batch.put(key, {"entries": entries})

    def _expire(self, batch: ReadModelBatch, offsets: dict[TopicPartition, int]) -> int:
        """Close overdue gaps of idle partitions by the wall clock.

        Gaps close in event time while records are read (:meth:`_resolve`).
        A partition that read nothing in this process for ``idle_expiry``
        seconds (not one catching up on a backlog, whose records keep coming)
        takes the wall clock as its event time. With ``gap_ticks`` that
        decision is written into the log as a gap tick and taken when the tick
        is read back, so a replay or a rebuild decides at the same place;
        without, it is taken here and a rebuild that reads the gap's event
        later fills the gap instead.
        """
        resolver = self._resolver
        assert resolver is not None
        now = time.monotonic()
        quiet = self._quiet_since
        for tp in [tp for tp in quiet if tp not in self._stored]:
            del quiet[tp]
        for tp in offsets:
            quiet[tp] = now
        if self._idle_expiry is None or now < self._next_expiry:
            return 0
        self._next_expiry = now + self._expiry_interval
        wall_ms = time.time_ns() // 1_000_000
        applied = 0
        for tp, stored in self._stored.items():
            if stored is None or tp in offsets:
                continue  # nothing stored (so nothing buffered), or records read now
            if now - quiet.setdefault(tp, now) < self._idle_expiry:
                continue  # not idle long enough
            state = PartitionState(batch, tp)
            wall_now = max(resolver.event_time(state), wall_ms)
            if self._gap_ticks is not None:
                # Decide when the tick is read back, at its place in the log.
                if resolver.due(state, wall_now) and now >= self._next_tick.get(tp, 0.0):
                    self._send_gap_tick(tp, wall_ms, now)
                continue
            resolutions = resolver.expire(state, wall_now)
            for resolution in resolutions:
                applied += self._settle(resolution, None, batch)
            state.flush()
            if resolutions and tp not in offsets:
                offsets[tp] = stored  # same offsets: the store step still checks ownership
        self.stats.applied += applied
        return applied

    def _send_gap_tick(self, tp: TopicPartition, wall_ms: int, now: float) -> None:
        """Write a gap tick to ``tp``: its timestamp closes the overdue gaps when read."""
        assert self._gap_ticks is not None and self._idle_expiry is not None
        self._next_tick[tp] = now + max(self._idle_expiry, 1.0)
        tick = Envelope(
            GAP_TICK,
            GAP_TICK_AGGREGATE_TYPE,
            f"{tp.topic}[{tp.partition}]",
            0,
            {
                "partition": tp.partition,
                "projection": self.projection.name,
                "written_at_ms": wall_ms,
            },
        )
        try:
            self._gap_ticks.publish_to_partition(tp.topic, tp.partition, tick)
        except SerializationError as exc:  # the codec has no GapTick schema
            log.warning(
                "%s: cannot write gap ticks (%s); idle gaps close by the wall clock, "
                "which a rebuild may not reproduce",
                self.projection.name,
                exc,
            )
            self._gap_ticks = None
            return
        except ConnectorError as exc:
            log.warning(
                "%s: gap tick to %s not written (retrying): %s", self.projection.name, tp, exc
            )
            return
        self.stats.gap_ticks += 1

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

    def _store_batch(
        self, batch: ReadModelBatch, offsets: Mapping[TopicPartition, int], *, later: bool = False
    ) -> None:
        """The batch's changes and offsets in one conditional store step (raises
        ConnectorError on failure: the cycle is then retried from the store).
        ``later``: sent now, its answer taken by :meth:`flush` after the next poll."""
        expected = {tp: self._stored.get(tp) for tp in offsets}
        self.stats.batches += 1
        if later:
            pending = self._store.apply_later(
                self.projection.name, batch.net_changes(), expected, offsets
            )
            self._in_flight = _InFlight(pending, expected, dict(offsets))
            return
        ok = self._store.apply(self.projection.name, batch.net_changes(), expected, offsets)
        self._stored_or_resync(ok, expected, offsets)

    def flush(self) -> None:
        """Finish the store step in flight, if any (take its answer, commit, announce):
        afterwards everything applied is stored. ``run`` and ``close`` do it themselves;
        a caller of :meth:`run_once` that needs that point calls it."""
        flight, self._in_flight = self._in_flight, None
        if flight is None:
            return
        ok = flight.pending.result()
        self._stored_or_resync(ok, flight.expected, flight.offsets)
        self._commit_uncommitted()

    def _flush_quietly(self, when: str) -> None:
        """:meth:`flush` where nothing may raise (a revocation, close): a failed step
        is only logged, the stored offsets say where the next owner starts."""
        try:
            self.flush()
        except ConnectorError as exc:
            log.warning(
                "%s: store step in flight at %s failed: %s", self.projection.name, when, exc
            )

    def _stored_or_resync(
        self,
        ok: bool,
        expected: Mapping[TopicPartition, int | None],
        offsets: Mapping[TopicPartition, int],
    ) -> None:
        if not ok:
            # The stored offsets are not the ones this runner last saw: another
            # member wrote them, or the model lost writes or was reset. Nothing
            # of the batch was written; continue from what the store holds.
            log.warning(
                "%s: stored offsets of %s changed under this runner; batch discarded",
                self.projection.name,
                list(offsets),
            )
            self._resync(expected)
            return
        self._stored.update(offsets)
        self._uncommitted.update(offsets)
        if self._after_store is not None:
            self._after_store(offsets)

    def _commit_uncommitted(self) -> None:
        owned = {tp: o for tp, o in self._uncommitted.items() if tp in self._stored}
        if not owned:
            return
        rewound = {tp: o for tp, o in owned.items() if tp in self._rewound}
        if len(rewound) < len(owned):
            # Waiters first: these offsets are stored with the data, all a
            # waiter needs; Kafka's commit (a round trip to the group
            # coordinator) then follows, off read-after-write's critical path.
            self._announce({tp: o for tp, o in owned.items() if tp not in rewound})
        try:
            self._reader.commit(owned)
        except ConnectorError as exc:
            self.stats.commit_failures += 1
            log.warning("%s: commit failed (will retry): %s", self.projection.name, exc)
            return
        for tp, offset in owned.items():
            if self._uncommitted.get(tp) == offset:
                del self._uncommitted[tp]
        if rewound and self._announce(rewound, rewound=True):
            # After Kafka's: a waiter checking Kafka meanwhile must not see the
            # old, higher offsets again after hearing the rewind.
            self._rewound.difference_update(rewound)

    def _announce(self, offsets: Mapping[TopicPartition, int], *, rewound: bool = False) -> bool:
        """Tell waiters; a failure is logged (they fall back to Kafka's offsets)."""
        if self._notifier is None:
            return True
        try:
            self._notifier.publish(self.projection.name, offsets, rewound=rewound)
        except ConnectorError as exc:
            log.warning("%s: position notification failed: %s", self.projection.name, exc)
            return False
        return True

    def close(self) -> None:
        """Finish the store step in flight, commit what is stored, leave the group."""
        self._flush_quietly("close")
        self._commit_uncommitted()
        self._reader.close()
