"""Event-order violations, counted where they are seen and kept in the read model.

A projection runner with a conflict resolver sees every ordering problem of
its partitions: an event ahead of its aggregate's next sequence (held back:
``out_of_order``), a gap closed without the missing events (``gap``), an
event id or sequence delivered again (``duplicate``), an event older than
what was already applied (``late``). :class:`OrderViolations` turns the
resolver's decisions into counters and examples and writes them into the
batch the runner stores, so they reach the read model **atomically with the
offsets**: a replay or a rebuild counts each violation once, and any process
(``kct status``, the monitor) reads them from the store without talking to
the runner.

Layout (reserved ``__kct.`` keys of the projection's read model):
``__kct.order/counts`` counters by category and by reason;
``__kct.order/examples`` the last :data:`EXAMPLES_KEPT` examples. Counters
are increments, exact across runners; the examples document is written by
whichever runner saw a violation last (two runners writing it in the same
instant may drop one's examples, never a count).

Without a resolver a runner decides nothing about order, so nothing is counted.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from toolkit.conflicts import Reason, Resolution
from toolkit.positions import Position
from toolkit.read_model import ReadModelBatch

__all__ = [
    "CATEGORIES",
    "EXAMPLES_KEPT",
    "ORDER_COUNTS_KEY",
    "ORDER_EXAMPLES_KEY",
    "OrderViolations",
    "category_of",
]

ORDER_COUNTS_KEY = "__kct.order/counts"
ORDER_EXAMPLES_KEY = "__kct.order/examples"
EXAMPLES_KEPT = 20

# Resolver reasons that are ordering violations, by category.
CATEGORIES: Mapping[str, str] = {
    Reason.BUFFERED: "out_of_order",
    Reason.GAP_SKIPPED: "gap",
    Reason.GAP_DEAD_LETTERED: "gap",
    Reason.DUPLICATE: "duplicate",
    Reason.DUPLICATE_SEQUENCE: "duplicate",
    Reason.ALREADY_APPLIED_SEQUENCE: "late",
    Reason.STALE_HLC: "late",
}


def category_of(reason: str) -> str | None:
    """The violation category of a resolver reason (None: not an order violation)."""
    return CATEGORIES.get(reason)


class OrderViolations:
    """Order violations of one batch, noted while resolving and written once (:meth:`flush`)."""

    __slots__ = ("_counts", "_examples")

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}
        self._examples: list[dict[str, Any]] = []

    def __bool__(self) -> bool:
        return bool(self._counts)

    def note(self, resolution: Resolution, position: Position | None, at_ms: int | None) -> None:
        """Count the violations of one decision (the trigger's or an expired gap's)."""
        found: list[tuple[str, str, Any]] = []
        category = category_of(resolution.reason)
        if category is not None and (resolution.reason != Reason.BUFFERED or resolution.event):
            found.append((category, resolution.reason, resolution.event))
        for event, reason in resolution.rejected:
            rejected_category = category_of(reason)
            if rejected_category is not None and reason != resolution.reason:
                found.append((rejected_category, reason, event))
        for category, reason, event in found:
            self._counts[category] = self._counts.get(category, 0) + 1
            self._counts[f"reason:{reason}"] = self._counts.get(f"reason:{reason}", 0) + 1
            aggregate_type, aggregate_id = resolution.aggregate
            self._examples.append(
                {
                    "category": category,
                    "reason": reason,
                    "aggregate_type": aggregate_type,
                    "aggregate_id": aggregate_id,
                    "event_id": None if event is None else event.event_id,
                    "sequence": None if event is None else event.sequence,
                    "gap": None if resolution.gap is None else list(resolution.gap),
                    "topic": None if position is None else position.topic,
                    "partition": None if position is None else position.partition,
                    "offset": None if position is None else position.offset,
                    "timestamp_ms": at_ms,
                }
            )

    def flush(self, batch: ReadModelBatch) -> None:
        """Write the counts and the newest examples into ``batch``, then forget them."""
        if not self._counts:
            return
        for field, amount in self._counts.items():
            batch.increment(ORDER_COUNTS_KEY, field, amount)
        kept = batch.get(ORDER_EXAMPLES_KEY) or {"examples": []}
        examples = [*kept.get("examples", []), *self._examples][-EXAMPLES_KEPT:]
        batch.put(ORDER_EXAMPLES_KEY, {"examples": examples})
        self._counts.clear()
        self._examples.clear()

    def clear(self) -> None:
        self._counts.clear()
        self._examples.clear()
