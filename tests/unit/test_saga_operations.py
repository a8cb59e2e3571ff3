"""Saga operations without servers: timestamps in the fold, listing by status and age,
the timeline, and an operator's retry and compensate keeping every effect once."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from examples.order_fulfillment.services import SAGA_TYPE
from tests.fakes import InMemoryReadModelStore
from tests.unit.test_saga import (
    COMPENSATED,
    FAILED_COMPENSATION,
    ORDER,
    RUNNING,
    STOCK,
    WALLET,
    Shop,
    folded,
    reply,
    started,
)
from toolkit.errors import ConsistencyError, SagaOperationRefused
from toolkit.ports import ReadModelChange
from toolkit.read_model import ReadModelBatch
from toolkit.runtime import saga_cli
from toolkit.runtime.app import SAGA_STATE
from toolkit.runtime.cli import cli
from toolkit.saga.messages import Action, Outcome, SagaCommand, SagaReply, SagaStarted
from toolkit.saga.operations import STUCK, SagaOperator, is_stuck, list_sagas, timeline
from toolkit.saga.participant import StepContext
from toolkit.saga.state import fold, saga_key, status_key
from toolkit.saga.step_records import dedup_key

# -- timestamps in the fold ------------------------------------------------------------


def test_steps_keep_when_they_were_asked_decided_and_how_often_they_ran() -> None:
    state = folded(
        started(at=1_000),
        reply("Reserve", at=1_100),
        reply("Charge", Action.EXECUTE, Outcome.FAILURE, at=1_400, error="no"),
    )
    reserve, charge, confirm = state["steps"]
    assert (reserve["execute_first_ms"], reserve["execute_done_ms"]) == (1_000, 1_100)
    assert (charge["execute_first_ms"], charge["execute_done_ms"]) == (1_100, 1_400)
    assert reserve["execute_attempts"] == charge["execute_attempts"] == 1
    assert reserve["compensate_first_ms"] == 1_400  # the undo was asked for at the failure
    assert confirm["execute_first_ms"] is None
    assert reserve["timeout_s"] == 30.0
    entries = timeline(state)
    assert [(e.step, e.action, e.outcome) for e in entries] == [
        ("Reserve", "EXECUTE", "SUCCESS"),
        ("Charge", "EXECUTE", "FAILURE"),
        ("Reserve", "COMPENSATE", None),
    ]
    assert [e.duration_ms for e in entries] == [100, 300, None]
    assert entries[1].error == "no" and entries[0].error is None


def _failed_compensation() -> dict[str, Any]:
    return folded(
        started(at=1_000),
        reply("Reserve"),
        reply("Charge"),
        reply("Confirm", outcome=Outcome.FAILURE, error="too late"),
        reply("Charge", Action.COMPENSATE, Outcome.FAILURE, error="bank down"),
        reply("Reserve", Action.COMPENSATE),
    )


def test_a_retried_compensation_that_succeeds_ends_the_saga_compensated() -> None:
    state = _failed_compensation()
    assert state["status"] == FAILED_COMPENSATION
    retried = reply("Charge", Action.COMPENSATE, Outcome.FAILURE, at=5_000, error="still down")
    retried = dataclasses.replace(retried, attempt=2)
    state = fold(state, retried, ORDER)
    assert state["status"] == FAILED_COMPENSATION
    assert state["steps"][1]["error"] == "still down"
    assert state["steps"][1]["compensate_attempt"] == 2
    assert fold(state, retried, ORDER) is state  # redelivered
    ok = dataclasses.replace(reply("Charge", Action.COMPENSATE, at=6_000), attempt=3)
    state = fold(state, ok, ORDER)
    assert state["status"] == COMPENSATED
    assert not state["needs_attention"]
    assert state["steps"][1]["compensate_attempts"] == 3
    assert state["updated_at_ms"] == 6_000
    stale = reply("Charge", Action.COMPENSATE, Outcome.FAILURE, at=7_000)
    stale = dataclasses.replace(stale, attempt=2)
    assert fold(state, stale, ORDER)["late"]  # an older attempt changes nothing


# -- listing -----------------------------------------------------------------------------


def _store_with(*docs: dict[str, Any]) -> InMemoryReadModelStore:
    store = InMemoryReadModelStore()
    changes: list[ReadModelChange] = []
    for doc in docs:
        changes += [
            ReadModelChange("put", saga_key(str(doc["saga_id"])), document=doc),
            ReadModelChange(
                "increment", status_key(str(doc["status"])), field=str(doc["saga_id"]), amount=1
            ),
        ]
    store.apply(SAGA_STATE, changes, {}, {})
    return store


def _doc(saga_id: str, *messages: SagaStarted | SagaReply) -> dict[str, Any]:
    return {**folded(*messages), "saga_id": saga_id}


def test_list_filters_by_status_stuck_and_age() -> None:
    running = _doc("a", started(at=1_000))
    failed = {**_failed_compensation(), "saga_id": "b"}
    fresh = _doc("c", started(at=100_000))
    store = _store_with(running, failed, fresh)
    now = 101_000
    ids = [s.saga_id for s in list_sagas(store, SAGA_STATE, now_ms=now)]
    assert ids == ["a", "b", "c"]  # oldest change first
    assert [s.saga_id for s in list_sagas(store, SAGA_STATE, [STUCK], now_ms=now)] == ["a"]
    assert is_stuck(running, now) and not is_stuck(fresh, now)
    found = list_sagas(store, SAGA_STATE, [FAILED_COMPENSATION], now_ms=now)
    assert [(s.saga_id, s.needs_attention) for s in found] == [("b", True)]
    old = list_sagas(store, SAGA_STATE, [RUNNING], older_than_ms=60_000, now_ms=now)
    assert [s.saga_id for s in old] == ["a"]


def test_the_projection_indexes_sagas_by_status() -> None:
    shop = Shop()
    done, declined = shop.start(1), shop.start(2, card="declined")
    shop.settle()
    assert shop.store.counters("sagas", status_key("COMPLETED")) == {done: 1}
    assert shop.store.counters("sagas", status_key("COMPENSATED")) == {declined: 1}
    assert shop.store.counters("sagas", status_key(RUNNING)) == {done: 0, declined: 0}


# -- the operator --------------------------------------------------------------------------


def operator(shop: Shop, now: list[int] | None = None) -> SagaOperator:
    return SagaOperator(
        shop.definitions,
        states=shop.store,
        state_projection="sagas",
        steps=shop.store,
        transactions=lambda: shop.transactions,
        publisher=shop.publisher,
        clock_ms=(lambda: now[0]) if now else (lambda: 10**15),
        sleep=lambda _s: shop.settle(),
    )


def test_retry_of_a_failed_compensation_undoes_the_step_once() -> None:
    bank = {"down": True, "refunds": 0}

    def refund(ctx: StepContext, view: ReadModelBatch) -> None:
        if bank["down"]:
            raise RuntimeError("bank down")
        bank["refunds"] += 1
        wallet = view.get("wallet:c1") or {"balance": 0}
        view.put("wallet:c1", {"balance": wallet["balance"] + int(ctx.context["amount_cents"])})

    shop = Shop({"payment": {"refund_payment": refund}})
    saga_id = shop.start(1, confirm="fail")
    shop.settle()
    assert shop.state(saga_id)["status"] == FAILED_COMPENSATION
    ops = operator(shop)
    done = ops.retry(saga_id)  # still down: attempt 2 fails too
    assert done.published == 1 and "attempt 2" in done.done[0]
    shop.settle()
    state = shop.state(saga_id)
    assert state["status"] == FAILED_COMPENSATION
    assert state["steps"][1]["compensate_attempts"] == 8  # 4 tries per attempt
    bank["down"] = False
    ops.retry(saga_id)
    ops.retry(saga_id)  # twice before anything ran: the same attempt 3, decided once
    shop.settle()
    state = shop.state(saga_id)
    assert state["status"] == COMPENSATED
    assert bank["refunds"] == 1
    assert shop.balance() == WALLET
    assert shop.available() == STOCK
    with pytest.raises(SagaOperationRefused, match="COMPENSATED: nothing to retry"):
        ops.retry(saga_id)
    entries = [
        e for e in timeline(state) if e.action == "COMPENSATE" and e.step == "ProcessPayment"
    ]
    assert [(e.outcome, e.attempt) for e in entries] == [("SUCCESS", 3)]


def test_a_participant_refuses_a_retry_whose_previous_attempt_is_not_a_failure() -> None:
    shop = Shop()
    saga_id = shop.start(1, confirm="fail")
    shop.settle()
    assert shop.state(saga_id)["status"] == COMPENSATED
    topic = shop.definitions[SAGA_TYPE].command_topic("payment")
    command = SagaCommand(saga_id, SAGA_TYPE, "ProcessPayment", Action.COMPENSATE, {}, 2)
    shop.publisher.publish(topic, command.to_envelope())
    payment = shop.participants["payment"]
    payment.run_once()
    assert payment.stats["retries_refused"] == 1
    assert (
        shop.store.outcome("payment", dedup_key(saga_id, "ProcessPayment", command.action, 2))
        is None
    )
    assert shop.balance() == WALLET  # refunded once


def test_retry_of_a_stuck_step_sends_its_command_again_and_it_runs_once() -> None:
    shop = Shop()
    saga_id = shop.start(1)
    shop.settle(participants=False)
    started_ms = shop.state(saga_id)["step_started_ms"]
    now = [started_ms + 1_000]
    ops = operator(shop, now)
    with pytest.raises(SagaOperationRefused, match="not stuck"):
        ops.retry(saga_id)
    now[0] = started_ms + 20_001
    done = ops.retry(saga_id)
    assert "EXECUTE command sent to inventory (attempt 1)" in done.done[0]
    shop.settle()  # the original command and the retried one: one reservation
    assert shop.state(saga_id)["status"] == "COMPLETED"
    assert shop.available() == STOCK - 2
    assert shop.participants["inventory"].stats["redelivered"] == 1


def test_retry_of_a_step_decided_but_not_folded_republishes_its_outcome() -> None:
    shop = Shop()
    saga_id = shop.start(1)
    shop.settle(participants=False)
    shop.participants["inventory"].run_once()  # decided and published
    shop.log.topics[shop.definitions[SAGA_TYPE].reply_topic].pop()  # ... but the reply is lost
    done = operator(shop).retry(saga_id)
    assert "was decided (SUCCESS)" in done.done[0]
    shop.settle()
    assert shop.state(saga_id)["status"] == "COMPLETED"
    assert shop.available() == STOCK - 2


def test_compensate_fails_the_current_step_and_undoes_the_ones_before() -> None:
    shop = Shop()
    saga_id = shop.start(1)
    shop.settle(participants=False)
    shop.participants["inventory"].run_once()
    shop.runner.run_once()  # the state shows ProcessPayment as current; not run yet
    assert shop.state(saga_id)["current"] == "ProcessPayment"
    done = operator(shop).compensate(saga_id, "customer called")
    assert "ProcessPayment: will not run" in done.done[0]
    shop.settle()
    state = shop.state(saga_id)
    assert state["status"] == COMPENSATED
    assert state["steps"][1]["error"] == "compensated by an operator: customer called"
    assert shop.balance() == WALLET and shop.available() == STOCK
    assert shop.participants["payment"].stats["executed"] == 0
    with pytest.raises(SagaOperationRefused, match="only a running saga"):
        operator(shop).compensate(saga_id)


def test_compensate_after_the_current_step_ran_fails_the_next_one() -> None:
    shop = Shop()
    saga_id = shop.start(1)
    shop.settle(participants=False)
    shop.participants["inventory"].run_once()
    shop.runner.run_once()  # the state shows ProcessPayment as current
    shop.participants["payment"].run_once()  # charged; its reply is not folded yet
    assert shop.state(saga_id)["current"] == "ProcessPayment"
    ops = SagaOperator(
        shop.definitions,
        states=shop.store,
        state_projection="sagas",
        steps=shop.store,
        transactions=lambda: shop.transactions,
        publisher=shop.publisher,
        sleep=lambda _s: shop.settle(participants=False),  # the state moves on
    )
    done = ops.compensate(saga_id)
    assert "ConfirmOrder: will not run" in done.done[0]
    shop.settle()
    state = shop.state(saga_id)
    assert state["status"] == COMPENSATED
    assert [s["compensate"] for s in state["steps"]] == ["SUCCESS", "SUCCESS", None]
    assert shop.balance() == WALLET and shop.available() == STOCK
    assert shop.store.counters("order", "orders") == {}


def test_operations_on_an_unknown_saga_name_it() -> None:
    with pytest.raises(ConsistencyError, match="no saga 'nope'"):
        operator(Shop()).retry("nope")


# -- the CLI -------------------------------------------------------------------------------


@pytest.fixture
def listed(monkeypatch: pytest.MonkeyPatch) -> InMemoryReadModelStore:
    store = _store_with({**_failed_compensation(), "saga_id": "b"}, _doc("a", started(at=1_000)))

    @contextmanager
    def fake(config_path: Path | None) -> Iterator[InMemoryReadModelStore]:
        yield store

    monkeypatch.setattr(saga_cli, "_store", fake)
    monkeypatch.setenv("COLUMNS", "200")
    return store


def test_list_json_has_the_matching_sagas(listed: InMemoryReadModelStore) -> None:
    result = CliRunner().invoke(cli, ["saga", "list", "--status", "stuck", "--json"])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert [s["saga_id"] for s in shown["sagas"]] == ["a"]
    assert shown["sagas"][0]["stuck"] is True
    result = CliRunner().invoke(
        cli, ["saga", "list", "--status", "failed-compensation", "--older-than", "5m"]
    )
    assert result.exit_code == 0, result.output
    assert "FAILED_COMPENSATION" in result.output and " b " in result.output


def test_show_prints_the_timeline(listed: InMemoryReadModelStore) -> None:
    result = CliRunner().invoke(cli, ["saga", "show", "b"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for expected in ("timeline", "Confirm", "bank down", "COMPENSATE"):
        assert expected in result.output
    shown = json.loads(CliRunner().invoke(cli, ["saga", "show", "b", "--json"]).output)
    assert shown["saga"]["status"] == FAILED_COMPENSATION
    assert [e["action"] for e in shown["timeline"]][:3] == ["EXECUTE"] * 3
