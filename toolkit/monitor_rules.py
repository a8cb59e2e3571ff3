"""Status rules of the consistency monitor: a verdict per partition from a
sliding window of observations, in the spirit of LinkedIn Burrow, plus
per-projection lag thresholds.

The **window** is the last ``size`` checks of a partition (default 10; with
``kct monitor serve``'s 5 s interval, the last 50 s). Each check adds one
:class:`Observation`: the group's committed offset, the last stable offset,
the lag in events, the read model's stored offset and whether a live member
holds the partition. The rules, each giving a status (the worst one wins):

* ``ERR``: the committed offset is outside the log (below its start: records
  were deleted before they were applied; above its end: the topic was
  recreated), the read model is behind the committed offset at two checks in
  a row (Kafka says applied what the model does not hold), or the partition
  could not be read at all;
* ``REWIND``: the committed offset went back between two checks of the window
  (an offset reset, a rebuild, a read model that lost writes);
* ``STOP``: behind at every check of a full window, the offset never moved,
  and no live member holds the partition: nobody is consuming it;
* ``STALL``: the same, but a live member holds it: a stuck or frozen consumer;
* ``WARN``: the lag grew: behind at every check of the window (at least
  three checks), it never fell and ended higher than it began (as Burrow, a
  window with a caught-up check is not growing); or a threshold is exceeded (the
  breach status is configurable, WARN by default);
* ``OK`` otherwise. A caught-up partition (lag 0) is never STALL or STOP,
  however long it has been idle.

Health is the worst status: OK is healthy, WARN and REWIND degraded, STALL,
STOP and ERR failing (exit codes 0, 1 and 2 of ``kct status``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from itertools import pairwise

__all__ = [
    "DEFAULT_WINDOW",
    "Health",
    "Observation",
    "PartitionWindow",
    "Status",
    "Thresholds",
    "Verdict",
    "health_of",
    "worst",
]

DEFAULT_WINDOW = 10
# Checks of lag growth needed before WARN: two could be noise.
MIN_GROWTH_CHECKS = 3


class Status(StrEnum):
    """A partition's or a projection's status, from best to worst."""

    OK = "OK"
    WARN = "WARN"
    REWIND = "REWIND"
    STALL = "STALL"
    STOP = "STOP"
    ERR = "ERR"

    @property
    def severity(self) -> int:
        return _ORDER.index(self)


_ORDER = (Status.OK, Status.WARN, Status.REWIND, Status.STALL, Status.STOP, Status.ERR)


class Health(StrEnum):
    """The overall verdict; ``exit_code`` is what ``kct status`` returns."""

    HEALTHY = "healthy"
    DEGRADED = "degraded"
    FAILING = "failing"

    @property
    def exit_code(self) -> int:
        return (Health.HEALTHY, Health.DEGRADED, Health.FAILING).index(self)


def worst(statuses: Iterable[Status]) -> Status:
    """The worst of ``statuses`` (OK for none)."""
    return max(statuses, key=lambda s: s.severity, default=Status.OK)


def health_of(status: Status) -> Health:
    if status is Status.OK:
        return Health.HEALTHY
    if status in (Status.WARN, Status.REWIND):
        return Health.DEGRADED
    return Health.FAILING


@dataclass(frozen=True, slots=True)
class Thresholds:
    """A projection's lag limits (None: no limit) and the status of a breach."""

    max_lag_events: int | None = None
    max_lag_seconds: float | None = None
    breach: Status = Status.WARN


@dataclass(frozen=True, slots=True)
class Observation:
    """One check of one partition."""

    at: float  # wall-clock seconds of the check
    committed: int | None  # the group's committed offset (None: none)
    start: int  # log start offset
    stable: int  # last stable offset
    end: int  # high watermark
    lag: int  # events behind the last stable offset
    stored: int | None = None  # the read model's stored offset (None: none, or no model)
    live: bool = False  # a live member of the group holds the partition
    has_model: bool = False  # the projection keeps offsets in a read model


@dataclass(frozen=True, slots=True)
class Verdict:
    status: Status
    reason: str = ""


_OK = Verdict(Status.OK)


class PartitionWindow:
    """The last ``size`` observations of one partition, and its status by the rules."""

    __slots__ = ("_seen", "changed_at", "size")

    def __init__(self, size: int = DEFAULT_WINDOW) -> None:
        if size < 2:
            raise ValueError("a window holds at least two observations")
        self.size = size
        self._seen: deque[Observation] = deque(maxlen=size)
        # When the committed offset was first seen at its current value.
        self.changed_at: float | None = None

    @property
    def observations(self) -> tuple[Observation, ...]:
        return tuple(self._seen)

    def observe(self, observation: Observation) -> None:
        seen = self._seen
        if not seen or seen[-1].committed != observation.committed:
            self.changed_at = observation.at
        seen.append(observation)

    def evaluate(self, lag_seconds: float | None, thresholds: Thresholds) -> Verdict:
        """The worst verdict of the rules (module docstring) over the window."""
        verdicts = [
            self._integrity(),
            self._rewind(),
            self._stopped(),
            self._growing(),
            self._thresholds(lag_seconds, thresholds),
        ]
        return max(verdicts, key=lambda v: v.status.severity)

    def _integrity(self) -> Verdict:
        last = self._seen[-1]
        committed = last.committed
        if committed is not None and committed < last.start:
            return Verdict(
                Status.ERR,
                f"committed offset {committed} is below the log start {last.start}: "
                "records were deleted before they were applied",
            )
        if committed is not None and committed > last.end:
            return Verdict(
                Status.ERR,
                f"committed offset {committed} is past the log end {last.end} "
                "(topic recreated or truncated?)",
            )
        if len(self._seen) >= 2 and all(self._model_behind(o) for o in list(self._seen)[-2:]):
            return Verdict(
                Status.ERR,
                f"the read model holds offset {last.stored} but {committed} is committed: "
                "it lost writes Kafka says were applied",
            )
        return _OK

    @staticmethod
    def _model_behind(o: Observation) -> bool:
        return (
            o.has_model
            and o.committed is not None
            and o.committed > (o.stored if o.stored is not None else 0)
        )

    def _rewind(self) -> Verdict:
        seen = list(self._seen)
        for before, after in pairwise(seen):
            if before.committed is not None and (
                after.committed is None or after.committed < before.committed
            ):
                return Verdict(
                    Status.REWIND,
                    f"committed offset went back from {before.committed} to "
                    f"{'none' if after.committed is None else after.committed}",
                )
        return _OK

    def _stopped(self) -> Verdict:
        seen = self._seen
        if len(seen) < self.size:
            return _OK
        first = seen[0].committed
        if any(o.lag <= 0 or o.committed != first for o in seen):
            return _OK
        span = seen[-1].at - seen[0].at
        where = "none committed" if first is None else f"offset {first}"
        if seen[-1].live:
            return Verdict(
                Status.STALL,
                f"{where}, {seen[-1].lag} behind, not moving for {span:.1f}s "
                f"({len(seen)} checks) while a member holds the partition",
            )
        return Verdict(
            Status.STOP,
            f"{where}, {seen[-1].lag} behind, no commit for {span:.1f}s "
            f"({len(seen)} checks) and no live member holds the partition",
        )

    def _growing(self) -> Verdict:
        seen = list(self._seen)
        if len(seen) < MIN_GROWTH_CHECKS:
            return _OK
        lags = [o.lag for o in seen]
        if lags[0] > 0 and lags[-1] > lags[0] and all(b >= a for a, b in pairwise(lags)):
            return Verdict(
                Status.WARN, f"lag growing: {lags[0]} -> {lags[-1]} over {len(lags)} checks"
            )
        return _OK

    def _thresholds(self, lag_seconds: float | None, thresholds: Thresholds) -> Verdict:
        lag = self._seen[-1].lag
        if thresholds.max_lag_events is not None and lag > thresholds.max_lag_events:
            return Verdict(
                thresholds.breach, f"lag {lag} events > max_lag_events {thresholds.max_lag_events}"
            )
        limit = thresholds.max_lag_seconds
        if limit is not None and lag_seconds is not None and lag_seconds > limit:
            return Verdict(thresholds.breach, f"lag {lag_seconds:.1f}s > max_lag_seconds {limit:g}")
        return _OK
