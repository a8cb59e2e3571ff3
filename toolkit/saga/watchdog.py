"""Timing out saga steps that never reply.

:class:`SagaWatchdog` times out steps. There is no orchestrator: any process
may run a watchdog (several may, safely). For a running saga whose current
step got no reply within the step's timeout, it records the step's outcome
as a FAILURE **in the participant's dedup record** with the same once-only
script the participant uses. Whoever records first decides: if the watchdog
wins, the step never runs (a late command finds the record and only
re-publishes the timeout), and the watchdog publishes the FAILURE reply and
the compensation of the previous step; if the participant won, the step ran
and its reply is on its way, and the watchdog does nothing. A watchdog does
not time out compensations: they are retried until they succeed or land on
the compensation-failure topic. :meth:`SagaWatchdog.run` checks on an
interval and waits out backend failures (reported in ``health``), so a
hosted watchdog never stops on an outage.

With an :class:`~toolkit.interceptors.Interceptor`, each timeout runs inside
its ``watchdog`` hook with the saga's own trace context (kept in its state),
and the timeout's messages carry it on.

Failure modes: :meth:`SagaWatchdog.check_once` raises the backend's
``ConnectorError`` (``StoreError``, ``PublishError``, ``TransactionAborted``);
a step recorded but not yet published (the watchdog died in between) is
published again by the next check.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from toolkit.errors import ConnectorError
from toolkit.interceptors import Interceptor, WatchdogInfo
from toolkit.ports import ReadModelStore, SagaStepStore, TransactionalProducer
from toolkit.publisher import EventPublisher
from toolkit.saga.definition import SagaDefinition
from toolkit.saga.messages import Action, Outcome
from toolkit.saga.state import RUNNING_KEY, SagaStatus, saga_key
from toolkit.saga.step_records import (
    Output,
    dedup_key,
    failure_outputs,
    outputs_document,
    publish_outputs,
    stored_outputs,
)
from toolkit.supervision import Health, LoopHealth

__all__ = ["SagaWatchdog"]

log = logging.getLogger(__name__)


class SagaWatchdog:
    """Fails steps that got no reply in time, so their sagas compensate."""

    def __init__(
        self,
        definitions: Mapping[str, SagaDefinition],
        *,
        steps: SagaStepStore,
        states: ReadModelStore,
        state_projection: str,
        transactions: TransactionalProducer,
        publisher: EventPublisher,
        clock_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
        namespace: str = "",
        interceptor: Interceptor | None = None,
    ) -> None:
        self._hooks = interceptor
        self._namespace = namespace
        self._definitions = dict(definitions)
        self._steps = steps
        self._states = states
        self._state_projection = state_projection
        self._transactions = transactions
        self._publisher = publisher
        self._clock_ms = clock_ms
        self._health = LoopHealth()
        self.timed_out = 0

    @property
    def health(self) -> Health:
        return self._health.current

    def run(self, stop: threading.Event, interval: float = 0.5) -> None:
        """Check every ``interval`` seconds until ``stop``; backend failures are
        logged, reported in :attr:`health` and retried, never raised."""
        while not stop.wait(interval):
            try:
                self.check_once()
            except ConnectorError as exc:
                self._health.failed(f"{type(exc).__name__}: {exc}")
                log.warning("saga watchdog: check failed, retrying: %s", exc)
            else:
                self._health.recovered()

    def check_once(self) -> list[str]:
        """Time out every overdue step; returns the ids of the sagas it failed."""
        now = self._clock_ms()
        running = self._states.counters(self._state_projection, RUNNING_KEY)
        failed: list[str] = []
        outputs: list[Output] = []
        for saga_id, count in running.items():
            if count <= 0:
                continue
            state = self._states.get(self._state_projection, saga_key(saga_id))
            found = self._overdue(state, now)
            if found is None:
                continue
            decided = self._decide(found, state)
            if decided:
                outputs.extend(decided)
                failed.append(saga_id)
        if outputs:
            publish_outputs(self._transactions, self._publisher, outputs)
            self.timed_out += len(failed)
        return failed

    def _overdue(
        self, state: dict[str, Any] | None, now: int
    ) -> tuple[SagaDefinition, str, str, dict[str, str]] | None:
        if state is None or state["status"] != SagaStatus.RUNNING.value:
            return None
        if state["compensating"] or state["current"] is None:
            return None
        definition = self._definitions.get(state["saga_type"])
        if definition is None:
            return None
        step = definition.step(state["current"])
        if now < int(state["step_started_ms"]) + step.timeout * 1000:
            return None
        return definition, state["saga_id"], step.name, dict(state["context"])

    def _decide(
        self,
        found: tuple[SagaDefinition, str, str, dict[str, str]],
        state: dict[str, Any] | None,
    ) -> list[Output]:
        hooks = self._hooks
        if hooks is None:
            return self._time_out(*found)
        definition, saga_id, step_name, _ = found
        step = definition.step(step_name)
        info = WatchdogInfo(
            saga_id,
            definition.saga_type,
            step.name,
            step.participant,
            step.timeout,
            None if state is None else state.get("traceparent"),
        )
        return hooks.watchdog(info, lambda: self._time_out(*found))

    def _time_out(
        self, definition: SagaDefinition, saga_id: str, step_name: str, context: dict[str, str]
    ) -> list[Output]:
        step = definition.step(step_name)
        error = f"no reply within {step.timeout:g}s (timed out by a watchdog)"
        outputs = failure_outputs(definition, step, saga_id, context, error, tries=0)
        hooks = self._hooks
        if hooks is not None:  # the compensation continues the saga's trace
            outputs = [(topic, hooks.propagate(message)) for topic, message in outputs]
        recorded, stored = self._steps.record_once(
            f"{self._namespace}{step.participant}",
            dedup_key(saga_id, step.name, Action.EXECUTE),
            [],
            outputs_document(Outcome.FAILURE, outputs, by="watchdog"),
        )
        if hooks is not None:
            hooks.annotate({"kct.saga.timed_out": recorded, "kct.saga.by": str(stored.get("by"))})
        if recorded:
            log.warning("saga %s: step %s timed out; compensating", saga_id, step.name)
            return outputs
        if stored.get("by") == "watchdog":
            # Recorded by a watchdog that may have died before publishing: again (idempotent).
            return stored_outputs(stored)
        return []  # the step ran: its reply is on its way
