"""ZooKeeperLockService against the real ZooKeeper: exclusion, fences, expiry, ACLs."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator

import pytest
from kazoo.client import KazooClient
from kazoo.exceptions import NoAuthError
from kazoo.protocol.states import KazooState
from pydantic import SecretStr, ValidationError

from connectors.zookeeper import ZooKeeperLease, ZooKeeperLockService, ZooKeeperSettings
from tests.integration.conftest import Endpoints
from tests.waiting import eventually
from toolkit.errors import CoordinationError, LockTimeout

USER = "kct-lock-test"
PASSWORD = "pw-never-shown-7f3a"


@pytest.fixture
def admin(endpoints: Endpoints) -> Iterator[KazooClient]:
    """A plain client with the tests' digest identity (it may delete what they create)."""
    client = KazooClient(
        hosts=endpoints.zookeeper_hosts, auth_data=[("digest", f"{USER}:{PASSWORD}")]
    )
    client.start(timeout=10)
    yield client
    client.stop()
    client.close()


@pytest.fixture
def lock_root(admin: KazooClient) -> Iterator[str]:
    """A fresh, open lock root; deleted afterwards."""
    root = f"/kct-test/{uuid.uuid4().hex}"
    admin.ensure_path(root)
    yield root
    admin.delete(root, recursive=True)


@pytest.fixture
def make_service(
    endpoints: Endpoints, lock_root: str
) -> Iterator[Callable[..., ZooKeeperLockService]]:
    made: list[ZooKeeperLockService] = []

    def make(**overrides: object) -> ZooKeeperLockService:
        fields: dict[str, object] = {
            "hosts": endpoints.zookeeper_hosts,
            "lock_root": lock_root,
            "session_timeout": 4.0,
        }
        fields.update(overrides)
        service = ZooKeeperLockService(ZooKeeperSettings.model_validate(fields))
        made.append(service)
        return service

    yield make
    for service in made:
        service.close()


class _States:
    """Records a kazoo client's connection state changes."""

    def __init__(self, client: KazooClient) -> None:
        self.seen: list[str] = []
        client.add_listener(self.seen.append)

    def wait_for(self, state: str, timeout: float) -> None:
        eventually(lambda: state in self.seen, timeout, f"state {state}")


def test_fences_grow_across_holders_and_aggregates_do_not_block(
    make_service: Callable[..., ZooKeeperLockService], admin: KazooClient
) -> None:
    services = [make_service(), make_service()]
    aggregate = "order/42 ü?"  # quoted into one znode name
    fences = []
    for i in range(10):
        lease = services[i % 2].acquire(aggregate, timeout=5)
        assert lease.is_held()
        fences.append(lease.fence)
        lease.release()
    assert fences == sorted(fences)
    assert len(set(fences)) == len(fences)

    path = services[0].lock_path(aggregate)
    assert path.rsplit("/", 1)[1] == "order%2F42%20%C3%BC%3F"
    assert admin.exists(path) is not None

    held = services[0].acquire(aggregate, timeout=5)
    started = time.monotonic()
    other = services[1].acquire("order-43", timeout=5)
    assert time.monotonic() - started < 1.0
    assert held.is_held() and other.is_held()
    assert other.fence > held.fence  # one ensemble, one zxid order


def test_mutual_exclusion_across_threads_and_services(
    make_service: Callable[..., ZooKeeperLockService],
) -> None:
    services = [make_service(), make_service()]
    rounds, threads_per_service = 8, 4
    state = {"count": 0, "holders": 0, "max_holders": 0}
    fences: list[int] = []
    guard = threading.Lock()
    errors: list[BaseException] = []

    def worker(service: ZooKeeperLockService) -> None:
        try:
            for _ in range(rounds):
                with service.acquire("counter", timeout=30) as lease:
                    with guard:
                        state["holders"] += 1
                        state["max_holders"] = max(state["max_holders"], state["holders"])
                        fences.append(lease.fence)
                    value = state["count"]
                    time.sleep(0.003)  # widen the race window
                    state["count"] = value + 1
                    with guard:
                        state["holders"] -= 1
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [
        threading.Thread(target=worker, args=(service,))
        for service in services
        for _ in range(threads_per_service)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    assert state["count"] == rounds * threads_per_service * len(services)
    assert state["max_holders"] == 1
    assert fences == sorted(fences) and len(set(fences)) == len(fences)


def test_timeout_leaves_no_contender_behind(
    make_service: Callable[..., ZooKeeperLockService], admin: KazooClient
) -> None:
    a, b = make_service(), make_service()
    held = a.acquire("order-1", timeout=5)
    started = time.monotonic()
    with pytest.raises(LockTimeout) as caught:
        b.acquire("order-1", timeout=0.5)
    waited = time.monotonic() - started
    assert 0.45 <= waited < 2.0
    assert caught.value.context == {"aggregate": "order-1", "timeout": 0.5}
    children = admin.get_children(a.lock_path("order-1"))
    assert [f"{a.lock_path('order-1')}/{child}" for child in children] == [held.node_path]

    held.release()
    lease = b.acquire("order-1", timeout=2)
    assert lease.is_held() and lease.fence > held.fence


def _expire_session(hosts: str, client: KazooClient, states: _States) -> None:
    """End ``client``'s session on the server, as ZooKeeper's own tests do: a
    second client joins the session (same id and password) and closes it."""
    for _ in range(3):
        ghost = KazooClient(hosts=hosts, client_id=client.client_id, timeout=4.0)
        ghost.start(timeout=5)
        ghost.stop()
        ghost.close()
        try:
            states.wait_for(KazooState.LOST, timeout=5)
        except AssertionError:
            continue  # the owner reconnected before the close: try again
        return
    raise AssertionError("could not expire the session")


def test_session_expiry_voids_leases_and_service_recovers(
    make_service: Callable[..., ZooKeeperLockService],
    endpoints: Endpoints,
    admin: KazooClient,
) -> None:
    a, b = make_service(), make_service()
    lease = a.acquire("order-7", timeout=5)
    assert lease.is_held()
    old_session = a.client.client_id[0]
    states = _States(a.client)

    _expire_session(endpoints.zookeeper_hosts, a.client, states)

    eventually(lambda: admin.exists(lease.node_path) is None, 5, "ephemeral node removal")
    assert not lease.is_held(timeout=1.0)
    taken = b.acquire("order-7", timeout=5)
    assert taken.fence > lease.fence
    assert not lease.is_held(timeout=1.0)  # still not ours, even after reconnecting
    lease.release()  # the session is gone: no error
    taken.release()

    states.wait_for(KazooState.CONNECTED, timeout=10)
    again = a.acquire("order-7", timeout=5)
    assert a.client.client_id[0] != old_session  # kazoo opened a new session
    assert again.is_held() and again.fence > taken.fence
    assert not lease.is_held()


class _PausableProxy:
    """A TCP relay to the real ZooKeeper that can cut and refuse client connections."""

    def __init__(self, target: str) -> None:
        host, port = target.split(",", maxsplit=1)[0].rsplit(":", 1)
        self._target = (host, int(port))
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self.hosts = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self._sockets: list[socket.socket] = []
        self._guard = threading.Lock()
        self._paused = threading.Event()
        self._stopped = threading.Event()
        self._acceptor = threading.Thread(target=self._accept, daemon=True)
        self._acceptor.start()

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                downstream, _ = self._listener.accept()
            except TimeoutError:
                continue
            if self._paused.is_set():
                downstream.close()
                continue
            upstream = socket.create_connection(self._target)
            with self._guard:
                self._sockets += [downstream, upstream]
            for src, dst in ((downstream, upstream), (upstream, downstream)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def pause(self) -> None:
        """Cut every relayed connection and refuse new ones."""
        self._paused.set()
        with self._guard:
            cut, self._sockets = self._sockets, []
        for sock in cut:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def resume(self) -> None:
        self._paused.clear()

    def close(self) -> None:
        self._stopped.set()
        self._acceptor.join()
        self.pause()
        self._listener.close()


def test_is_held_waits_for_a_suspended_connection(
    make_service: Callable[..., ZooKeeperLockService], endpoints: Endpoints
) -> None:
    proxy = _PausableProxy(endpoints.zookeeper_hosts)
    try:
        service = make_service(hosts=proxy.hosts, session_timeout=8.0)
        lease = service.acquire("order-9", timeout=5)
        states = _States(service.client)

        # Back within the timeout: the check waits, then asks the server.
        proxy.pause()
        states.wait_for(KazooState.SUSPENDED, timeout=5)
        threading.Timer(0.5, proxy.resume).start()
        assert lease.is_held(timeout=5.0)

        # Not back within the timeout: False, but the lease is not lost.
        states.seen.clear()
        proxy.pause()
        states.wait_for(KazooState.SUSPENDED, timeout=5)
        started = time.monotonic()
        assert not lease.is_held(timeout=0.3)
        assert 0.25 <= time.monotonic() - started < 1.5
        proxy.resume()
        assert lease.is_held(timeout=5.0)
        assert KazooState.LOST not in states.seen
    finally:
        proxy.close()


def test_acquire_stays_bounded_when_the_connection_drops(
    make_service: Callable[..., ZooKeeperLockService], endpoints: Endpoints, admin: KazooClient
) -> None:
    proxy = _PausableProxy(endpoints.zookeeper_hosts)
    try:
        held = make_service().acquire("order-3", timeout=5)
        waiter = make_service(hosts=proxy.hosts, session_timeout=8.0, connect_timeout=1.0)
        path = waiter.lock_path("order-3")
        threading.Timer(0.3, proxy.pause).start()
        started = time.monotonic()
        with pytest.raises(CoordinationError, match="connection lost"):
            waiter.acquire("order-3", timeout=1.0)
        assert time.monotonic() - started < 1.0 + 1.0 + 0.5  # timeout + connect_timeout
        assert len(admin.get_children(path)) == 2  # the waiter's session still queues

        proxy.resume()  # kazoo gets through: the abandoned attempt withdraws
        eventually(lambda: len(admin.get_children(path)) == 1, 10, "contender removal")
        held.release()
        lease = waiter.acquire("order-3", timeout=5)
        assert lease.is_held() and lease.fence > held.fence
    finally:
        proxy.close()


def test_digest_auth_protects_lock_nodes(
    make_service: Callable[..., ZooKeeperLockService], endpoints: Endpoints, admin: KazooClient
) -> None:
    owner = make_service(auth_username=USER, auth_password=PASSWORD, lock_acl="creator_all")
    lease = owner.acquire("order-5", timeout=5)

    acls, _ = admin.get_acls(owner.lock_path("order-5"))
    assert [(acl.id.scheme, acl.id.id.split(":")[0]) for acl in acls] == [("digest", USER)]
    intruder = KazooClient(hosts=endpoints.zookeeper_hosts)
    intruder.start(timeout=10)
    try:
        with pytest.raises(NoAuthError):
            intruder.delete(lease.node_path)
    finally:
        intruder.stop()
        intruder.close()

    stranger = make_service()  # no credentials: may not even queue for the lock
    with pytest.raises(CoordinationError) as caught:
        stranger.acquire("order-5", timeout=1)
    assert PASSWORD not in str(caught.value)

    assert lease.is_held()
    lease.release()  # sent without waiting: another session sees it once applied
    eventually(lambda: admin.exists(lease.node_path) is None, 5, "released node deleted")
    assert owner.acquire("order-5", timeout=2).fence > lease.fence


def test_unreachable_zookeeper_raises_coordination_error_quickly() -> None:
    settings = ZooKeeperSettings(
        hosts="127.0.0.1:1",
        connect_timeout=1.0,
        auth_username=USER,
        auth_password=SecretStr(PASSWORD),
    )
    assert PASSWORD not in repr(settings)
    with pytest.raises(ValidationError) as invalid:
        ZooKeeperSettings(auth_password=SecretStr(PASSWORD))  # no username
    assert PASSWORD not in str(invalid.value)
    service = ZooKeeperLockService(settings)
    started = time.monotonic()
    try:
        with pytest.raises(CoordinationError) as caught:
            service.acquire("order-1", timeout=5)
    finally:
        service.close()
    assert time.monotonic() - started < 3.0
    assert "127.0.0.1:1" in str(caught.value)
    shown = "".join(traceback.format_exception(caught.value))
    assert PASSWORD not in shown


def test_release_is_idempotent_and_close_releases(
    make_service: Callable[..., ZooKeeperLockService], admin: KazooClient
) -> None:
    a, b = make_service(), make_service()
    lease = a.acquire("order-1", timeout=5)
    lease.release()
    lease.release()
    assert not lease.is_held()
    # The delete is sent without waiting: this service's next request comes after it,
    # another session sees it once ZooKeeper applied it.
    assert a.client.exists(lease.node_path) is None
    eventually(lambda: admin.exists(lease.node_path) is None, 5, "released node deleted")

    held: list[ZooKeeperLease] = [a.acquire(f"order-{i}", timeout=5) for i in (1, 2)]
    a.close()
    a.close()
    started = time.monotonic()
    taken = [b.acquire(f"order-{i}", timeout=2) for i in (1, 2)]
    assert time.monotonic() - started < 1.0
    assert all(not lease.is_held() for lease in held)
    assert [t.fence > h.fence for t, h in zip(taken, held, strict=True)] == [True, True]
    with pytest.raises(CoordinationError):
        a.acquire("order-3", timeout=1)


def test_fence_is_the_contender_nodes_czxid_and_release_orders_before_reacquire(
    make_service: Callable[..., ZooKeeperLockService], admin: KazooClient
) -> None:
    """The fence comes from the create's answer (no read after acquiring); it is
    the node's czxid as the server stores it. A release that did not wait for its
    answer still comes before the same service's next acquire of the aggregate."""
    service = make_service()
    previous = 0
    for _ in range(5):
        lease = service.acquire("order-9", timeout=5)
        stat = admin.exists(lease.node_path)
        assert stat is not None and stat.czxid == lease.fence > previous
        assert stat.ephemeralOwner == service.client.client_id[0]
        previous = lease.fence
        lease.release()
        nodes = service.client.get_children(service.lock_path("order-9"))
        assert nodes == []  # the delete went first, on the same session
