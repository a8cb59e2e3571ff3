"""A participant's poll on in-memory ports: one dedup lookup and one write of
the step records per poll, and no decision applied on a state it did not see."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from examples.order_fulfillment.services import SAGA_TYPE
from tests.unit.test_saga import COMPLETED, STOCK, Shop
from toolkit.ports import OutgoingRecord, ReadModelChange, StepRecord, StepRecordResult
from toolkit.read_model import ReadModelBatch
from toolkit.saga.messages import Action, Outcome
from toolkit.saga.participant import StepContext, StepFailed
from toolkit.saga.step_records import dedup_key, failure_outputs, outputs_document

COMPENSATED = "COMPENSATED"  # a first step that failed: nothing to undo


def _reserved(shop: Shop) -> int:
    return shop.store.counters("inventory", "reserved").get("widget", 0)


def _meddle_before_writing(shop: Shop, meddle: object) -> None:
    """Run ``meddle()`` once, right before the participant's records are written."""
    real = shop.store.record_each
    done: list[bool] = []

    def record_each(participant: str, records: Sequence[StepRecord]) -> list[StepRecordResult]:
        if not done:
            done.append(True)
            meddle()  # type: ignore[operator]
        return real(participant, records)

    shop.store.record_each = record_each  # type: ignore[method-assign]


def test_a_poll_looks_up_and_records_its_commands_together_and_reads_a_document_once() -> None:
    shop = Shop()
    sagas = [shop.start(n) for n in range(4)]
    shop.store.calls.clear()
    assert shop.participants["inventory"].run_once() == 4
    assert dict(shop.store.calls) == {"outcomes": 1, "get": 1, "record_each": 1}
    assert shop.available() == STOCK - 8 and _reserved(shop) == 8
    shop.settle()
    assert all(shop.state(s)["status"] == COMPLETED for s in sagas)
    assert shop.available() + _reserved(shop) == STOCK


def test_a_decision_sees_the_pending_changes_of_the_poll() -> None:
    shop = Shop()
    sagas = [shop.start(n) for n in range(6)]  # 6 x 2 units, 10 in stock
    shop.participants["inventory"].run_once()
    assert shop.available() == 0 and _reserved(shop) == STOCK
    shop.settle()
    assert [shop.state(s)["status"] for s in sagas] == [COMPLETED] * 5 + [COMPENSATED]
    assert "out of stock" in str(shop.state(sagas[5])["steps"][0]["error"])


def test_a_record_decided_elsewhere_makes_the_decisions_that_read_it_decide_again() -> None:
    shop = Shop()
    sagas = [shop.start(n) for n in range(4)]
    definition = shop.definitions[SAGA_TYPE]
    step = definition.steps[0]

    def watchdog_times_out_saga_1() -> None:
        timeout = failure_outputs(definition, step, sagas[1], {}, "timed out", tries=0)
        key = dedup_key(sagas[1], step.name, Action.EXECUTE)
        document = outputs_document(Outcome.FAILURE, timeout, by="watchdog")
        shop.store.record_once("inventory", key, [], document)

    _meddle_before_writing(shop, watchdog_times_out_saga_1)
    inventory = shop.participants["inventory"]
    assert inventory.run_once() == 4
    assert inventory.stats["decided_elsewhere"] == 1
    assert inventory.stats["stale_decisions"] == 2  # sagas 2 and 3 read saga 1's reservation
    assert shop.available() == STOCK - 6 and _reserved(shop) == 6  # 3 reservations, once each
    shop.settle()
    assert [shop.state(s)["status"] for s in sagas] == [
        COMPLETED,
        COMPENSATED,
        COMPLETED,
        COMPLETED,
    ]
    assert shop.available() + _reserved(shop) == STOCK


def test_a_document_written_meanwhile_makes_the_decisions_that_read_it_decide_again() -> None:
    shop = Shop()
    sagas = [shop.start(n) for n in range(3)]

    def another_member_restocks() -> None:
        restock = [ReadModelChange("put", "stock:widget", document={"available": STOCK + 100})]
        shop.store.record_once("inventory", "restock", restock, {})

    _meddle_before_writing(shop, another_member_restocks)
    inventory = shop.participants["inventory"]
    inventory.run_once()
    assert inventory.stats["stale_decisions"] == 3
    assert shop.available() == STOCK + 100 - 6  # the restock is kept, each reservation once
    shop.settle()
    assert all(shop.state(s)["status"] == COMPLETED for s in sagas)


def test_an_action_that_reads_counters_is_decided_alone() -> None:
    def reserve(ctx: StepContext, view: ReadModelBatch) -> Mapping[str, str]:
        held = view.counters("reserved").get("widget", 0)
        if held + 2 > 4:
            raise StepFailed("at most 4 reserved")
        view.increment("reserved", "widget", 2)
        return {}

    shop = Shop({"inventory": {"reserve_inventory": reserve}})
    sagas = [shop.start(n) for n in range(3)]
    shop.store.calls.clear()
    shop.participants["inventory"].run_once()
    assert shop.store.calls["record_once"] == 3 and shop.store.calls["record_each"] == 0
    assert _reserved(shop) == 4
    shop.settle()
    assert [shop.state(s)["status"] for s in sagas] == [COMPLETED, COMPLETED, COMPENSATED]


def test_a_command_twice_in_one_poll_acts_once() -> None:
    shop = Shop()
    saga = shop.start(1)
    topic = shop.definitions[SAGA_TYPE].command_topic("inventory")
    (first,) = shop.log.topics[topic]
    shop.log.produce([OutgoingRecord(first.topic, first.key, first.value, first.headers)])
    inventory = shop.participants["inventory"]
    assert inventory.run_once() == 2
    assert inventory.stats["executed"] == 1 and inventory.stats["redelivered"] == 1
    assert shop.available() == STOCK - 2
    shop.settle()
    assert shop.state(saga)["status"] == COMPLETED
