"""Transactional copy on the cluster while brokers and copiers are kill -9'd.

Kafka's own transactional system test, on kct's connectors: events are
copied between two replication-factor-3 topics by two copier processes
(:mod:`tests.faults.copier`, a read_committed consumer and a transactional
producer that commits the group's offsets in the same transaction) while
brokers are killed with kill -9 and restarted one at a time and copiers are
killed at random and restarted. Afterwards the target, read
``read_committed``, must equal the source exactly: nothing lost, nothing
duplicated, the order of every key kept.
"""

from __future__ import annotations

import subprocess
import time
import uuid
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from connectors.kafka import KafkaAdmin, KafkaRecordProducer, KafkaSettings
from toolkit.ports import ConsumedRecord, OutgoingRecord
from toolkit.runtime.stack import LocalStack

from .cluster import Chaos, FaultRun, Progress, guarded, read_committed_records, report, size

REPO = Path(__file__).resolve().parents[2]
KEYS = 50
COPIERS = 2


def _source_events(count: int) -> list[OutgoingRecord]:
    # Value = key and its sequence number within the key: order is checkable per key.
    seq: Counter[int] = Counter()
    out = []
    for n in range(count):
        key = n % KEYS
        out.append(OutgoingRecord("", f"k{key}".encode(), f"k{key}:{seq[key]}".encode()))
        seq[key] += 1
    return out


def _fill(settings: KafkaSettings, topic: str, events: list[OutgoingRecord]) -> None:
    producer = KafkaRecordProducer(settings)
    try:
        for start in range(0, len(events), 5000):
            chunk = events[start : start + 5000]
            producer.produce([OutgoingRecord(topic, e.key, e.value) for e in chunk])
    finally:
        producer.close()


class Copiers:
    """The copier processes, by slot; kill -9 one and start it again."""

    def __init__(
        self, bootstrap: str, source: str, target: str, group: str, rate: int, log: Path
    ) -> None:
        self.args = [
            *("--bootstrap", bootstrap, "--source", source, "--target", target),
            *("--group", group, "--rate", str(rate)),
        ]
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.log = log

    def start(self, slot: int) -> None:
        with self.log.open("ab") as out:
            self.procs[slot] = subprocess.Popen(
                guarded("tests.faults.copier", *self.args, "--slot", str(slot)),
                cwd=REPO,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def kill_9(self, slot: int) -> None:
        self.procs[slot].kill()
        self.procs[slot].wait(10)

    def revive_exited(self) -> None:
        for slot, proc in self.procs.items():
            if proc.poll() is not None:
                self.start(slot)

    def stop(self) -> None:
        for proc in self.procs.values():
            proc.kill()
            proc.wait(10)


def _verify(events: list[OutgoingRecord], records: list[ConsumedRecord]) -> tuple[int, int]:
    """(lost, duplicated), after checking the order within every key."""
    seen = Counter(r.value for r in records)
    lost = sum(1 for e in events if seen[e.value] == 0)
    duplicated = sum(n - 1 for n in seen.values() if n > 1)
    if lost == 0 and duplicated == 0:
        by_key: dict[bytes | None, list[bytes | None]] = defaultdict(list)
        for r in sorted(records, key=lambda r: (r.partition, r.offset)):
            by_key[r.key].append(r.value)
        want: dict[bytes | None, list[bytes | None]] = defaultdict(list)
        for e in events:
            want[e.key].append(e.value)
        assert dict(by_key) == dict(want), "order within a key changed"
    return lost, duplicated


@pytest.mark.timeout(900)
def test_transactional_copy_under_broker_and_copier_kills_is_exact(
    cluster: LocalStack, cluster_kafka: KafkaSettings, cluster_admin: KafkaAdmin
) -> None:
    run = uuid.uuid4().hex[:8]
    source, target, group = f"faults.copy-in.{run}", f"faults.copy-out.{run}", f"copy-{run}"
    cluster_admin.create_topics([source, target], partitions=6)
    total, rate = size().copy_events, size().copy_rate
    events = _source_events(total)
    _fill(cluster_kafka, source, events)
    chaos = Chaos(cluster, run)
    log = cluster.layout.logs / f"copier-{group}.log"
    copiers = Copiers(cluster_kafka.bootstrap_servers, source, target, group, rate // COPIERS, log)

    def inject() -> None:
        copiers.revive_exited()
        if chaos.broker_due():
            chaos.bounce_broker()
        else:  # a copier killed mid-transaction, restarted at once
            slot = chaos.rng.randrange(COPIERS)
            chaos.note("copier kill -9")
            copiers.kill_9(slot)
            time.sleep(chaos.rng.uniform(0.0, 1.0))
            copiers.start(slot)

    started = time.monotonic()
    try:
        for slot in range(COPIERS):
            copiers.start(slot)
        with Progress.of_group(cluster_kafka.bootstrap_servers, group, source) as progress:
            chaos.run(
                done=lambda: progress.latest >= total,
                inject=inject,
                timeout=60 + total / rate * 4,
                status=lambda: f"{progress.latest}/{total} copied {progress.error[:200]}",
            )
    finally:
        copiers.stop()
        chaos.heal()
    lost, duplicated = _verify(events, read_committed_records(cluster_kafka, target, total))
    report(
        FaultRun(
            "transactional copy",
            events=total,
            faults=dict(chaos.faults),
            lost=lost,
            duplicated=duplicated,
            pauses=progress.pauses(total),
            seconds=time.monotonic() - started,
        )
    )
    assert chaos.faults["broker kill -9"] >= 2 and chaos.faults["copier kill -9"] >= 2
    assert (lost, duplicated) == (0, 0), f"see {copiers.log}"
