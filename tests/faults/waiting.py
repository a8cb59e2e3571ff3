"""Helpers of the fault tests: wait for a condition, read a whole topic."""

from __future__ import annotations

import time
import uuid

from connectors.kafka import KafkaRecordConsumer
from toolkit.ports import ConsumedRecord
from toolkit.runtime.app import Kct


def read_topic(kct: Kct, topic: str, expected: int, timeout: float = 30) -> list[ConsumedRecord]:
    """At least ``expected`` records of ``topic`` (all partitions), read by a fresh group."""
    consumer = KafkaRecordConsumer(kct.settings.kafka, f"read-{uuid.uuid4().hex[:8]}")
    consumer.subscribe([topic])
    records: list[ConsumedRecord] = []
    deadline = time.monotonic() + timeout
    try:
        while len(records) < expected and time.monotonic() < deadline:
            records.extend(consumer.poll(500, 0.5))
        # Anything more that is already there (to catch extra copies).
        records.extend(consumer.poll(500, 1.0))
    finally:
        consumer.close()
    return records
