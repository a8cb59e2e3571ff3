"""Reading events: decode what can be decoded, dead-letter the rest, commit after use.

:class:`EventReader` polls a consumer group, decodes each record into a
:class:`~toolkit.envelope.ConsumedEvent` and hands back only good events.
A record that is not a valid event (missing, duplicated or malformed
headers, headers the client cannot read, unknown schema, bytes that do not
decode, or anything else decoding raises) is copied to the dead-letter topic with the reason before
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

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from operator import attrgetter

from toolkit.dead_letter import DeadLetterQueue
from toolkit.envelope import ConsumedEvent, decode_record
from toolkit.errors import ConnectorError, SerializationError, UnknownSchema
from toolkit.hlc import HybridLogicalClock
from toolkit.ports import AssignCallback, ConsumedRecord, EventCodec, RecordConsumer, RevokeCallback
from toolkit.positions import TopicPartition

__all__ = ["EventReader"]

# HLCTimestamp's own order (wall_ms, logical, node), compared as C-level tuples.
_HLC_ORDER = attrgetter("wall_ms", "logical", "node")


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

    def subscribe(
        self,
        topics: Sequence[str],
        on_assign: AssignCallback | None = None,
        on_revoke: RevokeCallback | None = None,
    ) -> None:
        self._consumer.subscribe(topics, on_assign, on_revoke)

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
        # The last offset per partition of the batch first (plain tuples compare
        # and hash like TopicPartition), then one update per partition.
        last: dict[tuple[str, int], int] = {}
        for record in records:
            key = (record.topic, record.partition)
            if last.get(key, -1) < record.offset:
                last[key] = record.offset
        pending = self._pending
        for (topic, partition), offset in last.items():
            tp = TopicPartition(topic, partition)
            pending[tp] = max(pending.get(tp, 0), offset + 1)
        return events

    def _decode_or_dead_letter(self, records: Sequence[ConsumedRecord]) -> list[ConsumedEvent]:
        events: list[ConsumedEvent] = []
        append = events.append
        codec = self._codec
        for record in records:
            try:
                append(decode_record(record, codec))
            except UnknownSchema as exc:
                self._dead_letters.send(record, "unknown_schema", str(exc))
            except SerializationError as exc:
                self._dead_letters.send(record, "undecodable", str(exc))
            except Exception as exc:  # whatever a hostile record provokes, it stops nothing
                self._dead_letters.send(record, "undecodable", f"{type(exc).__name__}: {exc}")
        if self._clock is not None:
            latest = max(
                (e.envelope.hlc for e in events if e.envelope.hlc is not None),
                key=_HLC_ORDER,
                default=None,
            )
            if latest is not None:
                self._clock.observe(latest)  # the latest covers the batch
        return events

    @property
    def dead_lettered(self) -> dict[str, int]:
        """How many records went to the dead-letter topic, by reason."""
        return dict(self._dead_letters.counts)

    @property
    def pending_offsets(self) -> dict[TopicPartition, int]:
        """Per partition, the offset after the last record polled and not yet committed
        (dead-lettered records included)."""
        return dict(self._pending)

    def idle(self, seconds: float) -> None:
        """Stay in the group without fetching (while an outage is waited out)."""
        self._consumer.idle(seconds)

    def wait_in_group(
        self,
        seconds: float,
        stopped: Callable[[], bool],
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        """Wait ``seconds`` in the group, fetching nothing, in slices of at most
        0.5 s so that ``stopped()`` ends it early; if the consumer itself fails
        (Kafka down too), the slice is slept instead."""
        deadline = time.monotonic() + seconds
        while not stopped():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            try:
                self._consumer.idle(min(left, 0.5))
            except ConnectorError:
                sleep(min(left, 0.5))

    def rewind(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Read these partitions again from these offsets; forget what was polled of them."""
        self._consumer.rewind(offsets)
        self.forget(offsets)

    def positions(self, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        """The consumer's next offsets, past transaction markers (see RecordConsumer)."""
        return self._consumer.positions(partitions)

    def next_offsets(self, owned: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        """Per owned partition, the offset to store or commit after what was polled.

        The consumer's position also moves past transaction markers and aborted
        records; committing it (not just last record + 1) lets a reader reach
        the log end after a transaction, where no record's offset + 1 gets.
        """
        wanted = set(owned)
        offsets = {tp: o for tp, o in self._pending.items() if tp in wanted}
        for tp, position in self._consumer.positions(list(wanted)).items():
            if position > offsets.get(tp, -1):
                offsets[tp] = position
        return offsets

    def forget(self, partitions: Iterable[TopicPartition]) -> None:
        """Drop pending offsets of partitions this member no longer owns."""
        for tp in partitions:
            self._pending.pop(tp, None)

    def commit(
        self, offsets: Mapping[TopicPartition, int] | None = None
    ) -> dict[TopicPartition, int]:
        """Commit ``offsets`` (default: past everything :meth:`poll` returned so far).

        Returns what was committed; committed partitions leave the pending set.
        """
        chosen = dict(self._pending if offsets is None else offsets)
        if not chosen:
            return {}
        self._consumer.commit(chosen)
        for tp, offset in chosen.items():
            if self._pending.get(tp, -1) <= offset:
                self._pending.pop(tp, None)
        return chosen

    def close(self) -> None:
        self._consumer.close()
