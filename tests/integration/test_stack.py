"""`kct stack up | down | status` against real servers, through the CLI.

A second stack runs in a temporary state directory with a port offset 1000
above this run's own stack, so that stack is never disturbed; the
port-conflict case uses a third offset. The tests in this module run in
file order and share one stack: up -> really talk to each server -> up
again (no-op) -> down.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic
from kazoo.client import KazooClient

from connectors.kafka.probe import kafka_can_replicate, kafka_ready
from toolkit.runtime.stack import default_port_offset

# Relative to this run's own stack (KCT_STACK_PORT_OFFSET), so they never collide.
OFFSET = default_port_offset() + 1000
CONFLICT_OFFSET = default_port_offset() + 2000
REPO = Path(__file__).resolve().parents[2]
SERVICES = ("kafka", "zookeeper", "redis", "jaeger")


KCT = Path(sys.executable).with_name("kct")  # the installed console script


def _kct_stack(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(KCT), "stack", *args],
        capture_output=True,
        text=True,
        timeout=400,
        check=False,
    )


def _status(state_dir: Path) -> tuple[int, dict[str, Any]]:
    result = _kct_stack("status", "--state-dir", str(state_dir), "--json")
    return result.returncode, json.loads(result.stdout)


def _default_stack_pids() -> dict[str, int | None]:
    env_dir = os.environ.get("KCT_STATE_DIR")
    state_dir = Path(env_dir) if env_dir else Path.home() / ".local" / "state" / "kct"
    _, status = _status(state_dir)
    return {name: svc["pid"] for name, svc in status["services"].items()}


def _pid_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] != "Z"


@pytest.fixture(scope="module")
def default_pids_before() -> dict[str, int | None]:
    return _default_stack_pids()


@pytest.fixture(scope="module")
def stack_dir(
    tmp_path_factory: pytest.TempPathFactory, default_pids_before: dict[str, int | None]
) -> Iterator[Path]:
    state_dir = tmp_path_factory.mktemp("kct-stack") / "state"
    started = time.monotonic()
    result = _kct_stack("up", "--state-dir", str(state_dir), "--port-offset", str(OFFSET))
    assert result.returncode == 0, result.stderr
    print(f"second stack up in {time.monotonic() - started:.1f} s")
    yield state_dir
    # Whatever happened, leave no servers behind.
    _kct_stack("down", "--state-dir", str(state_dir), "--purge")


def test_up_brings_every_server_healthy(stack_dir: Path) -> None:
    code, status = _status(stack_dir)
    assert code == 0, status
    assert status["state_dir"] == str(stack_dir)
    services = status["services"]
    assert set(services) == set(SERVICES)
    for name in SERVICES:
        assert services[name]["running"] is True, name
        assert services[name]["healthy"] is True, name
        assert isinstance(services[name]["pid"], int), name
    assert services["kafka"]["endpoint"] == f"127.0.0.1:{19092 + OFFSET}"
    assert services["zookeeper"]["endpoint"] == f"127.0.0.1:{12181 + OFFSET}"
    assert services["redis"]["endpoint"] == f"redis://127.0.0.1:{16379 + OFFSET}/0"
    assert services["jaeger"]["endpoint"] == f"http://127.0.0.1:{16686 + OFFSET}"
    assert services["jaeger"]["otlp_grpc"] == f"127.0.0.1:{4317 + OFFSET}"
    assert services["jaeger"]["otlp_http"] == f"http://127.0.0.1:{4318 + OFFSET}"


def test_a_cluster_is_ready_once_the_controller_accepts_its_replication_factor(
    stack_dir: Path,
) -> None:
    # Answering is not enough for a cluster (a restarted node answers while it
    # replays the metadata log): `up --cluster` waits for a validate-only topic
    # of the cluster's replication factor. Here, on one broker: 1 but not 2.
    bootstrap = f"127.0.0.1:{19092 + OFFSET}"
    assert kafka_ready(bootstrap, 10.0)
    assert kafka_can_replicate(bootstrap, 1, 10.0)
    assert not kafka_can_replicate(bootstrap, 2, 10.0)
    admin = AdminClient({"bootstrap.servers": bootstrap})
    assert not [t for t in admin.list_topics(timeout=10).topics if "readiness" in t]


def test_kafka_produces_and_consumes(stack_dir: Path) -> None:
    bootstrap = f"127.0.0.1:{19092 + OFFSET}"
    topic = f"test.stack.{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])[topic].result(30)
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    producer.produce(topic, key=b"k", value=b"hello")
    assert producer.flush(30) == 0
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"test-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
        }
    )
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + 30
        message = None
        while message is None and time.monotonic() < deadline:
            message = consumer.poll(1.0)
        assert message is not None and message.error() is None
        assert message.value() == b"hello"
        consumer.commit(message=message, asynchronous=False)  # the group coordinator works too
    finally:
        consumer.close()


def test_zookeeper_stores_a_znode(stack_dir: Path) -> None:
    client = KazooClient(hosts=f"127.0.0.1:{12181 + OFFSET}", timeout=10)
    client.start(timeout=15)
    try:
        path = f"/kct-test/{uuid.uuid4().hex[:8]}"
        client.create(path, b"v1", makepath=True)
        data, _ = client.get(path)
        assert data == b"v1"
        client.delete(path)
    finally:
        client.stop()
        client.close()


def test_redis_set_get_and_aof(stack_dir: Path) -> None:
    client = redis.Redis.from_url(f"redis://127.0.0.1:{16379 + OFFSET}/0")
    try:
        client.set("kct:test", "v1")
        assert client.get("kct:test") == b"v1"
        config = client.config_get("append*")
        assert config["appendonly"] == "yes"
        assert config["appendfsync"] == "everysec"
    finally:
        client.close()


def test_jaeger_receives_otlp_and_answers_queries(stack_dir: Path) -> None:
    service = f"kct-test-{uuid.uuid4().hex[:8]}"
    now = time.time_ns()
    span = {
        "resourceSpans": [
            {
                "resource": {
                    "attributes": [
                        {"key": "service.name", "value": {"stringValue": service}},
                    ]
                },
                "scopeSpans": [
                    {
                        "spans": [
                            {
                                "traceId": uuid.uuid4().hex,
                                "spanId": uuid.uuid4().hex[:16],
                                "name": "probe",
                                "kind": 1,
                                "startTimeUnixNano": str(now),
                                "endTimeUnixNano": str(now + 1_000_000),
                            }
                        ]
                    }
                ],
            }
        ]
    }
    request = urllib.request.Request(
        f"http://127.0.0.1:{4318 + OFFSET}/v1/traces",
        data=json.dumps(span).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as resp:
        assert resp.status == 200
    url = f"http://127.0.0.1:{16686 + OFFSET}/api/services"
    deadline = time.monotonic() + 20
    services: list[str] = []
    while time.monotonic() < deadline:
        with urllib.request.urlopen(url, timeout=10) as resp:
            assert resp.status == 200
            services = json.loads(resp.read())["data"] or []
        if service in services:
            break
        time.sleep(0.3)
    assert service in services


def test_up_again_is_a_noop(stack_dir: Path) -> None:
    _, before = _status(stack_dir)
    result = _kct_stack("up", "--state-dir", str(stack_dir), "--port-offset", str(OFFSET))
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("already running") == len(SERVICES), result.stderr
    _, after = _status(stack_dir)
    for name in SERVICES:
        assert after["services"][name]["pid"] == before["services"][name]["pid"], name


def test_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    port = 16379 + CONFLICT_OFFSET
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", port))
        result = _kct_stack(
            "up", "--state-dir", str(tmp_path / "state"), "--port-offset", str(CONFLICT_OFFSET)
        )
    assert result.returncode != 0
    assert f"redis port {port}" in result.stderr, result.stderr
    assert "--port-offset" in result.stderr
    # The check comes before anything starts: no half-started stack is left.
    assert not list((tmp_path / "state").glob("run/*.pid"))


def test_down_stops_everything(stack_dir: Path) -> None:
    _, before = _status(stack_dir)
    pids = [before["services"][name]["pid"] for name in SERVICES]
    result = _kct_stack("down", "--state-dir", str(stack_dir))
    assert result.returncode == 0, result.stderr
    code, after = _status(stack_dir)
    assert code == 1
    for name in SERVICES:
        svc = after["services"][name]
        assert (svc["running"], svc["healthy"], svc["pid"]) == (False, False, None), name
    assert not [pid for pid in pids if _pid_alive(pid)]
    assert not list(stack_dir.glob("run/*.pid"))
    assert (stack_dir / "data" / "kafka" / "meta.properties").is_file()  # data survives


def test_default_stack_untouched(default_pids_before: dict[str, int | None]) -> None:
    assert _default_stack_pids() == default_pids_before
