"""Sagas without servers: the state fold, definitions, YAML errors, Avro messages,
participants and the watchdog on in-memory ports, and ``kct saga status``."""

from __future__ import annotations

import copy
import json
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from pydantic import ValidationError

from connectors.avro import AvroCodec, AvroSchemaRegistry, bundled_schema_dir
from examples.order_fulfillment.services import ACTIONS, SAGA_TYPE
from examples.order_fulfillment.services import definitions as example_definitions
from tests.fakes import (
    InMemoryLog,
    InMemoryReadModelStore,
    InMemorySagaStepStore,
    InMemoryTransactionalProducer,
)
from toolkit import errors
from toolkit.dead_letter import DeadLetterQueue, dead_letter_topic
from toolkit.envelope import Envelope, decode_record, encode_envelope
from toolkit.errors import ConfigurationError, ConsistencyError, SagaError, ToolkitError
from toolkit.hlc import HLCTimestamp, HybridLogicalClock
from toolkit.ports import ConsumedRecord, OutgoingRecord, ReadModelChange
from toolkit.projection import ProjectionRunner
from toolkit.publisher import EventPublisher
from toolkit.read_model import ReadModelBatch
from toolkit.runtime import saga_cli
from toolkit.runtime.app import SAGA_STATE
from toolkit.runtime.cli import cli, main
from toolkit.saga.client import SagaClient
from toolkit.saga.definition import (
    SagaDefinition,
    SagaStep,
    load_saga_definitions,
    parse_saga_definitions,
    steps,
)
from toolkit.saga.messages import (
    COMMAND,
    COMPENSATION_FAILED,
    REPLY,
    STARTED,
    Action,
    Outcome,
    SagaCommand,
    SagaCompensationFailed,
    SagaReply,
    SagaStarted,
)
from toolkit.saga.participant import SagaParticipant, StepAction, StepContext, StepFailed
from toolkit.saga.state import (
    RUNNING_KEY,
    TOTALS_KEY,
    SagaStatus,
    fold,
    saga_key,
    saga_state_projection,
)
from toolkit.saga.watchdog import SagaWatchdog

CODEC = AvroCodec(AvroSchemaRegistry.from_directories(bundled_schema_dir()))
ORDER = SagaDefinition(
    saga_type="Order",
    steps=steps(
        ("Reserve", "inventory", "reserve", "release"),
        ("Charge", "payment", "charge", "refund"),
        ("Confirm", "order", "confirm"),
    ),
)
NAMES = [s.name for s in ORDER.steps]
RUNNING, COMPLETED = SagaStatus.RUNNING.value, SagaStatus.COMPLETED.value
COMPENSATED, FAILED_COMPENSATION = (
    SagaStatus.COMPENSATED.value,
    SagaStatus.FAILED_COMPENSATION.value,
)


# -- the fold ----------------------------------------------------------------------


def started(context: Mapping[str, str] | None = None, at: int = 1_000) -> SagaStarted:
    return SagaStarted("s1", "Order", context or {"order": "o-1"}, started_at_ms=at)


def reply(
    step: str,
    action: Action = Action.EXECUTE,
    outcome: Outcome = Outcome.SUCCESS,
    *,
    at: int = 2_000,
    delta: Mapping[str, str] | None = None,
    error: str | None = None,
) -> SagaReply:
    return SagaReply("s1", "Order", step, action, outcome, delta or {}, error, replied_at_ms=at)


def folded(*messages: SagaStarted | SagaReply) -> dict[str, Any]:
    state: dict[str, Any] | None = None
    for message in messages:
        state = fold(state, message, ORDER)
    assert state is not None
    return state


def test_a_started_saga_runs_its_first_step() -> None:
    state = folded(started(at=1_000))
    assert state["status"] == RUNNING
    assert state["current"] == "Reserve"
    assert state["step_started_ms"] == state["started_at_ms"] == 1_000
    assert not state["compensating"] and not state["needs_attention"]
    assert [s["name"] for s in state["steps"]] == NAMES
    assert [s["participant"] for s in state["steps"]] == ["inventory", "payment", "order"]
    assert state["late"] == []


def test_happy_path_completes_with_every_context_delta_merged() -> None:
    state = folded(
        started({"order": "o-1"}),
        reply("Reserve", at=1_100, delta={"reservation": "r-1"}),
        reply("Charge", at=1_200, delta={"payment": "p-1", "order": "o-1"}),
        reply("Confirm", at=1_300, delta={"confirmed": "yes"}),
    )
    assert state["status"] == COMPLETED
    assert state["current"] is None
    assert state["context"] == {
        "order": "o-1",
        "reservation": "r-1",
        "payment": "p-1",
        "confirmed": "yes",
    }
    assert [s["execute"] for s in state["steps"]] == ["SUCCESS"] * 3
    assert [s["compensate"] for s in state["steps"]] == [None] * 3
    assert state["updated_at_ms"] == 1_300
    assert not state["compensating"]


def test_each_success_moves_to_the_next_step_and_restarts_its_clock() -> None:
    state = folded(started(at=1_000), reply("Reserve", at=1_500))
    assert state["current"] == "Charge"
    assert state["step_started_ms"] == 1_500


@pytest.mark.parametrize("failing", [1, 2, 3])
def test_a_failed_step_compensates_the_executed_ones_in_reverse_order(failing: int) -> None:
    state = folded(started(), *(reply(n, at=1_100 + i) for i, n in enumerate(NAMES[: failing - 1])))
    state = fold(
        state,
        reply(NAMES[failing - 1], outcome=Outcome.FAILURE, at=2_000, error="card declined"),
        ORDER,
    )
    assert state["compensating"]
    undone: list[str] = []
    for n in range(len(NAMES)):  # bounded: a bug must not loop forever
        if state["status"] != RUNNING:
            break
        undone.append(state["current"])
        state = fold(state, reply(state["current"], Action.COMPENSATE, at=3_000 + n), ORDER)
    assert undone == list(reversed(NAMES[: failing - 1]))
    assert state["status"] == COMPENSATED
    assert state["current"] is None
    assert not state["needs_attention"]
    failed = state["steps"][failing - 1]
    assert (failed["execute"], failed["compensate"], failed["error"]) == (
        "FAILURE",
        None,
        "card declined",
    )
    assert all(s["execute"] is None for s in state["steps"][failing:])
    assert all(s["compensate"] == "SUCCESS" for s in state["steps"][: failing - 1])


def test_a_failed_first_step_ends_compensated_at_once() -> None:
    state = folded(started(), reply("Reserve", outcome=Outcome.FAILURE, error="out of stock"))
    assert state["status"] == COMPENSATED
    assert state["current"] is None


def test_a_failed_compensation_needs_attention_and_the_earlier_ones_still_run() -> None:
    state = folded(
        started(),
        reply("Reserve"),
        reply("Charge"),
        reply("Confirm", outcome=Outcome.FAILURE, error="too late"),
        reply("Charge", Action.COMPENSATE, Outcome.FAILURE, error="bank down"),
    )
    assert state["status"] == RUNNING
    assert state["needs_attention"]
    assert state["current"] == "Reserve"  # compensation goes on
    state = fold(state, reply("Reserve", Action.COMPENSATE), ORDER)
    assert state["status"] == FAILED_COMPENSATION
    assert state["needs_attention"]
    assert state["steps"][1]["compensate"] == "FAILURE"
    assert state["steps"][1]["error"] == "bank down"
    assert state["steps"][0]["compensate"] == "SUCCESS"


def test_fold_returns_a_new_document_and_leaves_its_input_alone() -> None:
    before = folded(started(), reply("Reserve"))
    kept = copy.deepcopy(before)
    after = fold(before, reply("Charge", delta={"payment": "p"}), ORDER)
    assert after is not before
    assert before == kept


def test_a_redelivered_message_returns_the_same_object() -> None:
    state = folded(started(), reply("Reserve"))
    assert fold(state, started(), ORDER) is state
    assert fold(state, reply("Reserve"), ORDER) is state
    done = folded(started(), reply("Reserve"), reply("Charge"), reply("Confirm"))
    assert fold(done, reply("Confirm"), ORDER) is done


def test_a_reply_contradicting_a_decided_step_is_recorded_as_late_only() -> None:
    # A watchdog timed the step out (FAILURE); the participant's success arrives later.
    state = folded(started(), reply("Reserve", outcome=Outcome.FAILURE, error="timed out"))
    late = fold(state, reply("Reserve", at=9_000, delta={"reservation": "r"}), ORDER)
    assert late["late"] == [
        {"step": "Reserve", "action": "EXECUTE", "outcome": "SUCCESS", "at_ms": 9_000}
    ]
    assert {k: v for k, v in late.items() if k != "late"} == {
        k: v for k, v in state.items() if k != "late"
    }
    assert "reservation" not in late["context"]


def test_a_reply_after_the_end_is_recorded_as_late_only() -> None:
    done = folded(started(), reply("Reserve"), reply("Charge"), reply("Confirm"))
    late = fold(done, reply("Reserve", Action.COMPENSATE, at=9_999), ORDER)
    assert late["status"] == COMPLETED
    assert late["late"] == [
        {"step": "Reserve", "action": "COMPENSATE", "outcome": "SUCCESS", "at_ms": 9_999}
    ]
    assert late["steps"] == done["steps"]
    assert late["updated_at_ms"] == done["updated_at_ms"]


def test_a_redelivered_late_reply_changes_nothing() -> None:
    state = folded(started(), reply("Reserve", outcome=Outcome.FAILURE, error="timed out"))
    late = fold(state, reply("Reserve", at=9_000), ORDER)
    assert fold(late, reply("Reserve", at=9_000), ORDER) is late


def _apply(view: ReadModelBatch, message: SagaStarted | SagaReply) -> None:
    projection = saga_state_projection("sagas", {"Order": ORDER})
    envelope = message.to_envelope()
    handler = projection.handler_for(envelope.event_type)
    assert handler is not None
    handler(envelope, view)


def test_the_projection_counts_running_and_finished_sagas() -> None:
    view = ReadModelBatch(InMemoryReadModelStore(), "sagas")
    _apply(view, started())
    assert view.counters(RUNNING_KEY) == {"s1": 1}
    for name in NAMES:
        _apply(view, reply(name))
    assert view.counters(RUNNING_KEY) == {"s1": 0}
    assert view.counters(TOTALS_KEY) == {COMPLETED: 1}
    changes = len(view)
    _apply(view, reply("Confirm"))  # redelivered: nothing written
    assert len(view) == changes
    state = view.get(saga_key("s1"))
    assert state is not None and state["status"] == COMPLETED


def test_the_projection_rejects_an_unknown_saga_type() -> None:
    view = ReadModelBatch(InMemoryReadModelStore(), "sagas")
    with pytest.raises(ValueError, match="unknown saga type 'Refund'"):
        _apply(view, SagaStarted("s2", "Refund", {}))


# -- definitions -------------------------------------------------------------------


def test_topics_follow_from_the_saga_type() -> None:
    assert ORDER.prefix == "saga.Order"
    assert ORDER.command_topic("payment") == "saga.Order.payment.commands"
    assert ORDER.reply_topic == "saga.Order.replies"
    assert ORDER.failure_topic == "saga.Order.compensation-failed"
    assert ORDER.topics == (
        "saga.Order.inventory.commands",
        "saga.Order.payment.commands",
        "saga.Order.order.commands",
        "saga.Order.replies",
        "saga.Order.compensation-failed",
    )
    moved = ORDER.model_copy(update={"topic_prefix": "shop.1"})
    assert moved.reply_topic == "shop.1.replies"
    assert moved.command_topic("order") == "shop.1.order.commands"


def test_a_participant_with_two_steps_has_one_command_topic() -> None:
    twice = SagaDefinition(
        saga_type="T", steps=steps(("A", "p", "a"), ("B", "q", "b"), ("C", "p", "c"))
    )
    assert twice.participants == ("p", "q")
    assert twice.topics[:2] == ("saga.T.p.commands", "saga.T.q.commands")


def test_after_and_before_walk_the_steps() -> None:
    assert [ORDER.after(n) for n in NAMES] == [ORDER.steps[1], ORDER.steps[2], None]
    assert [ORDER.before(n) for n in NAMES] == [None, ORDER.steps[0], ORDER.steps[1]]
    assert ORDER.index("Confirm") == 2
    assert ORDER.step("Charge").compensation == "refund"


def test_an_unknown_step_is_a_configuration_error_naming_it() -> None:
    with pytest.raises(ConfigurationError) as info:
        ORDER.after("Ship")
    assert info.value.context == {"saga_type": "Order", "step": "Ship"}


def test_definitions_reject_repeated_step_names_and_bad_timeouts() -> None:
    with pytest.raises(ValidationError, match="repeated: A"):
        SagaDefinition(saga_type="T", steps=steps(("A", "p", "a"), ("A", "q", "b")))
    with pytest.raises(ValidationError):
        SagaStep(name="A", participant="p", command="a", timeout=0)
    with pytest.raises(ValidationError):
        SagaDefinition(saga_type="T", steps=())


# -- YAML --------------------------------------------------------------------------

YAML = """\
sagas:
  Order:
    steps:
      - name: Reserve
        participant: inventory
        command: reserve
        compensation: release
      - name: Charge
        participant: payment
        command: charge
"""


def _yaml_error(text: str) -> str:
    with pytest.raises(ConfigurationError) as info:
        parse_saga_definitions(text, "sagas.yaml", {})
    error = info.value
    assert error.__cause__ is None
    return str(error)


def test_yaml_loads_definitions_by_saga_type() -> None:
    loaded = parse_saga_definitions(
        YAML + "        timeout: 2.5\n    topic_prefix: ${PREFIX}\n",
        "sagas.yaml",
        {"PREFIX": "shop.7"},
    )
    order = loaded["Order"]
    assert [s.name for s in order.steps] == ["Reserve", "Charge"]
    assert order.steps[1].timeout == 2.5 and order.steps[0].timeout == 30.0
    assert order.reply_topic == "shop.7.replies"


def test_the_example_file_loads() -> None:
    order = example_definitions()[SAGA_TYPE]
    assert [s.participant for s in order.steps] == ["inventory", "payment", "order"]
    assert order.steps[2].compensation is None


def test_yaml_unknown_key_names_file_line_and_field() -> None:
    message = _yaml_error(YAML + "        retries: 3\n")
    assert message.startswith("sagas.yaml:11: sagas.Order.steps[1].retries: unknown key")
    assert "expected one of: name, participant, command, compensation, timeout" in message


def test_yaml_missing_participant_points_at_its_step() -> None:
    message = _yaml_error(YAML.replace("        participant: payment\n", ""))
    assert message.startswith("sagas.yaml:8: sagas.Order.steps[1].participant: required")


@pytest.mark.parametrize("timeout", ["0", "-1"])
def test_yaml_timeout_must_be_positive(timeout: str) -> None:
    message = _yaml_error(YAML + f"        timeout: {timeout}\n")
    assert message.startswith(
        f"sagas.yaml:11: sagas.Order.steps[1].timeout: expected a number > 0, got {timeout}"
    )


def test_yaml_empty_steps_is_an_error() -> None:
    message = _yaml_error("sagas:\n  Order:\n    steps: []\n")
    assert message.startswith("sagas.yaml:3: sagas.Order.steps: expected a non-empty value")


def test_yaml_without_sagas_mapping_is_an_error() -> None:
    assert _yaml_error("- a\n").startswith("sagas.yaml:1: expected a mapping with 'sagas:'")
    assert _yaml_error("").startswith("sagas.yaml: expected a mapping with 'sagas:'")


def test_yaml_duplicate_step_names_are_an_error() -> None:
    message = _yaml_error(YAML.replace("name: Charge", "name: Reserve"))
    assert message.startswith("sagas.yaml:")
    assert "step names must be unique; repeated: Reserve" in message


def test_yaml_duplicate_step_names_point_at_the_steps() -> None:
    message = _yaml_error(YAML.replace("name: Charge", "name: Reserve"))
    assert message.startswith(
        "sagas.yaml:3: sagas.Order.steps: step names must be unique; repeated: Reserve"
    )


def test_load_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "sagas.yaml"
    path.write_text(YAML + "        timeout: 0\n")
    with pytest.raises(ConfigurationError) as info:
        load_saga_definitions(path)
    assert str(info.value).startswith(f"{path}:11: ")
    with pytest.raises(ConfigurationError, match="cannot read saga definitions"):
        load_saga_definitions(tmp_path / "missing.yaml")


# -- messages through the real Avro codec --------------------------------------------


def _round_trip(envelope: Envelope) -> Envelope:
    hlc = HLCTimestamp(1_700_000_000_000, 3, "node-a")
    stamped, record = encode_envelope("saga.Order.replies", envelope, CODEC, hlc)
    consumed = ConsumedRecord(
        record.topic, 1, 42, record.key, record.value, record.headers, 1_700_000_000_000
    )
    decoded = decode_record(consumed, CODEC).envelope
    assert decoded == stamped
    assert decoded.aggregate_id == decoded.correlation_id == "s-9"
    return decoded


@pytest.mark.parametrize("action", list(Action))
def test_command_round_trips(action: Action) -> None:
    command = SagaCommand("s-9", "Order", "Charge", action, {"sku": "w", "n": "2"}, attempt=3)
    decoded = _round_trip(command.to_envelope())
    assert decoded.event_type == COMMAND
    assert SagaCommand.from_payload(decoded.payload) == command


@pytest.mark.parametrize("error", [None, "card declined"])
def test_reply_round_trips(error: str | None) -> None:
    outcome = Outcome.SUCCESS if error is None else Outcome.FAILURE
    sent = SagaReply("s-9", "Order", "Charge", Action.EXECUTE, outcome, {"p": "1"}, error)
    decoded = _round_trip(sent.to_envelope())
    assert decoded.event_type == REPLY
    assert SagaReply.from_payload(decoded.payload) == sent


def test_started_round_trips() -> None:
    sent = SagaStarted("s-9", "Order", {"order": "o-1"})
    decoded = _round_trip(sent.to_envelope())
    assert decoded.event_type == STARTED
    assert SagaStarted.from_payload(decoded.payload) == sent


def test_compensation_failed_round_trips() -> None:
    sent = SagaCompensationFailed(
        "s-9", "Order", "Charge", "payment", "refund", {"order": "o-1"}, 4, "bank down"
    )
    envelope = sent.to_envelope()
    decoded = _round_trip(envelope)
    assert decoded.event_type == COMPENSATION_FAILED
    assert decoded.payload == envelope.payload


# -- participants, client and watchdog on in-memory ports ---------------------------


STOCK, WALLET = 10, 10_000


class Shop:
    """The order fulfillment example wired to in-memory ports."""

    def __init__(self, actions: Mapping[str, Mapping[str, StepAction]] | None = None) -> None:
        self.definitions = example_definitions()
        self.log = InMemoryLog()
        self.store = InMemorySagaStepStore()
        self.transactions = InMemoryTransactionalProducer(self.log)
        self.publisher = EventPublisher(self.log, CODEC, HybridLogicalClock("test"))
        chosen = {name: dict(acts) for name, acts in ACTIONS.items()}
        for name, overrides in (actions or {}).items():
            chosen[name].update(overrides)
        self.participants = {name: self.participant(name, chosen[name]) for name in chosen}
        self.client = SagaClient(
            self.definitions,
            transactions=self.transactions,
            publisher=self.publisher,
            states=self.store,
            state_projection="sagas",
        )
        self.runner = ProjectionRunner(
            saga_state_projection("sagas", self.definitions),
            self.log.consumer("sagas"),
            CODEC,
            self.store,
            DeadLetterQueue(self.log, "sagas"),
        )
        seed = [ReadModelChange("put", "stock:widget", document={"available": STOCK})]
        self.store.record_once("inventory", "seed", seed, {})
        seed = [ReadModelChange("put", "wallet:c1", document={"balance": WALLET})]
        self.store.record_once("payment", "seed", seed, {})

    def participant(self, name: str, actions: Mapping[str, StepAction]) -> SagaParticipant:
        group = f"saga-{name}"
        return SagaParticipant(
            name,
            self.definitions,
            actions,
            consumer=self.log.consumer(group),
            transactions=self.transactions,
            publisher=self.publisher,
            codec=CODEC,
            store=self.store,
            dead_letters=DeadLetterQueue(self.log, group),
            group_metadata=lambda: group,
            sleep=lambda _seconds: None,
        )

    def start(self, n: int, **context: str) -> str:
        base = {"order_id": f"o-{n}", "sku": "widget", "quantity": "2", "customer": "c1"}
        base |= {"amount_cents": "1500", "card": "ok", **context}
        return self.client.start(SAGA_TYPE, base, saga_id=f"s-{n}")

    def settle(self, *, participants: bool = True) -> None:
        for _ in range(50):
            moved = self.runner.run_once()
            if participants:
                moved += sum(p.run_once() for p in self.participants.values())
            if not moved:
                return
        raise AssertionError("the saga did not settle")

    def state(self, saga_id: str) -> dict[str, Any]:
        found = self.client.status(saga_id)
        assert found is not None
        return found

    def available(self) -> int:
        return int((self.store.get("inventory", "stock:widget") or {})["available"])

    def balance(self) -> int:
        return int((self.store.get("payment", "wallet:c1") or {})["balance"])

    def messages(self, topic: str) -> list[Envelope]:
        records = self.log.topics.get(topic, [])
        return [decode_record(r, CODEC).envelope for r in records]


def test_a_saga_completes_and_a_declined_one_is_compensated() -> None:
    shop = Shop()
    ok, declined = shop.start(1), shop.start(2, card="declined")
    shop.settle()
    assert shop.state(ok)["status"] == COMPLETED
    assert shop.state(ok)["context"]["confirmed"] == "yes"
    assert shop.state(declined)["status"] == COMPENSATED
    assert shop.available() == STOCK - 2  # the declined order's reservation was released
    assert shop.balance() == WALLET - 1500
    assert shop.store.counters("order", "orders") == {"confirmed": 1}
    inventory = shop.participants["inventory"]
    assert inventory.stats["executed"] == 2 and inventory.stats["compensated"] == 1


def test_participants_count_their_committed_polls_and_time_them() -> None:
    shop = Shop()
    shop.start(1)
    shop.settle()
    order = shop.participants["order"]
    assert order.stats["polls"] == 1 and order.stats["commands"] == 1
    assert order.stats["decide_us"] >= 0 and order.stats["transaction_us"] >= 0
    assert order.run_once() == 0 and order.stats["polls"] == 1  # an empty poll is not one


def test_a_redelivered_command_republishes_and_does_not_act_again() -> None:
    shop = Shop()
    saga_id = shop.start(1)
    shop.settle()
    replies = len(shop.messages(shop.definitions[SAGA_TYPE].reply_topic))
    state = shop.state(saga_id)
    inventory = shop.participants["inventory"]
    # The same command again (its sender re-published it after a crash of its own).
    (first,) = shop.log.topics[shop.definitions[SAGA_TYPE].command_topic("inventory")]
    shop.log.produce([OutgoingRecord(first.topic, first.key, first.value, first.headers)])
    assert inventory.run_once() == 1
    assert inventory.stats["redelivered"] == 1
    assert shop.available() == STOCK - 2  # reserved once
    shop.settle()
    assert len(shop.messages(shop.definitions[SAGA_TYPE].reply_topic)) > replies
    assert shop.state(saga_id) == state  # the republished reply folds to nothing new


def test_an_aborted_transaction_is_read_again_and_acted_on_once() -> None:
    shop = Shop()
    saga_id = shop.start(1)
    shop.transactions.fail_commits = 1
    inventory = shop.participants["inventory"]
    assert inventory.run_once() == 0
    assert inventory.stats["rewinds"] == 1
    assert shop.available() == STOCK - 2  # recorded before the transaction, once
    shop.settle()
    assert inventory.stats["redelivered"] == 1
    assert inventory.stats["executed"] == 1
    assert shop.state(saga_id)["status"] == COMPLETED
    assert shop.available() == STOCK - 2


def test_a_compensation_that_keeps_failing_ends_failed_compensation() -> None:
    attempts: list[int] = []

    def refund(ctx: StepContext, view: ReadModelBatch) -> None:
        attempts.append(ctx.attempt)
        raise RuntimeError("bank down")

    shop = Shop({"payment": {"refund_payment": refund}})
    saga_id = shop.start(1, confirm="fail")
    shop.settle()
    state = shop.state(saga_id)
    assert state["status"] == FAILED_COMPENSATION
    assert state["needs_attention"]
    assert [s["compensate"] for s in state["steps"]] == ["SUCCESS", "FAILURE", None]
    assert state["steps"][1]["error"] == "RuntimeError: bank down"
    assert attempts == [1, 2, 3, 4]  # compensation_retries: 3
    assert shop.available() == STOCK  # the reservation was still released
    assert shop.balance() == WALLET - 1500  # the charge stays: a human must look
    (failed,) = shop.messages(shop.definitions[SAGA_TYPE].failure_topic)
    assert failed.payload["step"] == "ProcessPayment"
    assert failed.payload["attempts"] == 4
    assert failed.payload["context"]["order_id"] == "o-1"


def test_a_business_failure_is_a_saga_error_of_the_one_tree() -> None:
    assert issubclass(StepFailed, SagaError) and issubclass(SagaError, ToolkitError)
    assert StepFailed is errors.StepFailed


def test_a_business_failure_is_not_retried_and_a_technical_one_is() -> None:
    calls: list[int] = []

    def flaky(ctx: StepContext, view: ReadModelBatch) -> Mapping[str, str]:
        calls.append(ctx.attempt)
        if ctx.attempt < 3:
            raise ConnectionError("try again")
        return {"confirmed": "late"}

    def refuse(ctx: StepContext, view: ReadModelBatch) -> None:
        raise StepFailed("no")

    shop = Shop({"order": {"confirm_order": flaky}})
    shop.start(1)
    shop.settle()
    assert calls == [1, 2, 3]  # retries=2
    assert shop.state("s-1")["status"] == COMPLETED

    shop = Shop({"inventory": {"reserve_inventory": refuse}})
    shop.start(1)
    shop.settle()
    state = shop.state("s-1")
    assert state["status"] == COMPENSATED
    assert state["steps"][0]["error"] == "no"
    assert shop.participants["inventory"].stats["failed"] == 1


def test_an_invalid_command_is_dead_lettered() -> None:
    shop = Shop()
    topic = shop.definitions[SAGA_TYPE].command_topic("inventory")
    bogus = SagaCommand("s-x", SAGA_TYPE, "ConfirmOrder", Action.EXECUTE, {})
    shop.publisher.publish(topic, bogus.to_envelope())  # another participant's step
    inventory = shop.participants["inventory"]
    inventory.run_once()
    assert inventory.stats["invalid_commands"] == 1
    assert len(shop.log.topics[dead_letter_topic(topic)]) == 1


def test_the_watchdog_times_out_a_step_that_never_ran() -> None:
    shop = Shop()
    saga_id = shop.start(1)
    shop.settle(participants=False)  # the state projection saw the start; nobody acted
    now = [shop.state(saga_id)["step_started_ms"] + 19_999]
    dog = SagaWatchdog(
        shop.definitions,
        steps=shop.store,
        states=shop.store,
        state_projection="sagas",
        transactions=shop.transactions,
        publisher=shop.publisher,
        clock_ms=lambda: now[0],
    )
    assert dog.check_once() == []  # the step's timeout is 20 s
    now[0] += 1
    assert dog.check_once() == [saga_id]
    shop.settle()
    state = shop.state(saga_id)
    assert state["status"] == COMPENSATED
    assert "timed out by a watchdog" in state["steps"][0]["error"]
    inventory = shop.participants["inventory"]
    assert inventory.stats["executed"] == 0  # the late command found the decision
    assert inventory.stats["redelivered"] == 1
    assert shop.available() == STOCK
    assert dog.check_once() == []
    assert dog.timed_out == 1


def test_the_watchdog_leaves_a_step_that_ran_alone() -> None:
    shop = Shop()
    saga_id = shop.start(1)
    shop.settle(participants=False)
    shop.participants["inventory"].run_once()  # decided, reply not folded yet
    dog = SagaWatchdog(
        shop.definitions,
        steps=shop.store,
        states=shop.store,
        state_projection="sagas",
        transactions=shop.transactions,
        publisher=shop.publisher,
        clock_ms=lambda: 10**15,
    )
    assert dog.check_once() == []
    shop.settle()
    assert shop.state(saga_id)["status"] == COMPLETED


# -- kct saga status / list -----------------------------------------------------------


@pytest.fixture
def cli_store(monkeypatch: pytest.MonkeyPatch) -> InMemoryReadModelStore:
    store = InMemoryReadModelStore()
    state = folded(
        started({"order": "o-1"}),
        reply("Reserve", delta={"reservation": "r-1"}),
        reply("Charge", outcome=Outcome.FAILURE, error="card declined"),
    )
    state = fold(state, reply("Charge", at=9_000), ORDER)  # late
    changes = [
        ReadModelChange("put", saga_key("s1"), document=state),
        ReadModelChange("increment", RUNNING_KEY, field="s1", amount=1),
        ReadModelChange("increment", RUNNING_KEY, field="s0", amount=0),
        ReadModelChange("increment", TOTALS_KEY, field=COMPLETED, amount=4),
    ]
    store.apply(SAGA_STATE, changes, {}, {})

    @contextmanager
    def fake(config_path: Path | None) -> Iterator[InMemoryReadModelStore]:
        yield store

    monkeypatch.setattr(saga_cli, "_store", fake)
    return store


def test_status_shows_steps_context_and_late_replies(cli_store: InMemoryReadModelStore) -> None:
    result = CliRunner().invoke(cli, ["saga", "status", "s1"], terminal_width=200)
    assert result.exit_code == 0, result.output
    out = result.output
    for expected in (
        "s1",
        "Order",
        "RUNNING",
        "Reserve (compensating)",
        "inventory",
        "card declined",
        "reservation",
        "r-1",
        "late replies",
    ):
        assert expected in out


def test_status_json_is_the_state_document(cli_store: InMemoryReadModelStore) -> None:
    result = CliRunner().invoke(cli, ["saga", "status", "s1", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == cli_store.get(SAGA_STATE, saga_key("s1"))


def test_status_of_an_unknown_saga_exits_1(
    cli_store: InMemoryReadModelStore,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(sys, "argv", ["kct", "saga", "status", "nope", "--projection", "p"])
    with pytest.raises(SystemExit) as info:
        main()
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: no saga 'nope' in projection 'p'")
    raised = CliRunner().invoke(cli, ["saga", "status", "nope"])
    assert isinstance(raised.exception, ConsistencyError)


def test_list_shows_totals_and_running_sagas(cli_store: InMemoryReadModelStore) -> None:
    result = CliRunner().invoke(cli, ["saga", "list", "--json"])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert {k: shown[k] for k in ("projection", "totals", "running", "matched")} == {
        "projection": SAGA_STATE,
        "totals": {COMPLETED: 4},
        "running": ["s1"],
        "matched": 1,
    }
    shown = CliRunner().invoke(cli, ["saga", "list"], env={"COLUMNS": "200"})
    assert "COMPLETED" in shown.output and "│ s1 " in shown.output


def test_the_shown_default_projection_is_the_apps() -> None:
    assert saga_cli.DEFAULT_PROJECTION_SHOWN == SAGA_STATE
