"""Choreographed sagas on the real stack: the order fulfillment example."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from examples.order_fulfillment.services import ACTIONS, SAGA_TYPE
from examples.order_fulfillment.shop import Shop
from tests.integration.conftest import Endpoints
from tests.integration.helpers import peek
from toolkit.dead_letter import dead_letter_topic
from toolkit.ports import OutgoingRecord
from toolkit.runtime.app import Kct
from toolkit.saga.participant import StepContext
from toolkit.saga.state import SagaStatus

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def shop(kct: Kct) -> Shop:
    made = Shop()
    made.prepare(kct)
    return made


def order(shop: Shop, n: int, **overrides: str) -> tuple[str, dict[str, str], str]:
    context = {
        "order_id": f"order-{n}",
        "sku": "widget",
        "quantity": "2",
        "customer": "customer-1",
        "amount_cents": "1500",
        "card": "ok",
        **overrides,
    }
    return SAGA_TYPE, context, f"saga-{shop.run_id}-{n}"


def saga_messages(endpoints: Endpoints, topic: str, saga_id: str) -> list[tuple[str, str, str]]:
    """(step, action, outcome) of a saga's replies, in the order they were written."""
    return [
        _reply_fields(p.value)
        for p in peek(endpoints.kafka_bootstrap, topic)
        if p.key == saga_id.encode() and p.headers.get("event_type") == "kct.saga.SagaReply"
    ]


def _reply_fields(value: bytes) -> tuple[str, str, str]:
    from connectors.avro import AvroCodec, AvroSchemaRegistry, bundled_schema_dir

    codec = AvroCodec(AvroSchemaRegistry.from_directories(bundled_schema_dir()))
    ref = codec.encode(
        "kct.saga.SagaReply",
        {
            "saga_id": "",
            "saga_type": "",
            "step": "",
            "action": "EXECUTE",
            "outcome": "SUCCESS",
            "replied_at_ms": 0,
        },
    ).schema_ref
    payload = codec.decode(value, ref)
    return payload["step"], payload["action"], payload["outcome"]


def test_happy_path_completes_with_the_context_of_every_step(kct: Kct, shop: Shop) -> None:
    client = kct.saga_client(shop.definitions, shop.state_projection)
    with shop.running(kct):
        [saga_id] = client.start_many([order(shop, 1)])
        state = client.wait([saga_id], 30)[saga_id]
    assert state["status"] == SagaStatus.COMPLETED
    assert [(s["execute"], s["compensate"]) for s in state["steps"]] == [("SUCCESS", None)] * 3
    assert {"reservation", "payment", "confirmed"} <= set(state["context"])
    assert shop.invariants(kct, {saga_id: state}) == []
    inventory = shop.read_model("inventory")
    assert kct.saga_steps.get(inventory, "stock:widget") == {"available": 498}


@pytest.mark.parametrize(
    ("failing", "overrides", "compensated"),
    [
        ("ReserveInventory", {"quantity": "100000"}, []),
        ("ProcessPayment", {"card": "declined"}, ["ReserveInventory"]),
        ("ConfirmOrder", {"confirm": "fail"}, ["ProcessPayment", "ReserveInventory"]),
    ],
)
def test_a_failure_at_each_step_compensates_exactly_the_executed_steps_in_reverse_order(
    kct: Kct,
    shop: Shop,
    endpoints: Endpoints,
    failing: str,
    overrides: dict[str, str],
    compensated: list[str],
) -> None:
    client = kct.saga_client(shop.definitions, shop.state_projection)
    with shop.running(kct):
        [saga_id] = client.start_many([order(shop, 2, **overrides)])
        state = client.wait([saga_id], 30)[saga_id]
    assert state["status"] == SagaStatus.COMPENSATED
    steps = {s["name"]: s for s in state["steps"]}
    assert steps[failing]["execute"] == "FAILURE"
    assert steps[failing]["error"]
    assert [n for n, s in steps.items() if s["compensate"] == "SUCCESS"] == sorted(
        compensated, key=list(steps).index
    )
    # The replies on the log show the compensations in reverse order of execution.
    replies = saga_messages(endpoints, shop.definitions[SAGA_TYPE].reply_topic, saga_id)
    assert [step for step, action, _ in replies if action == "COMPENSATE"] == compensated
    assert shop.invariants(kct, {saga_id: state}) == []


def test_a_compensation_that_keeps_failing_lands_on_the_failure_topic(
    kct: Kct, shop: Shop, endpoints: Endpoints
) -> None:
    attempts: list[int] = []

    def refund_always_fails(ctx: StepContext, view: Any) -> None:
        attempts.append(ctx.attempt)
        raise RuntimeError("payment provider unreachable")

    actions = {**ACTIONS, "payment": {**ACTIONS["payment"], "refund_payment": refund_always_fails}}
    client = kct.saga_client(shop.definitions, shop.state_projection)
    with shop.running(kct, actions=actions):
        [saga_id] = client.start_many([order(shop, 3, confirm="fail")])
        state = client.wait([saga_id], 30)[saga_id]
    assert state["status"] == SagaStatus.FAILED_COMPENSATION
    assert state["needs_attention"] is True
    steps = {s["name"]: s for s in state["steps"]}
    assert steps["ProcessPayment"]["compensate"] == "FAILURE"
    assert "unreachable" in steps["ProcessPayment"]["error"]
    # The compensation of the earlier step still ran.
    assert steps["ReserveInventory"]["compensate"] == "SUCCESS"
    definition = shop.definitions[SAGA_TYPE]
    assert attempts == list(range(1, definition.compensation_retries + 2))
    failed = _read_all(endpoints, definition.failure_topic)
    assert len(failed) == 1
    assert b"unreachable" in failed[0] and saga_id.encode() in failed[0]
    assert b"customer-1" in failed[0]  # the full context travels with it


def _read_all(endpoints: Endpoints, topic: str) -> list[bytes]:
    return [p.value for p in peek(endpoints.kafka_bootstrap, topic)]


def test_a_step_without_reply_times_out_compensates_and_never_runs_late(
    kct: Kct, shop: Shop
) -> None:
    definitions = {
        t: d.model_copy(
            update={"steps": (*d.steps[:2], d.steps[2].model_copy(update={"timeout": 1.0}))}
        )
        for t, d in shop.definitions.items()
    }
    client = kct.saga_client(definitions, shop.state_projection)
    with _running_with(kct, shop, definitions, ("inventory", "payment")):
        [saga_id] = client.start_many([order(shop, 4)])
        state = client.wait([saga_id], 30)[saga_id]
    assert state["status"] == SagaStatus.COMPENSATED
    steps = {s["name"]: s for s in state["steps"]}
    assert steps["ConfirmOrder"]["execute"] == "FAILURE"
    assert "timed out" in steps["ConfirmOrder"]["error"]
    assert steps["ProcessPayment"]["compensate"] == "SUCCESS"
    # The order service comes back and finally reads its command: it does not run it.
    with _running_with(kct, shop, definitions, ("order",), watchdog=False):
        time.sleep(3)
    assert kct.saga_steps.counters(shop.read_model("order"), "orders") == {}
    assert client.status(saga_id) == state
    assert shop.invariants(kct, {saga_id: state}) == []


def _running_with(
    kct: Kct,
    shop: Shop,
    definitions: Mapping[str, Any],
    participants: tuple[str, ...],
    *,
    watchdog: bool = True,
) -> Any:
    """Shop.running with other definitions (a shorter step timeout)."""

    class Variant(Shop):
        @property
        def definitions(self) -> dict[str, Any]:
            return dict(definitions)

    variant = Variant(run_id=shop.run_id, skus=shop.skus, customers=shop.customers)
    return variant.running(kct, participants, watchdog=watchdog)


def test_poison_commands_are_dead_lettered_and_the_participant_goes_on(
    kct: Kct, shop: Shop, endpoints: Endpoints
) -> None:
    definition = shop.definitions[SAGA_TYPE]
    topic = definition.command_topic("inventory")
    kct.producer.produce(
        [
            OutgoingRecord(topic, b"bad", b"\x00\x01not avro", (("event_type", b"x"),)),
            OutgoingRecord(
                topic,
                b"unknown",
                b"\x02",
                tuple(
                    (k, v.encode())
                    for k, v in {
                        "event_id": str(uuid.uuid4()),
                        "event_type": "kct.saga.Nope",
                        "aggregate_type": "saga",
                        "aggregate_id": "unknown",
                        "sequence": "0",
                        "hlc": "1:0:x",
                        "schema": "kct.saga.Nope@0",
                    }.items()
                ),
            ),
        ]
    )
    client = kct.saga_client(shop.definitions, shop.state_projection)
    with shop.running(kct):
        [saga_id] = client.start_many([order(shop, 5)])
        state = client.wait([saga_id], 30)[saga_id]
    assert state["status"] == SagaStatus.COMPLETED
    dead = _read_all(endpoints, dead_letter_topic(topic))
    assert len(dead) == 2


def _service(endpoints: Endpoints, shop: Shop, participant: str) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "examples.order_fulfillment.service",
            "--run-id",
            shop.run_id,
            "--participant",
            participant,
        ],
        cwd=REPO,
        env={
            **os.environ,
            "PYTHONPATH": str(REPO),
            "KCT_KAFKA_BOOTSTRAP": endpoints.kafka_bootstrap,
            "KCT_REDIS_URL": endpoints.redis_url,
        },
        stdout=subprocess.PIPE,
    )
    assert process.stdout is not None
    assert process.stdout.readline().strip() == b"ready"
    return process


@pytest.fixture
def services(endpoints: Endpoints, shop: Shop) -> Iterator[dict[str, subprocess.Popen[bytes]]]:
    running = {p: _service(endpoints, shop, p) for p in ("inventory", "payment", "order")}
    yield running
    for process in running.values():
        process.kill()
        process.wait()


def test_kill_9_of_participants_during_200_sagas_every_effect_happens_exactly_once(
    kct: Kct,
    shop: Shop,
    endpoints: Endpoints,
    services: dict[str, subprocess.Popen[bytes]],
) -> None:
    rng = random.Random(11)
    client = kct.saga_client(shop.definitions, shop.state_projection)
    orders = shop.orders(200, decline_ratio=0.2)
    kills = 0
    with shop.running(kct, participants=()):  # only the saga-state projection and the watchdog
        ids: list[str] = []
        for start in range(0, len(orders), 20):
            ids += client.start_many(orders[start : start + 20])
            time.sleep(rng.uniform(0.05, 0.4))
            victim = rng.choice(sorted(services))
            services[victim].kill()  # SIGKILL: no cleanup, no commit
            services[victim].wait()
            services[victim] = _service(endpoints, shop, victim)
            kills += 1
        states = client.wait(ids, 180)
    assert kills == 10
    statuses = Counter(s["status"] for s in states.values())
    assert set(statuses) <= {SagaStatus.COMPLETED, SagaStatus.COMPENSATED}, statuses
    assert statuses[SagaStatus.COMPLETED] > 0 and statuses[SagaStatus.COMPENSATED] > 0
    assert shop.invariants(kct, states) == []
    _assert_each_effect_once(kct, shop, states)


def _assert_each_effect_once(kct: Kct, shop: Shop, states: Mapping[str, Mapping[str, Any]]) -> None:
    """Each action's effect counter equals the number of sagas whose fold says it ran."""

    def ran(step: int, field: str) -> int:
        return sum(1 for s in states.values() if s["steps"][step][field] == "SUCCESS")

    inventory = kct.saga_steps.counters(shop.read_model("inventory"), "moves")
    payment = kct.saga_steps.counters(shop.read_model("payment"), "moves")
    orders = kct.saga_steps.counters(shop.read_model("order"), "orders")
    assert inventory.get("reservations", 0) == ran(0, "execute")
    assert inventory.get("releases", 0) == ran(0, "compensate")
    assert payment.get("charges", 0) == ran(1, "execute")
    assert payment.get("refunds", 0) == ran(1, "compensate")
    assert orders.get("confirmed", 0) == ran(2, "execute")


def test_1000_concurrent_sagas_with_random_payment_failures_conserve_stock_and_money(
    kct: Kct,
) -> None:
    big = Shop(
        skus={"widget": 1_500, "gadget": 1_500},
        customers={f"customer-{n}": 1_000_000 for n in range(10)},
    )
    big.prepare(kct)
    client = kct.saga_client(big.definitions, big.state_projection)
    with big.running(kct):
        ids = client.start_many(big.orders(1000, decline_ratio=0.2, seed=3))
        states = client.wait(ids, 240)
    statuses = Counter(s["status"] for s in states.values())
    assert statuses[SagaStatus.COMPLETED] + statuses[SagaStatus.COMPENSATED] == 1000
    assert 100 < statuses[SagaStatus.COMPENSATED] < 300
    assert big.invariants(kct, states) == []
    _assert_each_effect_once(kct, big, states)
