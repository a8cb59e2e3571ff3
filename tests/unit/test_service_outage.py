"""A handler whose service is down pauses the loop; it never skips or dead-letters.

A handler (or saga action) that raises a ``ConnectorError``, such as the
``ServiceUnavailable`` of an HTTP handler whose service does not answer,
fails the whole cycle like a store outage: nothing of it is committed, the
loop reports itself unhealthy, backs off, and applies the event once the
service answers again. An ordinary exception still dead-letters its event.
"""

from __future__ import annotations

import threading

from connectors.avro import AvroCodec, AvroSchemaRegistry, bundled_schema_dir
from tests.fakes import InMemoryLog, InMemoryPositions, InMemoryReadModelStore
from tests.order_stats import PLACED, placed_event
from tests.waiting import eventually
from toolkit.dead_letter import DeadLetterQueue, dead_letter_topic
from toolkit.envelope import Envelope
from toolkit.errors import ServiceUnavailable
from toolkit.hlc import HybridLogicalClock
from toolkit.projection import Projection, ProjectionRunner
from toolkit.publisher import EventPublisher
from toolkit.read_model import ReadModelBatch

CODEC = AvroCodec(AvroSchemaRegistry.from_directories(bundled_schema_dir()))


class Service:
    """A service that is down while ``down`` is set, and buggy for one order."""

    def __init__(self) -> None:
        self.down = threading.Event()
        self.refused = 0

    def handle(self, event: Envelope, view: ReadModelBatch) -> None:
        if self.down.is_set():
            self.refused += 1
            raise ServiceUnavailable("service down", url="http://127.0.0.1:1/x")
        if event.aggregate_id == "poison":
            raise ValueError("cannot handle this one")
        view.increment("totals", "events")


def test_a_service_outage_pauses_the_runner_and_skips_nothing() -> None:
    log, store, service = InMemoryLog(), InMemoryReadModelStore(), Service()
    projection = Projection("svc", ["orders"])
    projection.on(PLACED)(service.handle)
    runner = ProjectionRunner(
        projection,
        log.consumer("svc"),
        CODEC,
        store,
        DeadLetterQueue(log, "svc"),
        notifier=InMemoryPositions(),
        max_backoff=0.05,
    )
    publisher = EventPublisher(log, CODEC, HybridLogicalClock("t"))
    service.down.set()
    for i in range(5):
        publisher.publish("orders", placed_event(f"o{i}", "c1", 10))
    publisher.publish("orders", placed_event("poison", "c1", 10))
    stop = threading.Event()
    thread = threading.Thread(target=runner.run, args=(stop,))
    thread.start()
    try:
        eventually(lambda: service.refused >= 3, 5.0, every=0.01)
        health = runner.health
        assert not health.healthy and "ServiceUnavailable" in (health.reason or "")
        assert store.counters("svc", "totals") == {}
        assert log.topics.get(dead_letter_topic("orders"), []) == []
        assert runner.stats.assignments >= 1
        service.down.clear()
        eventually(lambda: store.counters("svc", "totals").get("events") == 5, 5.0, every=0.01)
        eventually(lambda: runner.health.healthy, 5.0, every=0.01)
    finally:
        stop.set()
        thread.join(5)
    assert runner.stats.handler_errors == 1  # the poison event only
    assert len(log.topics.get(dead_letter_topic("orders"), [])) == 1
