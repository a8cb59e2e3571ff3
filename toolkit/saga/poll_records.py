"""One poll's step records, decided one after another and written in one round trip.

A participant decides the EXECUTE commands of a poll in order against
:class:`PollRecords`, a read-through view of its read model: each document is
read from the store once per poll, and a decision sees the changes of the
decisions before it in the poll, which are not stored yet. Each decision is
queued as a :class:`~toolkit.ports.StepRecord` holding the documents it read
and the values it saw; :meth:`PollRecords.flush` writes the queue with
``SagaStepStore.record_each`` (Redis: one pipelined script per record).

Guarantee: each record is still its own atomic once-only step (effect and
record together, or neither), and it is applied only while every document its
decision read still has the value seen. So when an earlier record of the poll
turns out decided elsewhere (a watchdog's timeout: its changes never happen),
or another member of the group wrote one of those documents meanwhile, the
decisions that read it come back ``stale`` with nothing changed, and the
participant decides them again alone: no decision is ever applied on top of a
state it did not see, and none is applied twice.

Not covered, so the participant flushes and decides these alone: an action
that reads counters (the pending increments are not in the view), and
compensations and operator retries (they read other step records, which may
be pending in the poll).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from toolkit.ports import ReadModelChange, SagaStepStore, StepRecord, StepRecordResult
from toolkit.read_model import ReadModelBatch, copy_json

__all__ = ["PollRecords"]


class PollRecords:
    """The read model as the poll's pending records leave it, and those records."""

    def __init__(self, store: SagaStepStore, read_model: str) -> None:
        self._store = store
        self._read_model = read_model
        self._documents: dict[str, dict[str, Any] | None] = {}
        self._reads: dict[str, dict[str, Any] | None] = {}
        self._pending: list[StepRecord] = []
        self.counters_read = False

    def __len__(self) -> int:
        return len(self._pending)

    # -- ReadModelStore, for the actions' ReadModelBatch --------------------
    def get(self, projection: str, key: str) -> dict[str, Any] | None:
        if key in self._documents:
            document = self._documents[key]
        else:
            document = self._documents[key] = self._store.get(projection, key)
        if key not in self._reads:  # what the decision saw first: its expectation
            self._reads[key] = copy_json(document)
        return copy_json(document)

    def counters(self, projection: str, key: str) -> dict[str, int]:
        self.counters_read = True  # pending increments are not here: decide alone
        return self._store.counters(projection, key)

    # -- decisions -----------------------------------------------------------
    def batch(self) -> ReadModelBatch:
        """A fresh batch for one attempt of a decision; its reads are logged anew."""
        self._reads = {}
        self.counters_read = False
        return ReadModelBatch(self, self._read_model)

    def add(self, key: str, changes: Sequence[ReadModelChange], outcome: Mapping[str, Any]) -> int:
        """Queue the decision just made (with the reads of its last attempt);
        later decisions of the poll read its changes. Returns its index."""
        self._pending.append(StepRecord(key, changes, outcome, self._reads))
        self._reads = {}
        for change in changes:
            if change.kind == "put":
                self._documents[change.key] = copy_json(dict(change.document or {}))
            elif change.kind == "delete":
                self._documents[change.key] = None
        return len(self._pending) - 1

    def flush(self) -> list[StepRecordResult]:
        """Write the queued records, in order; forget what this poll read."""
        pending, self._pending = self._pending, []
        self._documents, self._reads = {}, {}
        return self._store.record_each(self._read_model, pending) if pending else []
