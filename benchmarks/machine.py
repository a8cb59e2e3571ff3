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
