"""OpenTelemetry adapters on the core's interceptor seam (:mod:`toolkit.interceptors`):
tracing exported over OTLP, its settings, and Jaeger's query API for ``kct trace``."""

from connectors.telemetry.jaeger import JaegerQuery, JaegerSpan, JaegerTrace
from connectors.telemetry.settings import TracingSettings
from connectors.telemetry.tracing import Attr, OpenTelemetryTracingInterceptor

__all__ = [
    "Attr",
    "JaegerQuery",
    "JaegerSpan",
    "JaegerTrace",
    "OpenTelemetryTracingInterceptor",
    "TracingSettings",
]
