"""A saga's state is the fold of its replies.

:func:`fold` applies one message (``SagaStarted`` or ``SagaReply``) to a
saga's state document; :func:`saga_state_projection` runs that fold as an
ordinary projection over the reply topics, so any process can show any saga
(``kct saga status <id>``) and the document is exact after crashes like every
read model.

States: ``RUNNING`` (including while compensating), ``COMPLETED``,
``COMPENSATED`` (a step failed and every executed step was undone), and
``FAILED_COMPENSATION`` (a compensation kept failing: the saga needs
attention; its context is on the compensation-failure topic). The fold is
idempotent: a redelivered reply changes nothing, and a reply that arrives
after its step was already decided (a late success after a timeout) is
recorded under ``late`` and changes nothing else.

Timestamps (epoch ms): ``started_at_ms`` and ``updated_at_ms`` (the last
change) for the saga; per step, for its execute and its compensate, when it
was first asked for (``*_first_ms``), when it was decided (``*_done_ms``), how
often its action ran (``*_attempts``, from the replies' ``tries``), and the
step's last ``error``. An operator's retry of a failed compensation
(``kct saga retry``) is a reply with a higher ``attempt``: it replaces the
failure, and a saga with no failed compensation left becomes ``COMPENSATED``.

The projection keeps an index per status: ``running`` (as before) and
``status:<STATUS>`` counter hashes of saga ids (1 while the saga has that
status), so sagas are listed by status without a scan.

The document keeps the saga's trace (``trace_id`` and the ``traceparent`` of
its start, from the ``SagaStarted`` envelope when tracing is on), so
``kct saga status`` can name the trace and a watchdog's timeout joins it.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Any

from toolkit.envelope import Envelope
from toolkit.interceptors import Interceptor, trace_id_of
from toolkit.projection import Projection
from toolkit.read_model import ReadModelBatch
from toolkit.saga.definition import SagaDefinition
from toolkit.saga.messages import REPLY, STARTED, Action, Outcome, SagaReply, SagaStarted

__all__ = [
    "RUNNING_KEY",
    "TERMINAL",
    "TOTALS_KEY",
    "SagaStatus",
    "fold",
    "saga_key",
    "saga_state_projection",
    "status_key",
]

# Counter hash of running sagas (saga id -> 1 while running) for watchdogs.
RUNNING_KEY = "running"
TOTALS_KEY = "totals"


class SagaStatus(StrEnum):
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    COMPENSATED = "COMPENSATED"
    FAILED_COMPENSATION = "FAILED_COMPENSATION"


TERMINAL = frozenset({SagaStatus.COMPLETED, SagaStatus.COMPENSATED, SagaStatus.FAILED_COMPENSATION})


def saga_key(saga_id: str) -> str:
    return f"saga:{saga_id}"


def status_key(status: str) -> str:
    """The counter hash indexing the sagas that have ``status`` (saga id -> 1)."""
    return RUNNING_KEY if status == SagaStatus.RUNNING.value else f"status:{status}"


def _new(
    definition: SagaDefinition,
    saga_id: str,
    context: Mapping[str, str],
    at_ms: int,
    traceparent: str | None,
) -> dict[str, Any]:
    return {
        "saga_id": saga_id,
        "trace_id": trace_id_of(traceparent),
        "traceparent": traceparent,
        "saga_type": definition.saga_type,
        "status": SagaStatus.RUNNING.value,
        "context": dict(context),
        "started_at_ms": at_ms,
        "updated_at_ms": at_ms,
        "current": definition.steps[0].name,
        "step_started_ms": at_ms,
        "compensating": False,
        "needs_attention": False,
        "steps": [
            {
                "name": s.name,
                "participant": s.participant,
                "execute": None,
                "compensate": None,
                "error": None,
                "timeout_s": s.timeout,
                "execute_first_ms": at_ms if i == 0 else None,
                "execute_done_ms": None,
                "execute_attempts": 0,
                "compensate_first_ms": None,
                "compensate_done_ms": None,
                "compensate_attempts": 0,
                "compensate_attempt": 0,
            }
            for i, s in enumerate(definition.steps)
        ],
        "late": [],
    }


def fold(
    state: dict[str, Any] | None,
    message: SagaStarted | SagaReply,
    definition: SagaDefinition,
    traceparent: str | None = None,
) -> dict[str, Any]:
    """The saga's state after ``message`` (a new dict; ``state`` is not changed);
    ``traceparent`` is the message's trace context, kept when it opens the document."""
    if isinstance(message, SagaStarted):
        if state is not None:
            return state  # redelivered
        return _new(
            definition, message.saga_id, message.context, message.started_at_ms, traceparent
        )
    doc = (
        _new(definition, message.saga_id, {}, message.replied_at_ms, traceparent)
        if state is None
        else {**state, "steps": [dict(s) for s in state["steps"]], "late": list(state["late"])}
    )
    index = definition.index(message.step)
    step = doc["steps"][index]
    field = "execute" if message.action is Action.EXECUTE else "compensate"
    if _is_retry(step, message):
        _apply_retry(doc, step, message)
        return doc
    if step[field] is not None or doc["status"] in TERMINAL:
        if step[field] == message.outcome.value:
            assert state is not None
            return state  # redelivered
        late = {
            "step": message.step,
            "action": message.action.value,
            "outcome": message.outcome.value,
            "at_ms": message.replied_at_ms,
        }
        if late in doc["late"]:
            assert state is not None
            return state  # the same late reply, redelivered
        doc["late"].append(late)
        return doc
    _record(step, field, message)
    doc["updated_at_ms"] = message.replied_at_ms
    if message.action is Action.EXECUTE:
        _after_execute(doc, definition, index, message)
    else:
        _after_compensate(doc, definition, index, message)
    return doc


def _record(step: dict[str, Any], field: str, reply: SagaReply) -> None:
    step[field] = reply.outcome.value
    step[f"{field}_done_ms"] = reply.replied_at_ms
    step[f"{field}_attempts"] = int(step.get(f"{field}_attempts") or 0) + reply.tries
    if field == "compensate":
        step["compensate_attempt"] = reply.attempt
    if reply.error:
        step["error"] = reply.error


def _is_retry(step: Mapping[str, Any], reply: SagaReply) -> bool:
    """An operator's retry of a compensation that failed (a newer attempt)."""
    return (
        reply.action is Action.COMPENSATE
        and step["compensate"] == Outcome.FAILURE.value
        and reply.attempt > int(step.get("compensate_attempt") or 1)
    )


def _apply_retry(doc: dict[str, Any], step: dict[str, Any], reply: SagaReply) -> None:
    _record(step, "compensate", reply)
    doc["updated_at_ms"] = reply.replied_at_ms
    failed = any(s["compensate"] == Outcome.FAILURE.value for s in doc["steps"])
    if not failed and doc["status"] == SagaStatus.FAILED_COMPENSATION.value:
        doc["status"] = SagaStatus.COMPENSATED.value
        doc["needs_attention"] = False


def _after_execute(
    doc: dict[str, Any], definition: SagaDefinition, index: int, reply: SagaReply
) -> None:
    if reply.outcome is Outcome.SUCCESS:
        doc["context"] = {**doc["context"], **reply.context_delta}
        if index + 1 == len(definition.steps):
            doc["status"], doc["current"] = SagaStatus.COMPLETED.value, None
        else:
            doc["current"] = definition.steps[index + 1].name
            doc["step_started_ms"] = reply.replied_at_ms
            doc["steps"][index + 1]["execute_first_ms"] = reply.replied_at_ms
        return
    doc["compensating"] = True
    _compensate_from(doc, definition, index - 1, reply.replied_at_ms)


def _after_compensate(
    doc: dict[str, Any], definition: SagaDefinition, index: int, reply: SagaReply
) -> None:
    if reply.outcome is Outcome.FAILURE:
        doc["needs_attention"] = True
    _compensate_from(doc, definition, index - 1, reply.replied_at_ms)


def _compensate_from(
    doc: dict[str, Any], definition: SagaDefinition, index: int, at_ms: int
) -> None:
    """Next: compensate step ``index`` (the previous executed one), or finish."""
    if index >= 0:
        doc["current"] = definition.steps[index].name
        doc["step_started_ms"] = at_ms
        doc["steps"][index]["compensate_first_ms"] = at_ms
        return
    doc["current"] = None
    failed = any(s["compensate"] == Outcome.FAILURE.value for s in doc["steps"])
    doc["status"] = (SagaStatus.FAILED_COMPENSATION if failed else SagaStatus.COMPENSATED).value


def saga_state_projection(
    name: str,
    definitions: Mapping[str, SagaDefinition],
    interceptor: Interceptor | None = None,
) -> Projection:
    """The projection keeping ``saga:<id>`` documents for the given saga types
    (``interceptor`` hears of late replies through ``note``)."""
    projection = Projection(name, sorted({d.reply_topic for d in definitions.values()}))

    def apply(message: SagaStarted | SagaReply, view: ReadModelBatch, event: Envelope) -> None:
        definition = definitions.get(message.saga_type)
        if definition is None:
            raise ValueError(f"unknown saga type {message.saga_type!r}")
        key = saga_key(message.saga_id)
        before = view.get(key)
        after = fold(before, message, definition, event.traceparent)
        if after is before:
            return
        view.put(key, after)
        if (
            interceptor is not None
            and before is not None
            and len(after["late"]) > len(before["late"])
        ):
            late = after["late"][-1]
            interceptor.note(
                "kct.saga.late_reply",
                {
                    "kct.saga.id": message.saga_id,
                    "kct.saga.step": late["step"],
                    "kct.saga.action": late["action"],
                    "kct.saga.outcome": late["outcome"],
                },
            )
        was, now = (before["status"] if before else None), after["status"]
        if now != was:
            if was is not None:
                view.increment(status_key(was), message.saga_id, -1)
                if was in TERMINAL:  # a retried compensation: FAILED_COMPENSATION no more
                    view.increment(TOTALS_KEY, was, -1)
            view.increment(status_key(now), message.saga_id, 1)
            if now in TERMINAL:
                view.increment(TOTALS_KEY, now)

    @projection.reads(STARTED, REPLY)
    def saga_document(event: Envelope) -> list[str]:
        return [saga_key(str(event.payload["saga_id"]))]  # messages are keyed by saga

    @projection.on(STARTED)
    def started(event: Envelope, view: ReadModelBatch) -> None:
        apply(SagaStarted.from_payload(event.payload), view, event)

    @projection.on(REPLY)
    def replied(event: Envelope, view: ReadModelBatch) -> None:
        apply(SagaReply.from_payload(event.payload), view, event)

    return projection
