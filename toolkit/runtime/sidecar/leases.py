"""Strong aggregates for any language: leases on an aggregate's lock, over HTTP.

A lease is the aggregate's ZooKeeper lock (``Kct.locks``) and its fencing
token, held by the sidecar for a client that names it by an unguessable id.
:meth:`LeaseManager.acquire` takes the lock, then waits at the **barrier**
(the aggregate's projections, from ``consistency``, have applied everything
written to its topic before the lock, open transactions included), so what
the client reads next reflects every earlier holder's write.
:meth:`LeaseManager.append` writes events of that aggregate, each with the
``fence`` header, in **one Kafka transaction**, and commits only if, right
before the commit, the lease has not expired and the lock is still held
(asked of ZooKeeper); otherwise it aborts and raises ``LockLost``: nothing
is visible to ``read_committed`` readers.

A lease expires with its session: the sidecar's ZooKeeper session (lost
with it), or the lease's own ``ttl`` when the client neither renews nor
releases it in time; a reaper then releases the lock so the next holder can
take it (with a greater fence). An append and the reaper never overlap (one
mutex per lease), so an expired lease's lock is released only after an
append in progress has committed or aborted.

Failure modes: ``LockTimeout`` (another holder kept the lock),
``ConsistencyTimeout`` from the barrier (lock released, nothing written),
``LockLost`` (expired, released or session lost: nothing written),
``ConsistencyError`` (unknown lease, events of another aggregate), and the
Kafka errors of the transaction (aborted, nothing written).
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from toolkit.boundary import ConsistencyPolicy
from toolkit.envelope import Envelope
from toolkit.errors import ConfigurationError, ConsistencyError, LockLost
from toolkit.ports import LockLease
from toolkit.positions import ConsistencyToken, Position
from toolkit.publisher import PublishedEvent
from toolkit.runtime.app import Kct

__all__ = ["Lease", "LeaseManager"]

log = logging.getLogger(__name__)

_REMEMBERED = 10_000  # ended leases kept to answer a late append with "lost"


@dataclass
class Lease:
    """One held lease; ``id`` is the client's capability to use it."""

    id: str
    aggregate_type: str
    aggregate_id: str
    topic: str
    fence: int
    ttl: float
    expires: float  # time.monotonic()
    handle: LockLease = field(repr=False)
    mutex: threading.Lock = field(default_factory=threading.Lock, repr=False)
    released: bool = False

    def remaining(self, now: float | None = None) -> float:
        return self.expires - (time.monotonic() if now is None else now)

    def describe(self) -> dict[str, object]:
        return {
            "lease_id": self.id,
            "aggregate_type": self.aggregate_type,
            "aggregate_id": self.aggregate_id,
            "topic": self.topic,
            "fence": self.fence,
            "ttl": self.ttl,
            "expires_in": round(max(0.0, self.remaining()), 3),
        }


class LeaseManager:
    """Leases of one sidecar (see the module docstring)."""

    def __init__(
        self,
        kct: Kct,
        policy: ConsistencyPolicy,
        topics: Mapping[str, str],
        *,
        suspended_grace: float = 1.0,
        reap_interval: float = 0.1,
    ) -> None:
        self._kct = kct
        self._policy = policy
        self._topics = dict(topics)
        self._grace = suspended_grace
        self._leases: dict[str, Lease] = {}
        # Leases that ended (expired or released), remembered so that a late append
        # is told the lease was lost (409) rather than unknown; the oldest forgotten first.
        self._ended: OrderedDict[str, Lease] = OrderedDict()
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._reaper = threading.Thread(
            target=self._reap, args=(reap_interval,), name="kct-lease-reaper", daemon=True
        )
        self._reaper.start()

    @property
    def aggregate_types(self) -> tuple[str, ...]:
        return tuple(sorted(self._topics))

    def topic_for(self, aggregate_type: str) -> str:
        try:
            return self._topics[aggregate_type]
        except KeyError:
            raise ConfigurationError(
                "no topic configured for this aggregate type (sidecar.aggregates)",
                aggregate_type=aggregate_type,
                known=sorted(self._topics),
            ) from None

    def acquire(self, aggregate_type: str, aggregate_id: str, ttl: float) -> Lease:
        topic = self.topic_for(aggregate_type)
        name = f"{aggregate_type}/{aggregate_id}"
        timeout = self._policy.lock_timeout_for(aggregate_type, aggregate_id)
        handle = self._kct.locks.acquire(name, timeout)
        try:
            self._barrier(aggregate_type, aggregate_id, topic)
        except BaseException:
            handle.release()
            raise
        lease = Lease(
            secrets.token_urlsafe(18),
            aggregate_type,
            aggregate_id,
            topic,
            handle.fence,
            ttl,
            time.monotonic() + ttl,
            handle,
        )
        with self._lock:
            self._leases[lease.id] = lease
        return lease

    def _barrier(self, aggregate_type: str, aggregate_id: str, topic: str) -> None:
        projections = self._policy.projections_for(aggregate_type, aggregate_id)
        if not projections:
            return
        ends = self._kct.admin.end_offsets([topic], include_open_transactions=True)
        token = ConsistencyToken.of(
            Position(tp.topic, tp.partition, end - 1) for tp, end in ends.items() if end > 0
        )
        if token:
            timeout = self._policy.timeout_for(aggregate_type, aggregate_id)
            self._kct.consistency.wait_for_consistency(token, projections, timeout)

    def get(self, lease_id: str) -> Lease:
        """The lease (an expired or released one too, for a while: using it is LockLost)."""
        with self._lock:
            lease = self._leases.get(lease_id) or self._ended.get(lease_id)
        if lease is None:
            raise ConsistencyError("no such lease (released, expired or never taken)")
        return lease

    def renew(self, lease_id: str, ttl: float | None = None) -> Lease:
        lease = self.get(lease_id)
        with lease.mutex:
            self._check_held(lease, ask=True)
            if ttl is not None:
                lease.ttl = ttl
            lease.expires = time.monotonic() + lease.ttl
        return lease

    def _check_held(self, lease: Lease, *, ask: bool) -> None:
        """Raise LockLost unless the lease is live and (asked of ZooKeeper) held."""
        if lease.released or lease.remaining() <= 0:
            raise LockLost(
                "the lease expired or was released; nothing was written",
                aggregate=f"{lease.aggregate_type}/{lease.aggregate_id}",
                fence=lease.fence,
            )
        if ask and not lease.handle.is_held(timeout=self._grace):
            raise LockLost(
                "the lease's lock was lost with its ZooKeeper session; nothing was written",
                aggregate=f"{lease.aggregate_type}/{lease.aggregate_id}",
                fence=lease.fence,
            )

    def append(self, lease_id: str, events: Sequence[Envelope]) -> list[PublishedEvent]:
        """Write ``events`` in one transaction while the lease holds (see the module docstring)."""
        lease = self.get(lease_id)
        for event in events:
            if (event.aggregate_type, event.aggregate_id) != (
                lease.aggregate_type,
                lease.aggregate_id,
            ):
                raise ConsistencyError(
                    "a lease may only append events of its own aggregate",
                    aggregate=f"{lease.aggregate_type}/{lease.aggregate_id}",
                )
        publisher = self._kct.publisher
        with lease.mutex:
            self._check_held(lease, ask=False)
            with self._kct.transactions.begin() as transaction:
                published = publisher.publish_in(
                    transaction, lease.topic, events, fence=lease.fence
                )
                self._check_held(lease, ask=True)  # right before the commit
                transaction.commit()
        publisher.index(published)
        return published

    def wait_applied(self, lease: Lease, token: ConsistencyToken) -> None:
        """Wait until the aggregate's projections applied ``token`` (ConsistencyTimeout)."""
        projections = self._policy.projections_for(lease.aggregate_type, lease.aggregate_id)
        if projections and token:
            timeout = self._policy.timeout_for(lease.aggregate_type, lease.aggregate_id)
            self._kct.consistency.wait_for_consistency(token, projections, timeout)

    def release(self, lease_id: str) -> bool:
        """Give the lease up; False if it was not held any more."""
        with self._lock:
            lease = self._leases.pop(lease_id, None)
            if lease is not None:
                self._remember(lease)
        if lease is None:
            return False
        with lease.mutex:
            return self._drop(lease)

    def _remember(self, lease: Lease) -> None:
        self._ended[lease.id] = lease
        while len(self._ended) > _REMEMBERED:
            self._ended.popitem(last=False)

    @staticmethod
    def _drop(lease: Lease) -> bool:
        if lease.released:
            return False
        lease.released = True
        lease.handle.release()
        return True

    def _reap(self, interval: float) -> None:
        while not self._closed.wait(interval):
            now = time.monotonic()
            with self._lock:
                expired = [lease for lease in self._leases.values() if lease.remaining(now) <= 0]
                for lease in expired:
                    del self._leases[lease.id]
                    self._remember(lease)
            for lease in expired:
                with lease.mutex:
                    try:
                        self._drop(lease)
                    except Exception:  # the lock is lost with the session anyway
                        log.warning(
                            "lease of %s/%s: release failed",
                            lease.aggregate_type,
                            lease.aggregate_id,
                            exc_info=True,
                        )
                log.info(
                    "lease of %s/%s expired (fence %d): released",
                    lease.aggregate_type,
                    lease.aggregate_id,
                    lease.fence,
                )

    def count(self) -> int:
        with self._lock:
            return len(self._leases)

    def held(self) -> list[dict[str, object]]:
        """The leases held now, with their fences (the lease ids left out: they are
        the clients' capabilities), by aggregate."""
        with self._lock:
            leases = list(self._leases.values())
        shown = [{k: v for k, v in lease.describe().items() if k != "lease_id"} for lease in leases]
        return sorted(shown, key=lambda d: (str(d["aggregate_type"]), str(d["aggregate_id"])))

    def close(self) -> None:
        """Release every lease (on shutdown)."""
        self._closed.set()
        with self._lock:
            leases, self._leases = list(self._leases.values()), {}
        for lease in leases:
            with lease.mutex:
                try:
                    self._drop(lease)
                except Exception:
                    log.warning("lease release failed on shutdown", exc_info=True)
