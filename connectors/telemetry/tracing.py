"""OpenTelemetry tracing on the core's interceptor seam.

:class:`OpenTelemetryTracingInterceptor` implements
:class:`toolkit.interceptors.Interceptor` with opentelemetry-sdk and exports
over OTLP/HTTP (Jaeger, a Collector). What it guarantees:

* **W3C trace context in Kafka headers.** Every event, saga command and reply
  is written with ``traceparent`` (and ``tracestate``) of its ``send
  {topic}`` PRODUCER span; a consumer's ``process {topic}`` CONSUMER span is
  that span's child and lasts exactly as long as the handler. An envelope
  that already carries a context (a saga step's reply, stamped inside the
  step) is sent as a child of that context, so a message published later
  still continues its flow.
* **Messaging semantic conventions** (OpenTelemetry, Kafka):
  ``messaging.system=kafka``, ``messaging.operation.type``/``.name``,
  ``messaging.destination.name``, ``messaging.destination.partition.id``,
  ``messaging.kafka.message.key``, ``messaging.kafka.offset``,
  ``messaging.consumer.group.name``, ``messaging.message.id``. A projection
  batch is one ``apply {projection}`` span linking its events' contexts (a
  child in their trace when they all belong to one; a new root otherwise);
  an empty poll makes no span.
* **Toolkit spans** (``kct.*`` attributes: aggregate, fence, token,
  projections, saga id, step, outcome): ``operation {type}`` with its strong
  phases ``lock acquire``, ``lock hold``, ``barrier``, ``run``,
  ``transaction``; ``wait``; ``read-after-write``; ``saga {type}`` (the
  saga's root: one saga is one trace), ``execute|compensate {step}``,
  ``watchdog timeout {step}`` (a child of the saga's start message, whose
  context its state keeps),
  ``dead-letter {topic}`` (status ERROR, with the reason).
* **Parent-based sampling**: a trace is recorded whole or not at all; roots
  are kept with ``sampling_ratio``. A message whose context is not sampled
  makes no span on the consumer and costs about a microsecond: its context
  is only parsed if the handler starts a span or publishes, which then stay
  unsampled too.

Failure modes: exporting runs on a background thread (batch processor); an
unreachable endpoint loses spans (the SDK logs it) and never slows or fails
the work. :meth:`close` flushes what is buffered (bounded by the exporter's
timeout).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from connectors.telemetry.settings import TracingSettings
from toolkit.envelope import ConsumedEvent, Envelope
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

__all__ = ["Attr", "OpenTelemetryTracingInterceptor"]

T = TypeVar("T")

_PROPAGATOR = TraceContextTextMapPropagator()
_MAX_LINKS = 128
_MAX_TEXT = 500
_EVEN_HEX = frozenset("02468aceACE")  # the last flags digit when "sampled" (bit 0) is off


class Attr:
    """Attribute names: OpenTelemetry's messaging conventions and kct's own."""

    SYSTEM = "messaging.system"
    OPERATION_TYPE = "messaging.operation.type"
    OPERATION_NAME = "messaging.operation.name"
    DESTINATION = "messaging.destination.name"
    PARTITION = "messaging.destination.partition.id"
    KEY = "messaging.kafka.message.key"
    OFFSET = "messaging.kafka.offset"
    GROUP = "messaging.consumer.group.name"
    MESSAGE_ID = "messaging.message.id"
    BATCH_COUNT = "messaging.batch.message_count"
    EVENT_TYPE = "kct.event.type"
    AGGREGATE_TYPE = "kct.aggregate.type"
    AGGREGATE_ID = "kct.aggregate.id"
    FENCE = "kct.fence"
    TOKEN = "kct.token"
    PROJECTION = "kct.projection"
    PROJECTIONS = "kct.projections"
    CONSISTENCY = "kct.consistency"
    TRANSACTIONAL = "kct.transactional"
    SAGA_ID = "kct.saga.id"
    SAGA_TYPE = "kct.saga.type"
    SAGA_STEP = "kct.saga.step"
    SAGA_ACTION = "kct.saga.action"
    SAGA_PARTICIPANT = "kct.saga.participant"
    SAGA_ATTEMPT = "kct.saga.attempt"
    SAGA_TIMEOUT = "kct.saga.timeout_s"
    DLQ_REASON = "kct.dead_letter.reason"
    DLQ_ERROR = "kct.dead_letter.error"
    DLQ_SOURCE = "kct.dead_letter.source"


_PHASE_NAMES: Mapping[str, str] = {
    "lock": "lock acquire",
    "hold": "lock hold",
    "barrier": "barrier",
    "operation": "run",
    "transaction": "transaction",
}


def _carrier(traceparent: str | None, tracestate: str | None) -> dict[str, str]:
    carrier = {} if traceparent is None else {"traceparent": traceparent}
    if tracestate:
        carrier["tracestate"] = tracestate
    return carrier


def _extract(traceparent: str | None, tracestate: str | None) -> Context | None:
    """The remote context of a message (None when it carries none or a malformed one)."""
    if not traceparent:
        return None
    extracted = _PROPAGATOR.extract(_carrier(traceparent, tracestate))
    if not trace.get_current_span(extracted).get_span_context().is_valid:
        return None
    return extracted


def _unsampled(traceparent: str | None) -> bool:
    """A version-00 ``traceparent`` whose sampled flag is off (cheap: no parsing)."""
    return (
        traceparent is not None
        and len(traceparent) == 55
        and traceparent[54] in _EVEN_HEX
        and traceparent.startswith("00-")
    )


def _one_trace(events: Sequence[ConsumedEvent], trace_id: str) -> bool:
    """Every event carries a context of trace ``trace_id`` (stops at the first other)."""
    for event in events:
        traceparent = event.envelope.traceparent
        if traceparent is None or traceparent[3:35] != trace_id:
            return False
    return True


def _header(record: ConsumedRecord, name: str) -> str | None:
    try:
        for key, value in record.headers:
            if key == name:
                return bytes(value).decode("ascii")
    except Exception:  # a hostile record: no context, the dead-letter still happens
        return None
    return None


class OpenTelemetryTracingInterceptor(Interceptor):
    """Spans for every hook of the seam, exported by its own tracer provider."""

    def __init__(self, provider: TracerProvider) -> None:
        self._provider = provider
        self._tracer = provider.get_tracer("kct")
        # Per thread: (traceparent, tracestate) of the unsampled message being processed.
        self._unsampled = threading.local()

    @classmethod
    def from_settings(
        cls, settings: TracingSettings, exporter: SpanExporter | None = None
    ) -> OpenTelemetryTracingInterceptor:
        """A provider of its own (service name, parent-based ratio sampler) with a
        batch processor exporting to OTLP/HTTP (or to ``exporter``)."""
        provider = TracerProvider(
            resource=Resource.create({"service.name": settings.service_name}),
            sampler=ParentBased(TraceIdRatioBased(settings.sampling_ratio)),
        )
        if exporter is None:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter(endpoint=settings.traces_endpoint, timeout=5)
        provider.add_span_processor(BatchSpanProcessor(exporter))
        return cls(provider)

    @property
    def provider(self) -> TracerProvider:
        return self._provider

    def flush(self, timeout_ms: int = 5000) -> bool:
        """Export what is buffered now; False if it did not finish in time."""
        return self._provider.force_flush(timeout_ms)

    def close(self) -> None:
        self._provider.shutdown()

    # -- helpers -----------------------------------------------------------
    def _current(self) -> Context | None:
        """The parent of a span started without one: the current context (None), or
        the unsampled message being processed, parsed now that it is needed."""
        pending = getattr(self._unsampled, "message", None)
        if pending is None or trace.get_current_span().get_span_context().is_valid:
            return None
        return _extract(*pending)

    def _run(
        self,
        name: str,
        proceed: Callable[[], T],
        attributes: Mapping[str, AttributeValue | Sequence[str]],
        *,
        kind: SpanKind = SpanKind.INTERNAL,
        context: Context | None = None,
        links: Sequence[Link] = (),
    ) -> T:
        with self._tracer.start_as_current_span(
            name,
            context=context or self._current(),
            kind=kind,
            attributes=attributes,
            links=links,
        ):
            return proceed()

    # -- messaging ---------------------------------------------------------
    def publish(
        self,
        messages: Sequence[Outgoing],
        transactional: bool,
        proceed: Callable[[Sequence[Outgoing]], list[Position]],
    ) -> list[Position]:
        tracer = self._tracer
        spans: list[Span] = []
        stamped: list[Outgoing] = []
        current = self._current()
        for topic, envelope in messages:
            parent = _extract(envelope.traceparent, envelope.tracestate) or current
            span = tracer.start_span(
                f"send {topic}",
                context=parent,
                kind=SpanKind.PRODUCER,
                attributes=_send_attributes(topic, envelope, transactional),
            )
            carrier: dict[str, str] = {}
            _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(span))
            stamped.append(
                (
                    topic,
                    envelope.with_changes(
                        traceparent=carrier.get("traceparent"),
                        tracestate=carrier.get("tracestate") or envelope.tracestate,
                    ),
                )
            )
            spans.append(span)
        try:
            positions = proceed(stamped)
        except BaseException as exc:
            for span in spans:
                if span.is_recording():
                    span.record_exception(exc)
                    span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                span.end()
            raise
        for span, position in zip(spans, positions, strict=False):
            if span.is_recording():
                span.set_attribute(Attr.PARTITION, str(position.partition))
                span.set_attribute(Attr.OFFSET, position.offset)
            span.end()
        return positions

    def process(self, event: ConsumedEvent, consumer: str, proceed: Callable[[], T]) -> T:
        envelope = event.envelope
        traceparent = envelope.traceparent
        if _unsampled(traceparent):
            # Not recorded; what the handler starts or publishes becomes its
            # (unsampled) child, so a trace is whole or absent (see _current).
            local = self._unsampled
            previous = local.__dict__.get("message")
            local.message = (traceparent, envelope.tracestate)
            try:
                return proceed()
            finally:
                local.message = previous
        position = event.position
        attributes: dict[str, AttributeValue] = {
            Attr.SYSTEM: "kafka",
            Attr.OPERATION_TYPE: "process",
            Attr.OPERATION_NAME: "process",
            Attr.DESTINATION: position.topic,
            Attr.PARTITION: str(position.partition),
            Attr.OFFSET: position.offset,
            Attr.KEY: envelope.aggregate_id,
            Attr.GROUP: consumer,
            Attr.MESSAGE_ID: envelope.event_id,
            Attr.EVENT_TYPE: envelope.event_type,
            Attr.AGGREGATE_TYPE: envelope.aggregate_type,
            Attr.AGGREGATE_ID: envelope.aggregate_id,
        }
        if envelope.fence is not None:
            attributes[Attr.FENCE] = envelope.fence
        return self._run(
            f"process {position.topic}",
            proceed,
            attributes,
            kind=SpanKind.CONSUMER,
            context=_extract(traceparent, envelope.tracestate),
        )

    def observes(self, event: ConsumedEvent) -> bool:
        """Not a message of an unsampled flow: a projection handler of one runs
        without a hook (it starts nothing, so nothing needs its context)."""
        return not _unsampled(event.envelope.traceparent)

    def apply_batch(
        self, projection: str, events: Sequence[ConsumedEvent], proceed: Callable[[], T]
    ) -> T:
        parent: Context | None = None
        first = events[0].envelope
        if first.traceparent and _one_trace(events, first.traceparent[3:35]):
            parent = _extract(first.traceparent, first.tracestate)  # one flow
        attributes: dict[str, AttributeValue] = {
            Attr.SYSTEM: "kafka",
            Attr.OPERATION_TYPE: "process",
            Attr.OPERATION_NAME: "apply",
            Attr.GROUP: projection,
            Attr.PROJECTION: projection,
            Attr.BATCH_COUNT: len(events),
        }
        with self._tracer.start_as_current_span(
            f"apply {projection}",
            context=parent or self._current(),
            kind=SpanKind.CONSUMER,
            attributes=attributes,
        ) as span:
            if span.is_recording():
                parent_span = None if parent is None else trace.get_current_span(parent)
                traced = [e.envelope for e in events if e.envelope.traceparent]
                for envelope in traced[:_MAX_LINKS]:
                    remote = _extract(envelope.traceparent, envelope.tracestate)
                    if remote is None:
                        continue
                    linked = trace.get_current_span(remote).get_span_context()
                    if parent_span is None or linked != parent_span.get_span_context():
                        span.add_link(linked)  # the parent itself needs no link
            return proceed()

    def dead_letter(
        self,
        record: ConsumedRecord,
        reason: str,
        error: str,
        consumer: str,
        proceed: Callable[[], Position],
    ) -> Position:
        parent = _extract(_header(record, "traceparent"), _header(record, "tracestate"))
        if parent is None:
            parent = self._current()
        attributes: dict[str, AttributeValue] = {
            Attr.SYSTEM: "kafka",
            Attr.OPERATION_TYPE: "send",
            Attr.OPERATION_NAME: "dead-letter",
            Attr.GROUP: consumer,
            Attr.DLQ_REASON: reason,
            Attr.DLQ_ERROR: error[:_MAX_TEXT],
            Attr.DLQ_SOURCE: f"{record.topic}[{record.partition}]@{record.offset}",
        }
        with self._tracer.start_as_current_span(
            f"dead-letter {record.topic}",
            context=parent,
            kind=SpanKind.PRODUCER,
            attributes=attributes,
        ) as span:
            position = proceed()
            if span.is_recording():
                span.set_attribute(Attr.DESTINATION, position.topic)
                span.set_attribute(Attr.PARTITION, str(position.partition))
                span.set_attribute(Attr.OFFSET, position.offset)
                span.set_status(Status(StatusCode.ERROR, f"dead-lettered: {reason}"))
            return position

    def propagate(self, envelope: Envelope) -> Envelope:
        context = self._current()
        if context is None and not trace.get_current_span().get_span_context().is_valid:
            return envelope
        carrier: dict[str, str] = {}
        _PROPAGATOR.inject(carrier, context=context)
        return envelope.with_changes(
            traceparent=carrier.get("traceparent"), tracestate=carrier.get("tracestate")
        )

    def note(self, name: str, attributes: Mapping[str, AttributeValue]) -> None:
        span = trace.get_current_span()
        if span.is_recording():
            span.add_event(name, attributes)

    def annotate(self, attributes: Mapping[str, AttributeValue]) -> None:
        span = trace.get_current_span()
        if span.is_recording():
            span.set_attributes(attributes)

    # -- consistency -------------------------------------------------------
    def wait(
        self, token: ConsistencyToken, projections: Sequence[str], proceed: Callable[[], T]
    ) -> T:
        text = token.to_string()
        return self._run(
            "wait",
            proceed,
            {
                Attr.TOKEN: text if len(text) <= _MAX_TEXT else text[:_MAX_TEXT] + "...",
                Attr.PROJECTIONS: list(projections),
                "kct.token.partitions": len(token),
            },
        )

    def read_after_write(self, projections: Sequence[str], proceed: Callable[[], T]) -> T:
        return self._run("read-after-write", proceed, {Attr.PROJECTIONS: list(projections)})

    def operation(self, operation: OperationInfo, proceed: Callable[[], T]) -> T:
        return self._run(
            f"operation {operation.aggregate_type}",
            proceed,
            {
                **_aggregate(operation),
                Attr.CONSISTENCY: "strong" if operation.strong else "eventual",
                Attr.DESTINATION: operation.topic,
                Attr.PROJECTIONS: list(operation.projections),
            },
        )

    def strong_phase(
        self,
        phase: StrongPhase,
        operation: OperationInfo,
        fence: int | None,
        proceed: Callable[[], T],
    ) -> T:
        attributes: dict[str, AttributeValue] = dict(_aggregate(operation))
        if fence is not None:
            attributes[Attr.FENCE] = fence
        with self._tracer.start_as_current_span(
            _PHASE_NAMES.get(phase, phase), context=self._current(), attributes=attributes
        ) as span:
            result = proceed()
            fenced = getattr(result, "fence", None)
            if phase == "lock" and isinstance(fenced, int) and span.is_recording():
                span.set_attribute(Attr.FENCE, fenced)
            return result

    # -- sagas -------------------------------------------------------------
    def saga_start(self, saga: SagaInfo, proceed: Callable[[], T]) -> T:
        return self._run(
            f"saga {saga.saga_type}",
            proceed,
            {
                Attr.SAGA_ID: saga.saga_id,
                Attr.SAGA_TYPE: saga.saga_type,
                Attr.SAGA_STEP: saga.first_step,
            },
        )

    def saga_step(self, step: StepInfo, proceed: Callable[[], T]) -> T:
        return self._run(
            f"{step.action.lower()} {step.step}",
            proceed,
            {
                Attr.SAGA_ID: step.saga_id,
                Attr.SAGA_TYPE: step.saga_type,
                Attr.SAGA_STEP: step.step,
                Attr.SAGA_ACTION: step.action,
                Attr.SAGA_PARTICIPANT: step.participant,
                Attr.SAGA_ATTEMPT: step.attempt,
            },
        )

    def watchdog(self, decision: WatchdogInfo, proceed: Callable[[], T]) -> T:
        return self._run(
            f"watchdog timeout {decision.step}",
            proceed,
            {
                Attr.SAGA_ID: decision.saga_id,
                Attr.SAGA_TYPE: decision.saga_type,
                Attr.SAGA_STEP: decision.step,
                Attr.SAGA_PARTICIPANT: decision.participant,
                Attr.SAGA_TIMEOUT: decision.timeout,
            },
            context=_extract(decision.traceparent, None),
        )


def _send_attributes(
    topic: str, envelope: Envelope, transactional: bool
) -> dict[str, AttributeValue]:
    attributes: dict[str, AttributeValue] = {
        Attr.SYSTEM: "kafka",
        Attr.OPERATION_TYPE: "send",
        Attr.OPERATION_NAME: "send",
        Attr.DESTINATION: topic,
        Attr.KEY: envelope.aggregate_id,
        Attr.MESSAGE_ID: envelope.event_id,
        Attr.EVENT_TYPE: envelope.event_type,
        Attr.AGGREGATE_TYPE: envelope.aggregate_type,
        Attr.AGGREGATE_ID: envelope.aggregate_id,
        Attr.TRANSACTIONAL: transactional,
    }
    if envelope.fence is not None:
        attributes[Attr.FENCE] = envelope.fence
    return attributes


def _aggregate(operation: OperationInfo) -> dict[str, AttributeValue]:
    return {
        Attr.AGGREGATE_TYPE: operation.aggregate_type,
        Attr.AGGREGATE_ID: operation.aggregate_id,
    }
