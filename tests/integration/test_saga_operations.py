"""Saga operations on the real stack: ``kct saga list | show | retry | compensate``
against the order fulfillment example, every effect still once."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from examples.order_fulfillment.services import ACTIONS, SAGA_TYPE, SAGAS_FILE
from examples.order_fulfillment.shop import Shop
from tests.integration.conftest import Endpoints
from toolkit.read_model import ReadModelBatch
from toolkit.runtime.app import Kct
from toolkit.runtime.cli import main
from toolkit.saga.definition import SagaDefinition
from toolkit.saga.participant import StepContext
from toolkit.saga.state import SagaStatus

pytestmark = pytest.mark.integration

Kctl = Callable[..., tuple[int, str]]


@pytest.fixture
def shop(kct: Kct) -> Shop:
    made = Shop()
    made.prepare(kct)
    return made


@pytest.fixture
def kctl(
    endpoints: Endpoints,
    shop: Shop,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> Kctl:
    """``kct saga <args>`` in-process against this shop; returns (exit code, output)."""
    monkeypatch.setenv("KCT_KAFKA_BOOTSTRAP", endpoints.kafka_bootstrap)
    monkeypatch.setenv("KCT_REDIS_URL", endpoints.redis_url)
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.delenv("KCT_DEPLOYMENT", raising=False)

    def run(*args: str, operate: bool = False) -> tuple[int, str]:
        where = ["--projection", shop.state_projection]
        if operate:
            where += ["--sagas", str(SAGAS_FILE), "--topic-prefix", shop.topic_prefix]
            where += ["--namespace", shop.namespace]
        capsys.readouterr()
        with pytest.raises(SystemExit) as info:
            main(["saga", *args, *where])
            sys.exit(0)
        out = capsys.readouterr()
        return int(info.value.code or 0), out.out + out.err

    return run


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


def _wait_for(
    kct: Kct, shop: Shop, saga_id: str, check: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    client = kct.saga_client(shop.definitions, shop.state_projection)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        state = client.status(saga_id)
        if state is not None and check(state):
            return state
        time.sleep(0.1)
    raise AssertionError(f"saga {saga_id}: {client.status(saga_id)}")


def test_retry_of_a_failed_compensation_refunds_once(kct: Kct, shop: Shop, kctl: Kctl) -> None:
    bank = {"down": True}
    refunds: list[str] = []
    refund_payment = ACTIONS["payment"]["refund_payment"]

    def refund(ctx: StepContext, view: ReadModelBatch) -> None:
        if bank["down"]:
            raise RuntimeError("bank down")
        refunds.append(ctx.saga_id)
        refund_payment(ctx, view)

    actions = {**ACTIONS, "payment": {**ACTIONS["payment"], "refund_payment": refund}}
    client = kct.saga_client(shop.definitions, shop.state_projection)
    with shop.running(kct, actions=actions):
        [saga_id] = client.start_many([order(shop, 1, confirm="fail")])
        client.wait([saga_id], 30)
        code, out = kctl("list", "--status", "failed-compensation", "--json")
        assert code == 0, out
        assert [s["saga_id"] for s in json.loads(out)["sagas"]] == [saga_id]
        bank["down"] = False
        code, out = kctl("retry", saga_id, operate=True)
        assert code == 0, out
        assert "ProcessPayment: COMPENSATE command sent to payment (attempt 2)" in out
        state = _wait_for(kct, shop, saga_id, lambda s: s["status"] == SagaStatus.COMPENSATED)
        code, out = kctl("retry", saga_id, operate=True)  # nothing left to retry
        assert code == 1 and out.startswith("error: saga") and "COMPENSATED" in out
    assert refunds == [saga_id]
    assert not state["needs_attention"]
    assert shop.invariants(kct, {saga_id: state}) == []
    code, out = kctl("show", saga_id)
    assert code == 0, out
    assert "COMPENSATE (retry 2)" in out and "bank down" not in out.split("timeline")[0]


def _short_confirm(shop: Shop) -> dict[str, SagaDefinition]:
    return {
        t: d.model_copy(
            update={"steps": (*d.steps[:2], d.steps[2].model_copy(update={"timeout": 1.0}))}
        )
        for t, d in shop.definitions.items()
    }


class _Variant(Shop):
    """The shop with other definitions (a one-second ConfirmOrder timeout)."""

    chosen: dict[str, SagaDefinition]

    @property
    def definitions(self) -> dict[str, SagaDefinition]:
        return dict(self.chosen)


@pytest.fixture
def variant(shop: Shop) -> Iterator[Shop]:
    made = _Variant(run_id=shop.run_id, skus=shop.skus, customers=shop.customers)
    made.chosen = _short_confirm(shop)
    yield made


def test_a_stuck_step_is_listed_retried_and_runs_once(
    kct: Kct, shop: Shop, variant: Shop, kctl: Kctl
) -> None:
    client = kct.saga_client(variant.definitions, shop.state_projection)
    with variant.running(kct, ("inventory", "payment"), watchdog=False):
        [saga_id] = client.start_many([order(shop, 2)])
        _wait_for(kct, shop, saga_id, lambda s: s["current"] == "ConfirmOrder")
        time.sleep(1.2)  # past the step's timeout: no watchdog, no order service
        code, out = kctl("list", "--status", "stuck", "--json")
        assert code == 0, out
        assert [(s["saga_id"], s["stuck"]) for s in json.loads(out)["sagas"]] == [(saga_id, True)]
        code, out = kctl("retry", saga_id, operate=True)
        assert code == 0, out
        assert "ConfirmOrder: EXECUTE command sent to order (attempt 1)" in out
    with variant.running(kct, ("order",), watchdog=False):  # reads both commands
        state = _wait_for(kct, shop, saga_id, lambda s: s["status"] == SagaStatus.COMPLETED)
        time.sleep(1)
    assert kct.saga_steps.counters(shop.read_model("order"), "orders") == {"confirmed": 1}
    assert shop.invariants(kct, {saga_id: state}) == []
    code, out = kctl("show", saga_id, "--json")
    assert code == 0, out
    steps = [(e["step"], e["action"], e["outcome"]) for e in json.loads(out)["timeline"]]
    assert steps == [
        ("ReserveInventory", "EXECUTE", "SUCCESS"),
        ("ProcessPayment", "EXECUTE", "SUCCESS"),
        ("ConfirmOrder", "EXECUTE", "SUCCESS"),
    ]


def test_an_operator_compensates_a_running_saga(
    kct: Kct, shop: Shop, variant: Shop, kctl: Kctl
) -> None:
    client = kct.saga_client(variant.definitions, shop.state_projection)
    with variant.running(kct, ("inventory", "payment"), watchdog=False):
        [saga_id] = client.start_many([order(shop, 3)])
        _wait_for(kct, shop, saga_id, lambda s: s["current"] == "ConfirmOrder")
        code, out = kctl("compensate", saga_id, "--reason", "customer called", operate=True)
        assert code == 0, out
        assert "ConfirmOrder: will not run" in out
        state = _wait_for(kct, shop, saga_id, lambda s: s["status"] == SagaStatus.COMPENSATED)
        code, out = kctl("compensate", saga_id, operate=True)
        assert code == 1 and "only a running saga can be compensated" in out
    with variant.running(kct, ("order",), watchdog=False):  # the late command: not run
        time.sleep(2)
    assert kct.saga_steps.counters(shop.read_model("order"), "orders") == {}
    confirm = state["steps"][2]
    assert confirm["error"] == "compensated by an operator: customer called"
    assert shop.invariants(kct, {saga_id: state}) == []
