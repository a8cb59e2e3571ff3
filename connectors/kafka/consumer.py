"""Reading Kafka as a consumer group, implementing the ``RecordConsumer`` port.

``KafkaRecordConsumer`` never auto-commits: the caller commits next-to-read
offsets after it has processed records, synchronously, so a commit that
returned is durable in the group. It reads with ``isolation.level =
read_committed`` (pinned), so records of aborted transactions are never
seen; a committed offset past a transaction's last record still covers it.
A new group starts from the earliest offset, so nothing written before the
projection first started is skipped.

Failure modes: fatal client errors and failed commits raise ``ConsumeError``
with the group and partition; transient errors (broker briefly unreachable, a
topic not created yet) are retried by librdkafka and reported to the
``on_error`` callback, never silently dropped.
"""

from __future__ import annotations

import logging
import operator
import time
from collections.abc import Callable, Mapping, Sequence
from typing import cast

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message
from confluent_kafka import TopicPartition as KafkaTopicPartition

from connectors.kafka.errors import map_exceptions
from connectors.kafka.settings import KafkaSettings
from toolkit.errors import ConsumeError
from toolkit.ports import (
    FROM_BEGINNING,
    AssignCallback,
    ConsumedRecord,
    Headers,
    RevokeCallback,
)
from toolkit.positions import TopicPartition
from toolkit.slotted import slot_setter

__all__ = ["KafkaRecordConsumer"]

log = logging.getLogger(__name__)


class KafkaRecordConsumer:
    """A consumer-group member with manual, synchronous commits."""

    def __init__(
        self,
        settings: KafkaSettings,
        group_id: str,
        *,
        on_error: Callable[[str], None] | None = None,
        session_timeout_ms: int = 10_000,
    ) -> None:
        config = settings.client_config(
            **{
                "auto.offset.reset": "earliest",
                "session.timeout.ms": session_timeout_ms,
                "fetch.wait.max.ms": 50,
            }
        )
        config.update(
            {
                "group.id": group_id,
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "isolation.level": "read_committed",
                "error_cb": self._client_error,
            }
        )
        self.group_id = group_id
        self._on_assign: AssignCallback | None = None
        self._on_revoke: RevokeCallback | None = None
        self._on_error = on_error
        # What idle() paused. librdkafka keeps a partition's pause through a
        # revoke and a later re-assignment, so resuming only what is assigned
        # when idle() ends would leave a partition that comes back paused for
        # good (a silent stall): every partition paused is resumed by name.
        self._paused: set[tuple[str, int]] = set()
        with map_exceptions(ConsumeError, "consumer configuration", group=group_id):
            self._consumer = Consumer(config)

    def _client_error(self, error: KafkaError) -> None:
        log.warning("kafka consumer %s: %s", self.group_id, error.str())
        if self._on_error is not None:
            self._on_error(error.str())

    def subscribe(
        self,
        topics: Sequence[str],
        on_assign: AssignCallback | None = None,
        on_revoke: RevokeCallback | None = None,
    ) -> None:
        self._on_assign, self._on_revoke = on_assign, on_revoke
        self._consumer.subscribe(
            list(topics), on_assign=self._assigned, on_revoke=self._revoked, on_lost=self._revoked
        )

    def _assigned(self, consumer: Consumer, partitions: list[KafkaTopicPartition]) -> None:
        # Runs inside poll(): setting offsets here and assigning is how a
        # subscriber chooses where reading starts (eager rebalance protocol).
        if self._on_assign is None:
            return
        starts = self._on_assign([TopicPartition(p.topic, p.partition) for p in partitions])
        if starts:
            for p in partitions:
                start = starts.get(TopicPartition(p.topic, p.partition))
                if start is not None:
                    p.offset = OFFSET_BEGINNING if start == FROM_BEGINNING else start
            consumer.assign(partitions)

    def _revoked(self, _consumer: Consumer, partitions: list[KafkaTopicPartition]) -> None:
        if self._on_revoke is not None:
            self._on_revoke([TopicPartition(p.topic, p.partition) for p in partitions])

    def poll(self, max_records: int, timeout: float) -> list[ConsumedRecord]:
        with map_exceptions(ConsumeError, "poll", group=self.group_id):
            if self._paused:  # an idle() whose resume failed: never stay paused
                self._resume()
            # consume(n, timeout) waits until n records or the timeout: a
            # trickle would cost the whole timeout per batch. Wait for the
            # first record only, then drain what is already fetched.
            first = self._consumer.poll(timeout)
            messages = [] if first is None else [first]
            if first is not None and max_records > 1:
                messages.extend(self._consumer.consume(num_messages=max_records - 1, timeout=0))
        records: list[ConsumedRecord] = []
        append = records.append
        for message in messages:
            error = message.error()
            if error is None:
                append(_to_record(message))
            elif error.fatal():
                raise ConsumeError(f"fatal consumer error: {error.str()}", group=self.group_id)
            elif error.code() != KafkaError._PARTITION_EOF:
                self._client_error(error)
        return records

    def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        if not offsets:
            return
        wanted = [KafkaTopicPartition(tp.topic, tp.partition, o) for tp, o in offsets.items()]
        with map_exceptions(ConsumeError, "commit", group=self.group_id):
            result = self._consumer.commit(offsets=wanted, asynchronous=False)
        for tp in result or []:
            if tp.error is not None:
                raise ConsumeError(
                    f"commit failed: {tp.error.str()}",
                    group=self.group_id,
                    partition=f"{tp.topic}[{tp.partition}]",
                )

    def rewind(self, offsets: Mapping[TopicPartition, int]) -> None:
        for tp, offset in offsets.items():
            with map_exceptions(ConsumeError, "seek", group=self.group_id, partition=str(tp)):
                self._consumer.seek(KafkaTopicPartition(tp.topic, tp.partition, offset))

    def idle(self, seconds: float) -> None:
        """Stay in the group for ``seconds`` without consuming (see RecordConsumer.idle)."""
        deadline = time.monotonic() + seconds
        with map_exceptions(ConsumeError, "idle", group=self.group_id):
            try:
                while True:
                    assigned = self._consumer.assignment()
                    if assigned:
                        self._paused.update((p.topic, p.partition) for p in assigned)
                        self._consumer.pause(assigned)
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    message = self._consumer.poll(min(left, 0.5))
                    if message is not None and message.error() is None:
                        # Fetched before the pause took effect: read it again later.
                        topic, partition = message.topic(), message.partition()
                        offset = message.offset()
                        if topic is not None and partition is not None and offset is not None:
                            self._consumer.seek(KafkaTopicPartition(topic, partition, offset))
            finally:  # a pause never outlives the call, even one that failed
                self._resume()

    def _resume(self) -> None:
        """Resume every partition idle() paused, assigned now or not (poll()
        retries if this failed)."""
        paused = [KafkaTopicPartition(topic, partition) for topic, partition in self._paused]
        if paused:
            self._consumer.resume(paused)
        self._paused.clear()

    def positions(self, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        # librdkafka moves the position past transaction markers and aborted
        # records, which no returned record's offset + 1 ever does.
        if not partitions:
            return {}
        wanted = [KafkaTopicPartition(tp.topic, tp.partition) for tp in partitions]
        with map_exceptions(ConsumeError, "position", group=self.group_id):
            found = self._consumer.position(wanted)
        return {
            TopicPartition(p.topic, p.partition): p.offset
            for p in found
            if p.error is None and p.offset >= 0
        }

    def group_metadata(self) -> object:
        """The group's metadata, for ``send_offsets`` of a transaction (fences zombies)."""
        with map_exceptions(ConsumeError, "group metadata", group=self.group_id):
            return self._consumer.consumer_group_metadata()

    def assignment(self) -> list[TopicPartition]:
        return [TopicPartition(p.topic, p.partition) for p in self._consumer.assignment()]

    def close(self) -> None:
        """Leave the group (no commit: uncommitted records are read again by the next owner)."""
        self._consumer.close()


def _to_record(message: Message) -> ConsumedRecord:
    # Hot path, once per record: no generator, no keyword arguments.
    headers, header_error = _read_headers(message)
    timestamp = message.timestamp()[1]
    topic, partition, offset = message.topic(), message.partition(), message.offset()
    if topic is None or partition is None or offset is None:
        raise ConsumeError("message without coordinates")
    return _new_record(
        topic,
        partition,
        offset,
        message.key(),
        message.value(),
        headers,
        timestamp if timestamp > 0 else None,
        header_error,
    )


# ConsumedRecord without its frozen __init__ (it has no __post_init__ to skip).
_new_record = slot_setter(ConsumedRecord)
# Message.headers, called so that CPython always checks its result (see _read_headers).
_HEADERS = operator.methodcaller("headers")


def _read_headers(message: Message) -> tuple[Headers, str | None]:
    """The record's headers, read exactly once; on failure none and the reason.

    confluent-kafka cannot represent a header name that is not UTF-8: its
    ``headers()`` returns a list holding NULL with a ``UnicodeDecodeError``
    pending. Called through the C API that pending error becomes a
    ``SystemError``; called from bytecode that CPython 3.11+ has specialised,
    the check is skipped and the next touch of the list crashes the
    interpreter. So the call goes through ``operator.methodcaller`` (always
    checked), is made once (a second call returns the cached NULL list), and
    any failure makes the record undecodable: dead-lettered without headers.
    """
    try:
        raw_headers = _HEADERS(message)
    except Exception as exc:  # SystemError, UnicodeDecodeError: the client could not decode
        return (), f"client could not read them ({type(exc).__name__})"
    if not raw_headers:
        return (), None
    pairs = tuple(raw_headers)
    # The client yields (str, bytes | None) pairs: kept as they are unless a
    # null value needs replacing. Anything else a hostile client could hand
    # over fails in decode_record and is dead-lettered.
    for _, value in pairs:
        if value is None:
            pairs = tuple((k, v if v is not None else b"") for k, v in pairs)
            break
    return cast(Headers, pairs), None
