"""Read-model integrity: rebuild a projection from the log and compare it key by key.

:meth:`ReadModelVerifier.verify` takes the live read model together with the
offsets it holds (read before and after the dump; a model that moved in
between is read again), rebuilds the projection from the log **up to exactly
those offsets** into a scratch namespace (``__kct.verify.<name>.<random>``:
its own read model and consumer group, its own conflict resolver, dead
letters discarded, no gap ticks written), then compares every document and
counter. A key edited, added or deleted by hand, or a write the model lost,
shows up as a :class:`Difference`. Keys under ``__kct.`` (resolver state,
fences, audit trail, order counters) belong to the toolkit and are not
compared.

With ``sample=N`` only N aggregates picked at random (by record key) are
rebuilt, after a first pass that collects the keys: only the documents their
events write are compared (counters usually sum over many aggregates, so
they are compared in a full verify only).

Failure modes: a backend failure raises ``ConnectorError`` (the scratch
model is still removed); a live model that keeps moving raises
``ConsistencyError``: verify an idle projection, or one whose runners are
paused. A rebuild that does not reach the offsets within ``timeout``
raises ``ConsistencyTimeout``.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from toolkit.conflicts import ConflictResolver
from toolkit.dead_letter import DeadLetterQueue
from toolkit.errors import ConsistencyError, ConsistencyTimeout
from toolkit.ports import (
    AssignCallback,
    CheckpointedReadModelStore,
    ConsumedRecord,
    EventCodec,
    OutgoingRecord,
    RecordConsumer,
    RevokeCallback,
)
from toolkit.positions import Position, TopicPartition
from toolkit.projection import GAP_TICK_AGGREGATE_TYPE, Projection, ProjectionRunner

__all__ = ["Difference", "ReadModelVerifier", "VerifyReport"]

RESERVED = "__kct."
SCRATCH_PREFIX = "__kct.verify."
Progress = Callable[[int, int], None]  # (offsets done, offsets to do)


@dataclass(frozen=True, slots=True)
class Difference:
    """One key whose live value is not what the log rebuilds (None: absent)."""

    key: str
    live: Any
    rebuilt: Any


@dataclass(frozen=True)
class VerifyReport:
    projection: str
    offsets: dict[TopicPartition, int]
    compared: int
    differences: tuple[Difference, ...]
    sample: tuple[str, ...] | None = None  # the aggregates rebuilt (None: all)
    skipped: tuple[str, ...] = field(default=())  # kinds not compared (sample: counters)

    @property
    def ok(self) -> bool:
        return not self.differences


class _Discard:
    """A RecordProducer that writes nothing: a rebuild's dead letters are the live run's."""

    def produce(self, records: Sequence[OutgoingRecord]) -> list[Position]:
        return [Position(r.topic, r.partition or 0, 0) for r in records]

    def close(self) -> None:
        pass


class _BoundedConsumer:
    """A RecordConsumer that never reads at or past the target offsets (and, with
    ``keys``, only records of those aggregates or toolkit control records)."""

    def __init__(
        self,
        inner: RecordConsumer,
        targets: Mapping[TopicPartition, int],
        keys: frozenset[bytes] | None = None,
        on_record: Callable[[ConsumedRecord], None] | None = None,
    ) -> None:
        self._inner = inner
        self._targets = dict(targets)
        self._keys = keys
        self._on_record = on_record

    def subscribe(
        self,
        topics: Sequence[str],
        on_assign: AssignCallback | None = None,
        on_revoke: RevokeCallback | None = None,
    ) -> None:
        self._inner.subscribe(topics, on_assign, on_revoke)

    def _keep(self, record: ConsumedRecord) -> bool:
        target = self._targets.get(TopicPartition(record.topic, record.partition), 0)
        if record.offset >= target:
            return False
        if self._on_record is not None:
            self._on_record(record)
        if self._keys is None or record.key in self._keys:
            return True
        return record.header("aggregate_type") == GAP_TICK_AGGREGATE_TYPE.encode()

    def poll(self, max_records: int, timeout: float) -> list[ConsumedRecord]:
        return [r for r in self._inner.poll(max_records, timeout) if self._keep(r)]

    def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        self._inner.commit(offsets)

    def rewind(self, offsets: Mapping[TopicPartition, int]) -> None:
        self._inner.rewind(offsets)

    def positions(self, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        found = self._inner.positions(partitions)
        return {tp: min(o, self._targets.get(tp, 0)) for tp, o in found.items()}

    def idle(self, seconds: float) -> None:
        self._inner.idle(seconds)

    def close(self) -> None:
        self._inner.close()


class ReadModelVerifier:
    """Rebuilds a projection into a scratch namespace and compares it with the live one."""

    def __init__(
        self,
        store: CheckpointedReadModelStore,
        codec: EventCodec,
        consumer_for: Callable[[str], RecordConsumer],
        partitions_of: Callable[[Sequence[str]], list[TopicPartition]],
        resolver_factory: Callable[[], ConflictResolver | None] = lambda: None,
        *,
        timeout: float = 300.0,
        snapshot_attempts: int = 5,
    ) -> None:
        self._store = store
        self._codec = codec
        self._consumer_for = consumer_for
        self._partitions_of = partitions_of
        self._resolver_factory = resolver_factory
        self._timeout = timeout
        self._attempts = snapshot_attempts
        self.scratch_groups: list[str] = []  # consumer groups made (to delete afterwards)

    def verify(
        self,
        projection: Projection,
        name: str | None = None,
        *,
        sample: int | None = None,
        seed: int | None = None,
        progress: Progress | None = None,
    ) -> VerifyReport:
        """Compare the live read model ``name`` (default: the projection's) with a rebuild."""
        name = name or projection.name
        partitions = self._partitions_of(projection.topics)
        offsets, live = self._snapshot(name, partitions)
        keys: frozenset[bytes] | None = None
        chosen: tuple[str, ...] | None = None
        if sample is not None:
            found = self._aggregate_keys(projection, offsets, progress)
            picked = random.Random(seed).sample(sorted(found), min(sample, len(found)))
            keys = frozenset(picked)
            chosen = tuple(k.decode(errors="replace") for k in picked)
        rebuilt = self._rebuild(projection, offsets, keys, progress)
        differences, compared = _compare(live, rebuilt, documents_only=sample is not None)
        return VerifyReport(
            name,
            offsets,
            compared,
            tuple(differences),
            chosen,
            ("counters",) if sample is not None else (),
        )

    def _snapshot(
        self, name: str, partitions: list[TopicPartition]
    ) -> tuple[dict[TopicPartition, int], dict[str, Any]]:
        for _ in range(self._attempts):
            before = self._store.applied_offsets(name, partitions)
            live = self._store.dump(name)
            if self._store.applied_offsets(name, partitions) == before:
                return before, live
            time.sleep(0.2)
        raise ConsistencyError(
            "the read model kept moving while it was read; pause its runners to verify it",
            projection=name,
        )

    def _scratch(self, projection: Projection) -> tuple[Projection, str]:
        scratch = f"{SCRATCH_PREFIX}{projection.name}.{uuid.uuid4().hex[:8]}"
        copy = Projection(scratch, projection.topics)
        for event_type in projection.event_types:
            handler = projection.handler_for(event_type)
            assert handler is not None
            copy.on(event_type)(handler)
        self.scratch_groups.append(scratch)
        return copy, scratch

    def _run(
        self,
        runner: ProjectionRunner,
        scratch: str,
        offsets: Mapping[TopicPartition, int],
        progress: Progress | None,
    ) -> None:
        total = sum(offsets.values())
        deadline = time.monotonic() + self._timeout
        while True:
            runner.run_once()
            done = self._store.applied_offsets(scratch, list(offsets))
            reached = sum(min(done.get(tp, 0), o) for tp, o in offsets.items())
            if progress is not None:
                progress(reached, total)
            if reached >= total:
                return
            if time.monotonic() > deadline:
                raise ConsistencyTimeout(
                    "the rebuild did not reach the read model's offsets in time",
                    projection=scratch,
                    timeout_s=self._timeout,
                )

    def _rebuild(
        self,
        projection: Projection,
        offsets: Mapping[TopicPartition, int],
        keys: frozenset[bytes] | None,
        progress: Progress | None,
    ) -> dict[str, Any]:
        copy, scratch = self._scratch(projection)
        consumer = _BoundedConsumer(self._consumer_for(scratch), offsets, keys)
        runner = ProjectionRunner(
            copy,
            consumer,
            self._codec,
            self._store,
            DeadLetterQueue(_Discard(), scratch),
            resolver=self._resolver_factory(),
            idle_expiry=None,
        )
        try:
            self._run(runner, scratch, offsets, progress)
            return self._store.dump(scratch)
        finally:
            runner.close()
            self._store.reset(scratch)

    def _aggregate_keys(
        self,
        projection: Projection,
        offsets: Mapping[TopicPartition, int],
        progress: Progress | None,
    ) -> set[bytes]:
        """First pass of a sampled verify: the record keys (aggregate ids) in the log."""
        found: set[bytes] = set()

        def collect(record: ConsumedRecord) -> None:
            if record.key is not None and record.header("aggregate_type") not in (
                None,
                GAP_TICK_AGGREGATE_TYPE.encode(),
            ):
                found.add(record.key)

        copy, scratch = self._scratch(projection)
        consumer = _BoundedConsumer(self._consumer_for(scratch), offsets, frozenset(), collect)
        runner = ProjectionRunner(
            Projection(scratch, copy.topics),  # no handlers: reading is all it does
            consumer,
            self._codec,
            self._store,
            DeadLetterQueue(_Discard(), scratch),
            idle_expiry=None,
        )
        try:
            self._run(runner, scratch, offsets, progress)
        finally:
            runner.close()
            self._store.reset(scratch)
        return found


def _compare(
    live: Mapping[str, Any], rebuilt: Mapping[str, Any], *, documents_only: bool
) -> tuple[list[Difference], int]:
    def ours(key: str) -> bool:
        return not key[2:].startswith(RESERVED)

    if documents_only:  # a sample: the documents the sample's events wrote
        keys = sorted(k for k in rebuilt if k.startswith("d:") and ours(k))
    else:
        keys = sorted({k for k in (*live, *rebuilt) if ours(k)})
    differences = [
        Difference(k, live.get(k), rebuilt.get(k)) for k in keys if live.get(k) != rebuilt.get(k)
    ]
    return differences, len(keys)
