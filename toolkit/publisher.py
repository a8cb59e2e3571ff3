"""Publishing events: stamp, serialise, write, and return where they landed.

:class:`EventPublisher` stamps each event with the process's hybrid logical
clock, serialises its payload with the codec, writes it keyed by aggregate id
and blocks until Kafka acknowledged it (``acks=all``, idempotent producer), so
the returned :class:`~toolkit.positions.Position` is durable and can be put in
a :class:`~toolkit.positions.ConsistencyToken` for read-after-write.

Failure modes: a payload that does not fit its schema raises
``SerializationError`` before anything is written; an unacknowledged write
raises ``PublishError`` (the event may or may not be in the log: idempotence
makes a retry of the same producer safe, a new event id does not). With an
event-position index, each event's position is recorded by id after the
write; an index failure is logged, not raised (the events are written).

With an :class:`~toolkit.interceptors.Interceptor`, every write goes through
its ``publish`` hook, which may rewrite the envelopes (tracing adds
``traceparent``) before they are stamped and serialised.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from toolkit.envelope import Envelope, encode_envelope
from toolkit.errors import ConnectorError
from toolkit.hlc import HybridLogicalClock
from toolkit.interceptors import Interceptor, Outgoing
from toolkit.ports import (
    EventCodec,
    EventPositionIndex,
    OutgoingRecord,
    RecordProducer,
    RecordTransaction,
)
from toolkit.positions import ConsistencyToken, Position

__all__ = ["EventPublisher", "PublishedEvent"]

log = logging.getLogger(__name__)


class PublishedEvent:
    """An event as written: the stamped envelope and its position."""

    __slots__ = ("envelope", "position")

    def __init__(self, envelope: Envelope, position: Position) -> None:
        self.envelope = envelope
        self.position = position

    def __repr__(self) -> str:
        return (
            f"PublishedEvent({self.envelope.event_type} {self.envelope.event_id} @ {self.position})"
        )


class EventPublisher:
    """Writes envelopes to Kafka topics through a :class:`RecordProducer`."""

    def __init__(
        self,
        producer: RecordProducer,
        codec: EventCodec,
        clock: HybridLogicalClock,
        index: EventPositionIndex | None = None,
        interceptor: Interceptor | None = None,
    ) -> None:
        self._producer = producer
        self._codec = codec
        self._clock = clock
        self._index = index
        self.interceptor = interceptor

    def publish(self, topic: str, event: Envelope) -> PublishedEvent:
        """Write one event and wait for its acknowledgement."""
        return self.publish_all(topic, [event])[0]

    def publish_all(self, topic: str, events: Sequence[Envelope]) -> list[PublishedEvent]:
        """Write events in order (per aggregate) and wait for every acknowledgement."""
        published = self._write([(topic, event) for event in events], None)
        self.index(published)
        return published

    def publish_to_partition(self, topic: str, partition: int, event: Envelope) -> PublishedEvent:
        """Write one event to a named partition (not the one its key would pick):
        for control events about a partition, such as gap ticks."""
        (published,) = self._write([(topic, event)], None, partition)
        return published

    def publish_in(
        self,
        transaction: RecordTransaction,
        topic: str,
        events: Sequence[Envelope],
        *,
        fence: int | None = None,
    ) -> list[PublishedEvent]:
        """Write events into an open transaction, stamped with ``fence``.

        They are invisible to ``read_committed`` readers until the transaction
        commits; call :meth:`index` after the commit.
        """
        fenced = [e if fence is None else e.with_changes(fence=fence) for e in events]
        return self.publish_routed_in(transaction, [(topic, e) for e in fenced])

    def publish_routed_in(
        self, transaction: RecordTransaction, routed: Sequence[tuple[str, Envelope]]
    ) -> list[PublishedEvent]:
        """Write events to several topics in one open transaction, with one
        acknowledgement round trip for all of them."""
        return self._write(routed, transaction) if routed else []

    def _write(
        self,
        routed: Sequence[Outgoing],
        transaction: RecordTransaction | None,
        partition: int | None = None,
    ) -> list[PublishedEvent]:
        """Stamp, encode and write (through the interceptor, if any)."""
        stamped: list[Envelope] = []
        hooks = self.interceptor
        if hooks is None:
            positions = self._produce(routed, transaction, partition, stamped)
        else:
            positions = hooks.publish(
                routed,
                transaction is not None,
                lambda messages: self._produce(messages, transaction, partition, stamped),
            )
        return self._published(stamped, positions)

    def _produce(
        self,
        routed: Sequence[Outgoing],
        transaction: RecordTransaction | None,
        partition: int | None,
        stamped: list[Envelope],
    ) -> list[Position]:
        envelopes, records = self._encode(routed)
        stamped.extend(envelopes)
        if partition is not None:
            records = [
                OutgoingRecord(r.topic, r.key, r.value, r.headers, partition) for r in records
            ]
        if transaction is not None:
            return transaction.produce(records)
        return self._producer.produce(records)

    def _encode(
        self, routed: Sequence[tuple[str, Envelope]]
    ) -> tuple[list[Envelope], list[OutgoingRecord]]:
        """Stamp each event with this process's clock and serialise it for its topic."""
        stamped, records = [], []
        for topic, event in routed:
            envelope, record = encode_envelope(topic, event, self._codec, self._clock.now())
            stamped.append(envelope)
            records.append(record)
        return stamped, records

    @staticmethod
    def _published(
        stamped: Sequence[Envelope], positions: Sequence[Position]
    ) -> list[PublishedEvent]:
        return [PublishedEvent(e, p) for e, p in zip(stamped, positions, strict=True)]

    def index(self, published: Sequence[PublishedEvent]) -> None:
        """Record the events' positions by id (for waits by event id); never raises."""
        if self._index is None or not published:
            return
        try:
            self._index.record([(p.envelope.event_id, p.position) for p in published])
        except ConnectorError as exc:
            # The events are written; only waiting by event id is affected.
            log.warning("event-position index not updated: %s", exc)

    @staticmethod
    def token_of(published: Sequence[PublishedEvent]) -> ConsistencyToken:
        """The token a reader must reach to see all of ``published``."""
        return ConsistencyToken.of(p.position for p in published)
