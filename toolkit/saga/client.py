"""Starting sagas and reading their state.

:class:`SagaClient` starts a saga by publishing, in one Kafka transaction,
``SagaStarted`` to the reply topic and the first step's EXECUTE command. It
reads a saga's state from the saga-state projection (the fold of replies),
so any process can answer ``status``.

Steps that never reply are timed out by :class:`~toolkit.saga.watchdog.SagaWatchdog`.

With an :class:`~toolkit.interceptors.Interceptor`, each saga's first
messages are built inside its ``saga_start`` hook and carry its context
(``propagate``): tracing opens the saga's root span there, so the whole saga
is one trace.

Failure modes: ``start`` raises ``TransactionAborted``/``PublishError`` with
nothing started; ``wait`` raises ``ConsistencyTimeout`` naming the sagas
still running.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from functools import partial
from typing import Any

from toolkit.errors import ConfigurationError, ConsistencyTimeout
from toolkit.interceptors import Interceptor, SagaInfo
from toolkit.ports import ReadModelStore, TransactionalProducer
from toolkit.publisher import EventPublisher
from toolkit.saga.definition import SagaDefinition
from toolkit.saga.messages import Action, SagaCommand, SagaStarted
from toolkit.saga.state import TERMINAL, saga_key
from toolkit.saga.step_records import Output, publish_outputs

__all__ = ["SagaClient"]


def _stamped(hooks: Interceptor, messages: list[Output]) -> list[Output]:
    return [(topic, hooks.propagate(message)) for topic, message in messages]


class SagaClient:
    """Starts sagas and reads their state."""

    def __init__(
        self,
        definitions: Mapping[str, SagaDefinition],
        *,
        transactions: TransactionalProducer,
        publisher: EventPublisher,
        states: ReadModelStore,
        state_projection: str,
        interceptor: Interceptor | None = None,
    ) -> None:
        self._hooks = interceptor
        self._definitions = dict(definitions)
        self._transactions = transactions
        self._publisher = publisher
        self._states = states
        self._state_projection = state_projection

    def definition(self, saga_type: str) -> SagaDefinition:
        try:
            return self._definitions[saga_type]
        except KeyError:
            raise ConfigurationError(
                "unknown saga type", saga_type=saga_type, known=sorted(self._definitions)
            ) from None

    def start(
        self, saga_type: str, context: Mapping[str, str], *, saga_id: str | None = None
    ) -> str:
        """Start a saga; returns its id once its first command is committed."""
        return self.start_many([(saga_type, context, saga_id)])[0]

    def start_many(self, sagas: Iterable[tuple[str, Mapping[str, str], str | None]]) -> list[str]:
        """Start several sagas in one transaction (all or none)."""
        outputs: list[Output] = []
        ids: list[str] = []
        for saga_type, context, given in sagas:
            definition = self.definition(saga_type)
            saga_id = given or str(uuid.uuid4())
            clean = {str(k): str(v) for k, v in context.items()}
            first = definition.steps[0]
            command = SagaCommand(saga_id, saga_type, first.name, Action.EXECUTE, clean)
            opening: list[Output] = [
                (definition.reply_topic, SagaStarted(saga_id, saga_type, clean).to_envelope()),
                (definition.command_topic(first.participant), command.to_envelope()),
            ]
            hooks = self._hooks
            if hooks is not None:
                opening = hooks.saga_start(
                    SagaInfo(saga_id, saga_type, first.name), partial(_stamped, hooks, opening)
                )
            outputs.extend(opening)
            ids.append(saga_id)
        publish_outputs(self._transactions, self._publisher, outputs)
        return ids

    def status(self, saga_id: str) -> dict[str, Any] | None:
        """The saga's state document (see ``toolkit.saga.state``), or None if unknown."""
        return self._states.get(self._state_projection, saga_key(saga_id))

    def wait(
        self,
        saga_ids: Sequence[str],
        timeout: float,
        *,
        poll_interval: float = 0.05,
    ) -> dict[str, dict[str, Any]]:
        """Block until every saga ended (completed, compensated or failed compensation)."""
        deadline = time.monotonic() + timeout
        pending = set(saga_ids)
        done: dict[str, dict[str, Any]] = {}
        while True:
            for saga_id in sorted(pending):
                state = self.status(saga_id)
                if state is not None and state["status"] in TERMINAL:
                    done[saga_id] = state
            pending -= set(done)
            if not pending:
                return done
            if time.monotonic() >= deadline:
                raise ConsistencyTimeout(
                    f"{len(pending)} saga(s) still running after {timeout:g}s",
                    sagas=sorted(pending)[:10],
                )
            time.sleep(poll_interval)
