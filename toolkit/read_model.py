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

import copy
from collections.abc import Mapping
from typing import Any

from toolkit.ports import ReadModelChange, ReadModelStore

__all__ = ["ReadModelBatch"]

_DELETED = object()


def _nested(document: Mapping[str, Any]) -> bool:
    return any(isinstance(v, (dict, list)) for v in document.values())


class ReadModelBatch:
    """Pending read-model changes of one projection, readable before they are stored."""

    def __init__(self, store: ReadModelStore, projection: str) -> None:
        self._store = store
        self._projection = projection
        self._changes: list[ReadModelChange] = []
        self._documents: dict[str, Any] = {}
        self._counter_deltas: dict[str, dict[str, int]] = {}

    @property
    def changes(self) -> list[ReadModelChange]:
        return list(self._changes)

    def net_changes(self) -> list[ReadModelChange]:
        """The same effect in the fewest changes: the last put or delete per
        document, one summed increment per counter field."""
        net: list[ReadModelChange] = []
        for key, document in self._documents.items():
            if document is _DELETED:
                net.append(ReadModelChange("delete", key))
            else:
                net.append(ReadModelChange("put", key, document=document))
        for key, deltas in self._counter_deltas.items():
            net.extend(
                ReadModelChange("increment", key, field=f, amount=n) for f, n in deltas.items() if n
            )
        return net

    def __len__(self) -> int:
        return len(self._changes)

    def savepoint(self) -> int:
        """A mark to :meth:`rollback` to (e.g. when a handler fails half-way)."""
        return len(self._changes)

    def rollback(self, mark: int) -> None:
        """Forget every change recorded after ``mark``."""
        kept = self._changes[:mark]
        self._changes, self._documents, self._counter_deltas = [], {}, {}
        for change in kept:
            if change.kind == "put" and change.document is not None:
                self.put(change.key, change.document)
            elif change.kind == "delete":
                self.delete(change.key)
            elif change.kind == "increment" and change.field is not None:
                self.increment(change.key, change.field, change.amount)

    def get(self, key: str) -> dict[str, Any] | None:
        """The document under ``key`` as this batch would leave it."""
        if key in self._documents:
            pending = self._documents[key]
            return None if pending is _DELETED else copy.deepcopy(pending)
        return self._store.get(self._projection, key)

    def put(self, key: str, document: Mapping[str, Any]) -> None:
        """Store ``document`` (JSON-serialisable) under ``key``."""
        # Copied once so later mutation by the handler cannot change the batch;
        # get() hands out copies too.
        stored = copy.deepcopy(dict(document)) if _nested(document) else dict(document)
        self._documents[key] = stored
        self._changes.append(ReadModelChange("put", key, document=stored))

    def delete(self, key: str) -> None:
        self._documents[key] = _DELETED
        self._changes.append(ReadModelChange("delete", key))

    def increment(self, key: str, field: str, amount: int = 1) -> None:
        """Add ``amount`` to a counter; safe when several partitions update ``key``."""
        deltas = self._counter_deltas.setdefault(key, {})
        deltas[field] = deltas.get(field, 0) + amount
        self._changes.append(ReadModelChange("increment", key, field=field, amount=amount))

    def counters(self, key: str) -> dict[str, int]:
        """The counters of ``key`` including this batch's increments."""
        merged = dict(self._store.counters(self._projection, key))
        for field, delta in self._counter_deltas.get(key, {}).items():
            merged[field] = merged.get(field, 0) + delta
        return merged
