"""The consistency monitor against the real stack: lag in events and seconds,
status rules (STOP, STALL with a SIGSTOPped runner, never STOP when idle,
REWIND, WARN then OK), order violations, verify, thresholds, Prometheus
and `kct status` exit codes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
import redis
from confluent_kafka import Consumer, Producer
from confluent_kafka import TopicPartition as KafkaTopicPartition
from prometheus_client.parser import text_string_to_metric_families

from connectors.kafka import KafkaSettings
from connectors.kafka.inspector import KafkaLogInspector, KafkaRecordTimestamps
from connectors.telemetry.metrics import MonitorMetrics, PrometheusEndpoint, meter_provider
from tests.balances import BALANCE_SET, balance_event
from tests.integration.conftest import Endpoints
from tests.integration.helpers import running
from tests.order_stats import placed_event
from tests.waiting import eventually
from toolkit.config import parse_config
from toolkit.conflicts import ConflictResolver, ResolverPolicy
from toolkit.envelope import Envelope
from toolkit.monitor import ConsistencyMonitor, ConsistencyReport, MonitorTarget
from toolkit.monitor_rules import Health, Status
from toolkit.projection import Projection
from toolkit.read_model import ReadModelBatch
from toolkit.runtime.app import Kct
from toolkit.runtime.cli import main
from toolkit.runtime.monitor_cli import targets_from_config

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def timestamps(kafka_settings: KafkaSettings) -> Iterator[KafkaRecordTimestamps]:
    made = KafkaRecordTimestamps(kafka_settings)
    yield made
    made.close()


@pytest.fixture
def make_monitor(
    kafka_settings: KafkaSettings, timestamps: KafkaRecordTimestamps, kct: Kct
) -> Callable[..., ConsistencyMonitor]:
    def make(targets: Sequence[MonitorTarget], window: int = 3) -> ConsistencyMonitor:
        return ConsistencyMonitor(
            targets, KafkaLogInspector(kafka_settings), timestamps, kct.store, window=window
        )

    return make


def write(bootstrap: str, topic: str, stamps_ms: Sequence[int], partition: int = 0) -> None:
    producer = Producer({"bootstrap.servers": bootstrap})
    for stamp in stamps_ms:
        producer.produce(topic, b"value", key=b"k", partition=partition, timestamp=stamp)
    producer.flush(10)


def commit(bootstrap: str, group: str, topic: str, offset: int, partition: int = 0) -> None:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    consumer.commit(offsets=[KafkaTopicPartition(topic, partition, offset)], asynchronous=False)
    consumer.close()


def checks(monitor: ConsistencyMonitor, count: int, every: float = 0.2) -> ConsistencyReport:
    report = monitor.check()
    for _ in range(count - 1):
        time.sleep(every)
        report = monitor.check()
    return report


def test_lag_in_events_and_exact_seconds_rising_while_the_group_is_empty(
    endpoints: Endpoints,
    create_topic: Callable[..., str],
    make_monitor: Callable[..., ConsistencyMonitor],
    group_id: str,
) -> None:
    topic = create_topic("monitor-lag", partitions=2)
    base = int(time.time() * 1000) - 100_000
    write(endpoints.kafka_bootstrap, topic, [base + i * 1_000 for i in range(10)])
    commit(endpoints.kafka_bootstrap, group_id, topic, 3)
    monitor = make_monitor(
        [
            MonitorTarget(group_id, (topic,), read_model=False),
            MonitorTarget("nobody", (topic,), group=f"{group_id}-none", read_model=False),
        ]
    )
    report = monitor.check()
    part = report.projection(group_id).partitions[0]
    assert (part.committed, part.last_stable, part.lag_events) == (3, 10, 7)
    expected = report.checked_at - (base + 3_000) / 1000
    assert part.lag_seconds is not None and abs(part.lag_seconds - expected) < 0.05
    assert report.projection(group_id).partitions[1].lag_seconds == 0.0  # empty partition
    never = report.projection("nobody").partitions[0]
    assert (never.committed, never.lag_events) == (None, 10)  # from the log start
    assert never.lag_seconds is not None and never.lag_seconds > part.lag_seconds + 2.9
    time.sleep(0.5)
    later = checks(monitor, 2)
    rising = later.projection(group_id).partitions[0]
    assert rising.lag_seconds is not None and rising.lag_seconds >= part.lag_seconds + 0.5
    assert later.projection(group_id).status is Status.STOP  # nobody consumes it
    assert later.projection(group_id).members == 0
    commit(endpoints.kafka_bootstrap, group_id, topic, 10)
    caught_up = monitor.check().projection(group_id).partitions[0]
    assert (caught_up.lag_events, caught_up.lag_seconds) == (0, 0.0)


def test_rewind_after_an_offset_reset_and_warn_then_ok_as_a_burst_drains(
    endpoints: Endpoints,
    create_topic: Callable[..., str],
    make_monitor: Callable[..., ConsistencyMonitor],
    group_id: str,
) -> None:
    topic = create_topic("monitor-burst", partitions=1)
    bootstrap = endpoints.kafka_bootstrap
    monitor = make_monitor([MonitorTarget(group_id, (topic,), read_model=False)], window=5)
    now = int(time.time() * 1000)
    committed = 0
    statuses = []
    for _ in range(4):  # a burst arriving faster than it is applied
        write(bootstrap, topic, [now] * 10)
        commit(bootstrap, group_id, topic, committed)
        committed += 2
        statuses.append(monitor.check().projection(group_id).status)
    assert statuses[-2:] == [Status.WARN, Status.WARN], statuses
    commit(bootstrap, group_id, topic, 25)  # draining
    assert monitor.check().projection(group_id).status is Status.OK
    commit(bootstrap, group_id, topic, 40)
    assert monitor.check().projection(group_id).status is Status.OK
    commit(bootstrap, group_id, topic, 5)  # `kafka-consumer-groups --reset-offsets`
    report = monitor.check().projection(group_id)
    assert report.status is Status.REWIND and "went back from 40 to 5" in report.reason
    assert monitor.check().projection(group_id).status is Status.REWIND  # while in the window


def _worker(endpoints: Endpoints, topic: str, group: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable, "-m", "tests.integration.projection_worker", "--topic", topic,
            "--group", group, "--bootstrap", endpoints.kafka_bootstrap,
            "--redis", endpoints.redis_url,
        ],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip


def test_stall_with_a_frozen_runner_never_stop_while_idle_and_caught_up(
    endpoints: Endpoints,
    create_topic: Callable[..., str],
    make_monitor: Callable[..., ConsistencyMonitor],
    kct: Kct,
    group_id: str,
) -> None:
    topic = create_topic("monitor-stall", partitions=1)
    for i in range(5):
        kct.publisher.publish(topic, placed_event(f"o-{i}", "c", 100))
    monitor = make_monitor([MonitorTarget(group_id, (topic,))], window=4)
    worker = _worker(endpoints, topic, group_id)
    try:
        eventually(lambda: monitor.check().projection(group_id).lag_events == 0, 30.0, every=0.2)
        idle = checks(monitor, 6)  # idle and caught up for more than a full window
        assert idle.projection(group_id).status is Status.OK
        part = idle.projection(group_id).partitions[0]
        assert (part.stored, part.committed, part.divergence) == (5, 5, 0)
        assert part.live and idle.projection(group_id).members == 1
        worker.send_signal(signal.SIGSTOP)  # frozen: still a member until its session ends
        for i in range(5, 8):
            kct.publisher.publish(topic, placed_event(f"o-{i}", "c", 100))
        stalled = checks(monitor, 4)
        assert stalled.projection(group_id).status is Status.STALL, stalled.projection(group_id)
        assert stalled.health is Health.FAILING
        worker.send_signal(signal.SIGCONT)
        eventually(lambda: monitor.check().projection(group_id).lag_events == 0, 30.0, every=0.2)
        assert monitor.check().projection(group_id).status is Status.OK
    finally:
        worker.send_signal(signal.SIGCONT)
        worker.kill()
        worker.wait(10)


def balances(name: str, topics: Sequence[str]) -> Projection:
    projection = Projection(name, topics)

    @projection.on(BALANCE_SET)
    def apply(event: Envelope, view: ReadModelBatch) -> None:
        view.put(f"balance:{event.aggregate_id}", {"balance": event.payload["balance"]})
        view.increment("totals", "events")

    return projection


def test_order_violations_and_verify_of_a_hand_edited_key(
    endpoints: Endpoints,
    create_topic: Callable[..., str],
    make_monitor: Callable[..., ConsistencyMonitor],
    kct: Kct,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    topic = create_topic("monitor-order", partitions=2)
    name = f"test-monitor-{uuid.uuid4().hex[:8]}"
    duplicate = balance_event("a1", 20, 2)
    for event in (balance_event("a1", 10, 1), balance_event("a1", 30, 3), duplicate, duplicate):
        kct.publisher.publish(topic, event)  # 3 before 2, then 2 twice
    kct.publisher.publish(topic, balance_event("a2", 5, 1))
    resolver = ConflictResolver({"account": ResolverPolicy(("deduplicate", "reorder"))})
    monitor = make_monitor([MonitorTarget(name, (topic,))])
    with running(kct.runner(balances(name, [topic]), resolver=resolver)):
        eventually(lambda: monitor.check().projection(name).lag_events == 0, 30.0, every=0.2)
    order = monitor.check().projection(name).order
    assert order is not None
    assert (order.counts["out_of_order"], order.counts["duplicate"]) == (1, 1)
    assert {(e["category"], e["sequence"]) for e in order.examples} == {
        ("out_of_order", 3),
        ("duplicate", 2),
    }
    config = tmp_path / "kct.yaml"
    config.write_text(
        f"""version: 1
kafka: {{bootstrap_servers: "{endpoints.kafka_bootstrap}"}}
redis: {{url: "{endpoints.redis_url}"}}
conflicts:
  account: [deduplicate, reorder]
monitor:
  projections:
    {name}: {{topics: [{topic}], definition: "tests.integration.test_monitor:balances"}}
"""
    )

    def verify() -> int:
        with pytest.raises(SystemExit) as exited:
            main(["monitor", "verify", name, "--config", str(config)])
        return int(exited.value.code or 0)

    assert verify() == 0, capsys.readouterr()
    assert "3 keys compared (all aggregates): OK" in capsys.readouterr().out
    client = redis.Redis.from_url(endpoints.redis_url)
    client.set(f"kct:rm:{{{name}}}:d:balance:a1", '{"balance": 31}')  # edited by hand
    assert verify() == 1
    out = capsys.readouterr().out
    assert "balance:a1" in out and '"balance": 31' in out and '"balance": 30' in out
    assert not list(client.scan_iter(match="kct:rm:{__kct.verify.*"))  # scratch removed


def test_thresholds_from_kct_yaml_change_health_and_status_exit_codes(
    endpoints: Endpoints,
    create_topic: Callable[..., str],
    make_monitor: Callable[..., ConsistencyMonitor],
    group_id: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    topic = create_topic("monitor-thresholds", partitions=1)
    write(endpoints.kafka_bootstrap, topic, [int(time.time() * 1000) - 20_000] * 6)
    commit(endpoints.kafka_bootstrap, group_id, topic, 2)

    def health(extra: str) -> Health:
        config = parse_config(
            f"""version: 1
kafka: {{bootstrap_servers: "{endpoints.kafka_bootstrap}"}}
monitor:
  {extra}
  projections:
    {group_id}: {{topics: [{topic}], kind: group}}
"""
        )
        return make_monitor(targets_from_config(config), window=10).check().health

    assert health("max_lag_seconds: 60") is Health.HEALTHY
    assert health("max_lag_events: 3") is Health.DEGRADED
    assert health("max_lag_seconds: 10") is Health.DEGRADED
    assert health("max_lag_events: 3\n  on_breach: ERR") is Health.FAILING

    def status(group: str) -> int:
        config = tmp_path / "kct.yaml"
        config.write_text(
            f"""version: 1
kafka: {{bootstrap_servers: "{endpoints.kafka_bootstrap}"}}
redis: {{url: "{endpoints.redis_url}"}}
monitor:
  projections:
    watched: {{topics: [{topic}], group: {group}, kind: group}}
"""
        )
        with pytest.raises(SystemExit) as exited:
            main(["status", "--config", str(config), "--every", "0.1", "--json"])
        return int(exited.value.code or 0)

    assert status(group_id) == 2  # behind and nobody consumes: STOP
    assert '"status": "STOP"' in capsys.readouterr().out
    commit(endpoints.kafka_bootstrap, group_id, topic, 6)
    assert status(group_id) == 0


def test_prometheus_endpoint_serves_the_last_check_with_the_lag_series(
    endpoints: Endpoints,
    create_topic: Callable[..., str],
    make_monitor: Callable[..., ConsistencyMonitor],
    group_id: str,
) -> None:
    topic = create_topic("monitor-prom", partitions=2)
    write(endpoints.kafka_bootstrap, topic, [int(time.time() * 1000) - 5_000] * 4)
    commit(endpoints.kafka_bootstrap, group_id, topic, 1)
    monitor = make_monitor([MonitorTarget(group_id, (topic,), read_model=False)])
    provider, registry = meter_provider("kct-tests")
    metrics = MonitorMetrics(provider)
    endpoint = PrometheusEndpoint(registry)
    metrics.update(monitor.check())
    endpoint.refresh()
    host, port = endpoint.start("127.0.0.1", 0)
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
    finally:
        endpoint.close()
        provider.shutdown()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    lag = {
        s.labels["messaging_destination_partition_id"]: s.value
        for s in families["kct_monitor_lag"].samples
        if s.labels["messaging_consumer_group_name"] == group_id
    }
    assert lag == {"0": 3.0, "1": 0.0}
    assert {
        s.labels["messaging_destination_name"] for s in families["kct_monitor_lag"].samples
    } == {topic}
    seconds = families["kct_monitor_lag_time_seconds"].samples
    assert any(s.value >= 5.0 for s in seconds)
    assert "kct_monitor_health" in families and "kct_monitor_offset" in families
