"""The sidecar's HTTP API on the real stack, driven with a plain HTTP client.

One sidecar process per test module (it hosts an order-stats projection by
import path, the order saga's Python participants, the saga-state
projection and a watchdog); each test talks to it as a service in any
language would: JSON over HTTP, nothing else.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from connectors.kafka import KafkaAdmin, KafkaSettings
from tests.faults.servers import kill_9, restart_stack, wait_for_redis
from tests.integration.conftest import Endpoints
from tests.integration.sidecars import SidecarProcess, connections
from tests.order_stats import CANCELLED, PLACED
from toolkit.dead_letter import dead_letter_topic
from toolkit.positions import TopicPartition

pytestmark = pytest.mark.timeout(180)


def placed(order_id: str, total: int = 700, sequence: int = 1) -> dict[str, Any]:
    return {
        "event_type": PLACED,
        "aggregate_type": "order",
        "aggregate_id": order_id,
        "sequence": sequence,
        "payload": {
            "order_id": order_id,
            "customer_id": "c1",
            "total_cents": total,
            "currency": "EUR",
            "lines": [{"sku": "w", "quantity": 1, "unit_price_cents": total}],
        },
    }


def cancelled(order_id: str, sequence: int = 2) -> dict[str, Any]:
    return {
        "event_type": CANCELLED,
        "aggregate_type": "order",
        "aggregate_id": order_id,
        "sequence": sequence,
        "payload": {"order_id": order_id, "reason": "test"},
    }


class World:
    def __init__(self, sidecar: SidecarProcess, topic: str, stats: str, run: str) -> None:
        self.sidecar, self.topic, self.stats, self.run = sidecar, topic, stats, run


@pytest.fixture(scope="module")
def world(endpoints: Endpoints, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    run = uuid.uuid4().hex[:8]
    topic, stats = f"test.sidecar.{run}", f"stats_{run}"
    admin = KafkaAdmin(KafkaSettings(bootstrap_servers=endpoints.kafka_bootstrap))
    admin.create_topics([topic, dead_letter_topic(topic)], partitions=3)
    config = (
        connections(endpoints, f"/kct-test/{run}", deployment=f"t{run}")
        + f"""
service: api-test
monitor:
  interval: 0.5
consistency:
  projections: [{stats}]
  default_timeout: 5.0
sidecar:
  max_body_bytes: 65536
  publish_topics: [{topic}]
  aggregates: {{order: {topic}}}
  projections:
    {stats}: {{handler: "tests.integration.sidecar_handlers:{stats}"}}
  sagas: {Path(__file__).parents[2] / "examples/order_fulfillment/sagas.yaml"}
  saga_topic_prefix: sc{run}
  saga_state: true
  saga_state_projection: sagas-{run}
  watchdog: true
  participants:
    inventory: {{actions: "tests.integration.sidecar_handlers:INVENTORY"}}
    payment: {{actions: "tests.integration.sidecar_handlers:PAYMENT"}}
    order: {{actions: "tests.integration.sidecar_handlers:ORDER"}}
"""
    )
    sidecar = SidecarProcess(
        tmp_path_factory.mktemp("sidecar"), config, env={"KCT_TEST_TOPIC": topic}
    )
    sidecar.start()
    try:
        sidecar.wait_ready(60)
        yield World(sidecar, topic, stats, run)
    finally:
        sidecar.stop()


def test_publish_then_wait_is_200_and_the_read_returns_the_write(world: World) -> None:
    sc = world.sidecar
    order = f"o-{uuid.uuid4().hex[:6]}"
    published = sc.call("POST", f"/v1/publish/{world.topic}", placed(order))
    assert published.status == 200, published.raw
    body = published.json
    assert body["position"]["topic"] == world.topic and body["token"]
    waited = sc.call(
        "POST", "/v1/wait", {"token": body["token"], "projections": [world.stats], "timeout": 10}
    )
    assert waited.status == 200, waited.raw
    read = sc.call(
        "GET", f"/v1/read-models/{world.stats}/documents/order:{order}?token={body['token']}"
    )
    assert read.status == 200 and read.json["document"]["status"] == "placed"
    # read-your-writes in one call: the read waits for the token itself
    again = sc.call("POST", f"/v1/publish/{world.topic}", cancelled(order))
    token = again.json["token"]
    read = sc.call(
        "GET",
        f"/v1/read-models/{world.stats}/documents/order:{order}",
        headers={"X-Kct-Token": token},
    )
    assert read.json["document"]["status"] == "cancelled"


def test_publish_with_wait_answers_once_the_projection_applied_it(world: World) -> None:
    """``?wait=``: read-your-writes in one request; a timeout still says where it went."""
    sc = world.sidecar
    order = f"o-{uuid.uuid4().hex[:6]}"
    answer = sc.call("POST", f"/v1/publish/{world.topic}?wait={world.stats}", placed(order))
    assert answer.status == 200, answer.raw
    # Applied before the answer: a read without any token already sees it.
    read = sc.call("GET", f"/v1/read-models/{world.stats}/documents/order:{order}")
    assert read.status == 200 and read.json["document"]["status"] == "placed"
    nobody = f"nobody-{world.run}"
    late = sc.call(
        "POST",
        f"/v1/publish/{world.topic}?wait={world.stats},{nobody}&timeout=0.5",
        placed(f"{order}-2"),
    )
    assert late.status == 504, late.raw
    assert late.json["error"] == "timeout" and late.json["token"]
    where = late.json["position"]
    assert where["topic"] == world.topic
    assert [lag["projection"] for lag in late.json["lagging"]] == [nobody]
    # It was published: the projection that runs applies it.
    waited = sc.call(
        "POST", "/v1/wait", {"token": late.json["token"], "projections": [world.stats]}
    )
    assert waited.status == 200, waited.raw
    bad = sc.call("POST", f"/v1/publish/{world.topic}?wait={world.stats}&timeout=0", placed("x"))
    assert bad.status == 400 and "timeout" in bad.json["reasons"][0]


def test_bulk_publish_has_a_result_per_entry(world: World) -> None:
    good = [placed(f"b-{uuid.uuid4().hex[:6]}") for _ in range(3)]
    bad = {**placed("b-bad"), "payload": {"order_id": 7}}
    answer = world.sidecar.call(
        "POST",
        f"/v1/publish/{world.topic}/bulk",
        {"events": [good[0], bad, good[1], {"nope": 1}, good[2]]},
    )
    assert answer.status == 200, answer.raw
    results = answer.json["results"]
    assert [("position" in r) for r in results] == [True, False, True, False, True]
    assert "schema" in results[1]["error"] and "event_type" in results[3]["error"]
    assert answer.json["published"] == 3 and answer.json["token"]


def test_a_wait_that_times_out_is_504_naming_the_lagging_partition(world: World) -> None:
    sc = world.sidecar
    published = sc.call("POST", f"/v1/publish/{world.topic}", placed("lag-1")).json
    answer = sc.call(
        "POST",
        "/v1/wait",
        {"token": published["token"], "projections": [f"nobody-{world.run}"], "timeout": 0.5},
    )
    assert answer.status == 504, answer.raw
    lagging = answer.json["lagging"]
    where = published["position"]
    assert lagging == [
        {
            "projection": f"nobody-{world.run}",
            "topic": world.topic,
            "partition": where["partition"],
            "behind": where["offset"] + 1,
        }
    ]


def _end_offsets(sc: SidecarProcess, world: World) -> dict[TopicPartition, int]:
    admin = KafkaAdmin(KafkaSettings(bootstrap_servers=_bootstrap(sc)))
    return admin.end_offsets([world.topic])


def _bootstrap(sc: SidecarProcess) -> str:
    for line in sc.config_path.read_text().splitlines():
        if line.startswith("kafka:"):
            return line.split("'")[1]
    raise AssertionError("no kafka line")


def test_lease_append_release_with_a_fence(world: World) -> None:
    sc = world.sidecar
    order = f"l-{uuid.uuid4().hex[:6]}"
    first = sc.call("POST", "/v1/leases", {"aggregate_type": "order", "aggregate_id": order})
    assert first.status == 201, first.raw
    lease = first.json
    appended = sc.call(
        "POST",
        f"/v1/leases/{lease['lease_id']}/events",
        {"events": [placed(order, 900)], "wait": True},
    )
    assert appended.status == 200, appended.raw
    assert appended.json["fence"] == lease["fence"]
    read = sc.call("GET", f"/v1/read-models/{world.stats}/documents/order:{order}")
    assert read.json["document"]["total"] == 900  # wait: the projection applied it
    assert sc.call("DELETE", f"/v1/leases/{lease['lease_id']}").json == {"released": True}
    second = sc.call("POST", "/v1/leases", {"aggregate_type": "order", "aggregate_id": order})
    assert second.status == 201 and second.json["fence"] > lease["fence"]
    held = sc.call("POST", "/v1/leases", {"aggregate_type": "order", "aggregate_id": order})
    assert held.status == 409 and held.json["error"] == "lock_timeout"
    sc.call("DELETE", f"/v1/leases/{second.json['lease_id']}")


def test_the_dashboard_shows_the_locks_held_with_their_fences(world: World) -> None:
    sc = world.sidecar
    page = sc.call("GET", "/dashboard")
    assert page.status == 200 and b"/dashboard/dashboard.js" in page.raw
    order = f"d-{uuid.uuid4().hex[:6]}"
    lease = sc.call("POST", "/v1/leases", {"aggregate_type": "order", "aggregate_id": order})
    assert lease.status == 201, lease.raw
    try:
        state = sc.call("GET", "/dashboard/state.json")
        assert state.status == 200, state.raw
        held = {(x["aggregate_id"], x["fence"]) for x in state.json["leases"]}
        assert (order, lease.json["fence"]) in held
        assert "lease_id" not in state.json["leases"][0]  # the clients' capability stays theirs
        assert state.json["sagas"]["projection"] == f"sagas-{world.run}"
        assert f"{world.topic}.dlq" in [t["topic"] for t in state.json["dead_letters"]]
    finally:
        sc.call("DELETE", f"/v1/leases/{lease.json['lease_id']}")
    after = sc.call("GET", "/dashboard/state.json").json["leases"]
    assert order not in {x["aggregate_id"] for x in after}


def test_an_append_after_the_lease_expired_is_409_and_writes_nothing(world: World) -> None:
    sc = world.sidecar
    order = f"x-{uuid.uuid4().hex[:6]}"
    lease = sc.call(
        "POST", "/v1/leases", {"aggregate_type": "order", "aggregate_id": order, "ttl": 0.5}
    ).json
    time.sleep(1.0)  # the lease's session expires; the lock is released
    taken_over = sc.call("POST", "/v1/leases", {"aggregate_type": "order", "aggregate_id": order})
    assert taken_over.status == 201 and taken_over.json["fence"] > lease["fence"]
    before = _end_offsets(sc, world)
    late = sc.call(
        "POST", f"/v1/leases/{lease['lease_id']}/events", {"events": [placed(order, 111)]}
    )
    assert late.status == 409 and late.json["error"] == "lease_lost", late.raw
    assert _end_offsets(sc, world) == before  # not even an aborted record
    assert sc.call("GET", f"/v1/read-models/{world.stats}/documents/order:{order}").status == 404
    sc.call("DELETE", f"/v1/leases/{taken_over.json['lease_id']}")


def test_saga_start_status_and_list(world: World) -> None:
    sc = world.sidecar
    started = sc.call(
        "POST",
        "/v1/sagas/OrderFulfillment",
        {
            "context": {
                "order_id": "so-1",
                "sku": "widget",
                "quantity": 1,
                "customer": "customer-1",
                "amount_cents": 100,
                "card": "ok",
            }
        },
    )
    assert started.status == 202, started.raw
    saga_id = started.json["saga_id"]
    deadline = time.monotonic() + 30
    state: dict[str, Any] = {}
    while time.monotonic() < deadline:
        answer = sc.call("GET", f"/v1/sagas/{saga_id}")
        if answer.status == 200:
            state = answer.json
            if state["status"] != "RUNNING":
                break
        time.sleep(0.1)
    # No stock was seeded: the first step fails and the saga ends compensated.
    assert state["status"] == "COMPENSATED", state
    assert "trace_id" in state
    overview = sc.call("GET", "/v1/sagas").json
    assert overview["totals"].get("COMPENSATED", 0) >= 1
    assert sc.call("POST", "/v1/sagas/NoSuchSaga", {"context": {}}).status == 400


BAD: list[tuple[str, Callable[[World], tuple[str, str, bytes]], int, str]] = [
    ("bad json", lambda w: ("POST", f"/v1/publish/{w.topic}", b"{not json"), 400, "invalid_json"),
    ("unknown topic", lambda w: ("POST", "/v1/publish/no.such.topic", b"{}"), 400, "unknown_topic"),
    (
        "wrong schema",
        lambda w: (
            "POST",
            f"/v1/publish/{w.topic}",
            b'{"event_type": "' + PLACED.encode() + b'", "aggregate_type":'
            b' "order", "aggregate_id": "w", "payload": {"order_id": 3}}',
        ),
        400,
        "invalid_request",
    ),
    (
        "unknown event type",
        lambda w: (
            "POST",
            f"/v1/publish/{w.topic}",
            b'{"event_type": "x.Nope", "aggregate_type": "order",'
            b' "aggregate_id": "w", "payload": {}}',
        ),
        400,
        "invalid_request",
    ),
    (
        "missing fields",
        lambda w: ("POST", f"/v1/publish/{w.topic}", b'{"payload": {}}'),
        400,
        "invalid_request",
    ),
    (
        "oversized body",
        lambda w: ("POST", f"/v1/publish/{w.topic}", b'{"x": "' + b"a" * 70_000 + b'"}'),
        413,
        "too_large",
    ),
    (
        "bad token",
        lambda w: ("POST", "/v1/wait", b'{"token": "zz", "projections": ["p"]}'),
        400,
        "invalid_request",
    ),
    (
        "too many projections to wait for",
        lambda w: (
            "POST",
            f"/v1/publish/{w.topic}?wait=" + ",".join(f"p{i}" for i in range(101)),
            b"{}",
        ),
        400,
        "invalid_request",
    ),
    (
        "timeout too long",
        lambda w: ("POST", "/v1/wait", b'{"token": "1", "projections": ["p"], "timeout": 9999}'),
        400,
        "invalid_request",
    ),
    (
        "bad lease body",
        lambda w: ("POST", "/v1/leases", b'{"aggregate_type": "order"}'),
        400,
        "invalid_request",
    ),
    (
        "unknown aggregate type",
        lambda w: ("POST", "/v1/leases", b'{"aggregate_type": "zz", "aggregate_id": "1"}'),
        400,
        "invalid_request",
    ),
    (
        "unknown lease",
        lambda w: (
            "POST",
            "/v1/leases/nope/events",
            b'{"events": [{"event_type": "a", "aggregate_type": "b",'
            b' "aggregate_id": "c", "payload": {}}]}',
        ),
        404,
        "not_found",
    ),
]


@pytest.mark.parametrize(("name", "request_of", "status", "error"), BAD, ids=[b[0] for b in BAD])
def test_bad_requests_get_a_reason(
    world: World,
    name: str,
    request_of: Callable[[World], tuple[str, str, bytes]],
    status: int,
    error: str,
) -> None:
    method, path, body = request_of(world)
    answer = world.sidecar.call(method, path, raw=body)
    assert answer.status == status, answer.raw
    assert answer.json["error"] == error and answer.json["reasons"], answer.json


def test_openapi_metadata_status_and_metrics(world: World) -> None:
    sc = world.sidecar
    document = sc.call("GET", "/v1/openapi.json").json
    assert document["openapi"].startswith("3.1") and "/v1/publish/{topic}" in document["paths"]
    assert "saga-command" in document["webhooks"]
    metadata = sc.call("GET", "/v1/metadata").json
    kinds = sorted(loop["kind"] for loop in metadata["loops"])
    assert kinds == ["participant"] * 3 + ["projection", "saga-state", "watchdog"]
    status = sc.call("GET", "/v1/status").json
    assert status["ready"] is True and all(loop["healthy"] for loop in status["loops"])
    # The monitor's report and the runtime metrics, from the last check.
    published = sc.call("POST", f"/v1/publish/{world.topic}", placed(f"m-{world.run}")).json
    wait = {"token": published["token"], "projections": [world.stats], "timeout": 10}
    assert sc.call("POST", "/v1/wait", wait).status == 200
    deadline = time.monotonic() + 20
    while True:
        report = sc.call("GET", "/v1/status").json["monitor"]
        metrics = sc.call("GET", "/metrics").raw.decode()
        watched = {p["name"]: p for p in (report or {}).get("projections", [])}
        if world.stats in watched and "kct_events_processed_total" in metrics:
            break
        assert time.monotonic() < deadline, (report, metrics[-2000:])
        time.sleep(0.2)
    assert watched[world.stats]["lag_events"] == 0
    assert {p["kind"] for p in watched.values()} >= {"projection", "saga-state", "participant"}
    assert "kct_sidecar_requests_total" in metrics and "kct_sidecar_ready 1.0" in metrics
    lag = [
        sample.value
        for family in text_string_to_metric_families(metrics)
        for sample in family.samples
        if sample.name == "kct_monitor_lag" and sample.labels.get("kct_projection") == world.stats
    ]
    assert lag and all(value == 0 for value in lag)


@pytest.mark.faults
def test_readyz_is_not_ready_during_a_redis_outage_and_back(
    world: World, endpoints: Endpoints
) -> None:
    sc = world.sidecar
    assert sc.call("GET", "/readyz").status == 200
    kill_9("redis")
    try:
        deadline = time.monotonic() + 20
        answer = sc.call("GET", "/readyz")
        while answer.status == 200 and time.monotonic() < deadline:
            time.sleep(0.1)
            answer = sc.call("GET", "/readyz")
        assert answer.status == 503, answer.raw
        assert any("StoreError" in r or "Redis" in r for r in answer.json["reasons"])
        assert sc.call("GET", "/healthz").status == 200  # alive: it waits, it does not die
    finally:
        restart_stack()
        wait_for_redis(endpoints.redis_url)
    started = time.monotonic()
    sc.wait_ready(30)
    print(f"\nready again {time.monotonic() - started:.2f} s after Redis came back")
