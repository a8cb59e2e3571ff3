"""Runtime metrics on the interceptor seam: what the toolkit does, counted and timed.

:class:`OpenTelemetryMetricsInterceptor` implements
:class:`~toolkit.interceptors.Interceptor` with OpenTelemetry instruments on
a ``MeterProvider`` (the one :func:`connectors.telemetry.metrics.meter_provider`
makes, so the Prometheus endpoint serves these beside the monitor's lag
series). It times each hook around the call it wraps and never changes the
call: it proceeds exactly once, returns its result and re-raises its error
after counting it.

=====================================  ===========  =================================
instrument                             kind         attributes
=====================================  ===========  =================================
``kct.events.processed``               counter      group, destination, partition,
                                                    ``kct.outcome`` (ok | error)
``kct.batch.duration``                 histogram s  ``kct.projection``
``kct.batch.events``                   counter      ``kct.projection``
``kct.dead_letters``                   counter      group, destination,
                                                    ``kct.dead_letter.reason``
``kct.conflicts``                      counter      ``kct.conflict.reason``,
                                                    ``kct.aggregate.type``
``kct.publish.duration``               histogram s  ``kct.transactional``
``kct.wait.duration``                  histogram s  ``kct.outcome`` (applied | timeout
                                                    | error)
``kct.wait.timeouts``                  counter      (none)
``kct.strong.phase.duration``          histogram s  ``kct.phase`` (lock = time to
                                                    acquire, hold = time held,
                                                    barrier, operation,
                                                    transaction), ``kct.outcome``
``kct.operation.duration``             histogram s  ``kct.strong``, ``kct.outcome``
``kct.saga.started``                   counter      ``kct.saga.type``
``kct.saga.step.duration``             histogram s  ``kct.saga.type``, ``kct.saga.step``,
                                                    ``kct.saga.action``, ``kct.outcome``
``kct.saga.timeouts``                  counter      ``kct.saga.type``, ``kct.saga.step``
=====================================  ===========  =================================

Group, destination and partition are OpenTelemetry's messaging names
(``messaging.consumer.group.name``, ``messaging.destination.name``,
``messaging.destination.partition.id``). Sagas by status and order
violations come from the monitor's check (the saga-state projection and the
runners' order counters), not from here.

Cost: one counter add per consumed event when installed; nothing when not
(components without an interceptor never call the seam).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

from opentelemetry.metrics import MeterProvider

from connectors.telemetry.metrics import GROUP, PARTITION, PROJECTION, TOPIC
from toolkit.envelope import ConsumedEvent
from toolkit.errors import ConsistencyTimeout
from toolkit.interceptors import (
    AttributeValue,
    Interceptor,
    OperationInfo,
    Outgoing,
    SagaInfo,
    StepInfo,
    StrongPhase,
    WatchdogInfo,
)
from toolkit.ports import ConsumedRecord
from toolkit.positions import ConsistencyToken, Position

__all__ = ["OpenTelemetryMetricsInterceptor"]

T = TypeVar("T")
OUTCOME = "kct.outcome"


class OpenTelemetryMetricsInterceptor(Interceptor):
    """Counts and times the core's work (see the module docstring)."""

    def __init__(self, provider: MeterProvider) -> None:
        meter = provider.get_meter("kct.runtime")
        self._processed = meter.create_counter(
            "kct.events.processed", unit="{event}", description="Events handed to handlers"
        )
        self._batch = meter.create_histogram(
            "kct.batch.duration", unit="s", description="A projection cycle: apply, store, commit"
        )
        self._batch_events = meter.create_counter(
            "kct.batch.events", unit="{event}", description="Events in projection cycles"
        )
        self._dead_letters = meter.create_counter(
            "kct.dead_letters", unit="{record}", description="Records copied to a dead-letter topic"
        )
        self._conflicts = meter.create_counter(
            "kct.conflicts", unit="{event}", description="Conflict decisions other than applied"
        )
        self._publish = meter.create_histogram(
            "kct.publish.duration", unit="s", description="Writing events until acknowledged"
        )
        self._wait = meter.create_histogram(
            "kct.wait.duration", unit="s", description="Waiting for projections to apply a token"
        )
        self._wait_timeouts = meter.create_counter(
            "kct.wait.timeouts", unit="{wait}", description="Waits that timed out"
        )
        self._phase = meter.create_histogram(
            "kct.strong.phase.duration", unit="s", description="A phase of a strong operation"
        )
        self._operation = meter.create_histogram(
            "kct.operation.duration", unit="s", description="ConsistencyBoundary.enforce"
        )
        self._sagas = meter.create_counter(
            "kct.saga.started", unit="{saga}", description="Sagas started"
        )
        self._steps = meter.create_histogram(
            "kct.saga.step.duration", unit="s", description="A participant deciding a step"
        )
        self._saga_timeouts = meter.create_counter(
            "kct.saga.timeouts", unit="{step}", description="Steps timed out by a watchdog"
        )

    @staticmethod
    def _timed(record: Callable[[float, str], None], proceed: Callable[[], T], ok: str = "ok") -> T:
        started = time.perf_counter()
        try:
            result = proceed()
        except BaseException:
            record(time.perf_counter() - started, "error")
            raise
        record(time.perf_counter() - started, ok)
        return result

    # -- messaging ---------------------------------------------------------
    def publish(
        self,
        messages: Sequence[Outgoing],
        transactional: bool,
        proceed: Callable[[Sequence[Outgoing]], list[Position]],
    ) -> list[Position]:
        attrs: dict[str, AttributeValue] = {"kct.transactional": transactional}
        return self._timed(
            lambda s, outcome: self._publish.record(s, {**attrs, OUTCOME: outcome}),
            lambda: proceed(messages),
        )

    def process(self, event: ConsumedEvent, consumer: str, proceed: Callable[[], T]) -> T:
        attrs = {
            GROUP: consumer,
            TOPIC: event.position.topic,
            PARTITION: str(event.position.partition),
        }
        try:
            result = proceed()
        except BaseException:
            self._processed.add(1, {**attrs, OUTCOME: "error"})
            raise
        self._processed.add(1, {**attrs, OUTCOME: "ok"})
        return result

    def apply_batch(
        self, projection: str, events: Sequence[ConsumedEvent], proceed: Callable[[], T]
    ) -> T:
        self._batch_events.add(len(events), {PROJECTION: projection})
        return self._timed(
            lambda s, outcome: self._batch.record(s, {PROJECTION: projection, OUTCOME: outcome}),
            proceed,
        )

    def dead_letter(
        self,
        record: ConsumedRecord,
        reason: str,
        error: str,
        consumer: str,
        proceed: Callable[[], Position],
    ) -> Position:
        position = proceed()
        self._dead_letters.add(
            1, {GROUP: consumer, TOPIC: record.topic, "kct.dead_letter.reason": reason}
        )
        return position

    def note(self, name: str, attributes: Mapping[str, AttributeValue]) -> None:
        if name == "conflict":
            self._conflicts.add(
                1,
                {
                    "kct.conflict.reason": attributes.get("reason", ""),
                    "kct.aggregate.type": attributes.get("aggregate_type", ""),
                },
            )

    # -- consistency -------------------------------------------------------
    def wait(
        self, token: ConsistencyToken, projections: Sequence[str], proceed: Callable[[], T]
    ) -> T:
        started = time.perf_counter()
        try:
            result = proceed()
        except ConsistencyTimeout:
            self._wait.record(time.perf_counter() - started, {OUTCOME: "timeout"})
            self._wait_timeouts.add(1)
            raise
        except BaseException:
            self._wait.record(time.perf_counter() - started, {OUTCOME: "error"})
            raise
        self._wait.record(time.perf_counter() - started, {OUTCOME: "applied"})
        return result

    def operation(self, operation: OperationInfo, proceed: Callable[[], T]) -> T:
        return self._timed(
            lambda s, outcome: self._operation.record(
                s, {"kct.strong": operation.strong, OUTCOME: outcome}
            ),
            proceed,
        )

    def strong_phase(
        self,
        phase: StrongPhase,
        operation: OperationInfo,
        fence: int | None,
        proceed: Callable[[], T],
    ) -> T:
        return self._timed(
            lambda s, outcome: self._phase.record(s, {"kct.phase": phase, OUTCOME: outcome}),
            proceed,
        )

    # -- sagas -------------------------------------------------------------
    def saga_start(self, saga: SagaInfo, proceed: Callable[[], T]) -> T:
        result = proceed()
        self._sagas.add(1, {"kct.saga.type": saga.saga_type})
        return result

    def saga_step(self, step: StepInfo, proceed: Callable[[], T]) -> T:
        attrs = {
            "kct.saga.type": step.saga_type,
            "kct.saga.step": step.step,
            "kct.saga.action": step.action,
        }
        return self._timed(
            lambda s, outcome: self._steps.record(s, {**attrs, OUTCOME: outcome}), proceed
        )

    def watchdog(self, decision: WatchdogInfo, proceed: Callable[[], T]) -> T:
        result = proceed()
        if result:  # the outputs of a timeout this watchdog recorded (empty: the step ran)
            self._saga_timeouts.add(
                1, {"kct.saga.type": decision.saga_type, "kct.saga.step": decision.step}
            )
        return result
