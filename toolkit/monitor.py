"""The consistency monitor: how far behind, how healthy, how orderly each read model is.

:meth:`ConsistencyMonitor.check` looks at every configured
:class:`MonitorTarget` (a projection with its read model, the saga-state
projection, or a consumer group without one, such as a saga participant) and
returns a :class:`ConsistencyReport`. Per partition it reports the log start,
last stable and end offsets, the group's committed offset, the read model's
stored offset and:

* **lag in events**: last stable offset minus the committed offset (from the
  log start when the group has committed nothing), so open and aborted
  transactions never count;
* **lag in seconds**: now minus the timestamp of the first record not yet
  applied, read from Kafka (no interpolation), 0 when caught up. It is right
  while a burst drains, while idle, while replaying from 0, and keeps rising
  for a group nobody consumes. Timestamps are cached per (partition, offset),
  since a record never changes: a stuck partition costs no read;
* **status** by the rules of :mod:`toolkit.monitor_rules` over a window of
  checks, plus the target's thresholds; a target's status is its worst
  partition's, health the worst of all.

Per projection it also reports the order violations its runners counted
(:mod:`toolkit.monitor_order`, read from the read model) and the divergence
of committed and stored offsets.

Cost per check, whatever the number of partitions: one metadata and three
list-offsets requests for all topics, one committed-offsets request per
group, one describe-groups request for all groups, one offsets read per read
model, and one batched read of record timestamps for the lagging partitions
whose committed offset moved since the last check.

Failure modes: a check never raises for a backend failure. If Kafka cannot
be read every target is ERR with the reason; if one group or read model
cannot be read, that target is ERR; a timestamp that cannot be read leaves
the lag in seconds unknown (None), and the status rules still apply.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from toolkit.errors import ConnectorError
from toolkit.monitor_order import ORDER_COUNTS_KEY, ORDER_EXAMPLES_KEY
from toolkit.monitor_rules import (
    DEFAULT_WINDOW,
    Health,
    Observation,
    PartitionWindow,
    Status,
    Thresholds,
    health_of,
    worst,
)
from toolkit.ports import (
    CheckpointedReadModelStore,
    GroupMembers,
    LogInspector,
    LogOffsets,
    RecordTimestamps,
)
from toolkit.positions import TopicPartition

__all__ = [
    "ConsistencyMonitor",
    "ConsistencyReport",
    "MonitorTarget",
    "OrderReport",
    "PartitionReport",
    "ProjectionReport",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MonitorTarget:
    """What to watch: a consumer group over topics, with or without a read model."""

    name: str  # the projection (read-model) name, or a label for a bare group
    topics: tuple[str, ...]
    group: str = ""  # the consumer group; default: ``name``
    read_model: bool = True  # offsets and order counters kept in the read model
    thresholds: Thresholds = field(default_factory=Thresholds)
    kind: str = "projection"  # projection | saga-state | participant | group

    def __post_init__(self) -> None:
        if not self.name or not self.topics:
            raise ValueError("a monitor target needs a name and at least one topic")
        if not self.group:
            object.__setattr__(self, "group", self.name)


@dataclass(frozen=True, slots=True)
class PartitionReport:
    """One partition of one target at one check."""

    topic: str
    partition: int
    log_start: int
    log_end: int
    last_stable: int
    committed: int | None
    stored: int | None
    lag_events: int
    lag_seconds: float | None  # None: the record's timestamp could not be read
    status: Status
    reason: str
    live: bool  # a live member of the group holds the partition
    last_commit_age: float | None  # seconds since the committed offset was first seen

    @property
    def divergence(self) -> int | None:
        """Stored minus committed offset (> 0: stored, not yet committed; < 0: lost writes)."""
        if self.stored is None or self.committed is None:
            return None
        return self.stored - self.committed


@dataclass(frozen=True, slots=True)
class OrderReport:
    """Order violations a projection's runners counted, with the latest examples."""

    counts: dict[str, int]
    examples: tuple[dict[str, Any], ...] = ()

    @property
    def total(self) -> int:
        return sum(n for k, n in self.counts.items() if not k.startswith("reason:"))


@dataclass(frozen=True)
class ProjectionReport:
    """One target at one check."""

    name: str
    group: str
    kind: str
    status: Status
    reason: str
    partitions: tuple[PartitionReport, ...]
    members: int | None  # live members (None: unknown)
    order: OrderReport | None = None
    thresholds: Thresholds = field(default_factory=Thresholds)

    @property
    def lag_events(self) -> int:
        return sum(p.lag_events for p in self.partitions)

    @property
    def lag_seconds(self) -> float | None:
        known = [p.lag_seconds for p in self.partitions if p.lag_seconds is not None]
        unknown = any(p.lag_seconds is None for p in self.partitions)
        if unknown and not known:
            return None
        return max(known, default=0.0)

    @property
    def last_commit_age(self) -> float | None:
        """The oldest commit age among partitions that are behind (None: none behind)."""
        ages = [
            p.last_commit_age
            for p in self.partitions
            if p.lag_events > 0 and p.last_commit_age is not None
        ]
        return max(ages, default=None)


@dataclass(frozen=True)
class ConsistencyReport:
    """Every target at one check: ``status`` the worst, ``health`` its meaning."""

    checked_at: float  # wall-clock seconds
    duration: float  # seconds the check took
    projections: tuple[ProjectionReport, ...]

    @property
    def status(self) -> Status:
        return worst(p.status for p in self.projections)

    @property
    def health(self) -> Health:
        return health_of(self.status)

    def projection(self, name: str) -> ProjectionReport:
        for report in self.projections:
            if report.name == name:
                return report
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view (``kct status --json``)."""
        return {
            "checked_at": self.checked_at,
            "duration_s": round(self.duration, 6),
            "status": self.status.value,
            "health": self.health.value,
            "projections": [
                {
                    "name": p.name,
                    "group": p.group,
                    "kind": p.kind,
                    "status": p.status.value,
                    "reason": p.reason,
                    "members": p.members,
                    "lag_events": p.lag_events,
                    "lag_seconds": p.lag_seconds,
                    "last_commit_age_s": p.last_commit_age,
                    "thresholds": {
                        "max_lag_events": p.thresholds.max_lag_events,
                        "max_lag_seconds": p.thresholds.max_lag_seconds,
                        "breach": p.thresholds.breach.value,
                    },
                    "order": None
                    if p.order is None
                    else {"counts": p.order.counts, "examples": list(p.order.examples)},
                    "partitions": [
                        {**asdict(part), "status": part.status.value, "divergence": part.divergence}
                        for part in p.partitions
                    ],
                }
                for p in self.projections
            ],
        }


def _wall_clock() -> float:
    return time.time()


class ConsistencyMonitor:
    """Checks targets on demand; keeps the window of each partition and the last report."""

    def __init__(
        self,
        targets: Sequence[MonitorTarget],
        inspector: LogInspector,
        timestamps: RecordTimestamps,
        store: CheckpointedReadModelStore | None = None,
        *,
        window: int = DEFAULT_WINDOW,
        timestamp_timeout: float = 2.0,
        clock: Callable[[], float] = _wall_clock,
    ) -> None:
        names = [t.name for t in targets]
        if len(set(names)) != len(names):
            raise ValueError(f"monitor targets named twice: {sorted(names)}")
        self.targets = tuple(targets)
        self._inspector = inspector
        self._timestamps = timestamps
        self._store = store
        self._window = window
        self._timestamp_timeout = timestamp_timeout
        self._clock = clock
        self._windows: dict[tuple[str, TopicPartition], PartitionWindow] = {}
        # Timestamps (ms) of records by (partition, offset): a record never changes.
        self._stamps: dict[tuple[TopicPartition, int], int] = {}
        self._lock = threading.Lock()
        self.last: ConsistencyReport | None = None

    def check(self) -> ConsistencyReport:
        """Look at every target once (see the module docstring); never raises for a
        backend failure. Checks are serialised."""
        with self._lock:
            started = time.perf_counter()
            projections = self._check()
            report = ConsistencyReport(
                self._clock(), time.perf_counter() - started, tuple(projections)
            )
            self.last = report
            return report

    # -- one check ---------------------------------------------------------
    def _check(self) -> list[ProjectionReport]:
        topics = sorted({t for target in self.targets for t in target.topics})
        try:
            offsets = self._inspector.log_offsets(topics)
        except ConnectorError as exc:
            return [self._failed(t, f"cannot read the log: {exc}") for t in self.targets]
        parts = {t.name: sorted(tp for tp in offsets if tp.topic in t.topics) for t in self.targets}
        groups = {t.group: parts[t.name] for t in self.targets}
        committed: dict[str, dict[TopicPartition, int]] = {}
        group_error = ""
        try:
            committed = self._inspector.group_offsets(groups)
        except ConnectorError as exc:
            group_error = f"cannot read committed offsets: {exc}"
        members: dict[str, GroupMembers] = {}
        try:
            members = self._inspector.group_members(list(groups))
        except ConnectorError as exc:
            log.warning("monitor: cannot describe consumer groups: %s", exc)
        stored, store_errors = self._stored(parts)
        stamps = self._lag_timestamps(offsets, committed, groups)
        now = self._clock()
        reports: list[ProjectionReport] = []
        for target in self.targets:
            error = group_error or store_errors.get(target.name, "")
            if target.group not in committed and not group_error:
                committed[target.group] = {}
            if error:
                reports.append(self._failed(target, error))
                continue
            reports.append(
                self._report(
                    target,
                    parts[target.name],
                    offsets=offsets,
                    committed=committed[target.group],
                    stored=stored.get(target.name, {}),
                    members=members.get(target.group),
                    stamps=stamps,
                    now=now,
                )
            )
        self._forget_unseen(parts)
        return reports

    def _stored(
        self, parts: Mapping[str, Sequence[TopicPartition]]
    ) -> tuple[dict[str, dict[TopicPartition, int]], dict[str, str]]:
        stored: dict[str, dict[TopicPartition, int]] = {}
        errors: dict[str, str] = {}
        for target in self.targets:
            if not target.read_model or self._store is None:
                continue
            try:
                stored[target.name] = self._store.applied_offsets(target.name, parts[target.name])
            except ConnectorError as exc:
                errors[target.name] = f"cannot read the read model's offsets: {exc}"
        return stored, errors

    def _lag_timestamps(
        self,
        offsets: Mapping[TopicPartition, LogOffsets],
        committed: Mapping[str, Mapping[TopicPartition, int]],
        groups: Mapping[str, Sequence[TopicPartition]],
    ) -> dict[tuple[TopicPartition, int], int]:
        """Timestamps of the first unapplied record of every lagging partition, by
        (partition, offset): cached ones, the rest read in one batch (one more per
        further offset when several groups lag on one partition)."""
        wanted: set[tuple[TopicPartition, int]] = set()
        for group, tps in groups.items():
            positions = committed.get(group, {})
            for tp in tps:
                log_offsets = offsets[tp]
                at = max(positions.get(tp, log_offsets.start), log_offsets.start)
                if at < log_offsets.stable:
                    wanted.add((tp, at))
        found: dict[tuple[TopicPartition, int], int] = {}
        todo: dict[TopicPartition, list[int]] = {}
        for tp, at in wanted:
            cached = self._stamps.get((tp, at))
            if cached is not None:
                found[(tp, at)] = cached
            else:
                todo.setdefault(tp, []).append(at)
        while todo:
            batch = {tp: ats.pop() for tp, ats in todo.items()}
            try:
                read = self._timestamps.timestamps(batch, self._timestamp_timeout)
            except ConnectorError as exc:
                log.warning("monitor: cannot read record timestamps: %s", exc)
                break
            for tp, stamp in read.items():
                found[(tp, batch[tp])] = stamp
            todo = {tp: ats for tp, ats in todo.items() if ats}
        self._stamps = dict(found)  # only what is still behind stays cached
        return found

    def _report(
        self,
        target: MonitorTarget,
        tps: Sequence[TopicPartition],
        *,
        offsets: Mapping[TopicPartition, LogOffsets],
        committed: Mapping[TopicPartition, int],
        stored: Mapping[TopicPartition, int],
        members: GroupMembers | None,
        stamps: Mapping[tuple[TopicPartition, int], int],
        now: float,
    ) -> ProjectionReport:
        partitions = []
        for tp in tps:
            log_offsets = offsets[tp]
            position = committed.get(tp)
            at = max(log_offsets.start if position is None else position, log_offsets.start)
            lag = max(log_offsets.stable - at, 0)
            lag_seconds: float | None = 0.0
            if lag > 0:
                stamp = stamps.get((tp, at))
                lag_seconds = None if stamp is None else max(now - stamp / 1000.0, 0.0)
            live = members is not None and tp in members.assigned
            window = self._windows.get((target.name, tp))
            if window is None:
                window = self._windows[(target.name, tp)] = PartitionWindow(self._window)
            window.observe(
                Observation(
                    now,
                    position,
                    log_offsets.start,
                    log_offsets.stable,
                    log_offsets.end,
                    lag,
                    stored.get(tp),
                    live,
                    target.read_model and self._store is not None,
                )
            )
            verdict = window.evaluate(lag_seconds, target.thresholds)
            partitions.append(
                PartitionReport(
                    tp.topic,
                    tp.partition,
                    log_offsets.start,
                    log_offsets.end,
                    log_offsets.stable,
                    position,
                    stored.get(tp),
                    lag,
                    lag_seconds,
                    verdict.status,
                    verdict.reason,
                    live,
                    None if window.changed_at is None else now - window.changed_at,
                )
            )
        status = worst(p.status for p in partitions)
        reason = next(
            (f"{p.topic}[{p.partition}]: {p.reason}" for p in partitions if p.status is status),
            "",
        )
        if not partitions:
            status, reason = Status.ERR, "no partitions: the topics do not exist"
        return ProjectionReport(
            target.name,
            target.group,
            target.kind,
            status,
            "" if status is Status.OK else reason,
            tuple(partitions),
            None if members is None else members.members,
            self._order(target),
            target.thresholds,
        )

    def _order(self, target: MonitorTarget) -> OrderReport | None:
        if not target.read_model or self._store is None:
            return None
        try:
            counts = self._store.counters(target.name, ORDER_COUNTS_KEY)
            examples = self._store.get(target.name, ORDER_EXAMPLES_KEY) or {}
        except ConnectorError as exc:
            log.warning("monitor: cannot read order counters of %s: %s", target.name, exc)
            return None
        return OrderReport(dict(counts), tuple(examples.get("examples", ())))

    def _failed(self, target: MonitorTarget, reason: str) -> ProjectionReport:
        return ProjectionReport(
            target.name, target.group, target.kind, Status.ERR, reason, (), None,
            thresholds=target.thresholds,
        )  # fmt: skip

    def _forget_unseen(self, parts: Mapping[str, Iterable[TopicPartition]]) -> None:
        seen = {(name, tp) for name, tps in parts.items() for tp in tps}
        for key in [k for k in self._windows if k not in seen]:
            del self._windows[key]
