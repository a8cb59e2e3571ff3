"""Benchmark 6: one monitor check over 100 / 300 / 1,000 partitions, against the
bare Kafka admin round trips it needs, and /metrics scrapes.

Per size: a fresh topic of N partitions, two records in each, a group with
offset 1 committed on each (so every partition lags and needs a record
timestamp). Measured, interleaved, ``rounds`` times each:

* **bare admin**: the requests a check makes, with confluent-kafka's
  AdminClient and nothing else: topic metadata, three list-offsets requests
  in flight together (earliest, latest read_committed, latest
  read_uncommitted), the group's committed offsets, describe groups;
* **check**: ``ConsistencyMonitor.check()`` (a group target without read
  model: Kafka only), timestamps cached after the first check;
* **cold check**: the first check, which also reads N record timestamps.

Scrapes: ``GET /metrics`` of ``PrometheusEndpoint`` serving a check's text:
one report with ~1,000 series (143 partitions x 7 series) and the
1,000-partition one (~8,000 series); plus the render at the end of a check.

Alone: ``python -m benchmarks.monitor [--rounds N]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Future, wait
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from confluent_kafka import (
    Consumer,
    ConsumerGroupTopicPartitions,
    IsolationLevel,
    Producer,
)
from confluent_kafka import TopicPartition as KafkaTopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.admin._listoffsets import OffsetSpec

from benchmarks.common import Endpoints, endpoints
from benchmarks.report import Section
from connectors.kafka import KafkaAdmin, KafkaSettings
from connectors.kafka.inspector import KafkaLogInspector, KafkaRecordTimestamps
from connectors.telemetry.metrics import MonitorMetrics, PrometheusEndpoint, meter_provider
from toolkit.monitor import ConsistencyMonitor, ConsistencyReport, MonitorTarget

SIZES = (100, 300, 1_000)


@dataclass
class SizeResult:
    partitions: int
    bare_ms: list[float] = field(default_factory=list)
    check_ms: list[float] = field(default_factory=list)
    cold_ms: float = 0.0

    @property
    def overhead_ms(self) -> float:
        return statistics.median(self.check_ms) - statistics.median(self.bare_ms)


@dataclass
class ScrapeResult:
    series: int
    p50_ms: float
    p99_ms: float
    render_ms: float


@dataclass
class MonitorResult:
    sizes: list[SizeResult]
    scrapes: list[ScrapeResult]


def _p(samples: Sequence[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _prepare(settings: KafkaSettings, admin: KafkaAdmin, partitions: int) -> tuple[str, str]:
    topic = f"bench.monitor.{partitions}.{uuid.uuid4().hex[:8]}"
    group = f"bench.monitor.{uuid.uuid4().hex[:8]}"
    admin.create_topics([topic], partitions=partitions)
    producer = Producer({"bootstrap.servers": settings.bootstrap_servers, "linger.ms": 5})
    for partition in range(partitions):
        for _ in range(2):
            producer.produce(topic, b"v", partition=partition)
    producer.flush(30)
    consumer = Consumer({"bootstrap.servers": settings.bootstrap_servers, "group.id": group})
    consumer.commit(
        offsets=[KafkaTopicPartition(topic, p, 1) for p in range(partitions)], asynchronous=False
    )
    consumer.close()
    return topic, group


def _bare(client: AdminClient, topic: str, group: str) -> None:
    """The admin requests of one check, and nothing else."""
    described = client.list_topics(topic=topic, timeout=10).topics[topic]
    ktps = [KafkaTopicPartition(topic, p) for p in described.partitions]
    specs = (
        (OffsetSpec.earliest(), IsolationLevel.READ_UNCOMMITTED),  # type: ignore[no-untyped-call]
        (OffsetSpec.latest(), IsolationLevel.READ_COMMITTED),  # type: ignore[no-untyped-call]
        (OffsetSpec.latest(), IsolationLevel.READ_UNCOMMITTED),  # type: ignore[no-untyped-call]
    )
    futures: list[Future[Any]] = []
    for spec, isolation in specs:
        futures += client.list_offsets(
            dict.fromkeys(ktps, spec), isolation_level=isolation
        ).values()
    wait(futures)
    [committed] = client.list_consumer_group_offsets(
        [ConsumerGroupTopicPartitions(group, ktps)]
    ).values()
    committed.result()
    for future in client.describe_consumer_groups([group]).values():
        future.result()


def _time_ms(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return (time.perf_counter() - started) * 1000


def _scrape(report: ConsistencyReport, rounds: int) -> ScrapeResult:
    provider, registry = meter_provider("kct-bench")
    metrics = MonitorMetrics(provider)
    metrics.update(report)
    endpoint = PrometheusEndpoint(registry)
    render_ms = _time_ms(endpoint.refresh)
    body = endpoint.body.decode()
    series = sum(1 for line in body.splitlines() if line and not line.startswith("#"))
    host, port = endpoint.start("127.0.0.1", 0)
    url = f"http://{host}:{port}/metrics"
    samples = []
    try:
        for _ in range(rounds):
            started = time.perf_counter()
            with urllib.request.urlopen(url, timeout=5) as response:
                response.read()
            samples.append((time.perf_counter() - started) * 1000)
    finally:
        endpoint.close()
        provider.shutdown()
    return ScrapeResult(series, _p(samples, 0.5), _p(samples, 0.99), render_ms)


def run_monitor(
    ep: Endpoints, rounds: int = 30, progress: Callable[[str], None] = print
) -> MonitorResult:
    settings = KafkaSettings(bootstrap_servers=ep.kafka_bootstrap)
    admin = KafkaAdmin(settings)
    client = AdminClient({"bootstrap.servers": ep.kafka_bootstrap})
    inspector = KafkaLogInspector(settings)
    timestamps = KafkaRecordTimestamps(settings)
    sizes: list[SizeResult] = []
    scrapes: list[ScrapeResult] = []
    topics: list[str] = []
    try:
        for partitions in SIZES:
            topic, group = _prepare(settings, admin, partitions)
            topics.append(topic)
            monitor = ConsistencyMonitor(
                [MonitorTarget(group, (topic,), read_model=False)], inspector, timestamps
            )
            result = SizeResult(partitions)
            result.cold_ms = _time_ms(monitor.check)
            _bare(client, topic, group)  # warm both paths
            report = monitor.check()
            for _ in range(rounds):
                result.bare_ms.append(_time_ms(partial(_bare, client, topic, group)))
                result.check_ms.append(_time_ms(monitor.check))
            assert report.projection(group).lag_events == partitions
            sizes.append(result)
            progress(
                f"  {partitions} partitions: "
                f"bare admin {statistics.median(result.bare_ms):.1f} ms, "
                f"check {statistics.median(result.check_ms):.1f} ms, "
                f"cold {result.cold_ms:.0f} ms"
            )
            if partitions == SIZES[-1]:
                small = ConsistencyReport(
                    report.checked_at,
                    report.duration,
                    (
                        report.projections[0].__class__(
                            **{
                                **report.projections[0].__dict__,
                                "partitions": report.projections[0].partitions[:143],
                            }
                        ),
                    ),
                )
                scrapes = [_scrape(small, rounds * 10), _scrape(report, rounds * 10)]
    finally:
        timestamps.close()
        admin.delete_topics(topics)
    return MonitorResult(sizes, scrapes)


def monitor_section(result: MonitorResult) -> Section:
    rows = [
        [
            f"check, {s.partitions:,} partitions",
            f"{statistics.median(s.bare_ms):.1f}",
            f"{statistics.median(s.check_ms):.1f}",
            f"{_p(s.check_ms, 0.99):.1f}",
            f"{s.overhead_ms:.1f}",
            f"{s.cold_ms:.0f}",
        ]
        for s in result.sizes
    ]
    rows += [
        [
            f"scrape, {s.series:,} series",
            "-",
            f"{s.p50_ms:.2f}",
            f"{s.p99_ms:.2f}",
            "-",
            f"render {s.render_ms:.0f}",
        ]
        for s in result.scrapes
    ]
    largest = result.sizes[-1] if result.sizes else None
    scrape = result.scrapes[0] if result.scrapes else None
    verdicts = []
    if largest is not None:
        word = "PASS" if largest.overhead_ms < 100 else "FAIL"
        verdicts.append(
            f"**{word}** check over {largest.partitions:,} partitions < 100 ms beyond the bare "
            f"admin round trips: {largest.overhead_ms:.1f} ms"
        )
    if scrape is not None:
        word = "PASS" if scrape.p99_ms < 10 else "FAIL"
        verdicts.append(f"**{word}** scrape of {scrape.series:,} series p99 < 10 ms: "
                        f"{scrape.p99_ms:.2f} ms")  # fmt: skip
    return Section(
        title="Monitor check and scrape (milliseconds)",
        head=["what", "bare admin p50", "p50", "p99", "beyond bare (p50)", "cold check"],
        rows=rows,
        notes=(
            "One group lagging on every partition of a fresh topic; interleaved rounds. "
            "'bare admin' makes the check's requests with confluent-kafka's AdminClient alone; "
            "'cold check' is the first, which also reads every partition's record timestamp "
            "(cached afterwards: a record never changes). Scrapes serve the text rendered at the "
            "end of a check ('render', paid once per check, not per scrape). " + " ".join(verdicts)
        ),
    )


def main(argv: Sequence[str] | None = None) -> None:
    from rich.console import Console

    from benchmarks.report import _table

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args(argv)
    console = Console()
    section = monitor_section(run_monitor(endpoints(), args.rounds, console.print))
    console.print(_table(section.title, section.head, section.rows))
    console.print(section.notes)


if __name__ == "__main__":
    main()
