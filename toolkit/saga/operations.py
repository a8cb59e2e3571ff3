"""Operating sagas: list them by status and age, show their timeline, retry, compensate.

:func:`list_sagas` and :func:`timeline` read the saga-state projection (the
fold of replies, see :mod:`toolkit.saga.state`). :class:`SagaOperator` acts:

* :meth:`SagaOperator.retry` re-drives a **stuck** step of a running saga
  (no reply for longer than the step's timeout) or every compensation of a
  saga parked as ``FAILED_COMPENSATION``;
* :meth:`SagaOperator.compensate` aborts a running saga: its current step
  is failed and the steps before it are compensated.

Guarantee: neither ever runs a step's effect twice, because the
participant's once-only step record decides, exactly as for a redelivered
command or a watchdog's timeout (:mod:`toolkit.saga.step_records`):

* a stuck step whose record exists was decided; its stored messages (reply,
  next command) are published again, nothing runs. Without a record the
  same command is sent again under the **same** key, so whichever copy the
  participant reads first decides and the other only re-publishes;
* a failed compensation is retried under a key of its own per attempt
  (``<saga>/<step>/COMPENSATE/<n>``), and a participant runs attempt ``n``
  only when attempt ``n - 1`` is recorded as a failure (which applied
  nothing): one undo at most, however often an operator retries;
* compensate records the current step's EXECUTE as a failure
  (``by: operator``) with the once-only script: if it wins the step never
  runs; if the participant won, the step ran, and the operator waits for the
  state to reach the next step and tries there.

Failure modes: :class:`~toolkit.errors.SagaOperationRefused` when the saga's
state does not allow the operation (nothing published);
:class:`~toolkit.errors.ConsistencyError` for a saga the projection does not
know; ``StoreError``, ``PublishError`` or ``TransactionAborted`` from the
backends, with nothing published.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from toolkit.errors import ConfigurationError, ConsistencyError, SagaOperationRefused
from toolkit.ports import ReadModelStore, SagaStepStore, TransactionalProducer
from toolkit.publisher import EventPublisher
from toolkit.saga.definition import SagaDefinition, SagaStep
from toolkit.saga.messages import Action, Outcome, SagaCommand
from toolkit.saga.state import SagaStatus, saga_key, status_key
from toolkit.saga.step_records import (
    Output,
    dedup_key,
    failure_outputs,
    outputs_document,
    publish_outputs,
    stored_outputs,
)

__all__ = [
    "STUCK",
    "Operation",
    "SagaOperator",
    "SagaSummary",
    "TimelineEntry",
    "is_stuck",
    "list_sagas",
    "saga_document",
    "timeline",
]

STUCK = "STUCK"  # a filter for list_sagas: running, current step overdue
DEFAULT_STEP_TIMEOUT_S = 30.0  # documents written before steps carried their timeout


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True)
class SagaSummary:
    """One line of ``kct saga list``."""

    saga_id: str
    saga_type: str
    status: str
    current: str | None
    compensating: bool
    stuck: bool
    needs_attention: bool
    started_at_ms: int
    updated_at_ms: int
    trace_id: str | None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class TimelineEntry:
    """One step's execute or compensate: when asked, when decided, how often run."""

    step: str
    participant: str
    action: str
    outcome: str | None  # None: asked, not decided yet
    first_ms: int | None
    done_ms: int | None
    attempts: int
    attempt: int  # an operator's retries raise it above 1 (compensations)
    error: str | None

    @property
    def duration_ms(self) -> int | None:
        if self.first_ms is None or self.done_ms is None:
            return None
        return self.done_ms - self.first_ms

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "duration_ms": self.duration_ms}


@dataclass(frozen=True)
class Operation:
    """What an operator's retry or compensate did: one line per message sent."""

    saga_id: str
    done: tuple[str, ...]
    published: int


def saga_document(states: ReadModelStore, projection: str, saga_id: str) -> dict[str, Any]:
    """The saga's state document; ConsistencyError if the projection does not know it."""
    doc = states.get(projection, saga_key(saga_id))
    if doc is None:
        raise ConsistencyError(
            f"no saga {saga_id!r} in projection {projection!r}: a wrong id or projection, "
            "or the projection has not applied the saga's start yet",
            saga_id=saga_id,
            projection=projection,
        )
    return doc


def _current_step(doc: Mapping[str, Any]) -> Mapping[str, Any] | None:
    for step in doc.get("steps", []):
        if step["name"] == doc.get("current"):
            return dict(step)
    return None


def is_stuck(doc: Mapping[str, Any], now_ms: int) -> bool:
    """Running, and its current step (or compensation) has had no reply for
    longer than the step's timeout."""
    if doc.get("status") != SagaStatus.RUNNING.value:
        return False
    step = _current_step(doc)
    if step is None:
        return False
    timeout = float(step.get("timeout_s") or DEFAULT_STEP_TIMEOUT_S)
    return now_ms - int(doc["step_started_ms"]) > timeout * 1000


def _summary(doc: Mapping[str, Any], now_ms: int) -> SagaSummary:
    return SagaSummary(
        saga_id=str(doc["saga_id"]),
        saga_type=str(doc["saga_type"]),
        status=str(doc["status"]),
        current=doc.get("current"),
        compensating=bool(doc.get("compensating")),
        stuck=is_stuck(doc, now_ms),
        needs_attention=bool(doc.get("needs_attention")),
        started_at_ms=int(doc["started_at_ms"]),
        updated_at_ms=int(doc["updated_at_ms"]),
        trace_id=doc.get("trace_id"),
    )


def list_sagas(
    states: ReadModelStore,
    projection: str,
    statuses: Sequence[str] = (),
    *,
    older_than_ms: int = 0,
    now_ms: int | None = None,
) -> list[SagaSummary]:
    """Sagas with one of ``statuses`` (SagaStatus values or :data:`STUCK`; none:
    all) whose last change is at least ``older_than_ms`` old, oldest change first."""
    now = _now_ms() if now_ms is None else now_ms
    wanted = set(statuses) or {*(s.value for s in SagaStatus), STUCK}
    index_of = {SagaStatus.RUNNING.value if s == STUCK else s for s in wanted}
    ids: set[str] = set()
    for status in index_of:
        ids.update(i for i, n in states.counters(projection, status_key(status)).items() if n > 0)
    found: list[SagaSummary] = []
    for saga_id in ids:
        doc = states.get(projection, saga_key(saga_id))
        if doc is None or now - int(doc["updated_at_ms"]) < older_than_ms:
            continue
        summary = _summary(doc, now)
        if summary.status in wanted or (STUCK in wanted and summary.stuck):
            found.append(summary)
    return sorted(found, key=lambda s: (s.updated_at_ms, s.saga_id))


def timeline(doc: Mapping[str, Any]) -> list[TimelineEntry]:
    """Each step's execute and compensate that was asked for, in the order asked."""
    ordered: list[tuple[tuple[int, int, int], TimelineEntry]] = []
    for index, step in enumerate(doc.get("steps", [])):
        for rank, action in enumerate(("execute", "compensate")):
            first, outcome = step.get(f"{action}_first_ms"), step.get(action)
            if first is None and outcome is None:
                continue
            entry = TimelineEntry(
                step=str(step["name"]),
                participant=str(step["participant"]),
                action=action.upper(),
                outcome=outcome,
                first_ms=first,
                done_ms=step.get(f"{action}_done_ms"),
                attempts=int(step.get(f"{action}_attempts") or 0),
                attempt=int(step.get(f"{action}_attempt") or 1),
                error=step.get("error") if outcome == Outcome.FAILURE.value else None,
            )
            # Executes run forwards, compensations backwards, after them.
            when = first if first is not None else 1 << 62
            ordered.append(((when, rank, -index if rank else index), entry))
    return [entry for _, entry in sorted(ordered, key=lambda pair: pair[0])]


class SagaOperator:
    """Retries stuck steps and failed compensations, and compensates running sagas.

    ``transactions`` makes the transactional producer when the first message
    is published (a refused operation never starts one).
    """

    def __init__(
        self,
        definitions: Mapping[str, SagaDefinition],
        *,
        states: ReadModelStore,
        state_projection: str,
        steps: SagaStepStore,
        transactions: Callable[[], TransactionalProducer],
        publisher: EventPublisher,
        namespace: str = "",
        clock_ms: Callable[[], int] = _now_ms,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._definitions = dict(definitions)
        self._states = states
        self._projection = state_projection
        self._steps = steps
        self._transactions = transactions
        self._publisher = publisher
        self._namespace = namespace
        self._clock_ms = clock_ms
        self._sleep = sleep

    def _doc(self, saga_id: str) -> dict[str, Any]:
        return saga_document(self._states, self._projection, saga_id)

    def _definition(self, doc: Mapping[str, Any]) -> SagaDefinition:
        found = self._definitions.get(str(doc["saga_type"]))
        if found is None:
            raise ConfigurationError(
                "no definition for the saga's type",
                saga_type=doc["saga_type"],
                known=sorted(self._definitions),
            )
        return found

    def _record(self, step: SagaStep, saga_id: str, action: Action, attempt: int = 1) -> Any:
        key = dedup_key(saga_id, step.name, action, attempt)
        return self._steps.outcome(f"{self._namespace}{step.participant}", key)

    # -- retry --------------------------------------------------------------
    def retry(self, saga_id: str) -> Operation:
        """Re-drive the stuck step of a running saga, or every failed compensation
        of a saga that ended FAILED_COMPENSATION."""
        doc = self._doc(saga_id)
        definition = self._definition(doc)
        status = doc["status"]
        if status == SagaStatus.FAILED_COMPENSATION.value:
            failed = [s for s in doc["steps"] if s["compensate"] == Outcome.FAILURE.value]
            done: list[str] = []
            outputs: list[Output] = []
            for entry in failed:
                line, messages = self._retry_compensation(definition, doc, entry)
                done.append(line)
                outputs.extend(messages)
            return self._publish(saga_id, done, outputs)
        if status != SagaStatus.RUNNING.value:
            raise SagaOperationRefused(
                f"saga {saga_id} is {status}: nothing to retry", saga_id=saga_id
            )
        now = self._clock_ms()
        if not is_stuck(doc, now):
            waited = (now - int(doc["step_started_ms"])) / 1000
            raise SagaOperationRefused(
                f"saga {saga_id} is not stuck: step {doc['current']} has waited {waited:.1f}s, "
                "less than its timeout",
                saga_id=saga_id,
            )
        step = definition.step(str(doc["current"]))
        action = Action.COMPENSATE if doc["compensating"] else Action.EXECUTE
        line, messages = self._redrive(definition, doc, step, action, 1)
        return self._publish(saga_id, [line], messages)

    def _retry_compensation(
        self, definition: SagaDefinition, doc: Mapping[str, Any], entry: Mapping[str, Any]
    ) -> tuple[str, list[Output]]:
        step = definition.step(str(entry["name"]))
        attempt = max(1, int(entry.get("compensate_attempt") or 1))
        while self._record(step, doc["saga_id"], Action.COMPENSATE, attempt + 1) is not None:
            attempt += 1  # a retry decided but not yet folded into the state
        record = self._record(step, doc["saga_id"], Action.COMPENSATE, attempt)
        if record is None:
            raise SagaOperationRefused(
                f"no step record of {step.name}'s compensation in read model "
                f"{self._namespace}{step.participant!s}: a wrong namespace?",
                saga_id=doc["saga_id"],
            )
        if record["outcome"] == Outcome.SUCCESS.value:
            return f"{step.name}: compensation attempt {attempt} succeeded; reply sent again", (
                stored_outputs(record)
            )
        return self._redrive(definition, doc, step, Action.COMPENSATE, attempt + 1)

    def _redrive(
        self,
        definition: SagaDefinition,
        doc: Mapping[str, Any],
        step: SagaStep,
        action: Action,
        attempt: int,
    ) -> tuple[str, list[Output]]:
        saga_id = str(doc["saga_id"])
        record = self._record(step, saga_id, action, attempt)
        if record is not None:
            return (
                f"{step.name}: {action.value} was decided ({record['outcome']}); "
                "its messages were sent again",
                stored_outputs(record),
            )
        context = {str(k): str(v) for k, v in doc["context"].items()}
        command = SagaCommand(saga_id, definition.saga_type, step.name, action, context, attempt)
        topic = definition.command_topic(step.participant)
        return (
            f"{step.name}: {action.value} command sent to {step.participant} (attempt {attempt})",
            [(topic, command.to_envelope())],
        )

    # -- compensate ---------------------------------------------------------
    def compensate(self, saga_id: str, reason: str = "", *, wait: float = 10.0) -> Operation:
        """Abort a running saga: fail its current step (unless that already ran,
        then the next one) and compensate the steps before it."""
        deadline = time.monotonic() + wait
        while True:
            doc = self._doc(saga_id)
            if doc["status"] != SagaStatus.RUNNING.value:
                raise SagaOperationRefused(
                    f"saga {saga_id} is {doc['status']}: only a running saga can be compensated",
                    saga_id=saga_id,
                )
            if doc["compensating"]:
                return Operation(
                    saga_id, (f"already compensating (at {doc['current']}); nothing sent",), 0
                )
            definition = self._definition(doc)
            step = definition.step(str(doc["current"]))
            done = self._fail_step(definition, doc, step, reason)
            if done is not None:
                return done
            if time.monotonic() >= deadline:
                raise SagaOperationRefused(
                    f"step {step.name} of saga {saga_id} ran before it could be stopped and the "
                    f"saga has not moved on within {wait:g}s; try again",
                    saga_id=saga_id,
                )
            self._sleep(0.1)  # the step ran: wait for the state to reach the next one

    def _fail_step(
        self, definition: SagaDefinition, doc: Mapping[str, Any], step: SagaStep, reason: str
    ) -> Operation | None:
        saga_id = str(doc["saga_id"])
        error = "compensated by an operator" + (f": {reason}" if reason else "")
        context = {str(k): str(v) for k, v in doc["context"].items()}
        outputs = failure_outputs(definition, step, saga_id, context, error, tries=0)
        recorded, stored = self._steps.record_once(
            f"{self._namespace}{step.participant}",
            dedup_key(saga_id, step.name, Action.EXECUTE),
            [],
            outputs_document(Outcome.FAILURE, outputs, by="operator"),
        )
        if recorded:
            line = f"{step.name}: will not run; compensating the steps before it"
            return self._publish(saga_id, [line], outputs)
        if stored["outcome"] == Outcome.FAILURE.value:
            line = f"{step.name}: had already failed; its messages were sent again"
            return self._publish(saga_id, [line], stored_outputs(stored))
        return None

    def _publish(self, saga_id: str, done: Sequence[str], outputs: Sequence[Output]) -> Operation:
        if outputs:
            publish_outputs(self._transactions(), self._publisher, outputs)
        return Operation(saga_id, tuple(done), len(outputs))
