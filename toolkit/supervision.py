"""Long-lived loops ride out outages: capped back-off and a health report.

A loop hosted for a long time (a projection runner, a saga participant) that
meets a backend failure (any ``ConnectorError``: Redis or Kafka unreachable,
a transaction that could not commit) does not die and needs no supervisor.
It reports itself unhealthy with the reason, waits with capped exponential
back-off while staying in its consumer group, and tries again from what it
last stored, so nothing is lost or applied twice. The first cycle that
succeeds makes it healthy again.

:class:`LoopHealth` is what a loop exposes (``runner.health``) for readiness
probes and ``kct status``; :class:`Backoff` is the wait schedule.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from toolkit.errors import ConfigurationError

__all__ = ["Backoff", "Health", "LoopHealth"]


@dataclass(frozen=True, slots=True)
class Health:
    """A loop's health at one moment."""

    healthy: bool
    reason: str | None = None
    # Wall-clock time (seconds since the epoch) the current state began.
    since: float | None = None
    # Consecutive failed cycles (0 when healthy).
    failures: int = 0


class Backoff:
    """Exponential back-off from ``initial`` doubling up to ``maximum`` seconds."""

    def __init__(self, initial: float = 0.05, maximum: float = 5.0) -> None:
        if initial <= 0 or maximum < initial:
            raise ConfigurationError(
                "back-off needs 0 < initial <= maximum", initial=initial, maximum=maximum
            )
        self._initial = initial
        self._maximum = maximum
        self._next = initial

    def next(self) -> float:
        """The next wait, then doubled (capped) for the one after."""
        wait = self._next
        self._next = min(self._next * 2, self._maximum)
        return wait

    def reset(self) -> None:
        self._next = self._initial


class LoopHealth:
    """Thread-safe health of one loop: set by the loop, read by anyone."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._health = Health(True, since=time.time())

    @property
    def current(self) -> Health:
        with self._lock:
            return self._health

    def failed(self, reason: str) -> None:
        with self._lock:
            previous = self._health
            since = previous.since if not previous.healthy else time.time()
            self._health = Health(False, reason[:500], since, previous.failures + 1)

    def recovered(self) -> bool:
        """Mark healthy; True if it was not."""
        with self._lock:
            if self._health.healthy:
                return False
            self._health = Health(True, since=time.time())
            return True
