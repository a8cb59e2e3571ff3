"""The interceptor seam: cross-cutting concerns (tracing, metrics) around the core's work.

The core calls an :class:`Interceptor` at each point worth observing and
never imports a telemetry library: ``connectors/telemetry/`` implements
tracing with OpenTelemetry on this seam, and a metrics interceptor can time
and count the same hooks. Modelled on Temporal's SDK interceptors: every
hook receives what is about to happen and a ``proceed`` callable that does
it; the hook calls ``proceed`` exactly once, returns its result and lets its
exceptions propagate (it may record them first). The base class proceeds
unchanged, so an interceptor overrides only the hooks it cares about.

==========================  ====================================================
hook                        wraps
==========================  ====================================================
:meth:`~Interceptor.publish`        writing events (may rewrite their envelopes,
                                    e.g. to add ``traceparent``); plain and in a
                                    transaction
:meth:`~Interceptor.process`        one consumed event's handler (a projection's
                                    handler, a saga participant's command);
                                    :meth:`~Interceptor.observes` lets a
                                    projection runner skip it per event
:meth:`~Interceptor.apply_batch`    a projection runner's cycle over a non-empty
                                    poll: apply, store, commit, announce
:meth:`~Interceptor.dead_letter`    copying a record to its dead-letter topic
:meth:`~Interceptor.wait`           waiting for projections to apply a token
:meth:`~Interceptor.read_after_write`  command, wait and query of ReadAfterWrite
:meth:`~Interceptor.operation`      ``ConsistencyBoundary.enforce`` of one
                                    aggregate (strong or eventual)
:meth:`~Interceptor.strong_phase`   a phase of a strong operation: ``lock``
                                    (acquire), ``hold`` (acquired until released),
                                    ``barrier``, ``operation``, ``transaction``
:meth:`~Interceptor.saga_start`     building one saga's first messages
:meth:`~Interceptor.saga_step`      a participant deciding one step (execute or
                                    compensate), dedup lookup and record included
:meth:`~Interceptor.watchdog`       a watchdog timing out a step
==========================  ====================================================

Three more calls are not wrappers: :meth:`~Interceptor.propagate` stamps the
current flow's context on an envelope that is published later, outside the
current hook (a saga step's reply and next command are published with the
poll's transaction; a saga's first messages after its start hook);
:meth:`~Interceptor.note` records a named occurrence (a late saga reply) on
the current flow; :meth:`~Interceptor.annotate` describes the current hook's
work once it is known (a step's outcome, whether it was redelivered).

Cost: components take ``interceptor: Interceptor | None``; with ``None`` (no
interceptor installed) the core does not call the seam at all, so the hot
path allocates nothing for it. Several interceptors are combined with
:func:`chain` (the first listed is the outermost).

Failure modes: an interceptor that raises fails the operation it wraps, like
the operation's own error would; interceptors must therefore not raise on
their own account (OpenTelemetry's SDK does not).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, TypeVar

if TYPE_CHECKING:
    from toolkit.envelope import ConsumedEvent, Envelope
    from toolkit.ports import ConsumedRecord
    from toolkit.positions import ConsistencyToken, Position

__all__ = [
    "AttributeValue",
    "Interceptor",
    "OperationInfo",
    "Outgoing",
    "SagaInfo",
    "StepInfo",
    "StrongPhase",
    "WatchdogInfo",
    "chain",
    "trace_id_of",
]

T = TypeVar("T")

# (topic, envelope): one event about to be written.
Outgoing = tuple[str, "Envelope"]
AttributeValue = str | int | float | bool
StrongPhase = Literal["lock", "hold", "barrier", "operation", "transaction"]


@dataclass(frozen=True, slots=True)
class OperationInfo:
    """One ``enforce`` call: the aggregate, its topic, whether it is strong."""

    aggregate_type: str
    aggregate_id: str
    topic: str
    strong: bool
    projections: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class SagaInfo:
    """A saga being started."""

    saga_id: str
    saga_type: str
    first_step: str


@dataclass(frozen=True, slots=True)
class StepInfo:
    """A participant deciding one step of one saga."""

    saga_id: str
    saga_type: str
    step: str
    action: str  # EXECUTE | COMPENSATE
    participant: str
    attempt: int


@dataclass(frozen=True, slots=True)
class WatchdogInfo:
    """A watchdog timing out a step; ``traceparent`` is the saga's own context."""

    saga_id: str
    saga_type: str
    step: str
    participant: str
    timeout: float
    traceparent: str | None


class Interceptor:
    """Hooks around the core's work; every default proceeds unchanged."""

    # -- messaging ---------------------------------------------------------
    def publish(
        self,
        messages: Sequence[Outgoing],
        transactional: bool,
        proceed: Callable[[Sequence[Outgoing]], list[Position]],
    ) -> list[Position]:
        """Around writing ``messages``; ``proceed`` takes the (possibly rewritten)
        messages, same count and order, and returns their positions."""
        return proceed(messages)

    def process(self, event: ConsumedEvent, consumer: str, proceed: Callable[[], T]) -> T:
        """Around one consumed event's handler, in consumer group ``consumer``."""
        return proceed()

    def observes(self, event: ConsumedEvent) -> bool:
        """Whether a projection runner must call :meth:`process` for ``event``.

        A projection handler only changes its read model, so an interceptor
        with nothing to do for an event (tracing: a context that is not
        sampled) returns False and the runner calls the handler directly:
        no per-event cost for what is not observed. Saga participants, whose
        handlers publish, always call :meth:`process`.
        """
        return True

    def apply_batch(
        self, projection: str, events: Sequence[ConsumedEvent], proceed: Callable[[], T]
    ) -> T:
        """Around a projection runner's cycle over ``events`` (never empty)."""
        return proceed()

    def dead_letter(
        self,
        record: ConsumedRecord,
        reason: str,
        error: str,
        consumer: str,
        proceed: Callable[[], Position],
    ) -> Position:
        """Around copying ``record`` to its dead-letter topic (returns the copy's position)."""
        return proceed()

    def propagate(self, envelope: Envelope) -> Envelope:
        """``envelope`` carrying the current flow's context, for a later publish."""
        return envelope

    def note(self, name: str, attributes: Mapping[str, AttributeValue]) -> None:
        """Record an occurrence on the current flow (default: nothing)."""

    def annotate(self, attributes: Mapping[str, AttributeValue]) -> None:
        """Describe the current hook's work once known (a step's outcome)."""

    # -- consistency -------------------------------------------------------
    def wait(
        self, token: ConsistencyToken, projections: Sequence[str], proceed: Callable[[], T]
    ) -> T:
        """Around waiting until ``projections`` have applied ``token``."""
        return proceed()

    def read_after_write(self, projections: Sequence[str], proceed: Callable[[], T]) -> T:
        """Around a read-after-write: the command, the wait and the query."""
        return proceed()

    def operation(self, operation: OperationInfo, proceed: Callable[[], T]) -> T:
        """Around ``ConsistencyBoundary.enforce`` on one aggregate."""
        return proceed()

    def strong_phase(
        self,
        phase: StrongPhase,
        operation: OperationInfo,
        fence: int | None,
        proceed: Callable[[], T],
    ) -> T:
        """Around one phase of a strong operation (``fence`` None before the lock)."""
        return proceed()

    # -- sagas -------------------------------------------------------------
    def saga_start(self, saga: SagaInfo, proceed: Callable[[], T]) -> T:
        """Around building a saga's first messages (they are published after)."""
        return proceed()

    def saga_step(self, step: StepInfo, proceed: Callable[[], T]) -> T:
        """Around a participant deciding one step."""
        return proceed()

    def watchdog(self, decision: WatchdogInfo, proceed: Callable[[], T]) -> T:
        """Around a watchdog timing out a step (recording the timeout once)."""
        return proceed()

    # -- lifecycle ---------------------------------------------------------
    def close(self) -> None:
        """Flush and release what the interceptor holds (exporters)."""


class _Chain(Interceptor):
    """Several interceptors, the first outermost."""

    def __init__(self, interceptors: Sequence[Interceptor]) -> None:
        self._all = tuple(interceptors)
        self._outer, self._inner = interceptors[0], chain(*interceptors[1:])

    def publish(
        self,
        messages: Sequence[Outgoing],
        transactional: bool,
        proceed: Callable[[Sequence[Outgoing]], list[Position]],
    ) -> list[Position]:
        inner = self._inner
        assert inner is not None
        return self._outer.publish(
            messages, transactional, lambda m: inner.publish(m, transactional, proceed)
        )

    def process(self, event: ConsumedEvent, consumer: str, proceed: Callable[[], T]) -> T:
        inner = self._inner
        assert inner is not None
        return self._outer.process(event, consumer, lambda: inner.process(event, consumer, proceed))

    def observes(self, event: ConsumedEvent) -> bool:
        return any(interceptor.observes(event) for interceptor in self._all)

    def apply_batch(
        self, projection: str, events: Sequence[ConsumedEvent], proceed: Callable[[], T]
    ) -> T:
        inner = self._inner
        assert inner is not None
        return self._outer.apply_batch(
            projection, events, lambda: inner.apply_batch(projection, events, proceed)
        )

    def dead_letter(
        self,
        record: ConsumedRecord,
        reason: str,
        error: str,
        consumer: str,
        proceed: Callable[[], Position],
    ) -> Position:
        inner = self._inner
        assert inner is not None
        return self._outer.dead_letter(
            record,
            reason,
            error,
            consumer,
            lambda: inner.dead_letter(record, reason, error, consumer, proceed),
        )

    def propagate(self, envelope: Envelope) -> Envelope:
        for interceptor in self._all:
            envelope = interceptor.propagate(envelope)
        return envelope

    def note(self, name: str, attributes: Mapping[str, AttributeValue]) -> None:
        for interceptor in self._all:
            interceptor.note(name, attributes)

    def annotate(self, attributes: Mapping[str, AttributeValue]) -> None:
        for interceptor in self._all:
            interceptor.annotate(attributes)

    def wait(
        self, token: ConsistencyToken, projections: Sequence[str], proceed: Callable[[], T]
    ) -> T:
        inner = self._inner
        assert inner is not None
        return self._outer.wait(token, projections, lambda: inner.wait(token, projections, proceed))

    def read_after_write(self, projections: Sequence[str], proceed: Callable[[], T]) -> T:
        inner = self._inner
        assert inner is not None
        return self._outer.read_after_write(
            projections, lambda: inner.read_after_write(projections, proceed)
        )

    def operation(self, operation: OperationInfo, proceed: Callable[[], T]) -> T:
        inner = self._inner
        assert inner is not None
        return self._outer.operation(operation, lambda: inner.operation(operation, proceed))

    def strong_phase(
        self,
        phase: StrongPhase,
        operation: OperationInfo,
        fence: int | None,
        proceed: Callable[[], T],
    ) -> T:
        inner = self._inner
        assert inner is not None
        return self._outer.strong_phase(
            phase, operation, fence, lambda: inner.strong_phase(phase, operation, fence, proceed)
        )

    def saga_start(self, saga: SagaInfo, proceed: Callable[[], T]) -> T:
        inner = self._inner
        assert inner is not None
        return self._outer.saga_start(saga, lambda: inner.saga_start(saga, proceed))

    def saga_step(self, step: StepInfo, proceed: Callable[[], T]) -> T:
        inner = self._inner
        assert inner is not None
        return self._outer.saga_step(step, lambda: inner.saga_step(step, proceed))

    def watchdog(self, decision: WatchdogInfo, proceed: Callable[[], T]) -> T:
        inner = self._inner
        assert inner is not None
        return self._outer.watchdog(decision, lambda: inner.watchdog(decision, proceed))

    def close(self) -> None:
        for interceptor in self._all:
            interceptor.close()


def chain(*interceptors: Interceptor | None) -> Interceptor | None:
    """One interceptor running ``interceptors`` (first outermost); None when none
    is given, so components keep their interceptor-free path."""
    present = [i for i in interceptors if i is not None]
    if not present:
        return None
    if len(present) == 1:
        return present[0]
    return _Chain(present)


def trace_id_of(traceparent: str | None) -> str | None:
    """The trace id of a W3C ``traceparent`` (``00-<32 hex>-<16 hex>-<2 hex>``), or None."""
    if traceparent is None:
        return None
    parts = traceparent.split("-")
    if len(parts) < 4 or len(parts[1]) != 32 or parts[1] == "0" * 32:
        return None
    trace_id = parts[1].lower()
    return trace_id if all(c in "0123456789abcdef" for c in trace_id) else None
