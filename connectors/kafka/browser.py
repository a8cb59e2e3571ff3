"""Reading a topic without a consumer group, for operators' tools.

``KafkaTopicBrowser`` implements the ``TopicBrowser`` port with a group-less
``read_committed`` consumer that assigns partitions itself (it never joins a
group or commits): :meth:`~KafkaTopicBrowser.read` reads every partition
from its start (or from the offset of ``since_ms``, found with
``offsets_for_times``) up to the end it had when called, and
:meth:`~KafkaTopicBrowser.fetch` reads the one record at given coordinates.
``kct dlq`` uses it to list and replay dead-letter topics.

Failure modes: an unknown topic, a Kafka error, or a read that does not
reach the end within ``timeout`` seconds raises ``AdminError``; a record
removed by retention (or an aborted one) is None from ``fetch``.
"""

from __future__ import annotations

import time
import uuid

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message
from confluent_kafka import TopicPartition as KafkaTopicPartition

from connectors.kafka.consumer import _to_record
from connectors.kafka.errors import map_exceptions
from connectors.kafka.settings import KafkaSettings
from toolkit.errors import AdminError
from toolkit.ports import ConsumedRecord
from toolkit.positions import Position

__all__ = ["KafkaTopicBrowser"]


class KafkaTopicBrowser:
    """Reads topics' committed records by assigning partitions (no group)."""

    def __init__(self, settings: KafkaSettings) -> None:
        config = settings.client_config(**{"fetch.wait.max.ms": 50})
        config.update(
            {
                # A group id is required by the client; this one never joins or commits.
                "group.id": f"kct.browse.{uuid.uuid4().hex}",
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "isolation.level": "read_committed",
                "enable.partition.eof": True,
            }
        )
        with map_exceptions(AdminError, "creating a browsing consumer"):
            self._consumer = Consumer(config)

    def _partitions(self, topic: str, timeout: float) -> list[int]:
        with map_exceptions(AdminError, "Kafka metadata request", topic=topic):
            metadata = self._consumer.list_topics(topic, timeout=timeout)
        found = metadata.topics.get(topic)
        if found is None or found.error is not None or not found.partitions:
            raise AdminError("no such topic", topic=topic)
        return sorted(found.partitions)

    def read(self, topic: str, since_ms: int | None, timeout: float) -> list[ConsumedRecord]:
        deadline = time.monotonic() + timeout
        partitions = self._partitions(topic, timeout)
        starts = {p: OFFSET_BEGINNING for p in partitions}
        with map_exceptions(AdminError, "Kafka offsets request", topic=topic):
            if since_ms is not None:
                asked = [KafkaTopicPartition(topic, p, since_ms) for p in partitions]
                for tp in self._consumer.offsets_for_times(asked, timeout=timeout):
                    starts[tp.partition] = tp.offset  # -1: nothing that late: the end
            ends = {
                p: self._consumer.get_watermark_offsets(
                    KafkaTopicPartition(topic, p), timeout=timeout
                )[1]
                for p in partitions
            }
        wanted = {p for p in partitions if ends[p] > 0 and starts[p] != -1}
        return self._consume(topic, {p: starts[p] for p in wanted}, ends, deadline)

    def _consume(
        self, topic: str, starts: dict[int, int], ends: dict[int, int], deadline: float
    ) -> list[ConsumedRecord]:
        if not starts:
            return []
        records: list[ConsumedRecord] = []
        pending = set(starts)
        consumer = self._consumer
        with map_exceptions(AdminError, "Kafka fetch", topic=topic):
            consumer.assign([KafkaTopicPartition(topic, p, o) for p, o in starts.items()])
            try:
                while pending:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise AdminError(
                            "reading the topic did not reach its end in time",
                            topic=topic,
                            partitions=sorted(pending),
                        )
                    for message in consumer.consume(num_messages=500, timeout=min(left, 0.2)):
                        self._take(message, pending, ends, records)
            finally:
                consumer.unassign()
        return sorted(records, key=lambda r: (r.partition, r.offset))

    @staticmethod
    def _take(
        message: Message, pending: set[int], ends: dict[int, int], records: list[ConsumedRecord]
    ) -> None:
        partition, error = message.partition(), message.error()
        if partition not in pending:
            return
        if error is not None:
            if error.code() == KafkaError._PARTITION_EOF:
                pending.discard(partition)  # the last stable offset: nothing more to read
            elif error.fatal():
                raise KafkaException(error)
            return
        offset = message.offset()
        if offset is None:
            return
        if offset < ends[partition]:
            records.append(_to_record(message))
        if offset + 1 >= ends[partition]:
            pending.discard(partition)

    def fetch(self, position: Position, timeout: float) -> ConsumedRecord | None:
        deadline = time.monotonic() + timeout
        topic, partition, offset = position.topic, position.partition, position.offset
        with map_exceptions(AdminError, "Kafka offsets request", topic=topic):
            low, high = self._consumer.get_watermark_offsets(
                KafkaTopicPartition(topic, partition), timeout=timeout
            )
        if not low <= offset < high:
            return None  # removed by retention, or never written
        found = self._consume(topic, {partition: offset}, {partition: offset + 1}, deadline)
        # Nothing at the offset: an aborted transaction's record, or compacted away.
        return found[0] if found and found[0].offset == offset else None

    def close(self) -> None:
        self._consumer.close()
