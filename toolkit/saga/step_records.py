"""Step records: what a saga step's once-only record holds, and the messages it stands for.

A participant (and a watchdog timing a step out) records each decided step
under :func:`dedup_key` (saga id + step + action) with
:func:`outputs_document`: the outcome and every message the decision
produces (the reply, the next command). Whoever records first decides; a
later attempt finds the record and re-publishes :func:`stored_outputs`
instead of acting again. :func:`publish_outputs` publishes messages in one
Kafka transaction.

Failure modes: :func:`publish_outputs` raises ``TransactionAborted`` or
``PublishError`` with nothing published; a stored record this module did
not write raises ``KeyError``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from toolkit.envelope import Envelope
from toolkit.envelope_json import envelope_from_document, envelope_to_document
from toolkit.ports import TransactionalProducer
from toolkit.publisher import EventPublisher
from toolkit.saga.definition import SagaDefinition, SagaStep
from toolkit.saga.messages import Action, Outcome, SagaCommand, SagaReply

__all__ = [
    "Output",
    "compensate_before",
    "dedup_key",
    "failure_outputs",
    "outputs_document",
    "publish_outputs",
    "stored_outputs",
]

Output = tuple[str, Envelope]  # (topic, message)


def dedup_key(saga_id: str, step: str, action: Action, attempt: int = 1) -> str:
    """The once-only key of a step's action; an operator's retry of a failed
    compensation (``attempt`` above 1) is decided under its own key."""
    base = f"{saga_id}/{step}/{action.value}"
    return base if attempt <= 1 else f"{base}/{attempt}"


def outputs_document(outcome: Outcome, outputs: Sequence[Output], **extra: Any) -> dict[str, Any]:
    """What a dedup record stores: the outcome and the messages to (re-)publish."""
    return {
        "outcome": outcome.value,
        "outputs": [{"topic": t, "event": envelope_to_document(e)} for t, e in outputs],
        **extra,
    }


def stored_outputs(record: Mapping[str, Any]) -> list[Output]:
    return [(o["topic"], envelope_from_document(o["event"])) for o in record["outputs"]]


def failure_outputs(
    definition: SagaDefinition,
    step: SagaStep,
    saga_id: str,
    context: Mapping[str, str],
    error: str | None,
    *,
    tries: int = 1,
) -> list[Output]:
    """The reply of a failed (or timed-out: ``tries`` 0) EXECUTE and the compensation it starts."""
    reply = SagaReply(
        saga_id,
        definition.saga_type,
        step.name,
        Action.EXECUTE,
        Outcome.FAILURE,
        {},
        error,
        tries=tries,
    )
    return [
        (definition.reply_topic, reply.to_envelope()),
        *compensate_before(definition, step, context, saga_id),
    ]


def compensate_before(
    definition: SagaDefinition, step: SagaStep, context: Mapping[str, str], saga_id: str
) -> list[Output]:
    """The COMPENSATE command of the step before ``step`` (none for the first)."""
    previous = definition.before(step.name)
    if previous is None:
        return []
    command = SagaCommand(saga_id, definition.saga_type, previous.name, Action.COMPENSATE, context)
    return [(definition.command_topic(previous.participant), command.to_envelope())]


def publish_outputs(
    transactions: TransactionalProducer, publisher: EventPublisher, outputs: Sequence[Output]
) -> None:
    """Publish messages to their topics in one transaction."""
    with transactions.begin() as transaction:
        publisher.publish_routed_in(transaction, outputs)
        transaction.commit()
