"""Facts about the machine and the servers a run measured on."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import confluent_kafka
import redis

from benchmarks.common import Endpoints


def _cpuinfo_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _ram() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    return "unknown"


def _kafka_version(ep: Endpoints) -> str:
    if not ep.local_stack:
        return f"external cluster at {ep.kafka_bootstrap} (version not queried)"
    from toolkit.runtime.stack.provision import KAFKA_VERSION

    return f"Apache Kafka {KAFKA_VERSION} (KRaft, 1 broker, `kct stack`)"


def _redis_version(url: str) -> str:
    client = redis.Redis.from_url(url, socket_timeout=5)
    try:
        info = client.info("server")
        return f"Redis {info.get('redis_version', '?')}"
    except redis.RedisError as exc:
        return f"unknown ({exc})"
    finally:
        client.close()


def machine_facts(ep: Endpoints) -> dict[str, str]:
    return {
        "CPU": f"{_cpuinfo_model()}, {os.cpu_count()} cores",
        "RAM": _ram(),
        "OS": f"{platform.system()} {platform.release()}",
        "Python": f"{platform.python_implementation()} {platform.python_version()}",
        "confluent-kafka": (
            f"{confluent_kafka.__version__} (librdkafka {confluent_kafka.libversion()[0]})"
        ),
        "Kafka": _kafka_version(ep),
        "Redis": f"{_redis_version(ep.redis_url)} at {ep.redis_url}",
    }


def _server_kind(cmdline: bytes) -> str:
    if b"redis-server" in cmdline:
        return "redis"
    if b"kafka.Kafka" in cmdline:
        return "kafka"
    if b"zookeeper" in cmdline.lower():
        return "zookeeper"
    if b"jaeger" in cmdline:
        return "jaeger"
    if b"python" in cmdline:
        return "python"
    return "other"


def cpu_seconds_by_kind() -> dict[str, float]:
    """CPU seconds every process on the machine has used so far, by kind (redis,
    kafka, zookeeper, jaeger, python, other). The difference of two snapshots
    says where a phase's CPU went, servers included (processes that exit in
    between drop out: take it over a phase whose processes live throughout)."""
    tick = os.sysconf("SC_CLK_TCK")
    totals: dict[str, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        kind = _server_kind(cmdline)
        totals[kind] = totals.get(kind, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return totals
