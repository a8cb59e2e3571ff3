"""Ports: what the core needs from the outside world, as small Protocols.

The core (``toolkit/``) speaks only to these; adapters in ``connectors/``
implement them against Kafka, Avro, Redis and ZooKeeper, and unit tests use
small in-memory implementations. Ports are layered by capability so an
adapter implements only what it can honour.

Records crossing the ports are plain data: :class:`OutgoingRecord` before it
is written, :class:`ConsumedRecord` after it is read (with its coordinates).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from toolkit.positions import Position, TopicPartition

__all__ = [
    "ConsumedRecord",
    "EncodedPayload",
    "EventCodec",
    "Headers",
    "OffsetSource",
    "OutgoingRecord",
    "RecordConsumer",
    "RecordProducer",
]

Headers = tuple[tuple[str, bytes], ...]


@dataclass(frozen=True, slots=True)
class OutgoingRecord:
    """A record to be written: its key decides the partition."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: Headers = ()


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


class RecordConsumer(Protocol):
    """Reads records of subscribed topics as a member of a consumer group."""

    def subscribe(self, topics: Sequence[str]) -> None: ...

    def poll(self, max_records: int, timeout: float) -> list[ConsumedRecord]:
        """Up to ``max_records`` records, waiting at most ``timeout`` seconds."""
        ...

    def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Commit next-to-read offsets synchronously; raises ConsumeError on failure."""
        ...

    def rewind(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Make the next poll read these partitions again from these offsets."""
        ...

    def close(self) -> None: ...


class OffsetSource(Protocol):
    """Reads the log's end offsets and consumer groups' committed offsets."""

    def committed_offsets(self, group: str, topics: Iterable[str]) -> dict[TopicPartition, int]:
        """Committed (next-to-read) offsets of ``group``; partitions without one are absent."""
        ...

    def end_offsets(self, topics: Iterable[str]) -> dict[TopicPartition, int]:
        """The offset the next committed record of each partition will get."""
        ...
