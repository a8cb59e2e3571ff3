"""Ports: what the core needs from the outside world, as small Protocols.

The core (``toolkit/``) speaks only to these; adapters in ``connectors/``
implement them against Kafka, Avro, Redis and ZooKeeper, and unit tests use
small in-memory implementations. Ports are layered by capability so an
adapter implements only what it can honour.

Records crossing the ports are plain data: :class:`OutgoingRecord` before it
is written, :class:`ConsumedRecord` after it is read (with its coordinates).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal, NamedTuple, Protocol

from toolkit.positions import Position, TopicPartition

__all__ = [
    "FROM_BEGINNING",
    "AssignCallback",
    "CheckpointedReadModelStore",
    "ConsumedRecord",
    "EncodedPayload",
    "EventCodec",
    "EventPositionIndex",
    "GroupMembers",
    "Headers",
    "LockLease",
    "LockService",
    "LogInspector",
    "LogOffsets",
    "OffsetSource",
    "OutgoingRecord",
    "PositionListener",
    "PositionNotifier",
    "ReadModelChange",
    "ReadModelStore",
    "RecordConsumer",
    "RecordProducer",
    "RecordTimestamps",
    "RecordTransaction",
    "ReplayMarkers",
    "RevokeCallback",
    "SagaStepStore",
    "StepRecord",
    "StepRecordResult",
    "TopicBrowser",
    "TransactionalProducer",
]

Headers = tuple[tuple[str, bytes], ...]


@dataclass(frozen=True, slots=True)
class OutgoingRecord:
    """A record to be written: its key decides the partition, unless one is named."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: Headers = ()
    partition: int | None = None


@dataclass(frozen=True, slots=True)
class ConsumedRecord:
    """A record read from the log, with where it was read from."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Headers = ()
    timestamp_ms: int | None = field(default=None, compare=False)
    # Why the client could not read the record's headers (then ``headers`` is
    # empty): such a record is dead-lettered, never decoded.
    header_error: str | None = field(default=None, compare=False)

    @property
    def position(self) -> Position:
        return Position(self.topic, self.partition, self.offset)

    def header(self, name: str) -> bytes | None:
        """The last value of a header, or None."""
        found = None
        for key, value in self.headers:
            if key == name:
                found = value
        return found


class EncodedPayload(NamedTuple):
    """Serialised payload bytes and the reference of the schema that wrote them."""

    data: bytes
    schema_ref: str


class EventCodec(Protocol):
    """Turns event payloads into bytes and back, by named, versioned schemas."""

    def encode(self, event_type: str, payload: Mapping[str, Any]) -> EncodedPayload:
        """Serialise with the current schema of ``event_type``.

        Raises UnknownSchema for an unknown type, SerializationError for a
        payload that does not fit the schema.
        """
        ...

    def decode(self, data: bytes, schema_ref: str) -> dict[str, Any]:
        """Deserialise bytes written with ``schema_ref`` into the current reader schema.

        Raises UnknownSchema or SerializationError; never returns partial data.
        """
        ...


class RecordProducer(Protocol):
    """Writes records durably (acknowledged by all in-sync replicas)."""

    def produce(self, records: Sequence[OutgoingRecord]) -> list[Position]:
        """Write records and block until each is acknowledged.

        Returns their positions in input order; raises PublishError if any
        record was not acknowledged (it may or may not have been written).
        """
        ...

    def close(self) -> None: ...


class RecordTransaction(Protocol):
    """An open Kafka transaction: all of its records become visible at commit, or none."""

    def produce(self, records: Sequence[OutgoingRecord]) -> list[Position]:
        """Write records into the transaction; their positions once acknowledged.

        Raises TransactionAborted (the transaction was aborted) on failure.
        """
        ...

    def send_offsets(self, offsets: Mapping[TopicPartition, int], group_metadata: Any) -> None:
        """Commit a consumer group's offsets atomically with the records."""
        ...

    def commit(self) -> None:
        """Commit. Raises TransactionAborted (nothing visible) or PublishError
        with context ``outcome="unknown"``."""
        ...

    def abort(self) -> None:
        """Abort (idempotent)."""
        ...

    def __enter__(self) -> RecordTransaction: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Abort unless committed."""
        ...


class TransactionalProducer(Protocol):
    """Starts transactions, one at a time."""

    def begin(self) -> RecordTransaction: ...

    def close(self) -> None: ...


# A start offset an assignment callback may return: read the partition from its start.
FROM_BEGINNING = -2

AssignCallback = Callable[[list[TopicPartition]], Mapping[TopicPartition, int] | None]
RevokeCallback = Callable[[list[TopicPartition]], None]


class RecordConsumer(Protocol):
    """Reads records of subscribed topics as a member of a consumer group."""

    def subscribe(
        self,
        topics: Sequence[str],
        on_assign: AssignCallback | None = None,
        on_revoke: RevokeCallback | None = None,
    ) -> None:
        """Join the group for ``topics``.

        ``on_assign`` runs when partitions are assigned, before any of their
        records is returned; the offsets it returns (or ``FROM_BEGINNING``)
        are where reading starts, otherwise the group's committed offsets.
        ``on_revoke`` runs before partitions are taken away (or lost).
        """
        ...

    def poll(self, max_records: int, timeout: float) -> list[ConsumedRecord]:
        """Up to ``max_records`` records, waiting at most ``timeout`` seconds."""
        ...

    def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Commit next-to-read offsets synchronously; raises ConsumeError on failure."""
        ...

    def rewind(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Make the next poll read these partitions again from these offsets."""
        ...

    def positions(self, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        """Next offset to read per partition, past transaction markers and aborted
        records; partitions without a known position are absent."""
        ...

    def idle(self, seconds: float) -> None:
        """Serve the group (heartbeats, rebalance callbacks) for ``seconds`` while
        fetching nothing: what a member does while it waits out an outage.
        Every partition resumes afterwards at the position it had."""
        ...

    def close(self) -> None: ...


class OffsetSource(Protocol):
    """Reads the log's end offsets and consumer groups' committed offsets."""

    def committed_offsets(self, group: str, topics: Iterable[str]) -> dict[TopicPartition, int]:
        """Committed (next-to-read) offsets of ``group``; partitions without one are absent."""
        ...

    def end_offsets(
        self, topics: Iterable[str], *, include_open_transactions: bool = False
    ) -> dict[TopicPartition, int]:
        """The offset after the last committed record of each partition (the last
        stable offset); with ``include_open_transactions``, after the last record
        written, decided or not (the high watermark)."""
        ...


@dataclass(frozen=True, slots=True)
class LogOffsets:
    """Where one partition's log starts and ends."""

    start: int  # the earliest offset still kept (retention moves it)
    stable: int  # the last stable offset: after the last decided record (read_committed end)
    end: int  # the high watermark: after the last record written, decided or not


@dataclass(frozen=True, slots=True)
class GroupMembers:
    """Who is in a consumer group now: live members and the partitions they hold."""

    state: str
    members: int
    assigned: frozenset[TopicPartition] = frozenset()


class LogInspector(Protocol):
    """What a monitor reads of the log and of consumer groups, in batched requests
    (never one request per partition). Failures raise AdminError."""

    def log_offsets(self, topics: Iterable[str]) -> dict[TopicPartition, LogOffsets]:
        """Start, last stable and end offsets of every partition of ``topics``."""
        ...

    def group_offsets(
        self, groups: Mapping[str, Sequence[TopicPartition]]
    ) -> dict[str, dict[TopicPartition, int]]:
        """Committed (next-to-read) offsets per group; partitions without one are absent."""
        ...

    def group_members(self, groups: Sequence[str]) -> dict[str, GroupMembers]:
        """The live members of each group (a group nobody joined has none)."""
        ...


class RecordTimestamps(Protocol):
    """Reads the timestamps of records at given offsets."""

    def timestamps(
        self, offsets: Mapping[TopicPartition, int], timeout: float
    ) -> dict[TopicPartition, int]:
        """Per partition, the timestamp (ms) of the first committed record at or after
        the offset; absent when none comes before the last stable offset, or none
        arrived within ``timeout`` seconds. Raises AdminError when Kafka cannot be read."""
        ...


class TopicBrowser(Protocol):
    """Reads a topic's committed records without a consumer group (operators' tools)."""

    def read(self, topic: str, since_ms: int | None, timeout: float) -> list[ConsumedRecord]:
        """Every committed record from the topic's start (or the first written at or
        after ``since_ms``) up to its end when called, by partition and offset.
        Raises AdminError for an unknown topic or when Kafka cannot be read."""
        ...

    def fetch(self, position: Position, timeout: float) -> ConsumedRecord | None:
        """The committed record at ``position``; None when it is gone (retention,
        compaction) or was never committed. Raises AdminError when Kafka cannot be read."""
        ...

    def close(self) -> None: ...


class ReplayMarkers(Protocol):
    """Once-only marks of replayed dead letters, by event id (``claim`` is atomic)."""

    def claim(
        self, key: str, mark: Mapping[str, Any], replacing: Mapping[str, Any] | None = None
    ) -> dict[str, Any] | None:
        """Store ``mark`` under ``key`` unless a mark is there: None when stored now;
        else the mark found (left alone), unless it equals ``replacing`` (replaced)."""
        ...

    def confirm(self, key: str, mark: Mapping[str, Any]) -> None:
        """Replace the claim of ``key`` with ``mark`` (the replay happened)."""
        ...

    def release(self, key: str) -> None:
        """Drop the claim of ``key`` (the replay did not happen)."""
        ...


@dataclass(frozen=True, slots=True)
class ReadModelChange:
    """One write to a read model, applied atomically with its batch's offsets.

    ``put`` stores a JSON document under ``key``; ``delete`` removes it;
    ``increment`` adds ``amount`` to counter ``field`` of ``key`` (commutative,
    so safe for keys that several partitions update).
    """

    kind: Literal["put", "delete", "increment"]
    key: str
    document: Mapping[str, Any] | None = None
    field: str | None = None
    amount: int = 0


class ReadModelStore(Protocol):
    """Reads a projection's read model."""

    def get(self, projection: str, key: str) -> dict[str, Any] | None:
        """The document stored under ``key``, or None."""
        ...

    def counters(self, projection: str, key: str) -> dict[str, int]:
        """The counters of ``key`` (empty when none)."""
        ...


class PendingApply(Protocol):
    """A store step sent with :meth:`CheckpointedReadModelStore.apply_later`."""

    def result(self) -> bool:
        """Wait for the step: what :meth:`CheckpointedReadModelStore.apply` returns
        (raises the same errors). Call it once."""
        ...

    def abandon(self) -> None:
        """Give up on the answer (after another failure): the step may or may not
        have happened; the stored offsets say which."""
        ...


class CheckpointedReadModelStore(ReadModelStore, Protocol):
    """A read-model store that keeps, with the data, the offsets it has applied."""

    def get_many(self, projection: str, keys: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The documents stored under ``keys`` in one round trip (absent keys left out)."""
        ...

    def applied_offsets(
        self, projection: str, partitions: Iterable[TopicPartition]
    ) -> dict[TopicPartition, int]:
        """Next offset to apply per partition; partitions never applied are absent."""
        ...

    def apply(
        self,
        projection: str,
        changes: Sequence[ReadModelChange],
        expected: Mapping[TopicPartition, int | None],
        offsets: Mapping[TopicPartition, int],
    ) -> bool:
        """Write ``changes`` and set ``offsets`` in one atomic step.

        Only if the stored offsets still equal ``expected`` (None = none
        stored): otherwise nothing is written and False is returned, because
        another runner has taken the partition over.
        """
        ...

    def apply_later(
        self,
        projection: str,
        changes: Sequence[ReadModelChange],
        expected: Mapping[TopicPartition, int | None],
        offsets: Mapping[TopicPartition, int],
    ) -> PendingApply:
        """:meth:`apply`, sent now and answered by ``result()`` later, so the caller
        can work while the store does (a runner reads its next batch meanwhile).
        Same atomicity and condition; until ``result()`` the caller must not read
        what the step writes."""
        ...

    def dump(self, projection: str) -> dict[str, Any]:
        """The whole read model: ``d:<key>`` documents and ``c:<key>`` counters
        (for integrity audits and tests)."""
        ...

    def reset(self, projection: str) -> None:
        """Delete the projection's data and offsets (for a rebuild)."""
        ...


@dataclass(frozen=True, slots=True)
class StepRecord:
    """One step decision for :meth:`SagaStepStore.record_each`.

    ``expected``: the documents the decision read and the values it saw
    (None: absent). The record holds only while every one of them still has
    that value; a document written meanwhile makes the record ``stale``.
    """

    key: str
    changes: Sequence[ReadModelChange]
    outcome: Mapping[str, Any]
    expected: Mapping[str, Mapping[str, Any] | None] = field(default_factory=dict)


class StepRecordResult(NamedTuple):
    """What :meth:`SagaStepStore.record_each` did with one :class:`StepRecord`.

    ``recorded``: applied and recorded now (``outcome`` is the record's);
    ``decided``: the key was recorded before, nothing changed (``outcome`` is
    the stored one); ``stale``: an expected document had another value, nothing
    changed (``outcome`` is empty): decide the step again.
    """

    status: Literal["recorded", "decided", "stale"]
    outcome: dict[str, Any]


class SagaStepStore(ReadModelStore, Protocol):
    """A saga participant's read model and its once-only step outcomes."""

    def outcome(self, participant: str, key: str) -> dict[str, Any] | None:
        """The outcome recorded under ``key``, or None."""
        ...

    def outcomes(self, participant: str, keys: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The outcomes recorded under ``keys``, read together (one round trip);
        keys not recorded are left out."""
        ...

    def record_once(
        self,
        participant: str,
        key: str,
        changes: Sequence[ReadModelChange],
        outcome: Mapping[str, Any],
    ) -> tuple[bool, dict[str, Any]]:
        """Apply ``changes`` and record ``outcome`` under ``key`` in one atomic step,
        unless ``key`` is already recorded.

        Returns ``(True, outcome)`` when recorded now, else ``(False, stored)``
        with nothing changed.
        """
        ...

    def record_each(
        self, participant: str, records: Sequence[StepRecord]
    ) -> list[StepRecordResult]:
        """Each record in order, each its own atomic step like :meth:`record_once`
        and only while its ``expected`` documents hold (sent together: one round
        trip). Records are independent: one that is ``decided`` or ``stale``
        does not stop the others, so a record whose decision read another's
        changes must expect them."""
        ...


class PositionNotifier(Protocol):
    """Announces projections' new committed offsets so waiters wake at once."""

    def publish(
        self, projection: str, offsets: Mapping[TopicPartition, int], *, rewound: bool = False
    ) -> None:
        """Announce offsets a projection has stored (Kafka's commit of them follows;
        a rewind's, after it). ``rewound``: the projection moved back
        (its read model lost writes); listeners replace, not raise, what they hold."""
        ...


class PositionListener(Protocol):
    """Receives the announcements of :class:`PositionNotifier`, for waiters."""

    def latest(self, projection: str) -> dict[TopicPartition, int]:
        """The highest offsets announced for ``projection`` since listening (re)began,
        lowered by rewind announcements."""
        ...

    def wait_for_update(self, after_version: int, timeout: float) -> int:
        """Block until an announcement newer than ``after_version`` arrives, or timeout.

        Returns the current version (equal to ``after_version`` on timeout).
        """
        ...

    @property
    def version(self) -> int:
        """Incremented by each announcement received."""
        ...


class EventPositionIndex(Protocol):
    """Maps event ids to where the events were written (kept for a bounded time)."""

    def record(self, entries: Sequence[tuple[str, Position]]) -> None: ...

    def lookup(self, event_id: str) -> Position | None: ...


class LockLease(Protocol):
    """The held lock of one aggregate and its fencing token."""

    @property
    def aggregate_id(self) -> str: ...

    @property
    def fence(self) -> int:
        """Strictly greater than the fence of every earlier holder of this lock."""
        ...

    def is_held(self, timeout: float = 0.0) -> bool:
        """True if the lock is still ours right now (asked of the server).

        While the connection is suspended, waits up to ``timeout`` seconds for
        it to come back; False once the session is lost or the node is gone.
        """
        ...

    def release(self) -> None:
        """Give the lock up (idempotent; never raises for a lost lock)."""
        ...


class LockService(Protocol):
    """Mutual exclusion per aggregate, with fencing tokens."""

    def acquire(self, aggregate_id: str, timeout: float) -> LockLease:
        """Block until the lock of ``aggregate_id`` is ours.

        Raises LockTimeout after ``timeout`` seconds, CoordinationError when
        the service cannot be reached.
        """
        ...

    def close(self) -> None: ...
