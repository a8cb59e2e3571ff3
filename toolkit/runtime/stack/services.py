"""The four servers of the local stack: ports, rendered configs, command lines, probes.

Each :class:`Service` knows how to make its program available (``provision``),
write its configuration into the state directory (``prepare``), the exact
command line to run (``argv``) and how to tell that it really answers
(``probe``). :mod:`toolkit.runtime.stack.local` drives them.

Guarantees: every port a server opens is listed in :meth:`Service.ports`, bound
to 127.0.0.1 and shifted by the stack's port offset, so two stacks with
different offsets never collide. Kafka storage is formatted once (random
cluster id); data directories are never touched by ``prepare`` otherwise.

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
from typing import ClassVar

from connectors.kafka.probe import kafka_ready
from connectors.redis.probe import redis_ready
from connectors.zookeeper.probe import zookeeper_ready
from toolkit.config import LOCAL_PORTS
from toolkit.errors import ConfigurationError, StackError
from toolkit.runtime.stack import provision as prov
from toolkit.runtime.stack.process import port_open, tail

_MAX_PORT = 65535


@dataclass(frozen=True)
class StackPorts:
    """Every TCP port of the stack (defaults = offset 0), all on 127.0.0.1."""

    kafka: int = LOCAL_PORTS["kafka"]
    kafka_controller: int = 19093
    kafka_sasl: int = 19094
    zookeeper: int = LOCAL_PORTS["zookeeper"]
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
        if offset < 0 or max(shifted.values()) > _MAX_PORT:
            raise ConfigurationError(
                f"port offset {offset} puts a port outside 1..{_MAX_PORT}", port_offset=offset
            )
        return replace(base, **shifted)

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


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
    """One server of the stack."""

    name: ClassVar[str]
    # Port fields of StackPorts this server binds.
    port_names: ClassVar[tuple[str, ...]]
    # Seconds between SIGTERM and SIGKILL on ``down``.
    stop_grace: ClassVar[float] = 10.0

    def __init__(self, layout: StackLayout, ports: StackPorts) -> None:
        self.layout = layout
        self.ports = ports

    def bound_ports(self) -> dict[str, int]:
        return {n: getattr(self.ports, n) for n in self.port_names}

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
    """Apache Kafka in KRaft mode: one combined broker + controller node."""

    name = "kafka"
    port_names = ("kafka", "kafka_controller", "kafka_sasl")
    stop_grace = 30.0  # controlled shutdown flushes logs and writes a clean marker
    _libs: Path | None = None

    @property
    def server_log(self) -> Path:
        return self.layout.logs / "kafka-server.log"

    def endpoint(self) -> str:
        return f"127.0.0.1:{self.ports.kafka}"

    def provision(self) -> None:
        _java()
        self._libs = prov.kafka_libs(self.layout.cache_dir)

    def prepare(self) -> None:
        res = prov.resources_dir() / "kafka"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        _render(
            res / "server.properties.tmpl",
            self.conf_dir / "server.properties",
            kafka=self.ports.kafka,
            kafka_controller=self.ports.kafka_controller,
            kafka_sasl=self.ports.kafka_sasl,
            log_dirs=str(self.data_dir),
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
        cluster_id = _random_cluster_id()
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
        heap = os.environ.get("KCT_KAFKA_HEAP", "512m")
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
        if not port_open(self.ports.kafka, min(timeout, 1.0)):
            return False
        return kafka_ready(self.endpoint(), timeout)


def _random_cluster_id() -> str:
    # Kafka's Uuid.randomUuid(): URL-safe base64 of 16 random bytes, no padding,
    # never starting with "-" (it would parse as a command-line flag).
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid


class ZooKeeperService(Service):
    """ZooKeeper standalone from the Debian package, run with java directly."""

    name = "zookeeper"
    port_names = ("zookeeper",)

    def endpoint(self) -> str:
        return f"127.0.0.1:{self.ports.zookeeper}"

    def provision(self) -> None:
        _java()
        prov.ensure_debian_packages()

    def prepare(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        _render(
            prov.resources_dir() / "zookeeper" / "zoo.cfg.tmpl",
            self.conf_dir / "zoo.cfg",
            zookeeper=self.ports.zookeeper,
            data_dir=str(self.data_dir),
        )

    def argv(self) -> list[str]:
        classpath = [str(prov.ZOOKEEPER_JAR)]
        if prov.ZOOKEEPER_SLF4J_BINDING.is_file():
            classpath.append(str(prov.ZOOKEEPER_SLF4J_BINDING))
        return [
            _java(),
            "-Xms64m",
            "-Xmx256m",
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
        if not port_open(self.ports.zookeeper, min(timeout, 1.0)):
            return False
        return zookeeper_ready(self.endpoint(), timeout)


class RedisService(Service):
    """Redis from the Debian package, AOF on (appendfsync everysec)."""

    name = "redis"
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
        )

    def argv(self) -> list[str]:
        return [str(prov.REDIS_SERVER), str(self.conf_dir / "redis.conf")]

    def probe(self, timeout: float) -> bool:
        if not port_open(self.ports.redis, min(timeout, 1.0)):
            return False
        return redis_ready(self.endpoint(), timeout)


class JaegerService(Service):
    """Jaeger v2 (an OpenTelemetry Collector build), in-memory storage."""

    name = "jaeger"
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


SERVICE_TYPES: tuple[type[Service], ...] = (
    KafkaService,
    ZooKeeperService,
    RedisService,
    JaegerService,
)
