"""``kct stack``: a real Kafka, ZooKeeper, Redis and Jaeger on loopback, without Docker.

:class:`LocalStack` provisions (Maven, ``go build``, ``apt-get`` when missing),
configures, starts, checks and stops the servers of one stack: one of each by
default, or (``cluster=True``) three Kafka nodes, a three-node ZooKeeper
ensemble and Redis. A stack is one state directory (``~/.local/state/kct``,
``$KCT_STATE_DIR``) holding data, logs, pid records, rendered configs and
``stack.json`` (which records the port offset and the topology, so later
commands on that directory need neither); a port offset shifts every port so
a second stack can run beside the first. ``kill``, ``freeze``, ``thaw`` and
``start`` act on one named node (``kafka-2``), for fault tests.

Guarantees:

* ``up`` is idempotent: a server recorded in the state directory that is alive
  and answers is left alone (same pid); the others are started and ``up``
  returns only once each one really answers a client request (Kafka metadata,
  a ZooKeeper session, Redis PING, Jaeger ``/api/services``).
* ``up`` and ``down`` of one state directory are serialised by a file lock;
  ``status`` takes no lock and never blocks.
* ``down`` signals only processes whose command line and start time still match
  what ``up`` recorded: a reused pid is never killed. Data survives ``down``
  unless ``purge=True``.

Failure modes (all :class:`~toolkit.errors.StackError` with ``service``,
``port`` and ``log`` context): a port held by another process (checked before
anything starts), a missing tool, a failed download or build, a server that
exits or does not answer within the readiness timeout (the message carries the
tail of its log). A failed ``up`` leaves the servers that did start running;
the next ``up`` keeps them.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from connectors.kafka.probe import kafka_brokers, kafka_can_replicate
from toolkit.errors import StackError
from toolkit.runtime.stack import process as proc
from toolkit.runtime.stack.provision import default_cache_dir
from toolkit.runtime.stack.services import (
    CLUSTER,
    SINGLE,
    Service,
    StackLayout,
    StackPorts,
    services_for,
)

__all__ = [
    "LocalStack",
    "ServiceStatus",
    "StackEndpoints",
    "StackStatus",
    "default_port_offset",
    "default_state_dir",
]

log = logging.getLogger(__name__)

READY_TIMEOUT = 120.0
_PROBE_TIMEOUT = 2.0


def default_state_dir() -> Path:
    env = os.environ.get("KCT_STATE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".local" / "state" / "kct"


def default_port_offset() -> int:
    """``$KCT_STACK_PORT_OFFSET`` (default 0): lets two stacks share a machine."""
    raw = os.environ.get("KCT_STACK_PORT_OFFSET", "0").strip() or "0"
    try:
        offset = int(raw)
    except ValueError:
        raise StackError("KCT_STACK_PORT_OFFSET must be a whole number", value=raw) from None
    if not 0 <= offset <= 20000:
        raise StackError("KCT_STACK_PORT_OFFSET must be between 0 and 20000", value=offset)
    return offset


@dataclass(frozen=True)
class StackEndpoints:
    """How clients reach the stack (valid whether or not it runs)."""

    kafka_bootstrap: str
    zookeeper_hosts: str
    redis_url: str
    otlp_grpc: str
    otlp_http: str
    jaeger_query_url: str
    # The SASL_PLAINTEXT (SCRAM-SHA-512) listener, for testing authentication.
    kafka_sasl_bootstrap: str = ""


@dataclass(frozen=True)
class ServiceStatus:
    """One server: where it listens, whether our process runs and answers."""

    name: str
    endpoint: str
    pid: int | None
    running: bool
    healthy: bool
    extra: dict[str, str] = field(default_factory=dict)
    # What the last operation did: "started", "already running", "stopped", ...
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "endpoint": self.endpoint,
            **self.extra,
            "pid": self.pid,
            "running": self.running,
            "healthy": self.healthy,
        }


@dataclass(frozen=True)
class StackStatus:
    """Every server of one stack."""

    state_dir: Path
    port_offset: int
    services: dict[str, ServiceStatus]
    cluster: bool = False

    @property
    def all_healthy(self) -> bool:
        return all(s.healthy for s in self.services.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "state_dir": str(self.state_dir),
            "port_offset": self.port_offset,
            "cluster": self.cluster,
            "services": {name: s.to_json() for name, s in self.services.items()},
        }


class LocalStack:
    """One local stack: a state directory, a port offset and a download cache."""

    def __init__(
        self,
        state_dir: Path | None = None,
        port_offset: int | None = None,
        cache_dir: Path | None = None,
        *,
        cluster: bool | None = None,
        ready_timeout: float = READY_TIMEOUT,
    ) -> None:
        self.state_dir = (state_dir or default_state_dir()).expanduser().absolute()
        port_offset = default_port_offset() if port_offset is None else port_offset
        self.port_offset = port_offset
        self.ports = StackPorts.with_offset(port_offset)
        self.layout = StackLayout(
            root=self.state_dir,
            cache_dir=(cache_dir or default_cache_dir()).expanduser().absolute(),
        )
        self.ready_timeout = ready_timeout
        # None: whatever the last `up` in this state directory ran.
        if cluster is None:
            cluster = bool(self._recorded(self.state_dir).get("cluster", False))
        self.cluster = cluster
        self.topology = CLUSTER if cluster else SINGLE
        self._services: dict[str, Service] = {
            s.name: s for s in services_for(self.topology, self.layout, self.ports)
        }

    # -- queries -------------------------------------------------------------

    @property
    def node_names(self) -> list[str]:
        """Every server of the stack by name: ``kafka``, ... or ``kafka-1``, ``kafka-2``, ..."""
        return list(self._services)

    def bound_ports(self, name: str) -> dict[str, int]:
        """Every port node ``name`` binds, by purpose."""
        return self._node(name).bound_ports()

    def endpoints(self) -> StackEndpoints:
        p = self.ports
        by_kind: dict[str, list[str]] = {"kafka": [], "zookeeper": []}
        for svc in self._services.values():
            if svc.kind in by_kind:
                by_kind[svc.kind].append(svc.endpoint())
        return StackEndpoints(
            kafka_bootstrap=",".join(by_kind["kafka"]),
            zookeeper_hosts=",".join(by_kind["zookeeper"]),
            redis_url=f"redis://127.0.0.1:{p.redis}/0",
            otlp_grpc=f"127.0.0.1:{p.otlp_grpc}",
            otlp_http=f"http://127.0.0.1:{p.otlp_http}",
            jaeger_query_url=f"http://127.0.0.1:{p.jaeger_query}",
            kafka_sasl_bootstrap=f"127.0.0.1:{p.kafka_sasl}",
        )

    @staticmethod
    def _recorded(state_dir: Path | None = None) -> dict[str, Any]:
        path = (state_dir or default_state_dir()).expanduser() / "stack.json"
        try:
            found = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return found if isinstance(found, dict) else {}

    @staticmethod
    def recorded_port_offset(state_dir: Path | None = None) -> int | None:
        """The port offset recorded by the last ``up`` in ``state_dir``, if any."""
        try:
            return int(LocalStack._recorded(state_dir)["port_offset"])
        except (ValueError, KeyError, TypeError):
            return None

    def status(self) -> StackStatus:
        """Probe every server (in parallel); never starts or stops anything."""
        with ThreadPoolExecutor(max_workers=len(self._services)) as pool:
            results = list(pool.map(self._service_status, self._services.values()))
        return self._stack_status(results)

    # -- up ------------------------------------------------------------------

    def up(self) -> StackStatus:
        """Provision and start every server that is not already running; wait until all answer."""
        with self._locked():
            self._check_offset_matches()
            self._record()  # ports and endpoints are known before anything starts
            running = {
                name: rec
                for name, svc in self._services.items()
                if (rec := self._live_record(svc)) is not None
            }
            to_start = [s for n, s in self._services.items() if n not in running]
            self._check_ports_free(to_start)
            # In parallel: Kafka (JVM, storage format) is the slowest; the others
            # are ready while it starts.
            with ThreadPoolExecutor(max_workers=len(self._services)) as pool:
                futures = {
                    name: pool.submit(self._ensure_running, svc, running.get(name))
                    for name, svc in self._services.items()
                }
                errors: list[StackError] = []
                results: list[ServiceStatus] = []
                for name, fut in futures.items():
                    try:
                        results.append(fut.result())
                    except StackError as exc:
                        errors.append(exc)
                    except (OSError, ValueError) as exc:
                        errors.append(StackError(f"{name}: {exc}", service=name))
            self._record()
        if errors:
            raise _combine(errors)
        if self.topology.is_cluster:
            self._wait_replicable()
        return self._stack_status(results)

    def _wait_replicable(self) -> None:
        """A cluster is up once the controller accepts topics of its replication
        factor and every node's metadata lists every broker, three checks in a
        row: every node answering is not enough (a restarted node answers while
        it still replays the metadata log, fenced, for up to a minute; CI runs
        started the fault tests seeing one broker)."""
        bootstrap = self.endpoints().kafka_bootstrap
        nodes = bootstrap.split(",")
        replicas = self.topology.replication_factor
        deadline = time.monotonic() + self.ready_timeout
        steady = 0
        while True:
            whole = kafka_can_replicate(bootstrap, replicas, _PROBE_TIMEOUT) and all(
                kafka_brokers(node, _PROBE_TIMEOUT) >= len(nodes) for node in nodes
            )
            steady = steady + 1 if whole else 0
            if steady >= 3:
                return
            if time.monotonic() >= deadline:
                raise StackError(
                    f"the Kafka cluster did not accept replication factor {replicas} within "
                    f"{self.ready_timeout:.0f} s (its brokers are not all registered and "
                    "unfenced; see their server logs)",
                    service="kafka",
                    log=str(self.layout.logs),
                )
            time.sleep(1.0)

    def _ensure_running(self, svc: Service, record: proc.PidRecord | None) -> ServiceStatus:
        if record is not None:
            log.info("%s: already running (pid %d)", svc.name, record.pid)
            # Ours, but possibly still starting (an interrupted `up`): wait for it too.
            self._wait_ready(svc, record)
            return replace(self._service_status(svc), detail="already running")
        started = time.monotonic()
        try:
            svc.provision()
            svc.prepare()
        except StackError as exc:
            if "service" in exc.context:
                raise
            context = {**exc.context, "service": svc.name}
            raise StackError(f"{svc.name}: {exc.message}", **context) from exc
        self._check_ports_free([svc])  # a slow download gave others time to grab one
        record = proc.spawn(svc.argv(), svc.out_log, cwd=self.state_dir, env=svc.env())
        proc.write_json_atomic(self.layout.pid_file(svc.name), record.to_json())
        log.info("%s: starting (pid %d)", svc.name, record.pid)
        self._wait_ready(svc, record)
        log.info("%s: ready in %.1f s", svc.name, time.monotonic() - started)
        return replace(self._service_status(svc), detail="started")

    def _wait_ready(self, svc: Service, record: proc.PidRecord) -> None:
        deadline = time.monotonic() + self.ready_timeout
        delay = 0.1
        while True:
            if not proc.is_alive(record):
                raise StackError(
                    f"{svc.name} exited during startup\n{svc.log_excerpt()}",
                    service=svc.name,
                    port=svc.bound_ports(),
                    log=str(svc.server_log),
                )
            if svc.probe(_PROBE_TIMEOUT):
                return
            if time.monotonic() >= deadline:
                raise StackError(
                    f"{svc.name} did not answer within {self.ready_timeout:.0f} s "
                    f"(pid {record.pid} still running)\n{svc.log_excerpt()}",
                    service=svc.name,
                    port=svc.bound_ports(),
                    log=str(svc.server_log),
                )
            time.sleep(delay)
            delay = min(delay * 1.5, 1.0)

    def _check_ports_free(self, services: list[Service]) -> None:
        for svc in services:
            for label, port in svc.bound_ports().items():
                if proc.port_in_use(port):
                    what = svc.name if label == svc.name else f"{svc.name} ({label})"
                    raise StackError(
                        f"{what} port {port} on 127.0.0.1 is already in use by another "
                        f"process; stop it or use --port-offset",
                        service=svc.name,
                        port=port,
                    )

    def _check_offset_matches(self) -> None:
        recorded = self._recorded(self.state_dir)
        offset = self.recorded_port_offset(self.state_dir)
        was_cluster = bool(recorded.get("cluster", False))
        if (offset is None or offset == self.port_offset) and was_cluster == self.cluster:
            return
        others = services_for(CLUSTER if was_cluster else SINGLE, self.layout, self.ports)
        if not any(self._live_record(s) for s in [*self._services.values(), *others]):
            return
        if was_cluster != self.cluster:
            runs, wanted = ("a cluster", "one node") if was_cluster else ("one node", "a cluster")
            raise StackError(
                f"the stack in {self.state_dir} runs {runs}, not {wanted}; run "
                f"`kct stack down` first or use another --state-dir",
                cluster=was_cluster,
            )
        raise StackError(
            f"the stack in {self.state_dir} runs with port offset {offset}, not "
            f"{self.port_offset}; run `kct stack down` first or use another --state-dir",
            port_offset=offset,
        )

    # -- one node, for fault tests -------------------------------------------

    def _node(self, name: str) -> Service:
        try:
            return self._services[name]
        except KeyError:
            raise StackError(
                f"no server named {name!r} in this stack; it has {', '.join(self._services)}",
                service=name,
            ) from None

    def pid(self, name: str) -> int:
        """The pid of node ``name``; StackError if it is not running."""
        record = self._live_record(self._node(name))
        if record is None:
            raise StackError(f"{name} is not running", service=name)
        return record.pid

    def kill(self, name: str) -> None:
        """kill -9 node ``name``; wait until its process is gone and its ports are free."""
        svc = self._node(name)
        record = self._live_record(svc)
        if record is None:
            return
        proc.send_signal(record, signal.SIGKILL)
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline and (
            proc.is_alive(record) or any(map(proc.port_in_use, svc.bound_ports().values()))
        ):
            time.sleep(0.05)

    def freeze(self, name: str) -> None:
        """SIGSTOP node ``name``: it keeps its sockets but answers nothing."""
        record = self._live_record(self._node(name))
        if record is None:
            raise StackError(f"{name} is not running", service=name)
        proc.send_signal(record, signal.SIGSTOP)

    def thaw(self, name: str) -> None:
        """SIGCONT node ``name`` after :meth:`freeze`."""
        record = self._live_record(self._node(name))
        if record is not None:
            proc.send_signal(record, signal.SIGCONT)

    def start(self, name: str) -> ServiceStatus:
        """Start node ``name`` if it is not running and wait until it answers."""
        svc = self._node(name)
        with self._locked():
            record = self._live_record(svc)
            if record is None:
                self._check_ports_free([svc])
            status = self._ensure_running(svc, record)
            self._record()
        return status

    # -- down ----------------------------------------------------------------

    def down(self, purge: bool = False) -> None:
        """Stop the servers this state directory started; with ``purge``, delete their data."""
        with self._locked():
            by_grace: dict[float, list[proc.PidRecord]] = {}
            for svc in self._services.values():
                record = proc.read_pid_record(self.layout.pid_file(svc.name))
                if record is not None:
                    by_grace.setdefault(svc.stop_grace, []).append(record)
            with ThreadPoolExecutor(max_workers=max(1, len(by_grace))) as pool:
                stopped = [
                    r
                    for batch in pool.map(
                        lambda item: proc.terminate(item[1], item[0]), by_grace.items()
                    )
                    for r in batch
                ]
            for record in stopped:
                log.info("stopped pid %d (%s)", record.pid, Path(record.argv[0]).name)
            for svc in self._services.values():
                self.layout.pid_file(svc.name).unlink(missing_ok=True)
            if purge:
                for path in (self.layout.data, self.layout.logs, self.layout.conf):
                    shutil.rmtree(path, ignore_errors=True)
                log.info("purged data, logs and configs in %s", self.state_dir)
            self._record()

    # -- internals -----------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with self.layout.lock_file.open("a") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.info("waiting for another `kct stack` command on %s", self.state_dir)
                fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _live_record(self, svc: Service) -> proc.PidRecord | None:
        record = proc.read_pid_record(self.layout.pid_file(svc.name))
        if record is None or not proc.is_ours(record):
            return None
        return record

    def _service_status(self, svc: Service) -> ServiceStatus:
        record = self._live_record(svc)
        running = record is not None
        return ServiceStatus(
            name=svc.name,
            endpoint=svc.endpoint(),
            pid=record.pid if record else None,
            running=running,
            healthy=running and svc.probe(_PROBE_TIMEOUT),
            extra=svc.extra_endpoints(),
        )

    def _stack_status(self, results: list[ServiceStatus]) -> StackStatus:
        by_name = {s.name: s for s in results}
        ordered = {name: by_name[name] for name in self._services if name in by_name}
        return StackStatus(self.state_dir, self.port_offset, ordered, cluster=self.cluster)

    def _record(self) -> None:
        services: dict[str, Any] = {}
        for name, svc in self._services.items():
            record = self._live_record(svc)
            services[name] = {
                "endpoint": svc.endpoint(),
                **svc.extra_endpoints(),
                "pid": record.pid if record else None,
                "ports": svc.bound_ports(),
                "log": str(svc.server_log),
            }
        proc.write_json_atomic(
            self.layout.stack_file,
            {
                "port_offset": self.port_offset,
                "cluster": self.cluster,
                "ports": self.ports.as_dict(),
                "endpoints": self.endpoints().__dict__,
                "services": services,
                "updated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            },
        )


def _combine(errors: list[StackError]) -> StackError:
    if len(errors) == 1:
        return errors[0]
    message = "\n\n".join(str(e) for e in errors)
    services = [e.context.get("service") for e in errors]
    return StackError(f"{len(errors)} servers failed:\n{message}", services=services)
