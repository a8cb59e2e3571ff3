"""Read-ahead: a projection naming the documents its handlers read gets them for a whole
batch in one get_many, with the same result as reading them one by one."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from connectors.avro import AvroCodec, AvroSchemaRegistry, bundled_schema_dir
from tests.fakes import InMemoryLog, InMemoryPositions, InMemoryReadModelStore
from tests.order_stats import PLACED, placed_event
from toolkit.dead_letter import DeadLetterQueue
from toolkit.envelope import Envelope
from toolkit.hlc import HybridLogicalClock
from toolkit.ports import ReadModelChange
from toolkit.positions import TopicPartition
from toolkit.projection import Projection, ProjectionRunner
from toolkit.publisher import EventPublisher
from toolkit.read_model import ReadModelBatch

CODEC = AvroCodec(AvroSchemaRegistry.from_directories(bundled_schema_dir()))


class CountingStore(InMemoryReadModelStore):
    def __init__(self) -> None:
        super().__init__()
        self.calls: Counter[str] = Counter()

    def get(self, projection: str, key: str) -> dict[str, Any] | None:
        self.calls["get"] += 1
        return super().get(projection, key)

    def get_many(self, projection: str, keys: Sequence[str]) -> dict[str, dict[str, Any]]:
        self.calls["get_many"] += 1
        return super().get_many(projection, keys)


def _totals(read_ahead: bool) -> tuple[CountingStore, InMemoryLog]:
    projection = Projection("totals", ["orders"])
    if read_ahead:

        @projection.reads(PLACED)
        def order_key(event: Envelope) -> list[str]:
            if event.payload["order_id"] == "bad":
                raise KeyError("order_id")  # a key function failing: left to the handler
            return [f"customer:{event.payload['customer_id']}"]

    @projection.on(PLACED)
    def placed(event: Envelope, view: ReadModelBatch) -> None:
        key = f"customer:{event.payload['customer_id']}"
        document = view.get(key) or {"orders": [], "cents": 0}
        document["orders"].append(event.payload["order_id"])
        document["cents"] += int(event.payload["total_cents"])
        view.put(key, document)

    log, store = InMemoryLog(), CountingStore()
    store.apply(
        "totals",
        [ReadModelChange("put", "customer:c1", {"orders": ["o0"], "cents": 5})],
        {},
        {TopicPartition("orders", 0): 0},
    )
    publisher = EventPublisher(log, CODEC, HybridLogicalClock("w"))
    for order, customer, cents in [
        ("o1", "c1", 10),
        ("o2", "c2", 20),
        ("bad", "c1", 1),
        ("o3", "c1", 30),
        ("o4", "c2", 40),
    ]:
        publisher.publish("orders", placed_event(order, customer, cents))
    runner = ProjectionRunner(
        projection,
        log.consumer("totals"),
        CODEC,
        store,
        DeadLetterQueue(log, "totals"),
        notifier=InMemoryPositions(),
    )
    assert runner.run_once() == 5
    return store, log


def test_a_batch_reads_its_documents_in_one_round_trip_with_the_same_result() -> None:
    ahead, _ = _totals(read_ahead=True)
    one_by_one, _ = _totals(read_ahead=False)
    for key in ("customer:c1", "customer:c2"):
        assert ahead.get("totals", key) == one_by_one.get("totals", key)
    assert ahead.get("totals", "customer:c1") == {
        "orders": ["o0", "o1", "bad", "o3"],
        "cents": 46,
    }
    assert ahead.calls["get_many"] == 1
    assert ahead.calls["get"] == 3  # only the ones just above: none while applying
    assert one_by_one.calls["get_many"] == 0
    assert one_by_one.calls["get"] == 2 + 2  # c1 and c2 once each while applying


def test_a_document_read_ahead_is_handed_out_once_and_pending_changes_win() -> None:
    store = InMemoryReadModelStore()
    store.apply("p", [ReadModelChange("put", "k", {"n": 1})], {}, {TopicPartition("t", 0): 0})
    batch = ReadModelBatch(store, "p")
    batch.read_ahead(["k", "absent"], store.get_many("p", ["k", "absent"]))
    first = batch.get("k")
    assert first == {"n": 1}
    assert first is not None
    first["n"] = 99  # the handler's own object; not put back
    assert batch.get("k") == {"n": 1}  # read again from the store, unchanged
    assert batch.get("absent") is None
    batch.put("k", {"n": 2})
    batch.read_ahead(["k"], {"k": {"n": 1}})  # pending changes are never shadowed
    assert batch.get("k") == {"n": 2}
