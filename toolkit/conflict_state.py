"""The conflict resolver's state: per aggregate, per partition, in the read model.

All of it lives in a :class:`ConflictState` (a ``ReadModelBatch`` fits), so
it is written in the same atomic step as the read model and its offsets: a
crash keeps both or neither, and a replay re-derives the same decisions.
:class:`AggregateState` is an in-memory working copy of one aggregate's
documents that reaches the ``ConflictState`` only on ``flush``; the reorder
index lists the aggregates with buffered events. The layout of every key is
described in ``docs/conflict-resolution.md``.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any, Protocol, cast
from urllib.parse import quote, unquote

from toolkit.envelope import Envelope
from toolkit.envelope_json import decode_payload, encode_payload

__all__ = [
    "CLOCK_KEY",
    "INDEX_KEY",
    "STATE_PREFIX",
    "AggregateState",
    "ConflictState",
    "ReorderIndex",
    "aggregate_key",
    "index_entry",
    "parse_index_entry",
]

STATE_PREFIX = "__kct.conflicts/"
INDEX_KEY = f"{STATE_PREFIX}reorder-index"
CLOCK_KEY = f"{STATE_PREFIX}clock"


class ConflictState(Protocol):
    """Where the resolver keeps its state: a ``ReadModelBatch`` fits."""

    def get(self, key: str) -> dict[str, Any] | None: ...

    def put(self, key: str, document: Mapping[str, Any]) -> None: ...

    def delete(self, key: str) -> None: ...


def index_entry(aggregate_type: str, aggregate_id: str) -> str:
    return f"{quote(aggregate_type, safe='')}/{quote(aggregate_id, safe='')}"


def parse_index_entry(entry: str) -> tuple[str, str]:
    aggregate_type, _, aggregate_id = entry.partition("/")
    return unquote(aggregate_type), unquote(aggregate_id)


@lru_cache(maxsize=65_536)
def aggregate_key(aggregate_type: str, aggregate_id: str) -> str:
    """The key of an aggregate's head document; its other documents append ``/<name>``."""
    return STATE_PREFIX + index_entry(aggregate_type, aggregate_id)


class ReorderIndex:
    """The aggregates with buffered events and their oldest arrival time.

    Stored as one flat string, ``"\\n<T>/<I> <oldest_ms>\\n..."``, like the
    dedup window: a ``ReadModelBatch`` copies it in O(1) Python steps however
    many aggregates wait, and an update is a substring search and a splice.
    """

    def __init__(self, state: ConflictState) -> None:
        self._state = state
        self._text: str | None = None
        self._dirty = False

    def _load(self) -> str:
        if self._text is None:
            found = self._state.get(INDEX_KEY)
            self._text = found["entries"] if found else "\n"
        return self._text

    def entries(self) -> dict[str, int]:
        pairs = (line.rpartition(" ") for line in self._load().split("\n") if line)
        return {entry: int(oldest) for entry, _, oldest in pairs}

    def set(self, entry: str, oldest_ms: int | None) -> None:
        text = self._load()
        line = None if oldest_ms is None else f"{entry} {oldest_ms}\n"
        start = text.find(f"\n{entry} ")
        if start >= 0:
            end = text.index("\n", start + 1)
            if line is not None and text[start + 1 : end + 1] == line:
                return
            text = text[:start] + text[end:]
        elif line is None:
            return
        self._text = text if line is None else text + line
        self._dirty = True

    def flush(self) -> None:
        if self._dirty:
            if self._text and self._text != "\n":
                self._state.put(INDEX_KEY, {"entries": self._text})
            else:
                self._state.delete(INDEX_KEY)
            self._dirty = False


class AggregateState:
    """A working copy of one aggregate's resolver state: read lazily, written by flush()."""

    def __init__(self, state: ConflictState, aggregate_type: str, aggregate_id: str) -> None:
        self._state = state
        self.aggregate_type = aggregate_type
        self.aggregate_id = aggregate_id
        self.key = aggregate_key(aggregate_type, aggregate_id)
        found = state.get(self.key)
        self.head: dict[str, Any] = dict(found) if found else {}
        self._dirty: set[str] = set()
        self._buffer: list[dict[str, Any]] | None = None
        self._current: Any = None

    def set(self, name: str, value: Any) -> None:
        """Set a head field (None removes it)."""
        if value is None:
            if self.head.pop(name, None) is not None:
                self._dirty.add("head")
        elif self.head.get(name) != value:
            self.head[name] = value
            self._dirty.add("head")

    def buffer(self) -> list[dict[str, Any]]:
        """The reorder buffer, by sequence; call buffer_changed() after changing it."""
        if self._buffer is None:
            found = self._state.get(f"{self.key}/buffer") if self.head.get("buffered") else None
            self._buffer = list(found["events"]) if found else []
        return self._buffer

    def buffer_changed(self) -> None:
        buffer = self.buffer()
        self.set("buffered", len(buffer) or None)
        self.set("buffer_min", buffer[0]["sequence"] if buffer else None)
        self.set("oldest_ms", min(e["arrived_ms"] for e in buffer) if buffer else None)
        self._dirty.add("buffer")

    def seen_ids(self) -> str:
        """The dedup window, ``"\\nid1\\nid2\\n"``, oldest first."""
        seen: str = self.head.get("seen", "\n")
        return seen

    def set_seen_ids(self, ids: str) -> None:
        self.set("seen", ids)

    def current(self) -> dict[str, Any] | None:
        """The payload merge last applied, if any."""
        found = self._state.get(f"{self.key}/current")
        return None if found is None else cast(dict[str, Any], decode_payload(found["payload"]))

    def set_current(self, envelope: Envelope) -> None:
        self._current = encode_payload(envelope.payload, envelope.event_id)
        self._dirty.add("current")

    def flush(self, index: ReorderIndex) -> None:
        """Write the documents that changed, and this aggregate's index entry."""
        state, key = self._state, self.key
        if "buffer" in self._dirty:
            if self._buffer:
                state.put(f"{key}/buffer", {"events": self._buffer})
            else:
                state.delete(f"{key}/buffer")
            entry = index_entry(self.aggregate_type, self.aggregate_id)
            index.set(entry, self.head.get("oldest_ms"))
        if "current" in self._dirty:
            state.put(f"{key}/current", {"payload": self._current})
        if "head" in self._dirty:
            if self.head:
                state.put(key, self.head)
            else:
                state.delete(key)
        self._dirty.clear()
