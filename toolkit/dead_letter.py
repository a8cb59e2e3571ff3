"""Dead-letter topics: where records that cannot be processed go, with the reason.

A consumer never stalls on a poison record and never drops one silently: it
writes the record, unchanged (key, value, original headers), to the
dead-letter topic with headers saying why and where it came from, waits until
Kafka acknowledged that copy, and only then moves its own offset past the
original. If the dead-letter write fails, ``PublishError`` propagates and the
original offset is not committed, so the record is read again.

A copy the broker refuses as too large (a value close to
``message.max.bytes`` plus the added headers) is replaced by a truncated
copy: no value, the key and original headers only when small, and
``dlq_truncated`` saying what was left out. Its source coordinates still
locate the original record in the source topic.

The default dead-letter topic of ``orders`` is ``orders.dlq``. With an
:class:`~toolkit.interceptors.Interceptor`, each copy goes through its
``dead_letter`` hook (tracing records it as a span with the reason).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from toolkit.errors import PublishError, SerializationError
from toolkit.interceptors import Interceptor
from toolkit.ports import ConsumedRecord, Headers, OutgoingRecord, RecordProducer
from toolkit.positions import Position

__all__ = ["DeadLetter", "DeadLetterHeader", "DeadLetterQueue", "dead_letter_topic"]

_MAX_ERROR_CHARS = 1000
# What a truncated copy keeps of the original (bytes).
_MAX_KEPT_KEY = 1024
_MAX_KEPT_HEADERS = 16 * 1024
# librdkafka's names for "the record is larger than the client or broker accepts".
_TOO_LARGE = frozenset({"MSG_SIZE_TOO_LARGE", "RECORD_LIST_TOO_LARGE", "MESSAGE_TOO_LARGE"})


class DeadLetterHeader:
    """Headers added to a dead-lettered record."""

    REASON = "dlq_reason"
    ERROR = "dlq_error"
    SOURCE_TOPIC = "dlq_source_topic"
    SOURCE_PARTITION = "dlq_source_partition"
    SOURCE_OFFSET = "dlq_source_offset"
    SOURCE_TIMESTAMP = "dlq_source_timestamp"
    CONSUMER_GROUP = "dlq_consumer_group"
    FAILED_AT = "dlq_failed_at"
    TRUNCATED = "dlq_truncated"
    ORIGINAL_SIZE = "dlq_original_size"


def dead_letter_topic(topic: str) -> str:
    """The default dead-letter topic of ``topic``."""
    return f"{topic}.dlq"


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A dead-lettered record as read back from a dead-letter topic."""

    reason: str
    error: str
    source: Position
    consumer_group: str
    record: ConsumedRecord

    @classmethod
    def from_record(cls, record: ConsumedRecord) -> DeadLetter:
        def text(name: str) -> str:
            value = record.header(name)
            if value is None:
                raise SerializationError(
                    "not a dead-letter record", missing=name, position=str(record.position)
                )
            return value.decode(errors="replace")

        return cls(
            reason=text(DeadLetterHeader.REASON),
            error=text(DeadLetterHeader.ERROR),
            source=Position(
                text(DeadLetterHeader.SOURCE_TOPIC),
                int(text(DeadLetterHeader.SOURCE_PARTITION)),
                int(text(DeadLetterHeader.SOURCE_OFFSET)),
            ),
            consumer_group=text(DeadLetterHeader.CONSUMER_GROUP),
            record=record,
        )


class DeadLetterQueue:
    """Writes poison records to their dead-letter topic and counts them."""

    def __init__(
        self,
        producer: RecordProducer,
        consumer_group: str,
        topic_for: Callable[[str], str] = dead_letter_topic,
        interceptor: Interceptor | None = None,
    ) -> None:
        self._producer = producer
        self._group = consumer_group
        self._topic_for = topic_for
        self.interceptor = interceptor
        self.counts: dict[str, int] = {}

    @property
    def consumer_group(self) -> str:
        """The consumer group whose records this queue dead-letters."""
        return self._group

    def send(self, record: ConsumedRecord, reason: str, error: str) -> Position:
        """Copy ``record`` to its dead-letter topic; returns once Kafka acknowledged it."""
        hooks = self.interceptor
        if hooks is None:
            return self._send(record, reason, error)
        return hooks.dead_letter(
            record, reason, error, self._group, lambda: self._send(record, reason, error)
        )

    def _send(self, record: ConsumedRecord, reason: str, error: str) -> Position:
        extra = {
            DeadLetterHeader.REASON: reason,
            DeadLetterHeader.ERROR: error[:_MAX_ERROR_CHARS],
            DeadLetterHeader.SOURCE_TOPIC: record.topic,
            DeadLetterHeader.SOURCE_PARTITION: str(record.partition),
            DeadLetterHeader.SOURCE_OFFSET: str(record.offset),
            DeadLetterHeader.SOURCE_TIMESTAMP: str(record.timestamp_ms or ""),
            DeadLetterHeader.CONSUMER_GROUP: self._group,
            DeadLetterHeader.FAILED_AT: str(time.time_ns() // 1_000_000),
        }
        added = tuple((k, v.encode()) for k, v in extra.items())
        topic = self._topic_for(record.topic)
        copy = OutgoingRecord(topic, record.key, record.value, record.headers + added)
        try:
            (position,) = self._producer.produce([copy])
        except PublishError as exc:
            if exc.context.get("code") not in _TOO_LARGE:
                raise
            (position,) = self._producer.produce([_truncated(record, topic, added)])
        self.counts[reason] = self.counts.get(reason, 0) + 1
        return position


def _truncated(record: ConsumedRecord, topic: str, added: Headers) -> OutgoingRecord:
    """A copy small enough for any broker: the coordinates locate the original."""
    left_out = ["value"]
    key = record.key
    if key is not None and len(key) > _MAX_KEPT_KEY:
        key, left_out = None, [*left_out, "key"]
    headers = record.headers
    if sum(len(k) + len(v) for k, v in headers) > _MAX_KEPT_HEADERS:
        headers, left_out = (), [*left_out, "headers"]
    size = len(record.value or b"") + len(record.key or b"")
    size += sum(len(k) + len(v) for k, v in record.headers)
    notes = (
        (DeadLetterHeader.TRUNCATED, ",".join(left_out).encode()),
        (DeadLetterHeader.ORIGINAL_SIZE, str(size).encode()),
    )
    return OutgoingRecord(topic, key, None, headers + added + notes)
