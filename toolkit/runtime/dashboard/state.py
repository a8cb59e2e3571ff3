"""What the live dashboard shows, gathered at most once per refresh interval.

A :class:`DashboardState` answers :meth:`~DashboardState.snapshot` with one
JSON-ready document: the monitor's last check (projections with lag and
status), sagas by status with the stuck ones listed (from the saga-state
projection, like ``kct saga list --status stuck``), dead letters counted by
reason per ``<topic>.dlq`` topic (like ``kct dlq list``) and the leases held
with their fences (the sidecar's). The monitor's report and the leases are
already in memory; sagas and dead letters are read from Redis and Kafka, so
they are **cached** for ``interval`` seconds: however many browsers poll,
Kafka and Redis are asked once per interval (concurrent requests wait for the
one refresh in progress and share it).

Failure modes: a backend that cannot be read is shown, not raised: the part
that failed carries an ``error`` line (redacted) and the rest of the
document is still served; a ``.dlq`` topic that does not exist counts as
none (nothing was dead-lettered yet).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from toolkit.dead_letter_replay import DeadLetterReplayer
from toolkit.errors import ToolkitError
from toolkit.ports import ReadModelStore
from toolkit.runtime.redaction import redact
from toolkit.runtime.saga_cli import saga_overview
from toolkit.saga.operations import STUCK, list_sagas
from toolkit.saga.state import SagaStatus

__all__ = ["DashboardSources", "DashboardState"]

MAX_STUCK_SHOWN = 50


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _error(exc: ToolkitError) -> str:
    return redact(str(exc))[:300]


@dataclass(frozen=True)
class DashboardSources:
    """Where each part of the dashboard comes from (None: not shown)."""

    service: str
    monitor: Callable[[], dict[str, Any] | None]
    store: ReadModelStore | None = None
    saga_projection: str | None = None
    dead_letters: DeadLetterReplayer | None = None
    dlq_topics: Callable[[], Sequence[str]] = tuple  # asked at each refresh
    leases: Callable[[], list[dict[str, Any]]] | None = None


class DashboardState:
    """The dashboard's document, its Kafka and Redis parts cached (see the module docstring)."""

    def __init__(
        self,
        sources: DashboardSources,
        interval: float,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sources = sources
        self.interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        self._cached: tuple[float, dict[str, Any]] | None = None

    def snapshot(self) -> dict[str, Any]:
        """The whole document: cached parts refreshed when older than ``interval``."""
        sources = self._sources
        return {
            "service": sources.service,
            "generated_at_ms": _now_ms(),
            "interval": self.interval,
            "monitor": sources.monitor(),
            **self._slow_parts(),
            "leases": None if sources.leases is None else sources.leases(),
        }

    def _slow_parts(self) -> dict[str, Any]:
        with self._lock:  # one refresh at a time; the others wait and share it
            now = self._clock()
            if self._cached is None or now - self._cached[0] >= self.interval:
                self._cached = (now, self._refresh())
            return self._cached[1]

    def _refresh(self) -> dict[str, Any]:
        return {
            "sagas": self._sagas(),
            "dead_letters": self._dead_letters(),
            "refreshed_at_ms": _now_ms(),
        }

    def _sagas(self) -> dict[str, Any] | None:
        store, projection = self._sources.store, self._sources.saga_projection
        if store is None or projection is None:
            return None
        out: dict[str, Any] = {"projection": projection, "counts": {}, "stuck": [], "error": None}
        try:
            overview = saga_overview(store, projection)
            stuck = list_sagas(store, projection, [STUCK])
        except ToolkitError as exc:
            out["error"] = _error(exc)
            return out
        counts = {s.value: int(overview["totals"].get(s.value, 0)) for s in SagaStatus}
        counts[SagaStatus.RUNNING.value] = len(overview["running"])
        out["counts"] = counts
        out["stuck_total"] = len(stuck)
        out["stuck"] = [s.to_json() for s in stuck[:MAX_STUCK_SHOWN]]
        return out

    def _dead_letters(self) -> list[dict[str, Any]] | None:
        replayer = self._sources.dead_letters
        if replayer is None:
            return None
        topics = []
        for topic in self._sources.dlq_topics():
            entry: dict[str, Any] = {"topic": topic, "total": 0, "reasons": {}, "error": None}
            try:
                letters = replayer.letters(topic)
            except ToolkitError as exc:
                if "no such topic" not in str(exc):  # none dead-lettered yet
                    entry["error"] = _error(exc)
            else:
                reasons = Counter(e.reason or "(not a dead letter)" for e in letters)
                entry.update(total=len(letters), reasons=dict(sorted(reasons.items())))
            topics.append(entry)
        return topics
