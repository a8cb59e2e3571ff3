"""Per-aggregate locks on ZooKeeper with fencing tokens (the ``LockService`` port).

Guarantee: mutual exclusion per aggregate comes from kazoo's ``Lock`` recipe:
each ``acquire`` creates an ephemeral sequential contender node under
``{lock_root}/{quoted aggregate id}`` and holds the lock while its node is the
lowest. This holds between processes and between threads of one process.
The lease's ``fence`` is the creation zxid (``czxid``) of its contender node:
zxids grow with every write to the ensemble and a holder's node is older than
every later holder's, so each new holder of an aggregate's lock gets a fence
strictly greater than every earlier holder's. Storage that rejects writes
with a fence lower than one it has seen stays safe even when a paused or
partitioned ex-holder still believes it holds the lock.

Failure modes:

* ``acquire`` raises ``LockTimeout`` when another holder keeps the lock for
  ``timeout`` seconds (the contender node is removed, nothing is left queued),
  and ``CoordinationError`` (naming ``hosts``, never credentials) when no
  session is established within ``connect_timeout``, when the connection is
  down, or when ZooKeeper refuses (e.g. an ACL denies this identity).
  ``acquire`` waits at most ``timeout`` plus ``connect_timeout``, even when
  the connection drops in the middle (an abandoned attempt removes its node,
  or releases the lock, once kazoo gets through again). A failed attempt's
  contender node is deleted for sure: kazoo's own clean-up is one best-effort
  delete, and a node it could not delete (the connection was down at that
  moment, e.g. during a ZooKeeper leader election) stays with the live
  session and later holds the lock for nobody, blocking every other
  contender until that session ends. A helper thread retries the delete
  while the session lives.
* A lease is lost with its session (kazoo's ``LOST`` state). ``is_held`` asks
  the server and answers False, without raising, whenever the lease cannot be
  proven ours right now; after ``LOST`` or once its node is gone it answers
  False forever. Kazoo opens a new session by itself after an expiry, and the
  service keeps serving new acquires on it.
* ``release`` is idempotent and never raises for a lost session or a dropped
  connection (a suspended connection gets the delete queued for when it
  returns; an expired session has already removed the node). It sends the
  delete without waiting for ZooKeeper's answer: this session's later
  requests are applied after it, other contenders see the node go when it is
  applied, and a delete that fails is retried on a helper thread.

Each aggregate's (empty) lock node stays under ``lock_root`` after release.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any
from urllib.parse import quote

from kazoo.client import KazooClient
from kazoo.exceptions import CancelledError, KazooException, NoAuthError, NoNodeError
from kazoo.exceptions import LockTimeout as KazooLockTimeout
from kazoo.handlers.threading import KazooTimeoutError
from kazoo.protocol.states import KazooState, ZnodeStat
from kazoo.recipe.lock import Lock
from kazoo.retry import ForceRetryError
from kazoo.security import make_digest_acl

from connectors.zookeeper.settings import ZooKeeperSettings
from toolkit.errors import ConfigurationError, CoordinationError, LockLost, LockTimeout

__all__ = ["ZooKeeperLease", "ZooKeeperLockService"]

_log = logging.getLogger(__name__)

# Reconnect warnings and session chatter are expected (that is what the state
# listener reports); kazoo's errors, such as a failing listener, still show.
_kazoo_log = logging.getLogger(__name__ + ".kazoo")
_kazoo_log.setLevel(logging.ERROR)

# Reconnect forever, at least once a second, so short outages keep the session.
_CONNECTION_RETRY: dict[str, Any] = {"max_tries": -1, "delay": 0.1, "max_delay": 1.0}

_ZK_ERRORS = (KazooException, KazooTimeoutError)


def _node_name(aggregate_id: str) -> str:
    """The aggregate id as one safe znode name (``/`` and odd characters quoted)."""
    if not aggregate_id:
        raise ConfigurationError("an aggregate id must not be empty")
    name = quote(aggregate_id, safe="")
    if name in {".", ".."}:  # reserved znode names
        name = name.replace(".", "%2E")
    return name


class _FencedLock(Lock):  # type: ignore[misc]  # kazoo is untyped
    """kazoo's ``Lock`` recipe, the same contender nodes and queue, with fewer
    round trips in the usual case:

    * the contender node is created with ``makepath`` (the parent is created
      only when the create finds it missing) instead of an ``exists`` before
      every first create of a new ``Lock``;
    * the create returns the node's stat (ZooKeeper's ``create2``), so the
      fence (``czxid``) needs no read after acquiring;
    * the children are listed in the same flight as the create: ZooKeeper
      answers one session's requests in order, so the listing already holds
      the new node (a listing that failed, e.g. before the parent existed, is
      simply asked again, as the recipe does).

    Everything else (cancel, the predecessor watch, the retries after a lost
    connection with ``_find_node``) is kazoo's own.
    """

    def __init__(self, client: KazooClient, path: str, identifier: str) -> None:
        super().__init__(client, path, identifier)
        self.create_tried: bool = False  # kazoo's: a create was sent (its answer may be lost)
        # The stat of ``node`` as its create returned it (None if the node was
        # found again after a lost answer: then the fence is read).
        self.stat: ZnodeStat | None = None
        self._listed: list[str] | None = None

    def _inner_acquire(self, blocking: bool, timeout: float | None, ephemeral: bool = True) -> bool:
        if self.is_acquired:
            if not blocking:
                return False
            raise ForceRetryError()
        node: str = self._create_or_find(ephemeral)
        self.node = node
        while True:  # kazoo's loop, unchanged
            self.wake_event.clear()
            if self.cancelled:
                raise CancelledError()
            predecessor = self._get_predecessor(node)
            if predecessor is None:
                return True
            if not blocking:
                return False
            predecessor = self.path + "/" + predecessor
            self.client.add_listener(self._watch_session)
            try:
                self.client.get(predecessor, self._watch_predecessor)
            except NoNodeError:
                pass  # predecessor has already been deleted
            else:
                self.wake_event.wait(timeout)
                if not self.wake_event.is_set():
                    raise KazooLockTimeout(
                        f"Failed to acquire lock on {self.path} after {timeout} seconds"
                    )
            finally:
                self.client.remove_listener(self._watch_session)

    def _create_or_find(self, ephemeral: bool) -> str:
        """Our contender node: found again after a lost answer, else created."""
        tried = self.create_tried
        self.create_tried = True
        if tried:
            found: str | None = self._find_node()
            if found:
                if found != self.node:
                    self.stat = None
                return found
        self.stat = None
        created = self.client.create_async(
            self.create_path,
            self.data,
            ephemeral=ephemeral,
            sequence=True,
            makepath=True,
            include_data=True,
        )
        listed = self.client.get_children_async(self.path)
        full_path, stat = created.get()
        self.stat = stat
        try:
            self._listed = list(listed.get())
        except (NoNodeError, *_ZK_ERRORS):
            self._listed = None
        return str(full_path[len(self.path) + 1 :])

    def _get_predecessor(self, node: str) -> str | None:
        listed, self._listed = self._listed, None
        if listed is None or node not in listed:
            return super()._get_predecessor(node)  # type: ignore[no-any-return]
        # kazoo's own choice, over the listing that came with the create.
        sequence = node[len(self.prefix) :]
        earlier = [
            match
            for match in map(self._contenders_re.search, listed)
            if match is not None and match.group(1) < sequence
        ]
        if not earlier:
            return None
        return str(max(earlier, key=lambda m: m.groups()).string)


class _Attempt:
    """Runs kazoo's blocking ``Lock.acquire`` on a helper thread, so that the
    caller's wait stays bounded even when a dropped connection stalls kazoo's
    requests. An abandoned attempt cleans up after itself when kazoo returns."""

    def __init__(
        self,
        lock: Lock,
        timeout: float,
        release: Callable[[], None],
        remove_node: Callable[[], None],
    ) -> None:
        self._lock = lock
        self._timeout = timeout
        self._release = release
        self._remove_node = remove_node
        self._done = threading.Event()
        self._mutex = threading.Lock()
        self._abandoned = False
        self.acquired = False
        self.error: BaseException | None = None
        threading.Thread(target=self._run, name="kct-zookeeper-acquire", daemon=True).start()

    def _run(self) -> None:
        try:
            self.acquired = bool(self._lock.acquire(timeout=self._timeout))
        except (KazooLockTimeout, CancelledError):
            pass  # timed out or cancelled: the recipe removed our contender node
        except BaseException as exc:  # handed over to the caller
            self.error = exc
        with self._mutex:
            self._done.set()
            abandoned = self._abandoned
        if abandoned and self.acquired:
            self._release()
        elif not self.acquired:
            self._remove_node()

    def finish(self, timeout: float, grace: float) -> bool:
        """Wait for the attempt; False if it had to be abandoned."""
        if self._done.wait(timeout):
            return True
        # kazoo restarts its wait for each new predecessor: stop it at our deadline.
        self._lock.cancel()
        if self._done.wait(grace):
            return True
        with self._mutex:
            self._abandoned = not self._done.is_set()
            return not self._abandoned


class ZooKeeperLease:
    """The held lock of one aggregate; ``fence`` orders it after every earlier holder."""

    def __init__(
        self, service: ZooKeeperLockService, lock: Lock, aggregate_id: str, fence: int, owner: int
    ) -> None:
        self._service = service
        self._lock = lock
        self._aggregate_id = aggregate_id
        self._fence = fence
        self._owner = owner  # the session that owns the contender node
        self._node_path = f"{lock.path}/{lock.node}"
        self._released = False
        self._lost = False
        self._mutex = threading.Lock()

    @property
    def aggregate_id(self) -> str:
        return self._aggregate_id

    @property
    def fence(self) -> int:
        """Strictly greater than the fence of every earlier holder of this lock."""
        return self._fence

    @property
    def node_path(self) -> str:
        """The contender node that holds the lock (ephemeral, owned by our session)."""
        return self._node_path

    def is_held(self, timeout: float = 0.0) -> bool:
        """True if ZooKeeper confirms right now that our session owns the lock node.

        While the connection is suspended, waits up to ``timeout`` seconds for
        it to come back, then asks. Never raises for connection problems.
        """
        if self._released or self._lost:
            return False
        deadline = time.monotonic() + max(timeout, 0.0)
        if not self._service._await_connected(deadline, self):
            return False
        wait = max(deadline - time.monotonic(), self._service.settings.connect_timeout)
        client = self._lock.client
        try:
            stat = client.exists_async(self._node_path).get(timeout=wait)
            session = client.client_id
        except _ZK_ERRORS as exc:
            _log.debug("lock check of %s failed: %r", self._node_path, exc)
            return False
        if session is None:  # disconnected meanwhile: unknown, not lost
            return False
        if stat is None or stat.ephemeralOwner != self._owner or session[0] != self._owner:
            self._mark_lost()
            return False
        return not self._released

    def release(self) -> None:
        """Give the lock up (idempotent; never raises for a lost lock)."""
        with self._mutex:
            if self._released:
                return
            self._released = True
        self._service._forget(self)
        if self._lost:
            _log.debug("lease of %r was already lost with its session", self._aggregate_id)
            return
        self._service._release_lock(self._lock, self._node_path, wait=False)

    def _mark_lost(self) -> None:
        self._lost = True

    def __enter__(self) -> ZooKeeperLease:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"ZooKeeperLease(aggregate_id={self._aggregate_id!r}, fence={self._fence})"


class ZooKeeperLockService:
    """Mutual exclusion per aggregate on one ZooKeeper session, with fencing tokens."""

    def __init__(
        self, settings: ZooKeeperSettings | None = None, *, identifier: str | None = None
    ) -> None:
        self.settings = settings if settings is not None else ZooKeeperSettings()
        # Written into contender nodes, to see who holds or waits (Lock.contenders()).
        self._identifier = identifier or f"{socket.gethostname()}:{os.getpid()}"
        self._start_lock = threading.Lock()
        self._changed = threading.Condition()
        self._client: KazooClient | None = None
        self._state: str = KazooState.LOST
        self._leases: set[ZooKeeperLease] = set()
        self._closed = False

    @property
    def client(self) -> KazooClient:
        """The service's started kazoo client (started on first use)."""
        return self._started_client()

    def lock_path(self, aggregate_id: str) -> str:
        """The znode under which contenders for ``aggregate_id``'s lock queue."""
        return f"{self.settings.lock_root}/{_node_name(aggregate_id)}"

    def acquire(self, aggregate_id: str, timeout: float) -> ZooKeeperLease:
        """Block until the lock of ``aggregate_id`` is ours, for up to ``timeout`` seconds.

        Raises LockTimeout when another holder keeps it, CoordinationError when
        ZooKeeper cannot be reached within ``connect_timeout`` or refuses, and
        (rarely) LockLost when the session ended just as the lock was granted.
        """
        path = self.lock_path(aggregate_id)
        timeout = max(timeout, 0.0)
        client = self._connected_client()
        lock = _FencedLock(client, path, self._identifier)
        attempt = _Attempt(
            lock,
            timeout,
            lambda: self._release_lock(lock, f"{lock.path}/{lock.node}"),
            lambda: self._remove_contender(lock),
        )
        if not attempt.finish(timeout, grace=self.settings.connect_timeout):
            raise self._error("ZooKeeper connection lost while acquiring", aggregate_id)
        if isinstance(attempt.error, NoAuthError):
            raise self._error(
                "ZooKeeper denied access to the lock", aggregate_id
            ) from attempt.error
        if isinstance(attempt.error, _ZK_ERRORS):
            raise self._error("ZooKeeper failed while acquiring", aggregate_id) from attempt.error
        if attempt.error is not None:
            raise attempt.error
        if not attempt.acquired:
            if self._state != KazooState.CONNECTED:
                raise self._error("ZooKeeper connection lost while acquiring", aggregate_id)
            raise LockTimeout("lock not acquired in time", aggregate=aggregate_id, timeout=timeout)
        return self._lease(lock, aggregate_id)

    def _remove_contender(self, lock: Lock, give_up_after: float = 120.0) -> None:
        """Delete the contender node of a failed attempt (on the attempt's thread),
        retrying while the connection is down; gone with the session otherwise."""
        deadline = time.monotonic() + give_up_after
        while not self._closed and time.monotonic() < deadline:
            try:
                for child in lock.client.get_children(lock.path):
                    if child.startswith(lock.prefix):
                        lock.client.delete(f"{lock.path}/{child}")
                        _log.info("removed the contender node %s/%s left behind", lock.path, child)
                return
            except NoNodeError:
                return
            except _ZK_ERRORS as exc:
                _log.debug("contender clean-up under %s: %r, retrying", lock.path, exc)
                time.sleep(0.5)

    def close(self) -> None:
        """Release every live lease and end the session."""
        with self._start_lock:
            if self._closed:
                return
            self._closed = True
            client = self._client
        with self._changed:
            leases = list(self._leases)
        for lease in leases:
            lease.release()
        if client is not None:
            client.stop()
            client.close()
            client.remove_listener(self._on_state)

    def __enter__(self) -> ZooKeeperLockService:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- session -----------------------------------------------------------

    def _started_client(self) -> KazooClient:
        with self._start_lock:
            if self._closed:
                raise CoordinationError("the lock service is closed", hosts=self.settings.hosts)
            if self._client is None:
                client = self._new_client()
                client.add_listener(self._on_state)
                try:
                    client.start(timeout=self.settings.connect_timeout)
                except (*_ZK_ERRORS, OSError) as exc:  # start() has stopped the client
                    client.remove_listener(self._on_state)
                    raise CoordinationError(
                        "no ZooKeeper session within connect_timeout",
                        hosts=self.settings.hosts,
                        connect_timeout=self.settings.connect_timeout,
                    ) from exc
                self._client = client
            return self._client

    def _new_client(self) -> KazooClient:
        options = self.settings.client_options()
        username, password = self.settings.auth_username, self.settings.auth_password
        creator_all = self.settings.lock_acl == "creator_all"
        if creator_all and username is not None and password is not None:
            # Only this identity may read, create under or delete our lock nodes.
            options["default_acl"] = [
                make_digest_acl(username, password.get_secret_value(), all=True)
            ]
        return KazooClient(
            **options,
            connection_retry=dict(_CONNECTION_RETRY),
            logger=_kazoo_log,
        )

    def _connected_client(self) -> KazooClient:
        client = self._started_client()
        if not self._await_connected(time.monotonic() + self.settings.connect_timeout):
            raise CoordinationError(
                "ZooKeeper connection is down",
                hosts=self.settings.hosts,
                connect_timeout=self.settings.connect_timeout,
            )
        return client

    def _on_state(self, state: str) -> None:
        """kazoo's state listener (runs on its connection thread: must not block)."""
        with self._changed:
            self._state = state
            if state == KazooState.LOST:
                for lease in self._leases:
                    lease._mark_lost()
            self._changed.notify_all()
        if state == KazooState.LOST and self._closed:
            _log.info("ZooKeeper session closed (hosts=%s)", self.settings.hosts)
        elif state == KazooState.LOST:
            _log.info("ZooKeeper session lost; its locks are void (hosts=%s)", self.settings.hosts)
        else:
            _log.info("ZooKeeper connection %s (hosts=%s)", state.lower(), self.settings.hosts)

    def _await_connected(self, deadline: float, lease: ZooKeeperLease | None = None) -> bool:
        """Wait until the state is CONNECTED (False at the deadline or once ``lease`` is lost)."""
        with self._changed:
            while self._state != KazooState.CONNECTED:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (lease is not None and lease._lost):
                    return False
                self._changed.wait(remaining)
            return lease is None or not lease._lost

    # -- leases ------------------------------------------------------------

    def _lease(self, lock: _FencedLock, aggregate_id: str) -> ZooKeeperLease:
        """The fence is our contender node's czxid, from the create's answer
        (read from the server only when that answer was lost)."""
        client = lock.client
        node_path = f"{lock.path}/{lock.node}"
        stat = lock.stat
        session = client.client_id
        if stat is None:
            try:
                stat = client.exists_async(node_path).get(timeout=self.settings.connect_timeout)
                session = client.client_id
            except _ZK_ERRORS as exc:
                self._release_lock(lock, node_path)
                raise self._error("ZooKeeper failed while reading the lock", aggregate_id) from exc
        if stat is None or session is None or stat.ephemeralOwner != session[0]:
            self._release_lock(lock, node_path)
            raise LockLost("lock lost right after it was acquired", aggregate=aggregate_id)
        lease = ZooKeeperLease(self, lock, aggregate_id, int(stat.czxid), int(session[0]))
        with self._changed:
            self._leases.add(lease)
        return lease

    def _forget(self, lease: ZooKeeperLease) -> None:
        with self._changed:
            self._leases.discard(lease)

    def _release_lock(self, lock: Lock, node_path: str, *, wait: bool = True) -> None:
        """Delete our contender node; bounded, and never raises for connection problems.

        (Not ``Lock.release()``: its synchronous delete waits without limit
        while kazoo reconnects.) A delete the connection swallowed (kazoo fails
        requests in flight or queued when the connection drops) is retried on a
        helper thread while the session lives: a holder's node left behind would
        hold the lock for nobody until the session ends. An expired session has
        removed the node already.

        ``wait=False`` (a lease's release) sends the delete and returns without
        its answer: ZooKeeper applies one session's requests in order, so every
        later request of this service (a new acquire of the same aggregate
        included) comes after the delete; other contenders are woken by their
        watch when it is applied, as they would be anyway. A failed delete is
        retried as above.
        """
        client = lock.client
        if self._state == KazooState.CONNECTED:
            if not wait:
                try:
                    pending = client.delete_async(node_path)
                except (*_ZK_ERRORS, OSError) as exc:
                    _log.debug("release of %s not sent: %r, retrying", node_path, exc)
                else:
                    pending.rawlink(lambda done: self._after_delete(done, client, node_path))
                    return
            elif self._delete_node(client, node_path):
                return
        self._retry_delete(client, node_path)

    def _after_delete(self, done: Any, client: KazooClient, node_path: str) -> None:
        """kazoo's completion of a delete sent without waiting (must not block)."""
        error = done.exception
        if error is None or isinstance(error, NoNodeError):
            return
        _log.debug("release of %s failed: %r, retrying", node_path, error)
        self._retry_delete(client, node_path)

    def _retry_delete(self, client: KazooClient, node_path: str) -> None:
        threading.Thread(
            target=self._delete_until_gone,
            args=(client, node_path),
            name="kct-zookeeper-release",
            daemon=True,
        ).start()

    def _delete_node(self, client: KazooClient, node_path: str) -> bool:
        """True once the node is gone (deleted now, or already)."""
        try:
            client.delete_async(node_path).get(timeout=self.settings.connect_timeout)
        except NoNodeError:
            return True
        except (*_ZK_ERRORS, OSError) as exc:
            _log.debug("release of %s failed: %r, retrying", node_path, exc)
            return False
        return True

    def _delete_until_gone(
        self, client: KazooClient, node_path: str, give_up_after: float = 120.0
    ) -> None:
        deadline = time.monotonic() + give_up_after
        while not self._closed and time.monotonic() < deadline:
            if self._state == KazooState.CONNECTED and self._delete_node(client, node_path):
                return
            time.sleep(0.2)
        _log.warning("could not delete lock node %s; it goes with its session", node_path)

    def _error(self, message: str, aggregate_id: str) -> CoordinationError:
        return CoordinationError(message, aggregate=aggregate_id, hosts=self.settings.hosts)
