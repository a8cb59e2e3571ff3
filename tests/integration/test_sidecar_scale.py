"""Scale-out by consumer group: three sidecars share a projection's partitions.

Killing one with ``kill -9`` in the middle of a stream loses nothing and
applies nothing twice (the read model's offsets decide, not the group's);
SIGTERM drains one within its deadline (finish the batch, commit, leave the
group) with no duplicate after the rebalance. The time until the surviving
sidecars own every partition again is printed for both.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from pathlib import Path

import pytest

from connectors.kafka import KafkaAdmin, KafkaSettings
from tests.integration.conftest import Endpoints
from tests.integration.sidecars import SidecarProcess, connections
from toolkit.dead_letter import dead_letter_topic

pytestmark = [pytest.mark.timeout(240), pytest.mark.slow]
EVENTS = int(os.environ.get("KCT_SIDECAR_SCALE_EVENTS", "5000"))
PARTITIONS = 6


def _event(n: int) -> dict[str, object]:
    order = f"o-{n}"
    return {
        "event_type": "kct.examples.orders.OrderPlaced",
        "aggregate_type": "order",
        "aggregate_id": order,
        "sequence": 1,
        "payload": {
            "order_id": order,
            "customer_id": f"c{n % 7}",
            "total_cents": 1,
            "currency": "EUR",
            "lines": [{"sku": "w", "quantity": 1, "unit_price_cents": 1}],
        },
    }


def _publish(front: SidecarProcess, topic: str, start: int, count: int, batch: int = 250) -> None:
    for first in range(start, start + count, batch):
        events = [_event(n) for n in range(first, min(first + batch, start + count))]
        answer = front.call("POST", f"/v1/publish/{topic}/bulk", {"events": events})
        assert answer.status == 200 and answer.json["failed"] == 0, answer.raw


def _owned(sidecars: list[SidecarProcess]) -> set[str]:
    owned: set[str] = set()
    for sidecar in sidecars:
        try:
            for loop in sidecar.call("GET", "/v1/status", timeout=5).json["loops"]:
                owned.update(loop.get("owned", []))
        except OSError:
            pass
    return owned


def _resume_time(survivors: list[SidecarProcess], since: float, timeout: float = 60) -> float:
    """Seconds from ``since`` until the survivors own every partition again."""
    deadline = time.monotonic() + timeout
    while len(_owned(survivors)) < PARTITIONS:
        assert time.monotonic() < deadline, "partitions never reassigned"
        time.sleep(0.05)
    return time.monotonic() - since


def _applied(sidecar: SidecarProcess, stats: str) -> int:
    counters = sidecar.call("GET", f"/v1/read-models/{stats}/counters/totals").json["counters"]
    return int(counters.get("events", 0))


def _until_applied(sidecar: SidecarProcess, stats: str, wanted: int, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while _applied(sidecar, stats) < wanted:
        assert time.monotonic() < deadline, f"{_applied(sidecar, stats)} of {wanted} applied"
        time.sleep(0.1)
    time.sleep(1.0)  # a duplicate would show up after the count was reached
    assert _applied(sidecar, stats) == wanted


def test_three_sidecars_kill_9_and_sigterm_lose_nothing_and_double_nothing(
    endpoints: Endpoints, tmp_path: Path
) -> None:
    run = uuid.uuid4().hex[:8]
    topic, stats = f"test.scale.{run}", f"stats_{run}"
    KafkaAdmin(KafkaSettings(bootstrap_servers=endpoints.kafka_bootstrap)).create_topics(
        [topic, dead_letter_topic(topic)], partitions=PARTITIONS
    )
    config = connections(endpoints, f"/kct-test/{run}", deployment=f"s{run}") + (
        f"service: scale\nsidecar:\n  drain_timeout: 10\n  publish_topics: [{topic}]\n"
        f"  projections:\n    {stats}: {{handler: 'tests.integration.sidecar_handlers:{stats}',"
        " max_batch: 200}\n"
    )
    sidecars = [
        SidecarProcess(tmp_path, config, name=f"member-{i}", env={"KCT_TEST_TOPIC": topic})
        for i in range(3)
    ]
    try:
        for sidecar in sidecars:
            sidecar.start()
        for sidecar in sidecars:
            sidecar.wait_ready(60)
        front, spare, victim = sidecars
        # kill -9 one member while the stream is flowing
        writer = threading.Thread(target=_publish, args=(front, topic, 0, EVENTS))
        writer.start()
        while _applied(front, stats) < EVENTS // 3:
            time.sleep(0.02)
        victim.signal(signal.SIGKILL)
        killed = time.monotonic()
        victim.wait_exit(10)
        resumed = _resume_time([front, spare], killed)
        writer.join(120)
        _until_applied(front, stats, EVENTS)
        print(
            f"\nkill -9 of 1 of 3 sidecars during {EVENTS} events: partitions owned again "
            f"after {resumed:.2f} s (the group's session timeout); all applied once"
        )
        # SIGTERM: drain within the deadline, no duplicate after the rebalance
        more = EVENTS // 5
        writer = threading.Thread(target=_publish, args=(front, topic, EVENTS, more))
        writer.start()
        while _applied(front, stats) < EVENTS + more // 3:
            time.sleep(0.02)
        spare.signal(signal.SIGTERM)
        termed = time.monotonic()
        assert spare.wait_exit(15) == 0, spare.log_text()
        drained = time.monotonic() - termed
        resumed = _resume_time([front], termed)
        writer.join(120)
        _until_applied(front, stats, EVENTS + more)
        assert drained < 10, drained
        print(
            f"SIGTERM of 1 of 2: drained and left the group in {drained:.2f} s, partitions "
            f"owned again after {resumed:.2f} s; {EVENTS + more} applied once"
        )
        customers = [
            front.call("GET", f"/v1/read-models/{stats}/counters/customer:c{c}").json["counters"]
            for c in range(7)
        ]
        assert sum(c["orders"] for c in customers) == EVENTS + more
        status = front.call("GET", "/v1/status").json["loops"][0]
        assert status["handler_errors"] == 0
    finally:
        for sidecar in sidecars:
            sidecar.stop()
