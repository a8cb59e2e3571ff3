"""Reading events: decode what can be decoded, dead-letter the rest, commit after use.

:class:`EventReader` polls a consumer group, decodes each record into a
:class:`~toolkit.envelope.ConsumedEvent` and hands back only good events.
A record that is not a valid event (missing headers, unknown schema, bytes
that do not decode) is copied to the dead-letter topic with the reason before
the reader moves on, so one bad record never blocks its partition and none is
lost. :meth:`EventReader.commit` commits, per partition, the offset after the
last record returned by :meth:`EventReader.poll` (committed = next offset to
read): call it once the events are processed. Events received advance the
process's hybrid logical clock.

Failure modes: if the dead-letter write fails, ``PublishError`` propagates
from :meth:`poll`, nothing of that batch is marked for commit and the
consumer is rewound to the batch's first offsets, so the batch is read again
(at-least-once, never silently skipped).
"""

from __future__ import annotations

from collections.abc import Sequence

from toolkit.dead_letter import DeadLetterQueue
from toolkit.envelope import ConsumedEvent, decode_record
from toolkit.errors import SerializationError, UnknownSchema
from toolkit.hlc import HybridLogicalClock
from toolkit.ports import ConsumedRecord, EventCodec, RecordConsumer
from toolkit.positions import TopicPartition

__all__ = ["EventReader"]


class EventReader:
    """Decoded events from a consumer group, with poison records dead-lettered."""

    def __init__(
        self,
        consumer: RecordConsumer,
        codec: EventCodec,
        dead_letters: DeadLetterQueue,
        clock: HybridLogicalClock | None = None,
    ) -> None:
        self._consumer = consumer
        self._codec = codec
        self._dead_letters = dead_letters
        self._clock = clock
        self._pending: dict[TopicPartition, int] = {}

    def subscribe(self, topics: Sequence[str]) -> None:
        self._consumer.subscribe(topics)

    def poll(self, max_events: int = 500, timeout: float = 1.0) -> list[ConsumedEvent]:
        """Good events of the next batch; poison records are dead-lettered, not returned."""
        records = self._consumer.poll(max_events, timeout)
        try:
            events = self._decode_or_dead_letter(records)
        except BaseException:
            first: dict[TopicPartition, int] = {}
            for record in records:
                first.setdefault(TopicPartition(record.topic, record.partition), record.offset)
            self._consumer.rewind(first)
            raise
        for record in records:
            tp = TopicPartition(record.topic, record.partition)
            self._pending[tp] = max(self._pending.get(tp, 0), record.offset + 1)
        return events

    def _decode_or_dead_letter(self, records: Sequence[ConsumedRecord]) -> list[ConsumedEvent]:
        events: list[ConsumedEvent] = []
        for record in records:
            try:
                event = decode_record(record, self._codec)
            except UnknownSchema as exc:
                self._dead_letters.send(record, "unknown_schema", str(exc))
                continue
            except SerializationError as exc:
                self._dead_letters.send(record, "undecodable", str(exc))
                continue
            if self._clock is not None and event.envelope.hlc is not None:
                self._clock.observe(event.envelope.hlc)
            events.append(event)
        return events

    @property
    def dead_lettered(self) -> dict[str, int]:
        """How many records went to the dead-letter topic, by reason."""
        return dict(self._dead_letters.counts)

    def commit(self) -> dict[TopicPartition, int]:
        """Commit past everything :meth:`poll` returned so far; returns what was committed."""
        if not self._pending:
            return {}
        offsets, self._pending = self._pending, {}
        try:
            self._consumer.commit(offsets)
        except BaseException:
            for tp, offset in offsets.items():
                self._pending[tp] = max(self._pending.get(tp, 0), offset)
            raise
        return offsets

    def close(self) -> None:
        self._consumer.close()
