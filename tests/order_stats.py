"""A small order read model used by projection tests (unit and integration).

Documents per order (status, total, last sequence) and counters that would
show any double-applied event: per-customer order count and cents, and a
global event count.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from tests.fakes import InMemoryReadModelStore
from toolkit.envelope import Envelope
from toolkit.projection import Projection
from toolkit.read_model import ReadModelBatch

PLACED = "kct.examples.orders.OrderPlaced"
CANCELLED = "kct.examples.orders.OrderCancelled"


def order_stats(name: str, topics: Sequence[str]) -> Projection:
    projection = Projection(name, topics)

    @projection.on(PLACED)
    def placed(event: Envelope, view: ReadModelBatch) -> None:
        p = event.payload
        view.put(
            f"order:{p['order_id']}",
            {"status": "placed", "total": p["total_cents"], "seq": event.sequence},
        )
        view.increment(f"customer:{p['customer_id']}", "orders")
        view.increment(f"customer:{p['customer_id']}", "cents", int(p["total_cents"]))
        view.increment("totals", "events")

    @projection.on(CANCELLED)
    def cancelled(event: Envelope, view: ReadModelBatch) -> None:
        key = f"order:{event.payload['order_id']}"
        doc = view.get(key) or {"total": 0}
        view.put(key, {**doc, "status": "cancelled", "seq": event.sequence})
        view.increment("totals", "events")

    return projection


def placed_event(order_id: str, customer: str, total: int, sequence: int = 1) -> Envelope:
    return Envelope(
        PLACED,
        "order",
        order_id,
        sequence,
        {
            "order_id": order_id,
            "customer_id": customer,
            "lines": [{"sku": "widget", "quantity": 1, "unit_price_cents": total}],
            "total_cents": total,
            "currency": "EUR",
        },
    )


def cancelled_event(order_id: str, sequence: int = 2) -> Envelope:
    return Envelope(CANCELLED, "order", order_id, sequence, {"order_id": order_id, "reason": "x"})


def replay(projection: Projection, events: Iterable[Envelope]) -> dict[str, Any]:
    """The read model that applying ``events`` once, in order, produces."""
    store = InMemoryReadModelStore()
    for event in events:
        batch = ReadModelBatch(store, projection.name)
        handler = projection.handler_for(event.event_type)
        if handler is not None:
            handler(event, batch)
        store.apply(projection.name, batch.changes, {}, {})
    return store.dump(projection.name)
