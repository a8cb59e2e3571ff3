"""Contract of ``LockService``: mutual exclusion per aggregate with growing fences."""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod

import pytest

from tests.contracts import unique
from toolkit.errors import ConfigurationError, CoordinationError, LockTimeout
from toolkit.ports import LockLease, LockService

__all__ = ["LockServiceContract"]


class LockServiceContract(ABC):
    @abstractmethod
    def make_service(self) -> LockService:
        """A lock service (closed by the test module after the test)."""

    def test_an_acquired_lock_is_held_until_released(self) -> None:
        service, aggregate = self.make_service(), unique("a")
        lease = service.acquire(aggregate, timeout=5.0)
        assert lease.aggregate_id == aggregate
        assert lease.is_held()
        lease.release()
        assert not lease.is_held()
        lease.release()  # idempotent

    def test_a_held_lock_times_out_another_acquirer(self) -> None:
        service, aggregate = self.make_service(), unique("a")
        lease = service.acquire(aggregate, timeout=5.0)
        started = time.monotonic()
        with pytest.raises(LockTimeout):
            service.acquire(aggregate, timeout=0.3)
        assert time.monotonic() - started >= 0.25
        assert lease.is_held()
        lease.release()

    def test_each_new_holder_gets_a_greater_fence(self) -> None:
        service, aggregate = self.make_service(), unique("a")
        fences = []
        for _ in range(3):
            lease = service.acquire(aggregate, timeout=5.0)
            fences.append(lease.fence)
            lease.release()
        assert fences == sorted(set(fences))

    def test_aggregates_are_locked_separately(self) -> None:
        service = self.make_service()
        one = service.acquire(unique("a"), timeout=5.0)
        two = service.acquire(unique("a"), timeout=5.0)
        assert one.is_held() and two.is_held()
        one.release()
        two.release()

    def test_a_waiting_acquirer_gets_the_lock_when_it_is_released(self) -> None:
        service, aggregate = self.make_service(), unique("a")
        first = service.acquire(aggregate, timeout=5.0)
        got: list[LockLease] = []
        waiter = threading.Thread(target=lambda: got.append(service.acquire(aggregate, 10.0)))
        waiter.start()
        time.sleep(0.3)
        assert not got
        first.release()
        waiter.join(timeout=10.0)
        assert len(got) == 1 and got[0].is_held()
        assert got[0].fence > first.fence
        got[0].release()

    def test_an_empty_aggregate_id_is_a_configuration_error(self) -> None:
        with pytest.raises(ConfigurationError):
            self.make_service().acquire("", timeout=1.0)

    def test_a_closed_service_refuses_to_acquire(self) -> None:
        service = self.make_service()
        service.close()
        with pytest.raises(CoordinationError):
            service.acquire(unique("a"), timeout=1.0)
