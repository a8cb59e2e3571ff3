"""Small helpers the integration tests share: run a member on a thread, peek at a topic."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol, TypeVar

from confluent_kafka import Consumer
from confluent_kafka import TopicPartition as KafkaTopicPartition

from toolkit.positions import ConsistencyToken, Position
from toolkit.runtime.app import Kct


class Member(Protocol):
    def run(self, stop: threading.Event | None = None) -> None: ...

    def close(self) -> None: ...


M = TypeVar("M", bound=Member)


@contextmanager
def running(member: M) -> Iterator[M]:
    """Run a projection runner or saga participant on a thread; stop and close it after."""
    stop = threading.Event()
    thread = threading.Thread(target=member.run, args=(stop,), daemon=True)
    thread.start()
    try:
        yield member
    finally:
        stop.set()
        thread.join(timeout=30)
        member.close()


@dataclass(frozen=True)
class Peeked:
    key: bytes | None
    value: bytes
    headers: dict[str, str]


def peek(
    bootstrap: str,
    topic: str,
    *,
    isolation: str = "read_committed",
    partitions: int = 3,
    seconds: float = 3.0,
) -> list[Peeked]:
    """Every record of ``topic`` a fresh reader with ``isolation`` sees, partition by partition."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"peek-{uuid.uuid4().hex[:8]}",
            "isolation.level": isolation,
            "enable.auto.commit": False,
        }
    )
    consumer.assign([KafkaTopicPartition(topic, p, 0) for p in range(partitions)])
    found: list[Peeked] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        message = consumer.poll(0.2)
        if message is None or message.error() is not None:
            continue
        raw = message.headers() or []
        pairs = raw.items() if isinstance(raw, dict) else raw
        headers = {k: v.decode() if isinstance(v, bytes) else v for k, v in pairs if v is not None}
        found.append(Peeked(message.key(), message.value() or b"", headers))
    consumer.close()
    return found


def end_token(kct: Kct, topic: str) -> ConsistencyToken:
    """Everything committed to ``topic`` so far (transaction markers included)."""
    ends = kct.admin.end_offsets([topic])
    return ConsistencyToken.of(
        Position(tp.topic, tp.partition, end - 1) for tp, end in ends.items() if end > 0
    )
