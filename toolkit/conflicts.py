"""Conflict resolution: which events a projection applies when writers race,
Kafka redelivers, or an aggregate's events arrive out of order.

A :class:`ConflictResolver` decides per consumed event, inside the batch the
projection is writing (a ``ReadModelBatch`` is a ``ConflictState``), with a
pipeline of strategies per aggregate type (:class:`ResolverPolicy`); its
state lives in the read model (:mod:`toolkit.conflict_state`), so a replay
decides as the first run did. The specification (each strategy's rule,
which pipelines are safe for which writers, event time and gaps, the state
layout, guarantees and failure modes) is ``docs/conflict-resolution.md``.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from toolkit.config import ConflictPolicy
from toolkit.conflict_state import (
    CLOCK_KEY,
    STATE_PREFIX,
    AggregateState,
    ConflictState,
    ReorderIndex,
    parse_index_entry,
)
from toolkit.conflict_strategies import (
    Deduplicate,
    FirstWriteWins,
    Item,
    LastWriteWins,
    Merge,
    MergeFunction,
    Reason,
    RejectConcurrent,
    Reorder,
    Source,
    Step,
    Strategy,
)
from toolkit.envelope import Envelope
from toolkit.envelope_json import (
    envelope_from_document,
    envelope_to_document,
)
from toolkit.errors import ConfigurationError

__all__ = [
    "STATE_PREFIX",
    "STRATEGIES",
    "AggregateState",
    "ConflictResolver",
    "ConflictState",
    "MergeFunction",
    "Reason",
    "Resolution",
    "ResolverPolicy",
    "Source",
    "envelope_from_document",
    "envelope_to_document",
    "resolver_from_config",
]

log = logging.getLogger(__name__)

STRATEGIES = (
    "deduplicate",
    "reorder",
    "last_write_wins",
    "first_write_wins",
    "merge",
    "reject",
)
_WINNERS = frozenset({"last_write_wins", "first_write_wins", "merge", "reject"})
_NONE = "none"


# -- decisions and policies ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class Resolution:
    """What to apply (in order) and what to reject after one event or one expired gap."""

    event: Envelope | None  # the event given to resolve(); None for an expiry
    accepted: tuple[Envelope, ...]
    rejected: tuple[tuple[Envelope, str], ...]  # (event, reason)
    strategy: str
    reason: str
    gap: tuple[int, int] | None = None  # the missing sequences, both ends included
    # (event, source) of events decided here that were not the trigger and
    # were buffered with a source; (event, error) of events a stage failed on.
    sources: tuple[tuple[Envelope, Source], ...] = ()
    errors: tuple[tuple[Envelope, str], ...] = ()

    def source_of(self, event: Envelope) -> Source | None:
        """The source stored with ``event`` (this very object) when it was buffered."""
        return next((source for e, source in self.sources if e is event), None)

    def error_of(self, event: Envelope) -> str | None:
        """Why a stage failed on ``event`` (this very object), if one did."""
        return next((error for e, error in self.errors if e is event), None)

    @property
    def aggregate(self) -> tuple[str, str]:
        """(aggregate_type, aggregate_id) of the events decided."""
        first = self.event or next(iter([*self.accepted, *(e for e, _ in self.rejected)]), None)
        return ("", "") if first is None else (first.aggregate_type, first.aggregate_id)

    def to_audit(self) -> dict[str, Any]:
        """A JSON-serialisable record of the decision: ids, sequences, HLCs, no payloads."""
        aggregate_type, aggregate_id = self.aggregate
        return {
            "aggregate_type": aggregate_type,
            "aggregate_id": aggregate_id,
            "event": None if self.event is None else _audit(self.event),
            "strategy": self.strategy,
            "reason": self.reason,
            "gap": None if self.gap is None else list(self.gap),
            "accepted": [_audit(e) for e in self.accepted],
            "rejected": [{**_audit(e), "reason": why} for e, why in self.rejected],
        }


def _audit(event: Envelope) -> dict[str, Any]:
    return {
        "event_id": event.event_id,
        "event_type": event.event_type,
        "sequence": event.sequence,
        "hlc": None if event.hlc is None else str(event.hlc),
    }


@dataclass(frozen=True)
class ResolverPolicy:
    """How one aggregate type's conflicts are resolved (see the module docstring)."""

    strategies: tuple[str, ...]
    merge: MergeFunction | None = None
    merge_path: str | None = None  # "package.module:function", imported at construction
    dedup_window: int = 10_000  # event ids remembered per aggregate
    reorder_max_wait_ms: int = 2000  # how long the oldest buffered event may wait for a gap
    reorder_max_buffer: int = 1000  # buffered events per aggregate; one more expires a gap
    on_gap: Literal["skip", "dead_letter"] = "skip"
    _merge_function: MergeFunction | None = field(
        default=None, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        if isinstance(self.strategies, str):
            raise ConfigurationError(
                "strategies must be a sequence of names, not one string",
                strategies=self.strategies,
            )
        names = tuple(self.strategies)
        object.__setattr__(self, "strategies", names)
        unknown = [n for n in names if n not in STRATEGIES]
        if unknown:
            raise ConfigurationError(
                f"unknown conflict strategy; choose from {', '.join(STRATEGIES)}",
                unknown=",".join(map(str, unknown)),
            )
        if len(set(names)) != len(names):
            raise ConfigurationError("a strategy is listed twice", strategies=",".join(names))
        if len(_WINNERS.intersection(names)) > 1:
            raise ConfigurationError(
                "at most one of last_write_wins, first_write_wins, merge, reject per policy",
                strategies=",".join(names),
            )
        self._check_numbers()
        object.__setattr__(self, "_merge_function", self._resolve_merge(names))

    def _check_numbers(self) -> None:
        for name, value, least in (
            ("dedup_window", self.dedup_window, 1),
            ("reorder_max_wait_ms", self.reorder_max_wait_ms, 0),
            ("reorder_max_buffer", self.reorder_max_buffer, 1),
        ):
            if not isinstance(value, int) or value < least:
                raise ConfigurationError(f"{name} must be an integer >= {least}", value=value)
        if self.on_gap not in ("skip", "dead_letter"):
            raise ConfigurationError("on_gap must be 'skip' or 'dead_letter'", value=self.on_gap)

    def _resolve_merge(self, names: tuple[str, ...]) -> MergeFunction | None:
        given = [v for v in (self.merge, self.merge_path) if v is not None]
        if "merge" not in names:
            if given:
                raise ConfigurationError("merge or merge_path given without the merge strategy")
            return None
        if len(given) != 1:
            raise ConfigurationError("the merge strategy needs exactly one of merge, merge_path")
        if self.merge is not None:
            return self.merge
        return _import_merge(cast(str, self.merge_path))

    @property
    def merge_function(self) -> MergeFunction | None:
        """``merge``, or the function ``merge_path`` names."""
        return self._merge_function


def _import_merge(path: str) -> MergeFunction:
    module_name, sep, attribute = path.partition(":")
    if not (sep and module_name and attribute):
        raise ConfigurationError(
            "merge_path must look like 'package.module:function'", merge_path=path
        )
    try:
        target: Any = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or the module's own code failing
        raise ConfigurationError(
            "cannot import the merge function's module",
            merge_path=path,
            error=f"{type(exc).__name__}: {exc}",
        ) from exc
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise ConfigurationError("merge function not found in its module", merge_path=path)
        target = getattr(target, part)
    if not callable(target):
        raise ConfigurationError("merge_path does not name a callable", merge_path=path)
    return cast(MergeFunction, target)


def _merge_stage(policy: ResolverPolicy) -> Strategy:
    function = policy.merge_function
    assert function is not None  # ResolverPolicy checked it
    return Merge(function)


_FACTORIES: dict[str, Callable[[ResolverPolicy], Strategy]] = {
    "deduplicate": lambda p: Deduplicate(p.dedup_window),
    "reorder": lambda p: Reorder(p.reorder_max_wait_ms, p.reorder_max_buffer, p.on_gap),
    "last_write_wins": lambda p: LastWriteWins(),
    "first_write_wins": lambda p: FirstWriteWins(),
    "reject": lambda p: RejectConcurrent(),
    "merge": _merge_stage,
}


# -- the resolver ----------------------------------------------------------------


class _Outcome:
    """The decisions that make up one Resolution."""

    def __init__(self) -> None:
        self.accepted: list[Envelope] = []
        self.rejected: list[tuple[Envelope, str]] = []
        self.sources: list[tuple[Envelope, Source]] = []
        self.errors: list[tuple[Envelope, str]] = []
        self.decisions: list[tuple[str, str]] = []  # (strategy, reason) for counts
        self.trigger: tuple[str, str] | None = None
        self.trigger_rejected = False
        self.trigger_buffered = False
        self.gap: tuple[int, int] | None = None
        self.gap_reason = ""

    def absorb(self, step: Step, strategy: str) -> list[tuple[Item, str]]:
        """Record a step's rejections, holds and gap; return what it passed on."""
        for item, why in step.rejected:
            self.rejected.append((item.envelope, why))
            self.decisions.append((strategy, why))
            self._note(item)
            if item.trigger:
                self.trigger, self.trigger_rejected = (strategy, why), True
        for item in step.buffered:
            self.decisions.append((strategy, Reason.BUFFERED))
            self.trigger_buffered = self.trigger_buffered or item.trigger
        if step.gap is not None:
            self.gap, self.gap_reason = step.gap, step.gap_reason or ""
            self.decisions.append((strategy, "gap"))
        return step.passed

    def accept(self, passed: list[tuple[Item, str]], strategy: str) -> None:
        for item, why in passed:
            self.accepted.append(item.envelope)
            self.decisions.append((strategy, why))
            self._note(item)
            if item.trigger:
                self.trigger = (strategy, why)

    def _note(self, item: Item) -> None:
        if item.error is not None:
            self.errors.append((item.envelope, item.error))
        if not item.trigger and isinstance(item.source, Mapping):
            self.sources.append((item.envelope, item.source))

    def resolution(self, event: Envelope | None) -> Resolution:
        if self.trigger is not None and self.trigger_rejected:
            strategy, reason = self.trigger
        elif self.gap is not None:
            strategy, reason = Reorder.name, self.gap_reason
        elif self.trigger_buffered or self.trigger is None:
            strategy, reason = Reorder.name, Reason.BUFFERED
        else:
            strategy, reason = self.trigger
        return Resolution(
            event,
            tuple(self.accepted),
            tuple(self.rejected),
            strategy,
            reason,
            self.gap,
            tuple(self.sources),
            tuple(self.errors),
        )


def _wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


class ConflictResolver:
    """Resolves each aggregate type's conflicts with its policy; state in a ConflictState."""

    def __init__(
        self,
        policies: Mapping[str, ResolverPolicy],
        default: ResolverPolicy | None = None,
        *,
        clock: Callable[[], int] = _wall_clock_ms,
    ) -> None:
        self._policies = dict(policies)
        self._default = default
        # Decisions per (strategy, reason): one per event decided (its final
        # decision, or "buffered"), plus ("reorder", "gap") per gap reported.
        self.counts: Counter[tuple[str, str]] = Counter()
        self._clock = clock
        self._pipelines = {t: self._build(p) for t, p in self._policies.items()}
        self._default_pipeline = self._build(default) if default is not None else ()
        # Names the waits a stored next-expiry time was computed with.
        waits = sorted((t, self._max_wait(p)) for t, p in self._pipelines.items())
        waits.append(("", self._max_wait(self._default_pipeline)))
        self._fingerprint = hashlib.sha1(repr(waits).encode()).hexdigest()[:16]

    @staticmethod
    def _build(policy: ResolverPolicy) -> tuple[Strategy, ...]:
        names = policy.strategies
        return tuple(
            LastWriteWins(after_reorder="reorder" in names[:at])
            if name == "last_write_wins"
            else _FACTORIES[name](policy)
            for at, name in enumerate(names)
        )

    def policy_for(self, aggregate_type: str) -> ResolverPolicy | None:
        """The policy of ``aggregate_type`` (None: its events pass as they are)."""
        return self._policies.get(aggregate_type, self._default)

    def _pipeline(self, aggregate_type: str) -> tuple[Strategy, ...]:
        return self._pipelines.get(aggregate_type, self._default_pipeline)

    def resolve(
        self,
        envelope: Envelope,
        state: ConflictState,
        now_ms: int | None = None,
        *,
        source: Source | Callable[[], Source] | None = None,
    ) -> Resolution:
        """Decide what to apply now because ``envelope`` arrived.

        ``now_ms``: its arrival time (event time: see :meth:`observe`);
        ``source``: where it came from (JSON, or a function making it), kept
        if it is buffered and handed back by the Resolution that releases it.
        """
        pipeline = self._pipeline(envelope.aggregate_type)
        if not pipeline:
            self.counts[(_NONE, Reason.NO_POLICY)] += 1
            return Resolution(envelope, (envelope,), (), _NONE, Reason.NO_POLICY)
        now = self._clock() if now_ms is None else now_ms
        aggregate = AggregateState(state, envelope.aggregate_type, envelope.aggregate_id)
        outcome = _Outcome()
        pending = [(Item(envelope, True, source), "")]
        self._run(pipeline, pending, aggregate, now, outcome, final=pipeline[-1].name)
        index = ReorderIndex(state)
        aggregate.flush(index)
        index.flush()
        oldest = aggregate.head.get("oldest_ms")
        if oldest is not None:
            self._schedule(state, oldest + self._max_wait(pipeline))
        self.counts.update(outcome.decisions)
        return outcome.resolution(envelope)

    # -- event time ------------------------------------------------------------

    def observe(self, state: ConflictState, timestamp_ms: int | None) -> int:
        """Advance the state's event time to ``timestamp_ms`` if later; return it.

        Event time is the highest record timestamp seen (by the state's
        partition): pass it as ``now_ms`` to :meth:`resolve` and :meth:`expire`
        and every decision is a function of the log, so a replay or a rebuild
        decides exactly as the first run did, however far behind it reads.
        """
        clock = state.get(CLOCK_KEY) or {}
        event_ms: int = clock.get("event_ms", 0)
        if timestamp_ms is not None and timestamp_ms > event_ms:
            state.put(CLOCK_KEY, {**clock, "event_ms": timestamp_ms})
            return timestamp_ms
        return event_ms

    def event_time(self, state: ConflictState) -> int:
        """The state's event time (0 before any timestamp was observed)."""
        clock = state.get(CLOCK_KEY) or {}
        event_ms: int = clock.get("event_ms", 0)
        return event_ms

    @staticmethod
    def _max_wait(pipeline: tuple[Strategy, ...]) -> int:
        reorder = next((s for s in pipeline if isinstance(s, Reorder)), None)
        return 0 if reorder is None else reorder.max_wait_ms

    def _schedule(self, state: ConflictState, due_ms: int) -> None:
        """Bring the next expiry forward to ``due_ms`` (a lower bound: expire() checks)."""
        clock = state.get(CLOCK_KEY)
        if clock is None or clock.get("policies") != self._fingerprint or "due" not in clock:
            return  # unknown: the next expire() scans the index
        if clock["due"] is None or due_ms < clock["due"]:
            state.put(CLOCK_KEY, {**clock, "due": due_ms})

    def _not_due(self, clock: dict[str, Any] | None, now_ms: int) -> bool:
        if clock is None or clock.get("policies") != self._fingerprint or "due" not in clock:
            return False
        due: int | None = clock["due"]
        return due is None or now_ms < due

    def _set_due(
        self, state: ConflictState, clock: dict[str, Any] | None, index: ReorderIndex
    ) -> None:
        due = min(
            (
                oldest + self._max_wait(self._pipeline(parse_index_entry(entry)[0]))
                for entry, oldest in index.entries().items()
            ),
            default=None,
        )
        clock = clock or {}
        updated = {**clock, "due": due, "policies": self._fingerprint}
        if updated != clock:
            state.put(CLOCK_KEY, updated)

    def due(self, state: ConflictState, now_ms: int) -> bool:
        """Whether :meth:`expire` at ``now_ms`` would close a gap (changes nothing)."""
        if self._not_due(state.get(CLOCK_KEY), now_ms):
            return False
        for entry, oldest in ReorderIndex(state).entries().items():
            pipeline = self._pipeline(parse_index_entry(entry)[0])
            reorder = next((s for s in pipeline if isinstance(s, Reorder)), None)
            if reorder is None or now_ms - oldest >= reorder.max_wait_ms:
                return True
        return False

    def expire(self, state: ConflictState, now_ms: int | None = None) -> list[Resolution]:
        """Report and close every gap whose oldest buffered event waited its policy's limit.

        Cheap when nothing is due: the state keeps when the next gap can be.
        """
        now = self._clock() if now_ms is None else now_ms
        clock = state.get(CLOCK_KEY)
        if self._not_due(clock, now):
            return []
        index = ReorderIndex(state)
        resolutions: list[Resolution] = []
        outcomes: list[_Outcome] = []
        touched: list[AggregateState] = []
        for entry, oldest in sorted(index.entries().items(), key=lambda kv: (kv[1], kv[0])):
            aggregate_type, aggregate_id = parse_index_entry(entry)
            pipeline = self._pipeline(aggregate_type)
            at = next((i for i, s in enumerate(pipeline) if isinstance(s, Reorder)), None)
            # A buffer left by a policy that no longer reorders is released at once.
            reorder = cast(Reorder, pipeline[at]) if at is not None else Reorder(0, 1, "skip")
            if now - oldest < reorder.max_wait_ms:
                continue
            aggregate = AggregateState(state, aggregate_type, aggregate_id)
            touched.append(aggregate)
            after = pipeline[at + 1 :] if at is not None else ()
            final = pipeline[-1].name if at is not None else Reorder.name
            for step in reorder.expire(aggregate, now):
                outcome = _Outcome()
                passed = outcome.absorb(step, Reorder.name)
                self._run(after, passed, aggregate, now, outcome, final=final)
                outcomes.append(outcome)
                resolutions.append(outcome.resolution(None))
            # Also repairs an entry that disagrees with the aggregate's head.
            index.set(entry, aggregate.head.get("oldest_ms"))
        for aggregate in touched:
            aggregate.flush(index)
        index.flush()
        self._set_due(state, clock, index)
        for outcome in outcomes:
            self.counts.update(outcome.decisions)
        return resolutions

    def _run(
        self,
        stages: tuple[Strategy, ...],
        pending: list[tuple[Item, str]],
        aggregate: AggregateState,
        now_ms: int,
        outcome: _Outcome,
        *,
        final: str,
    ) -> None:
        """Pass ``pending`` through ``stages``; what comes out is accepted (as ``final``)."""
        for stage in stages:
            passed: list[tuple[Item, str]] = []
            for item, _ in pending:
                step = self._process(stage, item, aggregate, now_ms)
                passed.extend(outcome.absorb(step, stage.name))
            pending = passed
        outcome.accept(pending, final)

    @staticmethod
    def _process(stage: Strategy, item: Item, aggregate: AggregateState, now_ms: int) -> Step:
        try:
            return stage.process(item, aggregate, now_ms)
        except Exception as exc:  # a merge function that raised or returned garbage
            if not isinstance(stage, Merge):
                raise
            item.error = f"{type(exc).__name__}: {exc}"
            log.warning(
                "merge failed on event %s (%s/%s #%d), rejected: %s",
                item.envelope.event_id,
                item.envelope.aggregate_type,
                item.envelope.aggregate_id,
                item.envelope.sequence,
                item.error,
            )
            return Step(rejected=[(item, Reason.MERGE_ERROR)])


def resolver_from_config(conflicts: Mapping[str, ConflictPolicy]) -> ConflictResolver:
    """The resolver a ``kct.yaml``'s ``conflicts`` section describes (per aggregate type)."""
    return ConflictResolver(
        {
            aggregate_type: ResolverPolicy(
                strategies=tuple(policy.strategies),
                merge_path=policy.merge,
                dedup_window=policy.dedup_window,
                reorder_max_wait_ms=round(policy.reorder_max_wait * 1000),
                on_gap=policy.on_gap,
            )
            for aggregate_type, policy in conflicts.items()
        }
    )
