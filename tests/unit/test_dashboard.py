"""The dashboard's document and routes on in-memory ports: sagas by status with
the stuck listed, dead letters by reason, leases, the cache that keeps polling
from multiplying calls to Kafka, and the page served with its assets (no CDN)."""

from __future__ import annotations

import re
from typing import Any

import anyio
import httpx
from starlette.applications import Starlette

from tests.fakes import InMemoryLog, InMemoryReplayMarkers, InMemoryTopicBrowser
from tests.fakes.stores import InMemoryReadModelStore
from tests.unit.test_dead_letter_replay import Setup
from toolkit.dead_letter import DeadLetterQueue
from toolkit.dead_letter_replay import DeadLetterReplayer
from toolkit.errors import StoreError
from toolkit.ports import ConsumedRecord, ReadModelChange
from toolkit.runtime.dashboard import Dashboard, DashboardSources, DashboardState
from toolkit.runtime.dashboard.web import ASSETS
from toolkit.saga.state import RUNNING_KEY, TOTALS_KEY, saga_key, status_key

NOW_MS = 10**12


class CountingBrowser(InMemoryTopicBrowser):
    def __init__(self, log: InMemoryLog) -> None:
        super().__init__(log)
        self.reads = 0

    def read(self, topic: str, since_ms: int | None, timeout: float) -> list[ConsumedRecord]:
        self.reads += 1
        return super().read(topic, since_ms, timeout)


def _saga(saga_id: str, status: str, updated_ms: int) -> dict[str, Any]:
    return {
        "saga_id": saga_id,
        "saga_type": "OrderFulfillment",
        "status": status,
        "current": "ReserveInventory",
        "steps": [{"name": "ReserveInventory", "participant": "inventory", "timeout_s": 5}],
        "step_started_ms": updated_ms,
        "started_at_ms": updated_ms,
        "updated_at_ms": updated_ms,
    }


def _sagas() -> InMemoryReadModelStore:
    store = InMemoryReadModelStore()
    changes = [
        ReadModelChange("put", saga_key("s-stuck"), _saga("s-stuck", "RUNNING", 1_000)),
        ReadModelChange("put", saga_key("s-fresh"), _saga("s-fresh", "RUNNING", 10**13)),
        ReadModelChange("increment", RUNNING_KEY, field="s-stuck", amount=1),
        ReadModelChange("increment", RUNNING_KEY, field="s-fresh", amount=1),
        ReadModelChange("increment", status_key("RUNNING"), field="s-stuck", amount=1),
        ReadModelChange("increment", TOTALS_KEY, field="COMPLETED", amount=4),
        ReadModelChange("increment", TOTALS_KEY, field="COMPENSATED", amount=1),
    ]
    store.apply("kct-saga-state", changes, {}, {})
    return store


def _state(
    browser: InMemoryTopicBrowser, store: InMemoryReadModelStore, clock: list[float]
) -> DashboardState:
    sources = DashboardSources(
        service="shop",
        monitor=lambda: {"health": "healthy", "projections": []},
        store=store,
        saga_projection="kct-saga-state",
        dead_letters=DeadLetterReplayer(browser, browser.log, InMemoryReplayMarkers()),
        dlq_topics=lambda: ["orders.dlq", "payments.dlq"],
        leases=lambda: [{"aggregate_type": "order", "aggregate_id": "o-1", "fence": 7}],
    )
    return DashboardState(sources, 5.0, clock=lambda: clock[0])


def test_the_document_counts_sagas_lists_the_stuck_and_counts_dead_letters() -> None:
    s = Setup()
    for n, reason in enumerate(("handler_error", "handler_error", "undecodable")):
        DeadLetterQueue(s.log, "view").send(s.publish(n), reason, "boom")
    browser, clock = CountingBrowser(s.log), [0.0]
    doc = _state(browser, _sagas(), clock).snapshot()
    assert doc["service"] == "shop" and doc["monitor"]["health"] == "healthy"
    sagas = doc["sagas"]
    assert sagas["counts"] == {
        "RUNNING": 2,
        "COMPLETED": 4,
        "COMPENSATED": 1,
        "FAILED_COMPENSATION": 0,
    }
    assert [s["saga_id"] for s in sagas["stuck"]] == ["s-stuck"] and sagas["stuck_total"] == 1
    orders, payments = doc["dead_letters"]
    assert orders == {
        "topic": "orders.dlq",
        "total": 3,
        "reasons": {"handler_error": 2, "undecodable": 1},
        "error": None,
    }
    assert payments["total"] == 0 and payments["error"] is None  # no such topic yet: none
    assert doc["leases"] == [{"aggregate_type": "order", "aggregate_id": "o-1", "fence": 7}]


def test_kafka_is_read_once_per_interval_however_often_the_page_polls() -> None:
    s = Setup()
    DeadLetterQueue(s.log, "view").send(s.publish(1), "handler_error", "boom")
    browser, clock = CountingBrowser(s.log), [0.0]
    state = _state(browser, _sagas(), clock)
    for _ in range(10):
        state.snapshot()
    assert browser.reads == 2  # one refresh: orders.dlq and payments.dlq
    DeadLetterQueue(s.log, "view").send(s.publish(2), "handler_error", "boom")
    clock[0] = 4.9
    assert state.snapshot()["dead_letters"][0]["total"] == 1  # cached
    clock[0] = 5.0
    assert state.snapshot()["dead_letters"][0]["total"] == 2
    assert browser.reads == 4


class BrokenStore(InMemoryReadModelStore):
    def counters(self, projection: str, key: str) -> dict[str, int]:
        raise StoreError("redis://:hunter2@10.0.0.1:6379 unreachable")


def test_a_backend_down_is_shown_redacted_and_the_rest_still_served() -> None:
    s = Setup()
    doc = _state(CountingBrowser(s.log), BrokenStore(), [0.0]).snapshot()
    assert "unreachable" in doc["sagas"]["error"] and "hunter2" not in doc["sagas"]["error"]
    assert doc["dead_letters"][0]["error"] is None


PATHS = ("/dashboard", *(f"/dashboard/{n}" for n in ASSETS), "/dashboard/state.json")


async def _get(app: Starlette) -> dict[str, httpx.Response]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://dashboard") as client:
        return {path: await client.get(path) for path in (*PATHS, "/dashboard/other.js")}


def test_the_page_its_assets_and_the_json_are_served_with_nothing_from_the_internet() -> None:
    s = Setup()
    board = Dashboard(_state(CountingBrowser(s.log), _sagas(), [0.0]))
    answers = anyio.run(_get, Starlette(routes=board.routes()))
    page = answers["/dashboard"]
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    linked = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert sorted(linked) == sorted(f"/dashboard/{name}" for name in ASSETS)
    for name, media in ASSETS.items():
        asset = answers[f"/dashboard/{name}"]
        assert asset.status_code == 200 and asset.headers["content-type"].startswith(media)
        assert "http://" not in asset.text and "https://" not in asset.text
        assert "innerHTML" not in asset.text  # data is written as text only
    state = answers["/dashboard/state.json"]
    assert state.status_code == 200 and state.json()["sagas"]["counts"]["RUNNING"] == 2
    assert answers["/dashboard/other.js"].status_code == 404
