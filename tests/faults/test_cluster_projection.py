"""A projection on the cluster while brokers are kill -9'd and restarted one at a time.

Events are published (idempotent, acks=all, RF 3, ``min.insync.replicas`` 2)
while a projection runner applies them to Redis and brokers die. A publish
that fails is retried, so the log may hold an event twice (a timed-out write
may still land): the read model must equal what the log holds, exactly once
per record, every acknowledged event must be in the log, and the group's
committed offsets (and the model's stored ones) must equal the end offsets.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable

import pytest

from connectors.kafka import KafkaRecordConsumer
from tests.integration.helpers import running
from tests.order_stats import order_stats, placed_event
from toolkit.errors import ConnectorError
from toolkit.ports import ConsumedRecord
from toolkit.runtime.app import Kct
from toolkit.runtime.stack import LocalStack

from .cluster import Chaos, FaultRun, Progress, report, size

CUSTOMERS = 7


def _publish(kct: Kct, topic: str, total: int, acked: set[str], stop: threading.Event) -> None:
    """Publish ``total`` events in batches of 50 at a steady pace, retrying failed batches."""
    rate = max(100, total // 30)
    for start in range(0, total, 50):
        batch = [
            placed_event(f"o{n}", f"c{n % CUSTOMERS}", n % 10 + 1)
            for n in range(start, min(total, start + 50))
        ]
        while not stop.is_set():
            try:
                kct.publisher.publish_all(topic, batch)
            except ConnectorError:
                time.sleep(0.5)  # a broker is down: the same events again
                continue
            acked.update(e.event_id for e in batch)
            break
        time.sleep(50 / rate)


def _read_log(kct: Kct, topic: str) -> list[ConsumedRecord]:
    consumer = KafkaRecordConsumer(kct.settings.kafka, f"verify-{uuid.uuid4().hex[:8]}")
    consumer.subscribe([topic])
    ends = sum(kct.admin.end_offsets([topic]).values())
    records: list[ConsumedRecord] = []
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            records.extend(consumer.poll(5000, 0.5))
            positions = consumer.positions(consumer.assignment())
            if positions and sum(positions.values()) >= ends:
                break
    finally:
        consumer.close()
    return records


@pytest.mark.timeout(600)
def test_projection_under_broker_kills_is_exact_and_committed_reaches_the_end(
    cluster: LocalStack, make_cluster_kct: Callable[[], Kct]
) -> None:
    kct = make_cluster_kct()
    run = uuid.uuid4().hex[:8]
    topic, name = f"faults.orders.{run}", f"faults-orders-{run}"
    kct.admin.create_topics([topic], partitions=6)
    total = size().projection_events
    acked: set[str] = set()
    stop = threading.Event()
    publisher = threading.Thread(target=_publish, args=(kct, topic, total, acked, stop))
    chaos = Chaos(cluster, run)

    def make_read() -> Callable[[], int]:
        return lambda: kct.store.counters(name, "totals").get("events", 0)

    def caught_up() -> bool:
        if publisher.is_alive():
            return False
        ends = kct.admin.end_offsets([topic])
        return kct.admin.committed_offsets(name, [topic]) == ends

    started = time.monotonic()
    runner = kct.runner(order_stats(name, [topic]))
    try:
        with running(runner), Progress(make_read) as progress:
            publisher.start()
            chaos.run(
                done=caught_up,
                inject=chaos.bounce_broker,
                timeout=min(540, 120 + total / 50),  # < the pytest timeout
                status=lambda: f"{progress.latest} applied, {len(acked)}/{total} acknowledged",
                max_faults=size().broker_kills,
            )
    finally:
        stop.set()
        publisher.join(60)
        chaos.heal()
    log = _read_log(kct, topic)
    in_log = Counter(dict(r.headers).get("event_id", b"").decode() for r in log)
    applied = kct.store.counters(name, "totals").get("events", 0)
    cents = {
        f"c{c}": kct.store.counters(name, f"customer:c{c}").get("cents", 0)
        for c in range(CUSTOMERS)
    }
    want_cents: Counter[str] = Counter()
    for r in log:
        order = int(dict(r.headers)["aggregate_id"].decode()[1:])
        want_cents[f"c{order % CUSTOMERS}"] += order % 10 + 1
    lost = sum(1 for event_id in acked if in_log[event_id] == 0)
    report(
        FaultRun(
            "projection",
            events=total,
            faults=dict(chaos.faults),
            lost=lost,
            duplicated=applied - len(log),
            pauses=progress.pauses(applied),
            seconds=time.monotonic() - started,
            extra=f"{len(log) - len(acked)} retried publishes landed twice in the log",
        )
    )
    assert chaos.faults["broker kill -9"] >= 2
    assert lost == 0
    assert applied == len(log), "the read model applied a record twice or missed one"
    assert cents == dict(want_cents)
    ends = kct.admin.end_offsets([topic])
    assert kct.admin.committed_offsets(name, [topic]) == ends
    assert kct.store.applied_offsets(name, list(ends)) == ends
