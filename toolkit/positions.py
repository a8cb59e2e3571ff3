"""Positions in the log and consistency tokens.

A :class:`Position` is where one event was written: (topic, partition,
offset), taken from the producer's delivery report. A projection is a
consumer group whose committed offset on a partition is the *next* offset it
will read, so it has applied an event exactly when ``committed > offset``
(never ``>=``).

A :class:`ConsistencyToken` is a set of positions folded to the highest
offset per partition. Tokens merge (max per partition), so the writes of a
session or a request can be accumulated, and they serialise to a short
URL-safe string that a caller can carry across processes (an HTTP header, a
cookie) for read-your-writes. :meth:`ConsistencyToken.parse` rejects anything
malformed with :class:`~toolkit.errors.InvalidToken`, topic names included
(validated as Kafka does); it never guesses.

Event ids are never compared: only offsets on the same partition are ordered.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import NamedTuple

from toolkit.errors import InvalidToken

__all__ = ["ConsistencyToken", "Position", "TopicPartition", "is_valid_topic_name"]

# Kafka's own rule for topic names (``Topic.validate``): 1-249 of these
# characters, and neither "." nor "..". Used with ``fullmatch``: ``$`` would
# also match before a trailing newline.
_TOPIC_NAME = re.compile(r"[A-Za-z0-9._-]{1,249}")
_TOPIC_RULE = "1-249 characters of a-z, A-Z, 0-9, '.', '_', '-', and not '.' or '..'"
_TOKEN_VERSION = "1"
# Far beyond any real token (hundreds of partitions); bounds parsing work on
# untrusted header values.
_MAX_TOKEN_CHARS = 8192


class TopicPartition(NamedTuple):
    """A partition of a topic."""

    topic: str
    partition: int

    def __str__(self) -> str:
        return f"{self.topic}[{self.partition}]"


@dataclass(frozen=True, order=True, slots=True)
class Position:
    """Where one record lives in the log: its topic, partition and offset."""

    topic: str
    partition: int
    offset: int

    def __post_init__(self) -> None:
        if self.partition < 0 or self.offset < 0:
            raise ValueError(f"negative partition or offset in {self!r}")

    @property
    def topic_partition(self) -> TopicPartition:
        return TopicPartition(self.topic, self.partition)

    def is_applied_by(self, committed_offset: int | None) -> bool:
        """Whether a consumer whose committed (next-to-read) offset is given has
        processed this record."""
        return committed_offset is not None and committed_offset > self.offset

    def __str__(self) -> str:
        return f"{self.topic}[{self.partition}]@{self.offset}"


class ConsistencyToken(Mapping[TopicPartition, int]):
    """The highest written offset per partition: what a reader must have applied.

    Immutable; :meth:`merge` and :meth:`including` return new tokens.
    """

    __slots__ = ("_offsets",)

    def __init__(self, offsets: Mapping[TopicPartition, int] | None = None) -> None:
        cleaned: dict[TopicPartition, int] = {}
        for key, offset in (offsets or {}).items():
            tp = TopicPartition(*key)
            _check_coordinates(tp.topic, tp.partition, offset)
            cleaned[tp] = offset
        self._offsets = dict(sorted(cleaned.items()))

    @classmethod
    def of(cls, positions: Iterable[Position]) -> ConsistencyToken:
        """The token that covers every given position."""
        offsets: dict[TopicPartition, int] = {}
        for position in positions:
            tp = position.topic_partition
            offsets[tp] = max(offsets.get(tp, -1), position.offset)
        return cls(offsets)

    # Mapping protocol
    def __getitem__(self, key: TopicPartition) -> int:
        return self._offsets[TopicPartition(*key)]

    def __iter__(self) -> Iterator[TopicPartition]:
        return iter(self._offsets)

    def __len__(self) -> int:
        return len(self._offsets)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, ConsistencyToken):
            return self._offsets == other._offsets
        return NotImplemented

    def __hash__(self) -> int:
        return hash(tuple(self._offsets.items()))

    def __repr__(self) -> str:
        inner = ", ".join(f"{tp}@{offset}" for tp, offset in self._offsets.items())
        return f"ConsistencyToken({inner})"

    @property
    def topics(self) -> frozenset[str]:
        return frozenset(tp.topic for tp in self._offsets)

    def positions(self) -> list[Position]:
        """The highest position per partition, in (topic, partition) order."""
        return [Position(tp.topic, tp.partition, offset) for tp, offset in self._offsets.items()]

    def merge(self, other: ConsistencyToken) -> ConsistencyToken:
        """The token requiring everything either token requires (max per partition)."""
        merged = dict(self._offsets)
        for tp, offset in other._offsets.items():
            merged[tp] = max(merged.get(tp, -1), offset)
        return ConsistencyToken(merged)

    def including(self, position: Position) -> ConsistencyToken:
        """This token extended by one more written position."""
        return self.merge(ConsistencyToken.of([position]))

    def covers(self, position: Position) -> bool:
        """Whether waiting for this token also waits for ``position``."""
        offset = self._offsets.get(position.topic_partition)
        return offset is not None and offset >= position.offset

    def is_applied_by(self, committed: Mapping[TopicPartition, int]) -> bool:
        """Whether a consumer with these committed offsets has applied every position."""
        return not self.behind(committed)

    def behind(self, committed: Mapping[TopicPartition, int]) -> dict[TopicPartition, int]:
        """Per partition not yet applied: how many offsets the consumer still has to go."""
        missing: dict[TopicPartition, int] = {}
        for tp, offset in self._offsets.items():
            done = committed.get(tp)
            if done is None or done <= offset:
                missing[tp] = offset + 1 - (done or 0)
        return missing

    # String form: "1" + base64url(varint-encoded groups), no padding.
    # Per topic: name length, name bytes, partition count, then
    # (partition, offset) pairs. Compact enough for an HTTP header.
    def to_string(self) -> str:
        by_topic: dict[str, list[tuple[int, int]]] = {}
        for tp, offset in self._offsets.items():
            by_topic.setdefault(tp.topic, []).append((tp.partition, offset))
        out = bytearray()
        for topic, entries in by_topic.items():
            name = topic.encode("ascii")
            _put_varint(out, len(name))
            out += name
            _put_varint(out, len(entries))
            for partition, offset in entries:
                _put_varint(out, partition)
                _put_varint(out, offset)
        return _TOKEN_VERSION + base64.urlsafe_b64encode(bytes(out)).decode("ascii").rstrip("=")

    __str__ = to_string

    @classmethod
    def parse(cls, text: str) -> ConsistencyToken:
        """Parse :meth:`to_string` output; raise :class:`InvalidToken` on anything else."""
        if not isinstance(text, str):
            raise InvalidToken("consistency token must be a string", got=type(text).__name__)
        if len(text) > _MAX_TOKEN_CHARS:
            raise InvalidToken("consistency token is too long", length=len(text))
        if not text.startswith(_TOKEN_VERSION):
            raise InvalidToken("consistency token has an unknown version", prefix=text[:1])
        body = text[len(_TOKEN_VERSION) :]
        if not re.fullmatch(r"[A-Za-z0-9_-]*", body) or len(body) % 4 == 1:
            raise InvalidToken("consistency token is not URL-safe base64")
        try:
            raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        except (binascii.Error, ValueError) as exc:
            raise InvalidToken("consistency token is not URL-safe base64") from exc
        return cls(_decode_groups(raw))


def _decode_groups(raw: bytes) -> dict[TopicPartition, int]:
    reader = _VarintReader(raw)
    offsets: dict[TopicPartition, int] = {}
    while not reader.at_end():
        name_length = reader.varint()
        try:
            topic = reader.take(name_length).decode("ascii")
        except UnicodeDecodeError as exc:
            raise InvalidToken("consistency token holds a non-ASCII topic name") from exc
        count = reader.varint()
        if count == 0:
            raise InvalidToken("consistency token lists a topic without partitions", topic=topic)
        for _ in range(count):
            partition, offset = reader.varint(), reader.varint()
            tp = TopicPartition(topic, partition)
            if tp in offsets:
                raise InvalidToken("consistency token repeats a partition", partition=str(tp))
            _check_coordinates(topic, partition, offset)
            offsets[tp] = offset
    return offsets


def is_valid_topic_name(name: object) -> bool:
    """Whether Kafka accepts ``name`` as a topic name."""
    return isinstance(name, str) and name not in (".", "..") and bool(_TOPIC_NAME.fullmatch(name))


def _check_coordinates(topic: str, partition: int, offset: int) -> None:
    if not is_valid_topic_name(topic):
        shown = topic[:60] + "..." if isinstance(topic, str) and len(topic) > 60 else topic
        raise InvalidToken(
            f"invalid Kafka topic name in consistency token: expected {_TOPIC_RULE}",
            topic=shown,
        )
    if not isinstance(partition, int) or not isinstance(offset, int):
        raise InvalidToken("partition and offset must be integers", topic=topic)
    if partition < 0 or offset < 0 or partition > 2**31 - 1 or offset > 2**63 - 1:
        raise InvalidToken(
            "partition or offset out of range", topic=topic, partition=partition, offset=offset
        )


def _put_varint(out: bytearray, value: int) -> None:
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


class _VarintReader:
    def __init__(self, data: bytes) -> None:
        self._data = data
        self._at = 0

    def at_end(self) -> bool:
        return self._at >= len(self._data)

    def take(self, length: int) -> bytes:
        if self._at + length > len(self._data):
            raise InvalidToken("consistency token is truncated")
        chunk = self._data[self._at : self._at + length]
        self._at += length
        return chunk

    def varint(self) -> int:
        value = shift = 0
        while True:
            if self.at_end():
                raise InvalidToken("consistency token is truncated")
            byte = self._data[self._at]
            self._at += 1
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
            shift += 7
            if shift > 63:
                raise InvalidToken("consistency token holds an oversized number")
