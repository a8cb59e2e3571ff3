"""Reading dead-letter topics, and replaying their records to the source topic once.

:class:`DeadLetterReplayer` lists the records of a dead-letter topic
(``<topic>.dlq``) with their reason, error and source coordinates
(:meth:`~DeadLetterReplayer.letters`), and writes fixed or transiently failed
ones back to their source topic and partition (:meth:`~DeadLetterReplayer.replay`).
A copy sent truncated (``dlq_truncated``: the original was too large) is
replayed from the original, fetched from the source topic at its coordinates.
The replayed record is the original (key, value, headers) without the
``dlq_*`` headers, plus ``dlq_replayed_from`` naming the dead letter.

Guarantee: **the event id decides.** Before writing, the replayer claims a
mark keyed by the source topic and the record's ``event_id`` header (the
source coordinates for a record without a valid one) in a
:class:`~toolkit.ports.ReplayMarkers` store (Redis: one atomic script); after
Kafka acknowledged the copy it replaces the claim with the copy's position.
So replaying twice, from two terminals, or a dead letter that several
consumer groups wrote for the same record, writes one copy. A replayed copy
that fails again is dead-lettered with the copy's coordinates, which match
the mark: that dead letter may be replayed again, once.

Failure modes: a replayer that dies between its claim and its confirmation
leaves the claim: the record is reported ``in_doubt`` and skipped (the copy
may or may not be in the log, with ``dlq_replayed_from``); ``force=True``
replays it anyway, and a projection using the ``deduplicate`` conflict
strategy drops a second copy by its event id. A write Kafka refuses releases
the claim and raises ``PublishError``; an original gone from the source
topic (retention) is reported ``original_gone`` and its claim released.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from toolkit.dead_letter import DeadLetter, DeadLetterHeader
from toolkit.errors import PublishError, SerializationError
from toolkit.ports import (
    ConsumedRecord,
    OutgoingRecord,
    RecordProducer,
    ReplayMarkers,
    TopicBrowser,
)
from toolkit.positions import Position

__all__ = [
    "REPLAYED_FROM",
    "DeadLetterEntry",
    "DeadLetterReplayer",
    "ReplayOutcome",
    "ReplayResult",
]

REPLAYED_FROM = "dlq_replayed_from"  # header of a replayed copy: the dead letter's coordinates

ReplayOutcome = Literal[
    "replayed", "would_replay", "already_replayed", "in_doubt", "original_gone", "not_a_dead_letter"
]


def _coordinates(position: Position) -> str:
    return f"{position.topic}:{position.partition}:{position.offset}"


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True)
class DeadLetterEntry:
    """One record of a dead-letter topic, read back."""

    record: ConsumedRecord  # as read from the dead-letter topic
    letter: DeadLetter | None  # None: the record lacks the dead-letter headers
    failed_at_ms: int | None
    event_id: str | None
    event_type: str | None
    truncated: str | None  # what a truncated copy left out ("value,key")

    @classmethod
    def of(cls, record: ConsumedRecord) -> DeadLetterEntry:
        def text(name: str) -> str | None:
            value = record.header(name)
            return None if value is None else value.decode(errors="replace")

        try:
            letter: DeadLetter | None = DeadLetter.from_record(record)
        except (SerializationError, ValueError):
            letter = None
        failed = text(DeadLetterHeader.FAILED_AT)
        event_id = text("event_id")
        if event_id is not None:
            try:
                event_id = str(uuid.UUID(event_id)) if len(event_id) == 36 else None
            except ValueError:
                event_id = None
        return cls(
            record=record,
            letter=letter,
            failed_at_ms=int(failed) if failed and failed.isascii() and failed.isdigit() else None,
            event_id=event_id,
            event_type=text("event_type"),
            truncated=text(DeadLetterHeader.TRUNCATED),
        )

    @property
    def position(self) -> Position:
        """Where the dead letter is (in the dead-letter topic)."""
        return self.record.position

    @property
    def reason(self) -> str | None:
        return None if self.letter is None else self.letter.reason

    @property
    def mark_key(self) -> str | None:
        """What decides once-only: the source topic and the event id (or coordinates)."""
        if self.letter is None:
            return None
        source = self.letter.source
        if self.event_id is not None:
            return f"{source.topic}/{self.event_id}"
        return f"{source.topic}@{source.partition}:{source.offset}"

    def to_json(self) -> dict[str, Any]:
        letter = self.letter
        return {
            "dlq": _coordinates(self.position),
            "reason": None if letter is None else letter.reason,
            "error": None if letter is None else letter.error,
            "source": None if letter is None else _coordinates(letter.source),
            "consumer_group": None if letter is None else letter.consumer_group,
            "failed_at_ms": self.failed_at_ms,
            "event_id": self.event_id,
            "event_type": self.event_type,
            "truncated": self.truncated,
            "key": None if self.record.key is None else self.record.key.decode(errors="replace"),
            "value_bytes": None if self.record.value is None else len(self.record.value),
        }


@dataclass(frozen=True)
class ReplayResult:
    """What a replay did with one dead letter; ``copy`` is where the copy is (or was)."""

    entry: DeadLetterEntry
    outcome: ReplayOutcome
    copy: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {**self.entry.to_json(), "outcome": self.outcome, "copy": self.copy}


class DeadLetterReplayer:
    """Lists a dead-letter topic's records and replays them to their source, once."""

    def __init__(
        self,
        browser: TopicBrowser,
        producer: RecordProducer,
        markers: ReplayMarkers,
        *,
        timeout: float = 10.0,
        clock_ms: Callable[[], int] = _now_ms,
    ) -> None:
        self._browser = browser
        self._producer = producer
        self._markers = markers
        self._timeout = timeout
        self._clock_ms = clock_ms

    def letters(
        self, dlq_topic: str, *, reasons: Sequence[str] = (), since_ms: int | None = None
    ) -> list[DeadLetterEntry]:
        """The dead letters of ``dlq_topic`` with one of ``reasons`` (none: all) that
        failed at or after ``since_ms``, in partition and offset order."""
        entries: list[DeadLetterEntry] = []
        for record in self._browser.read(dlq_topic, since_ms, self._timeout):
            entry = DeadLetterEntry.of(record)
            if entry.letter is None:
                if not reasons and since_ms is None:  # shown, never replayed
                    entries.append(entry)
                continue
            if reasons and entry.reason not in reasons:
                continue
            if since_ms is not None and (entry.failed_at_ms or 0) < since_ms:
                continue
            entries.append(entry)
        return entries

    def replay(
        self,
        dlq_topic: str,
        *,
        reasons: Sequence[str] = (),
        since_ms: int | None = None,
        dry_run: bool = False,
        force: bool = False,
    ) -> list[ReplayResult]:
        """Replay the matching dead letters (see the module docstring for once-only)."""
        return [
            self._replay(entry, dry_run=dry_run, force=force)
            for entry in self.letters(dlq_topic, reasons=reasons, since_ms=since_ms)
        ]

    def _replay(self, entry: DeadLetterEntry, *, dry_run: bool, force: bool) -> ReplayResult:
        key, letter = entry.mark_key, entry.letter
        if key is None or letter is None:
            return ReplayResult(entry, "not_a_dead_letter")
        if dry_run:
            return ReplayResult(entry, "would_replay")
        claim = {"state": "claimed", "dlq": _coordinates(entry.position), "at_ms": self._clock_ms()}
        found = self._markers.claim(key, claim)
        if found is not None:
            again = found.get("copy") == _coordinates(letter.source)  # our copy failed again
            if again or (force and found.get("state") == "claimed"):
                found = self._markers.claim(key, claim, replacing=found)
        if found is not None:
            if found.get("state") == "claimed":
                return ReplayResult(entry, "in_doubt")
            return ReplayResult(entry, "already_replayed", found.get("copy"))
        original = self._original(entry)
        if original is None:
            self._markers.release(key)
            return ReplayResult(entry, "original_gone")
        try:
            (written,) = self._producer.produce([original])
        except PublishError:
            self._markers.release(key)
            raise
        copy = _coordinates(written)
        self._markers.confirm(
            key,
            {
                "state": "replayed",
                "copy": copy,
                "dlq": _coordinates(entry.position),
                "at_ms": self._clock_ms(),
            },
        )
        return ReplayResult(entry, "replayed", copy)

    def _original(self, entry: DeadLetterEntry) -> OutgoingRecord | None:
        letter = entry.letter
        assert letter is not None
        record: ConsumedRecord | None = letter.record
        if entry.truncated:
            record = self._browser.fetch(letter.source, self._timeout)
            if record is None:
                return None
        assert record is not None
        headers = tuple((k, v) for k, v in record.headers if not k.startswith("dlq_"))
        headers += ((REPLAYED_FROM, _coordinates(entry.position).encode()),)
        source = letter.source
        return OutgoingRecord(source.topic, record.key, record.value, headers, source.partition)
