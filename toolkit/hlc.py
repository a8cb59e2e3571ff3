"""Hybrid logical clock (Kulkarni et al., 2014).

Every published event carries an HLC timestamp in its ``hlc`` header. The
clock never goes backwards in one process, even when the wall clock steps
back; :meth:`HybridLogicalClock.observe` merges a timestamp received from
another process so that causally later events always compare greater.
Ties on (wall, logical) are broken by node id, so timestamps are totally and
deterministically ordered across nodes.

Failure modes: a remote timestamp far in the future drags this clock forward
with it (the physical part follows the largest wall time seen); callers that
must bound that can compare ``remote.wall_ms`` with their own wall clock
before observing it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from toolkit.errors import ConfigurationError, SerializationError

__all__ = ["HLCTimestamp", "HybridLogicalClock"]


@dataclass(frozen=True, order=True, slots=True)
class HLCTimestamp:
    """A point in hybrid logical time; ordered by (wall_ms, logical, node)."""

    wall_ms: int
    logical: int
    node: str

    def __str__(self) -> str:
        return f"{self.wall_ms}:{self.logical}:{self.node}"

    @classmethod
    def parse(cls, text: str) -> HLCTimestamp:
        wall, sep1, rest = text.partition(":")
        logical, sep2, node = rest.partition(":")
        if not (sep1 and sep2 and wall.isdigit() and logical.isdigit() and node):
            raise SerializationError("malformed hlc header", value=text[:80])
        return cls(int(wall), int(logical), node)


def _wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


class HybridLogicalClock:
    """Thread-safe hybrid logical clock of one node."""

    def __init__(self, node: str, wall_clock_ms: Callable[[], int] = _wall_clock_ms) -> None:
        if not node or ":" in node:
            raise ConfigurationError(
                "an HLC node id must be non-empty and contain no ':'", node=node
            )
        self.node = node
        self._wall_clock_ms = wall_clock_ms
        self._wall = 0
        self._logical = 0
        self._lock = threading.Lock()

    def now(self) -> HLCTimestamp:
        """A timestamp greater than every one this clock issued or observed."""
        with self._lock:
            physical = self._wall_clock_ms()
            if physical > self._wall:
                self._wall, self._logical = physical, 0
            else:
                self._logical += 1
            return HLCTimestamp(self._wall, self._logical, self.node)

    def observe(self, remote: HLCTimestamp) -> HLCTimestamp:
        """Merge a received timestamp; the result is greater than it and than ours."""
        with self._lock:
            physical = self._wall_clock_ms()
            wall = max(self._wall, remote.wall_ms, physical)
            if wall == self._wall == remote.wall_ms:
                logical = max(self._logical, remote.logical) + 1
            elif wall == self._wall:
                logical = self._logical + 1
            elif wall == remote.wall_ms:
                logical = remote.logical + 1
            else:
                logical = 0
            self._wall, self._logical = wall, logical
            return HLCTimestamp(wall, logical, self.node)
