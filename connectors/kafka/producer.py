"""Durable writes to Kafka, implementing the ``RecordProducer`` port.

``KafkaRecordProducer`` is idempotent with ``acks=all`` (pinned: the toolkit's
guarantees depend on it), so a record acknowledged is on every in-sync
replica, retries never duplicate, and records of one partition keep their
order. :meth:`produce` blocks until every record of the call has a delivery
report and returns their positions. A background thread serves delivery
reports so concurrent callers are woken as soon as their own records land.

Failure modes: a record that is not acknowledged within
``delivery_timeout_ms`` (broker down, topic missing, fewer in-sync replicas
than ``min.insync.replicas``) raises ``PublishError`` naming the topic and
Kafka's reason (a timeout says it may be ``NOT_ENOUGH_REPLICAS``, which the
idempotent producer retries until then); such a record may or may not have
been written. A full local queue blocks the caller until there is room or the
timeout passes. Kafka exceptions never leave this module untranslated.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from connectors.kafka.errors import delivery_failure
from connectors.kafka.settings import KafkaSettings
from toolkit.errors import PublishError
from toolkit.ports import OutgoingRecord
from toolkit.positions import Position

__all__ = ["KafkaRecordProducer"]


class DeliveryBatch:
    """Delivery reports of one produce() call."""

    def __init__(self, size: int) -> None:
        self.positions: list[Position | None] = [None] * size
        self.errors: list[tuple[int, KafkaError]] = []
        self._remaining = size
        self._lock = threading.Lock()
        self.done = threading.Event()
        if size == 0:
            self.done.set()

    def callback(self, index: int) -> Any:
        def on_delivery(error: KafkaError | None, message: Message) -> None:
            topic, partition, offset = message.topic(), message.partition(), message.offset()
            if error is not None:
                self.errors.append((index, error))
            elif topic is None or partition is None or offset is None:
                self.errors.append((index, KafkaError(KafkaError._FAIL, "no position in report")))
            else:
                self.positions[index] = Position(topic, partition, offset)
            with self._lock:
                self._remaining -= 1
                if self._remaining == 0:
                    self.done.set()

        return on_delivery


class KafkaRecordProducer:
    """Idempotent, acks=all producer that returns each record's position."""

    def __init__(
        self,
        settings: KafkaSettings,
        *,
        delivery_timeout_ms: int = 30_000,
        linger_ms: int = 1,
    ) -> None:
        config = settings.client_config(**{"linger.ms": linger_ms})
        config.update(
            {
                "enable.idempotence": True,
                "acks": "all",
                "delivery.timeout.ms": delivery_timeout_ms,
            }
        )
        self._delivery_timeout = delivery_timeout_ms / 1000
        try:
            self._producer = Producer(config)
        except KafkaException as exc:
            raise PublishError(f"invalid producer configuration: {exc.args[0]}") from exc
        self._closed = threading.Event()
        self._poller = threading.Thread(
            target=self._serve_delivery_reports, name="kct-producer-poller", daemon=True
        )
        self._poller.start()

    def _serve_delivery_reports(self) -> None:
        while not self._closed.is_set():
            self._producer.poll(0.1)

    def produce(self, records: Sequence[OutgoingRecord]) -> list[Position]:
        if self._closed.is_set():
            raise PublishError("producer is closed")
        batch = DeliveryBatch(len(records))
        deadline = time.monotonic() + self._delivery_timeout + 5
        for index, record in enumerate(records):
            self._enqueue(record, batch.callback(index), deadline)
        if not batch.done.wait(max(0.0, deadline - time.monotonic())):
            raise PublishError(
                f"records {delivery_failure(None)}",
                topic=records[0].topic if records else None,
                timeout_s=self._delivery_timeout,
            )
        if batch.errors:
            index, error = batch.errors[0]
            raise PublishError(
                f"record not written: {delivery_failure(error)}",
                topic=records[index].topic,
                code=error.name(),
                retriable=error.retriable(),
                failed=len(batch.errors),
            )
        return [p for p in batch.positions if p is not None]

    def _enqueue(self, record: OutgoingRecord, on_delivery: Any, deadline: float) -> None:
        while True:
            try:
                self._producer.produce(
                    record.topic,
                    value=record.value,
                    key=record.key,
                    headers=list(record.headers),
                    on_delivery=on_delivery,
                    # librdkafka's RD_KAFKA_PARTITION_UA (-1): let the key decide.
                    partition=-1 if record.partition is None else record.partition,
                )
                return
            except BufferError:
                # Local queue full: wait for deliveries to free room.
                if time.monotonic() > deadline:
                    raise PublishError(
                        "local producer queue stayed full", topic=record.topic
                    ) from None
                self._producer.flush(0.1)
            except KafkaException as exc:
                error = exc.args[0]
                raise PublishError(
                    f"record not accepted: {error.str()}", topic=record.topic, code=error.name()
                ) from exc

    def close(self, timeout: float = 10.0) -> None:
        """Deliver what is queued (up to ``timeout``), then stop."""
        if self._closed.is_set():
            return
        self._producer.flush(timeout)
        self._closed.set()
        self._poller.join(timeout=1)
