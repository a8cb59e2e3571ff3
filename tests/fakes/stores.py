"""In-memory stores: ``CheckpointedReadModelStore`` and ``SagaStepStore`` in dicts,
and a read-model store that fails on demand (like Redis down)."""

from __future__ import annotations

import json
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from toolkit.errors import StoreError
from toolkit.ports import PendingApply, ReadModelChange, StepRecord, StepRecordResult
from toolkit.positions import TopicPartition

__all__ = ["FlakyReadModelStore", "InMemoryReadModelStore", "InMemorySagaStepStore"]


class Deferred:
    """A store step run when its answer is taken (or never, when abandoned)."""

    def __init__(self, step: Callable[[], bool]) -> None:
        self._step: Callable[[], bool] | None = step

    def result(self) -> bool:
        step, self._step = self._step, None
        if step is None:
            raise RuntimeError("the answer of this store step was already taken")
        return step()

    def abandon(self) -> None:
        self._step = None


class InMemoryReadModelStore:
    """CheckpointedReadModelStore in a dict, with the same compare-and-set rule as Redis."""

    def __init__(self) -> None:
        self.documents: dict[tuple[str, str], dict[str, Any]] = {}
        self.counter_values: dict[tuple[str, str], dict[str, int]] = {}
        self.offsets: dict[str, dict[TopicPartition, int]] = {}

    def get(self, projection: str, key: str) -> dict[str, Any] | None:
        found = self.documents.get((projection, key))
        return None if found is None else json.loads(json.dumps(found))

    def get_many(self, projection: str, keys: Sequence[str]) -> dict[str, dict[str, Any]]:
        documents = self.documents
        return {
            key: json.loads(json.dumps(documents[(projection, key)]))
            for key in keys
            if (projection, key) in documents
        }

    def counters(self, projection: str, key: str) -> dict[str, int]:
        return dict(self.counter_values.get((projection, key), {}))

    def applied_offsets(
        self, projection: str, partitions: Iterable[TopicPartition]
    ) -> dict[TopicPartition, int]:
        stored = self.offsets.get(projection, {})
        return {tp: stored[tp] for tp in partitions if tp in stored}

    def apply(
        self,
        projection: str,
        changes: Sequence[ReadModelChange],
        expected: Mapping[TopicPartition, int | None],
        offsets: Mapping[TopicPartition, int],
    ) -> bool:
        stored = self.offsets.setdefault(projection, {})
        if any(stored.get(tp) != want for tp, want in expected.items()):
            return False
        for change in changes:
            key = (projection, change.key)
            if change.kind == "put":
                self.documents[key] = json.loads(json.dumps(change.document))
            elif change.kind == "delete":
                self.documents.pop(key, None)
            elif change.field is not None:
                counters = self.counter_values.setdefault(key, {})
                counters[change.field] = counters.get(change.field, 0) + change.amount
        stored.update(offsets)
        return True

    def apply_later(
        self,
        projection: str,
        changes: Sequence[ReadModelChange],
        expected: Mapping[TopicPartition, int | None],
        offsets: Mapping[TopicPartition, int],
    ) -> PendingApply:
        # Applied only when the answer is taken: the latest a real store may run it,
        # so a caller reading before result() sees the old state, as it could.
        changes, expected, offsets = list(changes), dict(expected), dict(offsets)
        return Deferred(lambda: self.apply(projection, changes, expected, offsets))

    def dump(self, projection: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for (name, key), doc in self.documents.items():
            if name == projection:
                out[f"d:{key}"] = doc
        for (name, key), counters in self.counter_values.items():
            if name == projection:
                out[f"c:{key}"] = dict(counters)
        return out

    def reset(self, projection: str) -> None:
        self.documents = {k: v for k, v in self.documents.items() if k[0] != projection}
        self.counter_values = {k: v for k, v in self.counter_values.items() if k[0] != projection}
        self.offsets.pop(projection, None)


class InMemorySagaStepStore(InMemoryReadModelStore):
    """SagaStepStore in dicts: read models plus once-only outcomes; ``calls``
    counts the calls that would each be one Redis round trip."""

    def __init__(self) -> None:
        super().__init__()
        self.records: dict[tuple[str, str], str] = {}
        self.calls: dict[str, int] = defaultdict(int)  # round trips a real store would make

    def outcome(self, participant: str, key: str) -> dict[str, Any] | None:
        self.calls["outcome"] += 1
        return self._stored(participant, key)

    def _stored(self, participant: str, key: str) -> dict[str, Any] | None:
        found = self.records.get((participant, key))
        return None if found is None else dict(json.loads(found))

    def outcomes(self, participant: str, keys: Sequence[str]) -> dict[str, dict[str, Any]]:
        self.calls["outcomes"] += 1
        found = {key: self._stored(participant, key) for key in keys}
        return {key: stored for key, stored in found.items() if stored is not None}

    def get(self, projection: str, key: str) -> dict[str, Any] | None:
        self.calls["get"] += 1
        return super().get(projection, key)

    def record_each(
        self, participant: str, records: Sequence[StepRecord]
    ) -> list[StepRecordResult]:
        self.calls["record_each"] += 1
        out: list[StepRecordResult] = []
        for record in records:
            stored = self._stored(participant, record.key)
            if stored is not None:
                out.append(StepRecordResult("decided", stored))
            elif any(
                self.documents.get((participant, key)) != expected
                for key, expected in record.expected.items()
            ):
                out.append(StepRecordResult("stale", {}))
            else:
                self._record(participant, record.key, record.changes, record.outcome)
                out.append(StepRecordResult("recorded", dict(record.outcome)))
        return out

    def _record(
        self,
        participant: str,
        key: str,
        changes: Sequence[ReadModelChange],
        outcome: Mapping[str, Any],
    ) -> None:
        self.apply(participant, changes, {}, {})
        self.records[(participant, key)] = json.dumps(outcome)

    def record_once(
        self,
        participant: str,
        key: str,
        changes: Sequence[ReadModelChange],
        outcome: Mapping[str, Any],
    ) -> tuple[bool, dict[str, Any]]:
        self.calls["record_once"] += 1
        stored = self._stored(participant, key)
        if stored is not None:
            return False, stored
        self._record(participant, key, changes, outcome)
        return True, dict(outcome)


class FlakyReadModelStore(InMemoryReadModelStore):
    """Raises StoreError on every call while ``down`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.down = threading.Event()
        self.failures = 0

    def _check(self) -> None:
        if self.down.is_set():
            self.failures += 1
            raise StoreError("connection refused", redis="redis://127.0.0.1:1/0")

    def applied_offsets(
        self, projection: str, partitions: Iterable[TopicPartition]
    ) -> dict[TopicPartition, int]:
        self._check()
        return super().applied_offsets(projection, partitions)

    def apply(
        self,
        projection: str,
        changes: Sequence[ReadModelChange],
        expected: Mapping[TopicPartition, int | None],
        offsets: Mapping[TopicPartition, int],
    ) -> bool:
        self._check()
        return super().apply(projection, changes, expected, offsets)
