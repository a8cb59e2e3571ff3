"""The servers of the local stack: ports, rendered configs, command lines, probes.

Each :class:`Service` knows how to make its program available (``provision``),
write its configuration into the state directory (``prepare``), the exact
command line to run (``argv``) and how to tell that it really answers
(``probe``). :mod:`toolkit.runtime.stack.local` drives them.

The single-node stack runs one of each (Kafka, ZooKeeper, Redis, Jaeger); the
cluster (:data:`CLUSTER`) runs three combined KRaft broker+controller Kafka
nodes (internal and default topics at replication factor 3,
``min.insync.replicas`` 2), a three-node ZooKeeper ensemble and Redis. Node
``n`` of a cluster is named ``kafka-n`` / ``zookeeper-n`` and uses the base
ports shifted by ``(n - 1) * NODE_PORT_STRIDE``.

Guarantees: every port a server opens is listed in :meth:`Service.bound_ports`,
bound to 127.0.0.1 and shifted by the stack's port offset, so two stacks with
different offsets never collide. Kafka storage is formatted once (one random
cluster id per state directory, shared by the nodes); data directories are
never touched by ``prepare`` otherwise.

Failure modes: ``provision`` and ``prepare`` raise
:class:`~toolkit.errors.StackError` (missing tool, failed download or format);
``probe`` never raises, it answers False.
"""

from __future__ import annotations

import base64
import os
import subprocess
import urllib.error
import urllib.request
import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass, fields, replace
from pathlib import Path
from string import Template
from threading import Lock
from typing import ClassVar

from connectors.kafka.probe import kafka_ready
from connectors.redis.probe import redis_ready
from connectors.zookeeper.probe import zookeeper_ready
from toolkit.config import LOCAL_PORTS
from toolkit.errors import ConfigurationError, StackError
from toolkit.runtime.stack import provision as prov
from toolkit.runtime.stack.process import port_open, tail

_MAX_PORT = 65535
# Node n of a cluster uses the base ports + (n - 1) * NODE_PORT_STRIDE.
NODE_PORT_STRIDE = 10


@dataclass(frozen=True)
class StackPorts:
    """Every TCP port of the stack (defaults = offset 0), all on 127.0.0.1."""

    kafka: int = LOCAL_PORTS["kafka"]
    kafka_controller: int = 19093
    kafka_sasl: int = 19094
    zookeeper: int = LOCAL_PORTS["zookeeper"]
    # An ensemble's quorum and leader-election ports (the cluster only).
    zookeeper_peer: int = 12182
    zookeeper_election: int = 12183
    redis: int = LOCAL_PORTS["redis"]
    otlp_grpc: int = 4317
    otlp_http: int = 4318
    jaeger_query: int = 16686
    jaeger_query_grpc: int = 16685
    jaeger_health: int = 13133
    jaeger_metrics: int = 8888

    @classmethod
    def with_offset(cls, offset: int) -> StackPorts:
        base = cls()
        shifted = {f.name: getattr(base, f.name) + offset for f in fields(cls)}
        highest = max(shifted.values()) + NODE_PORT_STRIDE * (CLUSTER.kafka_nodes - 1)
        if offset < 0 or highest > _MAX_PORT:
            raise ConfigurationError(
                f"port offset {offset} puts a port outside 1..{_MAX_PORT}", port_offset=offset
            )
        return replace(base, **shifted)

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class Topology:
    """How many nodes of each server a stack runs."""

    kafka_nodes: int = 1
    zookeeper_nodes: int = 1
    jaeger: bool = True

    @property
    def is_cluster(self) -> bool:
        return self.kafka_nodes > 1

    @property
    def replication_factor(self) -> int:
        """Replication factor of Kafka's internal and default topics."""
        return min(3, self.kafka_nodes)

    @property
    def min_insync_replicas(self) -> int:
        return min(2, self.kafka_nodes)


SINGLE = Topology()
# `kct stack up --cluster`: what the fault suite runs on (no Jaeger: it saves a
# process, and tracing is tested on the single-node stack).
CLUSTER = Topology(kafka_nodes=3, zookeeper_nodes=3, jaeger=False)


@dataclass(frozen=True)
class StackLayout:
    """Where a stack keeps its files, under one state directory."""

    root: Path
    cache_dir: Path

    @property
    def conf(self) -> Path:
        return self.root / "conf"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def stack_file(self) -> Path:
        return self.root / "stack.json"

    @property
    def lock_file(self) -> Path:
        return self.root / ".lock"

    @property
    def kafka_cluster_id(self) -> Path:
        """The KRaft cluster id every Kafka node of this stack is formatted with."""
        return self.data / "kafka-cluster-id"

    def pid_file(self, service: str) -> Path:
        return self.run / f"{service}.pid"


def _render(template: Path, target: Path, **values: str | int) -> None:
    text = Template(template.read_text(encoding="utf-8")).substitute(
        {k: str(v) for k, v in values.items()}
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, target)


class Service(ABC):
    """One server (one node of it, in a cluster) of the stack."""

    kind: ClassVar[str]
    # Port fields of StackPorts this server binds.
    port_names: ClassVar[tuple[str, ...]]
    # Seconds between SIGTERM and SIGKILL on ``down``.
    stop_grace: ClassVar[float] = 10.0

    def __init__(
        self, layout: StackLayout, ports: StackPorts, node: int = 0, topology: Topology = SINGLE
    ) -> None:
        self.layout = layout
        self.ports = ports
        # 0 for the one server of its kind; 1..n for the nodes of a cluster.
        self.node = node
        self.topology = topology
        self.name = f"{self.kind}-{node}" if node else self.kind

    def port(self, name: str, node: int | None = None) -> int:
        """Port ``name`` of this node (or of node ``node`` of the same server)."""
        node = self.node if node is None else node
        return int(getattr(self.ports, name)) + NODE_PORT_STRIDE * max(0, node - 1)

    def bound_ports(self) -> dict[str, int]:
        return {n: self.port(n) for n in self.port_names}

    @property
    def conf_dir(self) -> Path:
        return self.layout.conf / self.name

    @property
    def data_dir(self) -> Path:
        return self.layout.data / self.name

    @property
    def out_log(self) -> Path:
        """Where the process's stdout and stderr go."""
        return self.layout.logs / f"{self.name}.log"

    @property
    def server_log(self) -> Path:
        """The most telling log of the server (its own log file if it has one)."""
        return self.out_log

    @abstractmethod
    def endpoint(self) -> str: ...

    def extra_endpoints(self) -> dict[str, str]:
        return {}

    @abstractmethod
    def provision(self) -> None:
        """Make the program available (may download or build; slow when cold)."""

    @abstractmethod
    def prepare(self) -> None:
        """Render configs into the state directory and create data directories."""

    @abstractmethod
    def argv(self) -> list[str]:
        """The exact command line; also what identifies the process later."""

    @abstractmethod
    def probe(self, timeout: float) -> bool:
        """True if the server really answers a client request."""

    def env(self) -> dict[str, str]:
        return dict(os.environ)

    def log_excerpt(self, lines: int = 30) -> str:
        """The last lines of the server's logs, for error messages."""
        parts = []
        # stdout last: a JVM or linker error there is the likeliest cause of a crash.
        for path in dict.fromkeys([self.server_log, self.out_log]):
            text = tail(path, lines)
            if text:
                parts.append(f"--- last lines of {path} ---\n{text}")
        return "\n".join(parts) if parts else f"(no log output in {self.out_log})"


def _java() -> str:
    return prov.require_tool("java", "run Kafka and ZooKeeper (Java 17 or newer)")


class KafkaService(Service):
    """Apache Kafka in KRaft mode: one combined broker + controller node (of 1 or 3)."""

    kind = "kafka"
    port_names = ("kafka", "kafka_controller", "kafka_sasl")
    stop_grace = 30.0  # controlled shutdown flushes logs and writes a clean marker
    _libs: Path | None = None

    @property
    def server_log(self) -> Path:
        return self.layout.logs / f"{self.name}-server.log"

    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port('kafka')}"

    def _nodes(self) -> list[int]:
        return [n + 1 for n in range(self.topology.kafka_nodes)] if self.node else [0]

    def provision(self) -> None:
        _java()
        self._libs = prov.kafka_libs(self.layout.cache_dir)

    def prepare(self) -> None:
        res = prov.resources_dir() / "kafka"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        topo = self.topology
        voters = ",".join(
            f"{max(n, 1)}@127.0.0.1:{self.port('kafka_controller', n)}" for n in self._nodes()
        )
        _render(
            res / "server.properties.tmpl",
            self.conf_dir / "server.properties",
            node_id=max(self.node, 1),
            quorum_voters=voters,
            kafka=self.port("kafka"),
            kafka_controller=self.port("kafka_controller"),
            kafka_sasl=self.port("kafka_sasl"),
            log_dirs=str(self.data_dir),
            replication_factor=topo.replication_factor,
            min_insync_replicas=topo.min_insync_replicas,
            # A cluster drops a dead follower from the ISR within 10 s (default 30 s)
            # and moves a dead broker's leaderships after 6 s (default 9 s).
            replica_lag_ms=10_000 if topo.is_cluster else 30_000,
            broker_session_ms=6_000 if topo.is_cluster else 9_000,
        )
        _render(
            res / "log4j2.xml.tmpl", self.conf_dir / "log4j2.xml", log_file=str(self.server_log)
        )
        if not (self.data_dir / "meta.properties").is_file():
            self._format()

    def _classpath(self) -> str:
        if self._libs is None:
            self._libs = prov.kafka_libs(self.layout.cache_dir)
        # java expands "dir/*" itself: no shell, and the command line stays short.
        return f"{self._libs}/*"

    def _format(self) -> None:
        cluster_id = _shared_cluster_id(self.layout.kafka_cluster_id)
        argv = [
            _java(),
            "-cp",
            self._classpath(),
            # No broker log config: the formatter's output is captured here instead
            # of landing in the broker's log.
            "kafka.tools.StorageTool",
            "format",
            "--cluster-id",
            cluster_id,
            "--config",
            str(self.conf_dir / "server.properties"),
            "--ignore-formatted",
        ]
        result = subprocess.run(argv, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise StackError(
                "formatting Kafka storage failed:\n" + (result.stdout + result.stderr)[-3000:],
                service=self.name,
                path=str(self.data_dir),
            )

    def argv(self) -> list[str]:
        # A cluster's three nodes share a small machine with other stacks. 512 MB
        # ran out (OutOfMemoryError) on a long-lived stack holding the topics of
        # many test and benchmark runs: its metadata alone outgrew the heap.
        heap = os.environ.get("KCT_KAFKA_HEAP", "768m" if self.node else "1g")
        return [
            _java(),
            f"-Xms{heap}",
            f"-Xmx{heap}",
            "-Djava.awt.headless=true",
            f"-Dkafka.logs.dir={self.layout.logs}",
            f"-Dlog4j2.configurationFile={self.conf_dir / 'log4j2.xml'}",
            "-cp",
            self._classpath(),
            "kafka.Kafka",
            str(self.conf_dir / "server.properties"),
        ]

    def probe(self, timeout: float) -> bool:
        if not port_open(self.port("kafka"), min(timeout, 1.0)):
            return False
        return kafka_ready(self.endpoint(), timeout)


_cluster_id_lock = Lock()


def _shared_cluster_id(path: Path) -> str:
    """The stack's KRaft cluster id: made once, then read by every node's format."""
    with _cluster_id_lock:
        try:
            found = path.read_text(encoding="ascii").strip()
        except OSError:
            found = ""
        if found:
            return found
        made = _random_cluster_id()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(made + "\n", encoding="ascii")
        os.replace(tmp, path)
        return made


def _random_cluster_id() -> str:
    # Kafka's Uuid.randomUuid(): URL-safe base64 of 16 random bytes, no padding,
    # never starting with "-" (it would parse as a command-line flag).
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid


class ZooKeeperService(Service):
    """ZooKeeper from the Debian package, run with java directly: standalone, or
    one node of an ensemble (``server.n`` lines and a ``myid`` file)."""

    kind = "zookeeper"
    port_names = ("zookeeper",)

    def bound_ports(self) -> dict[str, int]:
        names = (*self.port_names, "zookeeper_peer", "zookeeper_election")
        return {n: self.port(n) for n in (names if self.node else self.port_names)}

    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port('zookeeper')}"

    def provision(self) -> None:
        _java()
        prov.ensure_debian_packages()

    def prepare(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        servers = ""
        if self.node:
            servers = "\n".join(
                f"server.{n}=127.0.0.1:{self.port('zookeeper_peer', n)}"
                f":{self.port('zookeeper_election', n)}"
                for n in range(1, self.topology.zookeeper_nodes + 1)
            )
            (self.data_dir / "myid").write_text(f"{self.node}\n", encoding="ascii")
        _render(
            prov.resources_dir() / "zookeeper" / "zoo.cfg.tmpl",
            self.conf_dir / "zoo.cfg",
            zookeeper=self.port("zookeeper"),
            data_dir=str(self.data_dir),
            servers=servers,
        )

    def argv(self) -> list[str]:
        classpath = [str(prov.ZOOKEEPER_JAR)]
        if prov.ZOOKEEPER_SLF4J_BINDING.is_file():
            classpath.append(str(prov.ZOOKEEPER_SLF4J_BINDING))
        return [
            _java(),
            "-Xms64m",
            "-Xmx128m" if self.node else "-Xmx256m",
            "-Djava.awt.headless=true",
            f"-Dzookeeper.log.dir={self.layout.logs}",
            "-Dorg.slf4j.simpleLogger.showDateTime=true",
            "-Dorg.slf4j.simpleLogger.dateTimeFormat=yyyy-MM-dd'T'HH:mm:ss.SSS",
            "-cp",
            ":".join(classpath),
            "org.apache.zookeeper.server.quorum.QuorumPeerMain",
            str(self.conf_dir / "zoo.cfg"),
        ]

    def probe(self, timeout: float) -> bool:
        if not port_open(self.port("zookeeper"), min(timeout, 1.0)):
            return False
        return zookeeper_ready(self.endpoint(), timeout)


class RedisService(Service):
    """Redis from the Debian package, AOF on (appendfsync everysec; always on the cluster)."""

    kind = "redis"
    port_names = ("redis",)

    def endpoint(self) -> str:
        return f"redis://127.0.0.1:{self.ports.redis}/0"

    def provision(self) -> None:
        prov.ensure_debian_packages()

    def prepare(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        _render(
            prov.resources_dir() / "redis" / "redis.conf.tmpl",
            self.conf_dir / "redis.conf",
            redis=self.ports.redis,
            data_dir=str(self.data_dir),
            # The cluster is the production-like topology: no acknowledged step
            # record may be lost, even on a host crash.
            appendfsync="always" if self.topology.is_cluster else "everysec",
        )

    def argv(self) -> list[str]:
        return [str(prov.REDIS_SERVER), str(self.conf_dir / "redis.conf")]

    def probe(self, timeout: float) -> bool:
        if not port_open(self.port("redis"), min(timeout, 1.0)):
            return False
        return redis_ready(self.endpoint(), timeout)


class JaegerService(Service):
    """Jaeger v2 (an OpenTelemetry Collector build), in-memory storage."""

    kind = "jaeger"
    port_names = (
        "otlp_grpc",
        "otlp_http",
        "jaeger_query",
        "jaeger_query_grpc",
        "jaeger_health",
        "jaeger_metrics",
    )
    _binary: Path | None = None

    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports.jaeger_query}"

    def extra_endpoints(self) -> dict[str, str]:
        return {
            "otlp_grpc": f"127.0.0.1:{self.ports.otlp_grpc}",
            "otlp_http": f"http://127.0.0.1:{self.ports.otlp_http}",
        }

    def provision(self) -> None:
        self._binary = prov.jaeger_binary(self.layout.cache_dir)

    def prepare(self) -> None:
        _render(
            prov.resources_dir() / "jaeger" / "config.yaml.tmpl",
            self.conf_dir / "config.yaml",
            **self.bound_ports(),
        )

    def argv(self) -> list[str]:
        if self._binary is None:
            self._binary = prov.jaeger_binary(self.layout.cache_dir)
        return [str(self._binary), "--config", str(self.conf_dir / "config.yaml")]

    def probe(self, timeout: float) -> bool:
        url = f"{self.endpoint()}/api/services"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:
                return int(resp.status) == 200
        except (urllib.error.URLError, OSError, ValueError):
            return False


def services_for(topology: Topology, layout: StackLayout, ports: StackPorts) -> list[Service]:
    """Every server (every node) of a stack with this topology, in start order."""

    def nodes(count: int) -> list[int]:
        return list(range(1, count + 1)) if count > 1 else [0]

    made: list[Service] = [
        KafkaService(layout, ports, n, topology) for n in nodes(topology.kafka_nodes)
    ]
    made += [ZooKeeperService(layout, ports, n, topology) for n in nodes(topology.zookeeper_nodes)]
    made.append(RedisService(layout, ports, 0, topology))
    if topology.jaeger:
        made.append(JaegerService(layout, ports, 0, topology))
    return made
