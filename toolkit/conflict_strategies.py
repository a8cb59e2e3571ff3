"""The conflict resolver's strategies.

Use them through :class:`toolkit.conflicts.ConflictResolver`, which builds one
pipeline of strategies per aggregate type from a ``ResolverPolicy`` and gives
them an :class:`~toolkit.conflict_state.AggregateState`: an in-memory working copy
of one aggregate's resolver state that reaches the ``ConflictState`` only
when a whole decision succeeded. A strategy is a class with a ``name`` and
``process(item, aggregate, now_ms) -> Step``; it never does I/O of its own.

Buffered (and merged) events are stored as JSON documents
(:mod:`toolkit.envelope_json`).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from toolkit.conflict_state import AggregateState
from toolkit.envelope import Envelope
from toolkit.envelope_json import envelope_from_document, envelope_to_document
from toolkit.errors import ConfigurationError
from toolkit.hlc import HLCTimestamp

__all__ = [
    "Deduplicate",
    "FirstWriteWins",
    "Item",
    "LastWriteWins",
    "Merge",
    "MergeFunction",
    "Reason",
    "RejectConcurrent",
    "Reorder",
    "Step",
    "Strategy",
]

MergeFunction = Callable[[dict[str, Any] | None, Envelope], Envelope]
"""``merge(current_payload_or_None, incoming) -> envelope to apply``."""

Source = Mapping[str, Any]
"""Where an event came from (JSON: e.g. topic, partition, offset, record bytes),
opaque to the resolver: stored with a buffered event, handed back on release."""


class Reason:
    """Why the resolver applied, held back or rejected an event."""

    NO_POLICY = "no_policy"
    APPLIED = "applied"
    MERGED = "merged"
    RELEASED = "released"
    BUFFERED = "buffered"
    DUPLICATE = "duplicate"
    DUPLICATE_SEQUENCE = "duplicate_sequence"
    ALREADY_APPLIED_SEQUENCE = "already_applied_sequence"
    STALE_HLC = "stale_hlc"
    MISSING_HLC = "missing_hlc"
    ALREADY_WRITTEN = "already_written"
    REJECTED_CONFLICT = "rejected_conflict"
    GAP_SKIPPED = "gap_skipped"
    GAP_DEAD_LETTERED = "gap_dead_lettered"
    MERGE_ERROR = "merge_error"


# -- strategies --------------------------------------------------------------


@dataclass(slots=True)
class Item:
    """An event on its way through the pipeline; ``trigger``: the one resolve() was given.

    ``source``: the caller's description of where the event came from, or a
    function making it (called only if the event is buffered); ``error``: why
    a stage failed on it (a merge function that raised, ...).
    """

    envelope: Envelope
    trigger: bool = False
    source: Source | Callable[[], Source] | None = None
    error: str | None = None

    def source_document(self) -> Source | None:
        """The source as a document (made now if it was given as a function)."""
        if callable(self.source):
            self.source = self.source()
        return self.source


@dataclass(slots=True)
class Step:
    """What one strategy did with one event."""

    passed: list[tuple[Item, str]] = field(default_factory=list)
    rejected: list[tuple[Item, str]] = field(default_factory=list)
    buffered: list[Item] = field(default_factory=list)
    gap: tuple[int, int] | None = None
    gap_reason: str | None = None


def _passed(item: Item, reason: str) -> Step:
    return Step(passed=[(item, reason)])


def _rejected(item: Item, reason: str) -> Step:
    return Step(rejected=[(item, reason)])


class Strategy(Protocol):
    """One stage of a resolver pipeline."""

    name: str

    def process(self, item: Item, aggregate: AggregateState, now_ms: int) -> Step: ...


def _token(event_id: str) -> str:
    """The id as one line of the dedup window (escaped, so distinct ids stay distinct)."""
    if "\n" in event_id or "\\" in event_id:
        return event_id.replace("\\", "\\\\").replace("\n", "\\n")
    return event_id


class Deduplicate:
    """Reject an event id seen among the aggregate's last ``window`` ids."""

    name = "deduplicate"

    def __init__(self, window: int) -> None:
        self.window = window

    def process(self, item: Item, aggregate: AggregateState, now_ms: int) -> Step:
        ids = aggregate.seen_ids()
        token = _token(item.envelope.event_id)
        if f"\n{token}\n" in ids:
            return _rejected(item, Reason.DUPLICATE)
        ids = f"{ids}{token}\n"
        excess = ids.count("\n") - 1 - self.window
        if excess > 0:
            cut = 0
            for _ in range(excess):
                cut = ids.index("\n", cut + 1)
            ids = ids[cut:]
        aggregate.set_seen_ids(ids)
        return _passed(item, Reason.APPLIED)


def _sequence_of(entry: dict[str, Any]) -> int:
    sequence: int = entry["sequence"]
    return sequence


class Reorder:
    """Pass each aggregate's events in sequence order, holding early ones back.

    Invariant: every buffered sequence is above ``next``.
    """

    name = "reorder"

    def __init__(
        self, max_wait_ms: int, max_buffer: int, on_gap: Literal["skip", "dead_letter"]
    ) -> None:
        self.max_wait_ms = max_wait_ms
        self.max_buffer = max_buffer
        self.on_gap = on_gap

    def process(self, item: Item, aggregate: AggregateState, now_ms: int) -> Step:
        sequence = item.envelope.sequence
        expected: int = aggregate.head.get("next", 1)
        if sequence < expected:
            return _rejected(item, Reason.ALREADY_APPLIED_SEQUENCE)
        if sequence > expected:
            return self._hold(item, aggregate, now_ms)
        step = _passed(item, Reason.APPLIED)
        aggregate.set("next", expected + 1)
        if aggregate.head.get("buffer_min") == expected + 1:
            buffer = aggregate.buffer()
            run = self._run_length(buffer)
            step.passed.extend((self._item(e, None), Reason.RELEASED) for e in buffer[:run])
            del buffer[:run]
            aggregate.set("next", expected + 1 + run)
            aggregate.buffer_changed()
        return step

    def expire(self, aggregate: AggregateState, now_ms: int) -> list[Step]:
        """Close gaps while the oldest buffered event has waited ``max_wait_ms``."""
        steps = []
        while aggregate.head.get("buffered") and (
            now_ms - aggregate.head["oldest_ms"] >= self.max_wait_ms
        ):
            step = Step()
            self._close_gap(aggregate, step, None)
            steps.append(step)
        return steps

    def _hold(self, item: Item, aggregate: AggregateState, now_ms: int) -> Step:
        event = item.envelope
        buffer = aggregate.buffer()
        at = bisect.bisect_left(buffer, event.sequence, key=_sequence_of)
        if at < len(buffer) and buffer[at]["sequence"] == event.sequence:
            same = buffer[at]["event"]["event_id"] == event.event_id
            return _rejected(item, Reason.DUPLICATE if same else Reason.DUPLICATE_SEQUENCE)
        entry = {
            "sequence": event.sequence,
            "arrived_ms": now_ms,
            "event": envelope_to_document(event),
        }
        source = item.source_document()
        if source is not None:
            entry["source"] = dict(source)
        buffer.insert(at, entry)
        aggregate.buffer_changed()
        step = Step(buffered=[item])
        if len(buffer) > self.max_buffer:
            self._close_gap(aggregate, step, item)
        return step

    def _close_gap(self, aggregate: AggregateState, step: Step, trigger: Item | None) -> None:
        """Report the gap before the lowest buffered run; skip or dead-letter that run."""
        buffer = aggregate.buffer()
        lowest = buffer[0]["sequence"]
        run = self._run_length(buffer)
        items = [self._item(e, trigger) for e in buffer[:run]]
        del buffer[:run]
        step.gap = (aggregate.head.get("next", 1), lowest - 1)
        aggregate.set("next", lowest + run)
        aggregate.buffer_changed()
        if self.on_gap == "skip":
            step.gap_reason = Reason.GAP_SKIPPED
            step.passed.extend((i, Reason.RELEASED) for i in items)
        else:
            step.gap_reason = Reason.GAP_DEAD_LETTERED
            step.rejected.extend((i, Reason.GAP_DEAD_LETTERED) for i in items)
        step.buffered = [b for b in step.buffered if all(b is not i for i in items)]

    @staticmethod
    def _run_length(buffer: list[dict[str, Any]]) -> int:
        """How many buffered events from the first one have consecutive sequences."""
        if not buffer:
            return 0
        first, run = buffer[0]["sequence"], 1
        while run < len(buffer) and buffer[run]["sequence"] == first + run:
            run += 1
        return run

    @staticmethod
    def _item(entry: dict[str, Any], trigger: Item | None) -> Item:
        if (
            trigger is not None
            and entry["sequence"] == trigger.envelope.sequence
            and entry["event"]["event_id"] == trigger.envelope.event_id
        ):
            return trigger
        return Item(envelope_from_document(entry["event"]), source=entry.get("source"))


class _Winner:
    """Bookkeeping of the sequence-based winners: the last event they accepted."""

    @staticmethod
    def _accept(
        aggregate: AggregateState, event: Envelope, applied: Envelope | None = None
    ) -> None:
        highest = event.sequence if applied is None else max(event.sequence, applied.sequence)
        stored: int | None = aggregate.head.get("seq")
        aggregate.set("seq", highest if stored is None else max(stored, highest))
        aggregate.set("event_id", event.event_id)


class LastWriteWins:
    """Apply an event only if its HLC is above the last applied one's.

    After ``reorder`` (``after_reorder``) the events come one per sequence, in
    sequence order: one writer's order, whatever HLCs it stamped (a writer that
    publishes sequence 3 before 2 stamps 3 with the older HLC). Then the last
    write is the highest sequence: every event passes, none is compared by HLC.
    """

    name = "last_write_wins"

    def __init__(self, *, after_reorder: bool = False) -> None:
        self.after_reorder = after_reorder

    def process(self, item: Item, aggregate: AggregateState, now_ms: int) -> Step:
        if self.after_reorder:
            return _passed(item, Reason.APPLIED)
        hlc = item.envelope.hlc
        if hlc is None:
            return _rejected(item, Reason.MISSING_HLC)
        stored = aggregate.head.get("hlc")
        if stored is not None:
            last = HLCTimestamp.parse(stored)
            if hlc == last:
                return _rejected(item, Reason.DUPLICATE)
            if hlc < last:
                return _rejected(item, Reason.STALE_HLC)
        aggregate.set("hlc", str(hlc))
        return _passed(item, Reason.APPLIED)


class FirstWriteWins(_Winner):
    """Apply an event only if its sequence is above every one applied before."""

    name = "first_write_wins"
    LOSER = Reason.ALREADY_WRITTEN

    def process(self, item: Item, aggregate: AggregateState, now_ms: int) -> Step:
        event = item.envelope
        if event.event_id == aggregate.head.get("event_id"):
            return _rejected(item, Reason.DUPLICATE)
        stored = aggregate.head.get("seq")
        if stored is not None and event.sequence <= stored:
            return _rejected(item, self.LOSER)
        self._accept(aggregate, event)
        return _passed(item, Reason.APPLIED)


class RejectConcurrent(FirstWriteWins):
    """First-write-wins whose losers are conflicts to dead-letter, not drops."""

    name = "reject"
    LOSER = Reason.REJECTED_CONFLICT


class Merge(_Winner):
    """Apply in-order events as they are; merge a concurrent one into the current payload."""

    name = "merge"

    def __init__(self, merge: MergeFunction) -> None:
        self._merge = merge

    def process(self, item: Item, aggregate: AggregateState, now_ms: int) -> Step:
        event = item.envelope
        if event.event_id == aggregate.head.get("event_id"):
            return _rejected(item, Reason.DUPLICATE)
        stored = aggregate.head.get("seq")
        if stored is None or event.sequence > stored:
            applied, reason = event, Reason.APPLIED
        else:
            applied, reason = self._merge(aggregate.current(), event), Reason.MERGED
            _check_merged(applied, event)
        aggregate.set_current(applied)
        self._accept(aggregate, event, applied)
        return _passed(Item(applied, item.trigger, item.source), reason)


def _check_merged(applied: object, incoming: Envelope) -> None:
    if not isinstance(applied, Envelope) or (applied.aggregate_type, applied.aggregate_id) != (
        incoming.aggregate_type,
        incoming.aggregate_id,
    ):
        raise ConfigurationError(
            "the merge function must return an Envelope of the incoming event's aggregate",
            aggregate=f"{incoming.aggregate_type}/{incoming.aggregate_id}",
            returned=type(applied).__name__,
        )
