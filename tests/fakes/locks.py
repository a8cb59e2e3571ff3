"""In-memory ``LockService``: one lock per aggregate id, fences from one counter.

Threads of one process contend as ZooKeeper's contenders do: ``acquire``
waits until the lock is free or ``timeout`` passes (``LockTimeout``). Every
new holder gets a fence greater than all earlier ones. ``expire(aggregate)``
takes a held lock away, as a lost ZooKeeper session does.
"""

from __future__ import annotations

import threading
import time

from toolkit.errors import ConfigurationError, CoordinationError, LockTimeout

__all__ = ["InMemoryLease", "InMemoryLockService"]


class InMemoryLease:
    """The held lock of one aggregate."""

    def __init__(self, service: InMemoryLockService, aggregate_id: str, fence: int) -> None:
        self._service = service
        self._aggregate_id = aggregate_id
        self._fence = fence

    @property
    def aggregate_id(self) -> str:
        return self._aggregate_id

    @property
    def fence(self) -> int:
        return self._fence

    def is_held(self, timeout: float = 0.0) -> bool:
        return self._service.holder(self._aggregate_id) == self._fence

    def release(self) -> None:
        self._service.release(self)


class InMemoryLockService:
    """Mutual exclusion per aggregate between threads, with fencing tokens."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._held: dict[str, int] = {}  # aggregate id -> fence of its holder
        self._fences = 0
        self._closed = False

    def acquire(self, aggregate_id: str, timeout: float) -> InMemoryLease:
        if not aggregate_id:
            raise ConfigurationError("an aggregate id must not be empty")
        deadline = time.monotonic() + timeout
        with self._changed:
            if self._closed:
                raise CoordinationError("the lock service is closed")
            while aggregate_id in self._held:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise LockTimeout(
                        "lock not acquired in time", aggregate=aggregate_id, timeout=timeout
                    )
                self._changed.wait(left)
            self._fences += 1
            self._held[aggregate_id] = self._fences
            return InMemoryLease(self, aggregate_id, self._fences)

    def holder(self, aggregate_id: str) -> int | None:
        """The fence of the current holder of ``aggregate_id``'s lock, if any."""
        with self._changed:
            return self._held.get(aggregate_id)

    def release(self, lease: InMemoryLease) -> None:
        with self._changed:
            if self._held.get(lease.aggregate_id) == lease.fence:
                del self._held[lease.aggregate_id]
                self._changed.notify_all()

    def expire(self, aggregate_id: str) -> None:
        """Take the lock away from its holder (a lost session)."""
        with self._changed:
            self._held.pop(aggregate_id, None)
            self._changed.notify_all()

    def close(self) -> None:
        with self._changed:
            self._closed = True
            self._held.clear()
            self._changed.notify_all()
