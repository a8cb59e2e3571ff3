"""The read model as a projection handler sees it while applying a batch.

A handler never writes to the store directly: it records changes on a
:class:`ReadModelBatch`, which reads through to the store and sees its own
pending changes, so read-modify-write handlers work within a batch. The
runner then hands the whole batch, together with the offsets it covers, to
the store in one atomic step. A crash before that step leaves neither the
changes nor the offsets; a crash after it leaves both, and the runner skips
what the stored offsets say is already applied. That is what makes a
replay change nothing (effectively-once read models).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, TypeVar, cast

from toolkit.ports import ReadModelChange, ReadModelStore

__all__ = ["ReadModelBatch", "copy_json"]

J = TypeVar("J")

_DELETED = object()

# The journal of recorded changes, flat: "p", key, document (put), "d", key
# (delete) or "i", key, field, amount (increment), one after the other. A flat
# list of strings, ints and the (already kept) documents allocates no object
# per change for the garbage collector to track; a tuple or a ReadModelChange
# per change did, several per event, and the collector's passes over them were
# a fifth of a projection's time. ``changes`` builds the ReadModelChanges.
_SIZES = {"p": 3, "d": 2, "i": 4}


def copy_json(value: J) -> J:
    """A deep copy of JSON-shaped data: containers copied (as plain dicts, lists and
    tuples), scalars (immutable) shared.

    ``copy.deepcopy`` keeps a memo of every object for cycles and shared
    references, which JSON cannot have; this is about three times faster.
    """
    return cast(J, _copied(value))


def _copied(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _copied(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copied(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_copied(v) for v in value)
    return value


class ReadModelBatch:
    """Pending read-model changes of one projection, readable before they are stored."""

    __slots__ = (
        "_count",
        "_counter_deltas",
        "_documents",
        "_journal",
        "_projection",
        "_read_ahead",
        "_store",
    )

    def __init__(self, store: ReadModelStore, projection: str) -> None:
        self._store = store
        self._projection = projection
        self._journal: list[Any] = []
        self._count = 0  # changes in the journal
        self._documents: dict[str, Any] = {}
        self._counter_deltas: dict[str, dict[str, int]] = {}
        # Documents read ahead for the batch's handlers (None: known absent),
        # each handed out once: its first get() takes it, later ones read the store.
        self._read_ahead: dict[str, dict[str, Any] | None] = {}

    def _entries(self, journal: list[Any]) -> list[tuple[Any, ...]]:
        entries = []
        at, end = 0, len(journal)
        while at < end:
            size = _SIZES[journal[at]]
            entries.append(tuple(journal[at : at + size]))
            at += size
        return entries

    @property
    def changes(self) -> list[ReadModelChange]:
        out: list[ReadModelChange] = []
        for entry in self._entries(self._journal):
            if entry[0] == "p":
                out.append(ReadModelChange("put", entry[1], document=entry[2]))
            elif entry[0] == "d":
                out.append(ReadModelChange("delete", entry[1]))
            else:
                out.append(ReadModelChange("increment", entry[1], field=entry[2], amount=entry[3]))
        return out

    def net_changes(self) -> list[ReadModelChange]:
        """The same effect in the fewest changes: the last put or delete per
        document, one summed increment per counter field."""
        net: list[ReadModelChange] = []
        append = net.append
        for key, document in self._documents.items():
            if document is _DELETED:
                append(ReadModelChange("delete", key))
            else:
                append(ReadModelChange("put", key, document))
        for key, deltas in self._counter_deltas.items():
            net.extend(
                ReadModelChange("increment", key, None, f, n) for f, n in deltas.items() if n
            )
        return net

    def __len__(self) -> int:
        return self._count

    def savepoint(self) -> int:
        """A mark to :meth:`rollback` to (e.g. when a handler fails half-way)."""
        return len(self._journal)

    def rollback(self, mark: int) -> None:
        """Forget every change recorded after ``mark``."""
        kept = self._entries(self._journal[:mark])
        self._journal, self._count, self._documents, self._counter_deltas = [], 0, {}, {}
        for entry in kept:
            if entry[0] == "p":
                self.put(entry[1], entry[2])
            elif entry[0] == "d":
                self.delete(entry[1])
            else:
                self.increment(entry[1], entry[2], entry[3])

    def get(self, key: str) -> dict[str, Any] | None:
        """The document under ``key`` as this batch would leave it."""
        if key in self._documents:
            pending = self._documents[key]
            return None if pending is _DELETED else copy_json(pending)
        read_ahead = self._read_ahead
        if key in read_ahead:
            return read_ahead.pop(key)  # fresh from the store, nobody else holds it
        return self._store.get(self._projection, key)

    def read_ahead(self, keys: Iterable[str], found: Mapping[str, dict[str, Any]]) -> None:
        """Documents the store returned for ``keys`` (one ``get_many``), kept for the
        handlers' first ``get`` of each; absent keys are remembered as absent."""
        for key in keys:
            if key not in self._documents:
                self._read_ahead[key] = found.get(key)

    def put(self, key: str, document: Mapping[str, Any]) -> None:
        """Store ``document`` (JSON-serialisable) under ``key``."""
        # Copied once so later mutation by the handler cannot change the batch;
        # get() hands out copies too. Only nested values need a deep copy.
        stored = dict(document)
        for value in stored.values():
            if isinstance(value, (dict, list, tuple)):
                stored = copy_json(stored)
                break
        self._documents[key] = stored
        self._journal += ("p", key, stored)
        self._count += 1

    def delete(self, key: str) -> None:
        self._documents[key] = _DELETED
        self._journal += ("d", key)
        self._count += 1

    def increment(self, key: str, field: str, amount: int = 1) -> None:
        """Add ``amount`` to a counter; safe when several partitions update ``key``."""
        deltas = self._counter_deltas.get(key)
        if deltas is None:
            deltas = self._counter_deltas[key] = {}
        deltas[field] = deltas.get(field, 0) + amount
        self._journal += ("i", key, field, amount)
        self._count += 1

    def counters(self, key: str) -> dict[str, int]:
        """The counters of ``key`` including this batch's increments."""
        merged = dict(self._store.counters(self._projection, key))
        for field, delta in self._counter_deltas.get(key, {}).items():
            merged[field] = merged.get(field, 0) + delta
        return merged
