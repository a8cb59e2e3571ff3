"""Saga participants: perform a step once in effect, reply and pass the saga on.

A :class:`SagaParticipant` is one member of the participant's consumer group
(``kct.<deployment>.saga.<saga type>.<namespace><participant>``, see
:func:`toolkit.runtime.app.saga_group`) reading its command topics. Per poll:

1. look up every command's dedup record (saga id + step + action) in one
   call (``SagaStepStore.outcomes``): a step found there was already decided:
   re-publish what was stored;
2. otherwise run the action against a ``ReadModelBatch`` of the participant's
   read model and, in **one Redis script**, apply its changes and record the
   outcome together with the messages it produces (the reply, and the next
   command: the next step's EXECUTE on success, the previous step's
   COMPENSATE on failure or after a compensation). The EXECUTE decisions of
   a poll are recorded together, one script each in one round trip, each
   applied only while the documents its decision read are unchanged, else
   decided again alone (:mod:`toolkit.saga.poll_records`); compensations,
   operator retries and actions that read counters are decided alone, after
   the records queued before them are written;
3. in **one Kafka transaction**, publish every reply and next command of the
   poll and commit the consumer offsets (``send_offsets_to_transaction`` with
   the group's metadata, which fences a zombie member).

A crash between 2 and 3 replays the commands; their dedup records make the
replay re-publish, not re-act: every local effect happens exactly once.
An operator's retry of a failed compensation (``kct saga retry``, command
``attempt`` n > 1) is decided under a key of its own and runs only when
attempt n - 1 is recorded as a failure (which applied nothing), so a step is
undone at most once; it replies with its attempt and compensates nothing
earlier (that already happened).

Actions: ``action(step_context, view) -> context delta`` (a mapping of
strings) for EXECUTE; raise :class:`StepFailed` for a business failure (no
retry). Other exceptions are retried with back-off, then count as a failure;
a ``ConnectorError`` (a backend the action reads, or the service behind an
HTTP action, is down) rewinds the poll instead: the step is decided later.
Compensations run only for steps that executed successfully here (anything
else has nothing to undo, so "compensate step k" is safe whether or not step
k ran); one that still fails after ``compensation_retries`` goes to the
saga's compensation-failure topic with the full context, is replied as a
FAILURE (the saga ends FAILED_COMPENSATION, needing attention), and the
compensation of earlier steps continues.

With an :class:`~toolkit.interceptors.Interceptor`, each command runs inside
its ``process`` hook and each step decision inside ``saga_step``, decided
and recorded alone (so its span holds the recorded outcome); the reply
and next command carry the step's context (``propagate``), so a saga's
messages stay in the trace its start opened.

Failure modes: a command that is not valid for this participant (unknown
saga type or step, another participant's step) is dead-lettered
(``invalid_command``); a Kafka transaction that fails is aborted and the
poll's commands are read again (their outcomes are already recorded). Any
backend failure (Redis down, Kafka unreachable, a transaction aborted after a
pause) never ends :meth:`SagaParticipant.run`: the poll is rewound, the
participant reports itself unhealthy (:attr:`SagaParticipant.health`) and
waits with capped back-off, staying in its group, then heals by itself.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, NamedTuple

from toolkit.dead_letter import DeadLetterQueue
from toolkit.envelope import ConsumedEvent
from toolkit.errors import ConfigurationError, ConnectorError, ConsumeError, StepFailed
from toolkit.hlc import HybridLogicalClock
from toolkit.interceptors import Interceptor, StepInfo
from toolkit.ports import (
    EventCodec,
    ReadModelChange,
    RecordConsumer,
    SagaStepStore,
    TransactionalProducer,
)
from toolkit.positions import TopicPartition
from toolkit.publisher import EventPublisher
from toolkit.read_model import ReadModelBatch
from toolkit.reader import EventReader
from toolkit.saga.definition import SagaDefinition, SagaStep
from toolkit.saga.messages import (
    COMMAND,
    REPLY,
    Action,
    Outcome,
    SagaCommand,
    SagaCompensationFailed,
    SagaReply,
)
from toolkit.saga.poll_records import PollRecords
from toolkit.saga.step_records import (
    Output,
    compensate_before,
    dedup_key,
    failure_outputs,
    outputs_document,
    stored_outputs,
)
from toolkit.supervision import Backoff, Health, LoopHealth

__all__ = [
    "SagaParticipant",
    "StepAction",
    "StepContext",
    "StepFailed",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StepContext:
    """What an action sees: which saga and step, and the saga's context so far."""

    saga_id: str
    saga_type: str
    step: str
    action: Action
    context: Mapping[str, str]
    attempt: int


StepAction = Callable[[StepContext, ReadModelBatch], Mapping[str, str] | None]


class _Command(NamedTuple):
    """A valid command of a poll, with its step and once-only key."""

    event: ConsumedEvent
    definition: SagaDefinition
    step: SagaStep
    command: SagaCommand
    key: str


# (slot in the poll's messages, the command, its messages) of a queued record
_Queued = tuple[int, _Command, list[Output]]


class SagaParticipant:
    """One member of a participant service's command consumer group."""

    def __init__(
        self,
        name: str,
        definitions: Mapping[str, SagaDefinition],
        actions: Mapping[str, StepAction],
        *,
        consumer: RecordConsumer,
        transactions: TransactionalProducer,
        publisher: EventPublisher,
        codec: EventCodec,
        store: SagaStepStore,
        dead_letters: DeadLetterQueue,
        group_metadata: Callable[[], object],
        clock: HybridLogicalClock | None = None,
        retries: int = 2,
        backoff: float = 0.05,
        max_batch: int = 100,
        poll_timeout: float = 0.1,
        sleep: Callable[[float], None] = time.sleep,
        namespace: str = "",
        max_backoff: float = 1.0,
        interceptor: Interceptor | None = None,
    ) -> None:
        self.name = name
        self._hooks = interceptor
        # The participant's read model (and dedup records) in the store.
        self.read_model = f"{namespace}{name}"
        self._definitions = {t: d for t, d in definitions.items() if name in d.participants}
        if not self._definitions:
            raise ConfigurationError("no saga has a step for this participant", participant=name)
        self._check_actions(actions)
        self._actions = dict(actions)
        self._consumer = consumer
        self._reader = EventReader(consumer, codec, dead_letters, clock)
        self._transactions = transactions
        self._publisher = publisher
        self._store = store
        self._dead_letters = dead_letters
        self._group_metadata = group_metadata
        self._retries = retries
        self._backoff = backoff
        self._max_batch = max_batch
        self._poll_timeout = poll_timeout
        self._sleep = sleep
        self._owned: set[TopicPartition] = set()
        self._committed: dict[TopicPartition, int] = {}
        self._stopping = threading.Event()
        self._outage_backoff = Backoff(backoff, max(backoff, max_backoff))
        self._health = LoopHealth()
        self._alone_actions: set[str] = set()  # actions that read counters
        self.stats: dict[str, int] = defaultdict(int)
        topics = sorted({d.command_topic(name) for d in self._definitions.values()})
        self._reader.subscribe(topics, self._assigned, self._revoked)

    def _check_actions(self, actions: Mapping[str, StepAction]) -> None:
        needed = {
            a
            for d in self._definitions.values()
            for s in d.steps
            if s.participant == self.name
            for a in (s.command, s.compensation)
            if a is not None
        }
        missing = sorted(needed - set(actions))
        if missing:
            raise ConfigurationError(
                "participant has no action for some of its steps",
                participant=self.name,
                missing=missing,
            )

    def _assigned(self, partitions: list[TopicPartition]) -> None:
        self.stats["assignments"] += 1  # > 0 once joined (an empty assignment included)
        self._owned.update(partitions)

    def _revoked(self, partitions: list[TopicPartition]) -> None:
        # Nothing is in flight between polls: each poll ends committed or rewound.
        self._owned.difference_update(partitions)
        self._reader.forget(partitions)
        for tp in partitions:
            self._committed.pop(tp, None)

    # -- the loop ---------------------------------------------------------
    @property
    def health(self) -> Health:
        """Whether the last polls succeeded, and if not, why (for readiness probes)."""
        return self._health.current

    def run(self, stop: threading.Event | None = None) -> None:
        """Poll until stopped; backend failures are waited out, never raised."""
        while not self._stopping.is_set() and not (stop is not None and stop.is_set()):
            try:
                self.run_once()
            except ConnectorError as exc:  # the poll itself failed (Kafka unreachable)
                self._failed(exc)

    def stop(self) -> None:
        self._stopping.set()

    def run_once(self) -> int:
        """One poll: decide every command, then publish and commit in one transaction."""
        events = self._reader.poll(self._max_batch, self._poll_timeout)
        offsets = self._offsets()
        if not offsets:
            if events:
                self._not_owned(events)
            return 0
        try:
            began = time.perf_counter_ns()
            outputs = self._decide_poll(events)
            decided = time.perf_counter_ns()
            self._publish(outputs, offsets)
            self._timed(began, decided)
        except ConnectorError as exc:
            self.stats["rewinds"] += 1
            self._rewind(events)
            self._failed(exc)
            return 0
        if self._health.recovered():
            log.info("%s: healthy again", self.name)
            self._outage_backoff.reset()
        self._reader.forget(list(offsets))
        self._committed.update(offsets)
        self.stats["commands"] += len(events)
        return len(events)

    def _not_owned(self, events: Sequence[ConsumedEvent]) -> None:
        """Commands polled from partitions this member does not hold as its own
        (its assignment callbacks and the consumer disagree): never dropped, read
        again after a back-off, reported as unhealthy meanwhile."""
        self.stats["not_owned_polls"] += 1
        self._rewind(events)
        self._failed(
            ConsumeError(
                "polled commands of partitions not assigned to this member; reading them again",
                participant=self.name,
                partitions=sorted({str(e.position.topic_partition) for e in events}),
                owned=sorted(map(str, self._owned)),
            )
        )

    def _timed(self, began: int, decided: int) -> None:
        """Per committed poll: time deciding (Redis included) and in the transaction."""
        stats = self.stats
        stats["polls"] += 1
        stats["decide_us"] += (decided - began) // 1000
        stats["transaction_us"] += (time.perf_counter_ns() - decided) // 1000

    def _failed(self, exc: ConnectorError) -> None:
        """Report, then wait with capped back-off in the group, fetching nothing."""
        self._health.failed(f"{type(exc).__name__}: {exc}")
        wait = self._outage_backoff.next()
        log.warning("%s: poll not committed, reading it again in %.2fs: %s", self.name, wait, exc)
        self._reader.wait_in_group(wait, self._stopping.is_set, self._sleep)

    def _offsets(self) -> dict[TopicPartition, int]:
        """Offsets to commit: past what this poll read, and past transaction markers."""
        return {
            tp: o
            for tp, o in self._reader.next_offsets(self._owned).items()
            if o > self._committed.get(tp, -1)
        }

    def _rewind(self, events: Sequence[ConsumedEvent]) -> None:
        first: dict[TopicPartition, int] = {}
        for event in events:
            first.setdefault(event.position.topic_partition, event.position.offset)
        self._reader.forget(list(self._reader.pending_offsets))
        if first:
            self._consumer.rewind(first)

    def _publish(self, outputs: Sequence[Output], offsets: Mapping[TopicPartition, int]) -> None:
        with self._transactions.begin() as transaction:
            self._publisher.publish_routed_in(transaction, outputs)
            transaction.send_offsets(offsets, self._group_metadata())
            transaction.commit()

    # -- the commands of a poll -------------------------------------------
    def _decide_poll(self, events: Sequence[ConsumedEvent]) -> list[Output]:
        """Every command's messages, in order: dedup lookups in one call, EXECUTE
        decisions queued and recorded together, anything else decided alone."""
        commands = [c for c in map(self._command, events) if c is not None]
        keys = [c.key for c in commands]
        known = self._store.outcomes(self.read_model, keys) if keys else {}
        if self._hooks is not None:
            return self._decide_traced(commands, known)
        poll = PollRecords(self._store, self.read_model)
        slots: list[list[Output]] = []
        queued: list[_Queued] = []
        seen: set[str] = set()
        for c in commands:
            stored = known.get(c.key)
            if c.key in seen:  # twice in one poll: the first one decided it
                self._flush(poll, queued, slots)
                stored = self._store.outcome(self.read_model, c.key)
            seen.add(c.key)
            if (
                stored is None
                and c.command.action is Action.EXECUTE
                and c.step.command not in self._alone_actions
            ):
                outcome, changes, outputs = self._execute(
                    c.definition, c.step, c.command, poll.batch
                )
                if not poll.counters_read:
                    poll.add(c.key, changes, outputs_document(outcome, outputs))
                    queued.append((len(slots), c, outputs))
                    slots.append([])
                    continue
                self._alone_actions.add(c.step.command)  # from now on decided alone
            if stored is None:  # decided alone: after what is queued
                self._flush(poll, queued, slots)
            slots.append(self._decide(c.definition, c.step, c.command, stored, looked_up=True))
        self._flush(poll, queued, slots)
        return [output for outputs in slots for output in outputs]

    def _flush(self, poll: PollRecords, queued: list[_Queued], slots: list[list[Output]]) -> None:
        """Write the queued records in one call; decide the stale ones again, alone."""
        stale: list[tuple[int, _Command]] = []
        for (slot, c, outputs), result in zip(queued, poll.flush(), strict=True):
            if result.status == "recorded":
                slots[slot] = outputs
            elif result.status == "decided":  # a watchdog's timeout: keep that decision
                self.stats["decided_elsewhere"] += 1
                slots[slot] = stored_outputs(result.outcome)
            else:  # it read a change that did not happen or a document written meanwhile
                self.stats["stale_decisions"] += 1
                stale.append((slot, c))
        queued.clear()
        for slot, c in stale:  # on the store as every queued record left it
            slots[slot] = self._decide(c.definition, c.step, c.command, None, looked_up=True)

    def _decide_traced(
        self, commands: Sequence[_Command], known: Mapping[str, dict[str, Any]]
    ) -> list[Output]:
        """Each command in its ``process`` hook, decided and recorded alone."""
        assert self._hooks is not None
        group = self._dead_letters.consumer_group
        outputs: list[Output] = []
        seen: set[str] = set()
        for c in commands:
            first = c.key not in seen  # else the first one decided it: look again
            seen.add(c.key)
            decide = partial(self._decide_in_span, c, known.get(c.key), first)
            outputs.extend(self._hooks.process(c.event, group, decide))
        return outputs

    def _decide_in_span(
        self, c: _Command, stored: dict[str, Any] | None, looked_up: bool
    ) -> list[Output]:
        assert self._hooks is not None
        command = c.command
        info = StepInfo(
            command.saga_id,
            command.saga_type,
            c.step.name,
            command.action.value,
            self.name,
            command.attempt,
        )
        return self._hooks.saga_step(
            info,
            lambda: self._decide(c.definition, c.step, command, stored, looked_up=looked_up),
        )

    # -- one command ------------------------------------------------------
    def _command(self, event: ConsumedEvent) -> _Command | None:
        """The command ``event`` holds, or None when it was dead-lettered (invalid)."""
        envelope = event.envelope
        try:
            if envelope.event_type != COMMAND:
                raise ConfigurationError("not a saga command", event_type=envelope.event_type)
            command = SagaCommand.from_payload(envelope.payload)
            definition = self._definitions.get(command.saga_type)
            if definition is None:
                raise ConfigurationError("unknown saga type", saga_type=command.saga_type)
            step = definition.step(command.step)
            if step.participant != self.name:
                raise ConfigurationError("another participant's step", step=step.name)
        except (ConfigurationError, KeyError, ValueError) as exc:
            self.stats["invalid_commands"] += 1
            if event.record is not None:
                self._dead_letters.send(event.record, "invalid_command", str(exc))
            return None
        retry = command.attempt if command.action is Action.COMPENSATE else 1
        key = dedup_key(command.saga_id, step.name, command.action, retry)
        return _Command(event, definition, step, command, key)

    def _decide(
        self,
        definition: SagaDefinition,
        step: SagaStep,
        command: SagaCommand,
        stored: Mapping[str, Any] | None = None,
        *,
        looked_up: bool = False,
    ) -> list[Output]:
        """Decide the step once (or find it decided) and return the messages it produces.

        ``looked_up``: ``stored`` is what the dedup lookup found; not finding a
        record needs no second look, ``record_once`` decides only once anyway.
        """
        hooks = self._hooks
        retry = command.attempt if command.action is Action.COMPENSATE else 1
        key = dedup_key(command.saga_id, step.name, command.action, retry)
        if not looked_up:
            stored = self._store.outcome(self.read_model, key)
        if stored is not None:
            self.stats["redelivered"] += 1
            if hooks is not None:
                hooks.annotate(
                    {"kct.saga.outcome": stored["outcome"], "kct.saga.redelivered": True}
                )
            return stored_outputs(stored)
        if retry > 1 and not self._retry_allowed(command, step, retry):
            return []
        if command.action is Action.EXECUTE:
            outcome, changes, outputs = self._execute(definition, step, command)
        else:
            outcome, changes, outputs = self._compensate(definition, step, command)
        if hooks is not None:  # the messages continue this step's flow
            outputs = [(topic, hooks.propagate(message)) for topic, message in outputs]
        recorded, stored = self._store.record_once(
            self.read_model, key, changes, outputs_document(outcome, outputs)
        )
        if not recorded:  # decided meanwhile (a watchdog's timeout): keep that decision
            self.stats["decided_elsewhere"] += 1
        # Recorded now: the record holds exactly ``outputs`` (envelope_json reads back
        # exactly), so they are published as they are, not parsed back from the record.
        decided = outputs if recorded else stored_outputs(stored)
        if hooks is not None:
            errors = [m.payload.get("error") for _, m in decided if m.event_type == REPLY]
            hooks.annotate(
                {
                    "kct.saga.outcome": stored["outcome"],
                    "kct.saga.decided_elsewhere": not recorded,
                    **({"kct.saga.by": str(stored["by"])} if "by" in stored else {}),
                    **({"kct.saga.error": str(errors[0])} if errors and errors[0] else {}),
                }
            )
        return decided

    def _retry_allowed(self, command: SagaCommand, step: SagaStep, retry: int) -> bool:
        """An operator's retry of a compensation runs only after the attempt before
        it was recorded as failed: it never undoes a step twice."""
        previous = self._store.outcome(
            self.read_model, dedup_key(command.saga_id, step.name, command.action, retry - 1)
        )
        if previous is not None and previous["outcome"] == Outcome.FAILURE.value:
            return True
        self.stats["retries_refused"] += 1
        log.warning(
            "%s: retry %d of %s %s of saga %s refused: attempt %d is %s",
            self.name,
            retry,
            command.action.value,
            step.name,
            command.saga_id,
            retry - 1,
            "not decided" if previous is None else "a success",
        )
        return False

    def _context(self, command: SagaCommand, step: SagaStep, attempt: int) -> StepContext:
        return StepContext(
            command.saga_id, command.saga_type, step.name, command.action, command.context, attempt
        )

    def _execute(
        self,
        definition: SagaDefinition,
        step: SagaStep,
        command: SagaCommand,
        new_batch: Callable[[], ReadModelBatch] | None = None,
    ) -> tuple[Outcome, list[ReadModelChange], list[Output]]:
        action = self._actions[step.command]
        error: str | None = None
        tries = 0
        for attempt in range(1, self._retries + 2):
            tries = attempt
            batch = new_batch() if new_batch else ReadModelBatch(self._store, self.read_model)
            try:
                delta = dict(action(self._context(command, step, attempt), batch) or {})
            except StepFailed as exc:
                error = exc.message
                break
            except ConnectorError:  # a backend or the service is down: rewind the poll
                raise
            except Exception as exc:  # technical trouble: retried, then a failure
                error = f"{type(exc).__name__}: {exc}"
                if attempt <= self._retries:
                    self._sleep(self._backoff * 2 ** (attempt - 1))
                    continue
                break
            self.stats["executed"] += 1
            reply = SagaReply(
                command.saga_id,
                command.saga_type,
                step.name,
                Action.EXECUTE,
                Outcome.SUCCESS,
                {k: str(v) for k, v in delta.items()},
                tries=tries,
            )
            outputs: list[Output] = [(definition.reply_topic, reply.to_envelope())]
            following = definition.after(step.name)
            if following is not None:
                nxt = SagaCommand(
                    command.saga_id,
                    command.saga_type,
                    following.name,
                    Action.EXECUTE,
                    {**command.context, **reply.context_delta},
                )
                outputs.append((definition.command_topic(following.participant), nxt.to_envelope()))
            return Outcome.SUCCESS, batch.net_changes(), outputs
        self.stats["failed"] += 1
        return (
            Outcome.FAILURE,
            [],
            failure_outputs(definition, step, command.saga_id, command.context, error, tries=tries),
        )

    def _compensate(
        self, definition: SagaDefinition, step: SagaStep, command: SagaCommand
    ) -> tuple[Outcome, list[ReadModelChange], list[Output]]:
        executed = self._store.outcome(
            self.read_model, dedup_key(command.saga_id, step.name, Action.EXECUTE)
        )
        outcome = Outcome.SUCCESS
        changes: list[ReadModelChange] = []
        extra: list[Output] = []
        error: str | None = None
        tries = 0
        if (
            executed is not None
            and executed["outcome"] == Outcome.SUCCESS.value
            and step.compensation is not None
        ):
            outcome, changes, error, attempts = self._undo(definition, step, command)
            tries = attempts
            if outcome is Outcome.FAILURE:
                failed = SagaCompensationFailed(
                    command.saga_id,
                    command.saga_type,
                    step.name,
                    self.name,
                    step.compensation,
                    command.context,
                    attempts,
                    error or "",
                )
                extra.append((definition.failure_topic, failed.to_envelope()))
        else:
            self.stats["nothing_to_undo"] += 1
        reply = SagaReply(
            command.saga_id,
            command.saga_type,
            step.name,
            Action.COMPENSATE,
            outcome,
            {},
            error,
            attempt=command.attempt,
            tries=tries,
        )
        outputs: list[Output] = [*extra, (definition.reply_topic, reply.to_envelope())]
        if command.attempt <= 1:  # a retry: the earlier steps were compensated already
            outputs.extend(compensate_before(definition, step, command.context, command.saga_id))
        return outcome, changes, outputs

    def _undo(
        self, definition: SagaDefinition, step: SagaStep, command: SagaCommand
    ) -> tuple[Outcome, list[ReadModelChange], str | None, int]:
        assert step.compensation is not None
        action = self._actions[step.compensation]
        error = ""
        attempts = definition.compensation_retries + 1
        for attempt in range(1, attempts + 1):
            batch = ReadModelBatch(self._store, self.read_model)
            try:
                action(self._context(command, step, attempt), batch)
            except ConnectorError:  # a backend or the service is down: rewind the poll
                raise
            except Exception as exc:  # a compensation must not give up quietly
                error = f"{type(exc).__name__}: {exc}"
                log.warning(
                    "%s: compensation %s of saga %s failed (attempt %d/%d): %s",
                    self.name,
                    step.compensation,
                    command.saga_id,
                    attempt,
                    attempts,
                    error,
                )
                if attempt < attempts:
                    self._sleep(self._backoff * 2 ** (attempt - 1))
                continue
            self.stats["compensated"] += 1
            return Outcome.SUCCESS, batch.net_changes(), None, attempt
        self.stats["compensation_failed"] += 1
        return Outcome.FAILURE, [], error, attempts

    def close(self) -> None:
        self._reader.close()
