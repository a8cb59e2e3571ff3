"""Eventual consistency on demand: wait until projections have applied writes.

:class:`EventualConsistencyManager` waits until every named projection has
passed every position of a :class:`~toolkit.positions.ConsistencyToken`.
It is woken by position announcements (pub/sub) the moment a projection
commits, and checks Kafka's committed offsets, the truth, when it starts and
whenever no announcement came for a while (bounded exponential back-off, from
20 ms to 1 s): no fixed polling interval, and a lost announcement only delays
a waiter. It returns at once when the writes are already applied.

:class:`ReadAfterWrite` runs a command, waits for the query's projections to
cover the command's writes, then runs the query: the query never sees a read
model older than the command. The token is handed back so a caller can pass
it to another process for read-your-writes (like a session token).

With an :class:`~toolkit.interceptors.Interceptor`, every wait goes through
its ``wait`` hook and each read-after-write (command, wait and query) through
``read_after_write``, so a trace shows the wait inside the command's flow.

Failure modes: ``ConsistencyTimeout`` (also a ``TimeoutError``) names every
projection and partition still behind and by how many offsets; an event id
the index does not know raises ``ConsistencyError``; Kafka errors while
checking propagate as connector errors.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Generic, TypeVar

from toolkit.errors import ConfigurationError, ConsistencyError, ConsistencyTimeout
from toolkit.interceptors import Interceptor
from toolkit.ports import EventPositionIndex, PositionListener
from toolkit.positions import ConsistencyToken, Position, TopicPartition
from toolkit.tracker import ProjectionTracker

__all__ = ["EventualConsistencyManager", "ReadAfterWrite", "ReadResult"]

T = TypeVar("T")
Target = ConsistencyToken | Position | Iterable[Position] | str


def _seconds(timeout: float | timedelta) -> float:
    return timeout.total_seconds() if isinstance(timeout, timedelta) else float(timeout)


def as_token(target: Target) -> ConsistencyToken:
    """A token from a token, its string form, one position or several."""
    if isinstance(target, ConsistencyToken):
        return target
    if isinstance(target, str):
        return ConsistencyToken.parse(target)
    if isinstance(target, Position):
        return ConsistencyToken.of([target])
    return ConsistencyToken.of(target)


class EventualConsistencyManager:
    """Waits for projections to apply writes."""

    def __init__(
        self,
        tracker: ProjectionTracker,
        listener: PositionListener | None = None,
        index: EventPositionIndex | None = None,
        *,
        first_check_after: float = 0.02,
        max_check_interval: float = 1.0,
        interceptor: Interceptor | None = None,
    ) -> None:
        self._tracker = tracker
        self._listener = listener
        self._index = index
        self._first_check_after = first_check_after
        self._max_check_interval = max_check_interval
        self.interceptor = interceptor

    def wait_for_consistency(
        self,
        target: Target,
        projections: str | Sequence[str],
        timeout: float | timedelta = 5.0,
    ) -> None:
        """Return once every projection has applied ``target``; else raise ConsistencyTimeout."""
        token = as_token(target)
        names = [projections] if isinstance(projections, str) else list(projections)
        hooks = self.interceptor
        if hooks is None:
            self._wait(token, names, timeout)
        else:
            hooks.wait(token, names, lambda: self._wait(token, names, timeout))

    def _wait(self, token: ConsistencyToken, names: list[str], timeout: float | timedelta) -> None:
        deadline = time.monotonic() + _seconds(timeout)
        # Read the listener's version before the first check, so an
        # announcement arriving in between still wakes us.
        version = self._listener.version if self._listener is not None else 0
        pending = {name for name in names if not self._announced(name, token)}
        pending = {name for name in pending if not self._committed(name, token)}
        interval = self._first_check_after
        while pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._raise_timeout(token, pending, _seconds(timeout))
                return  # every projection caught up at the last check
            wait = min(interval, remaining)
            if self._listener is not None:
                new_version = self._listener.wait_for_update(version, wait)
            else:
                time.sleep(wait)
                new_version = version
            if new_version != version:
                version = new_version
                pending = {name for name in pending if not self._announced(name, token)}
            else:
                pending = {name for name in pending if not self._committed(name, token)}
                interval = min(interval * 2, self._max_check_interval)

    def is_consistent(
        self, target: Target, projections: str | Sequence[str], timeout: float | timedelta = 5.0
    ) -> bool:
        """Boolean form of :meth:`wait_for_consistency`: False on timeout."""
        try:
            self.wait_for_consistency(target, projections, timeout)
        except ConsistencyTimeout:
            return False
        return True

    def wait_for_event(
        self,
        aggregate_id: str,
        event_id: str,
        projections: str | Sequence[str],
        timeout: float | timedelta = 5.0,
    ) -> None:
        """Wait for an event known only by id (through the event-position index)."""
        if self._index is None:
            raise ConsistencyError("no event-position index configured", event_id=event_id)
        position = self._index.lookup(event_id)
        if position is None:
            raise ConsistencyError(
                "unknown event id: never published through an indexed publisher, or expired",
                aggregate=aggregate_id,
                event_id=event_id,
            )
        self.wait_for_consistency(position, projections, timeout)

    def _announced(self, projection: str, token: ConsistencyToken) -> bool:
        return self._listener is not None and token.is_applied_by(self._listener.latest(projection))

    def _committed(self, projection: str, token: ConsistencyToken) -> bool:
        return not self._tracker.behind(projection, token)

    def _raise_timeout(self, token: ConsistencyToken, pending: set[str], timeout: float) -> None:
        behind: dict[str, dict[str, int]] = {}
        for name in sorted(pending):
            lag: dict[TopicPartition, int] = self._tracker.behind(name, token)
            if lag:
                behind[name] = {str(tp): n for tp, n in sorted(lag.items())}
        if not behind:
            return  # caught up at the last moment
        summary = "; ".join(
            f"{name} behind on " + ", ".join(f"{tp} by {n}" for tp, n in lag.items())
            for name, lag in behind.items()
        )
        raise ConsistencyTimeout(
            f"projections did not apply the writes within {timeout:g}s: {summary}",
            projections=sorted(behind),
            behind=behind,
        )


@dataclass(frozen=True)
class ReadResult(Generic[T]):
    """A query's answer and the token it is consistent with."""

    value: T
    token: ConsistencyToken


class ReadAfterWrite:
    """Command, then a query that is guaranteed to reflect it."""

    def __init__(
        self,
        consistency: EventualConsistencyManager,
        projections: Sequence[str],
        timeout: float | timedelta = 5.0,
    ) -> None:
        if not projections:
            raise ConfigurationError("ReadAfterWrite needs the projections its queries read")
        self.interceptor = consistency.interceptor
        self._consistency = consistency
        self._projections = list(projections)
        self._timeout = timeout

    def execute(
        self,
        command: Callable[[], Iterable[Position] | ConsistencyToken],
        query: Callable[[], T],
        *,
        after: ConsistencyToken | str | None = None,
        timeout: float | timedelta | None = None,
    ) -> ReadResult[T]:
        """Run ``command`` (returns the positions it wrote), wait, run ``query``.

        ``after`` adds an earlier token (e.g. from a request header), so the
        query also reflects the caller's previous writes.
        """
        hooks = self.interceptor
        if hooks is None:
            return self._execute(command, query, after, timeout)
        return hooks.read_after_write(
            self._projections, lambda: self._execute(command, query, after, timeout)
        )

    def _execute(
        self,
        command: Callable[[], Iterable[Position] | ConsistencyToken],
        query: Callable[[], T],
        after: ConsistencyToken | str | None,
        timeout: float | timedelta | None,
    ) -> ReadResult[T]:
        written = command()
        token = as_token(written)
        if after is not None:
            token = token.merge(as_token(after))
        return self.read(query, token, timeout=timeout)

    def read(
        self,
        query: Callable[[], T],
        token: ConsistencyToken | str,
        *,
        timeout: float | timedelta | None = None,
    ) -> ReadResult[T]:
        """Run ``query`` once the projections cover ``token`` (read-your-writes)."""
        resolved = as_token(token)
        if resolved:
            self._consistency.wait_for_consistency(
                resolved, self._projections, self._timeout if timeout is None else timeout
            )
        return ReadResult(query(), resolved)
