"""Tracing settings: kct.yaml's ``telemetry`` section, then ``OTEL_*``, then defaults.

:meth:`TracingSettings.from_config` takes what the file sets; what it leaves
unset comes from the standard OpenTelemetry variables (read here, at the
edge), then from the local stack's defaults:

=================  ==========================================  ==========================
setting            variables (first set wins)                  default
=================  ==========================================  ==========================
enabled            ``OTEL_SDK_DISABLED=true`` turns it off,    on when the section exists
                   even when the file says ``enabled: true``
service_name       ``OTEL_SERVICE_NAME``                       kct.yaml's ``service``
endpoint           ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``      ``http://127.0.0.1:4318``
                   (full URL), ``OTEL_EXPORTER_OTLP_ENDPOINT``,
                   ``KCT_OTLP_ENDPOINT`` (base URLs)
sampling_ratio     ``OTEL_TRACES_SAMPLER_ARG`` when            1.0
                   ``OTEL_TRACES_SAMPLER`` is ``parentbased_
                   traceidratio`` or ``traceidratio`` (or unset)
query_url          ``KCT_JAEGER_QUERY_URL``                    ``http://127.0.0.1:16686``
=================  ==========================================  ==========================

Failure modes: a malformed variable (a ratio that is not a number in [0, 1],
an endpoint that is not an http(s) URL) raises ``ConfigurationError`` naming it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from toolkit.config import DEFAULT_JAEGER_QUERY_URL, DEFAULT_OTLP_ENDPOINT, TelemetryConfig
from toolkit.errors import ConfigurationError

__all__ = ["TracingSettings"]

_RATIO_SAMPLERS = ("", "parentbased_traceidratio", "traceidratio")


@dataclass(frozen=True)
class TracingSettings:
    """Where spans go, under which service name, and which share of traces is kept."""

    service_name: str = "kct"
    # The OTLP/HTTP traces URL (spans are POSTed here).
    traces_endpoint: str = f"{DEFAULT_OTLP_ENDPOINT}/v1/traces"
    sampling_ratio: float = 1.0
    enabled: bool = True
    query_url: str = DEFAULT_JAEGER_QUERY_URL

    def __post_init__(self) -> None:
        if not 0.0 <= self.sampling_ratio <= 1.0:
            raise ConfigurationError(
                "sampling ratio must be between 0 and 1", ratio=self.sampling_ratio
            )
        _check_url(self.traces_endpoint, "telemetry endpoint")
        _check_url(self.query_url, "telemetry query_url")

    @classmethod
    def from_config(
        cls,
        config: TelemetryConfig | None,
        service: str = "kct",
        environ: Mapping[str, str] | None = None,
    ) -> TracingSettings:
        """Settings from kct.yaml's ``telemetry`` section (None: absent, tracing off
        unless an ``OTEL_EXPORTER_OTLP_*`` endpoint variable asks for it)."""
        env = os.environ if environ is None else environ
        if config is None:
            wanted = bool(
                env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
                or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
            )
            config = TelemetryConfig(enabled=wanted)
        disabled = env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true"
        if config.endpoint is not None:
            traces = f"{config.endpoint}/v1/traces"
        elif env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
            traces = env["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"]
        else:
            base = (
                env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
                or env.get("KCT_OTLP_ENDPOINT")
                or DEFAULT_OTLP_ENDPOINT
            )
            traces = f"{base.rstrip('/')}/v1/traces"
        return cls(
            service_name=config.service_name or env.get("OTEL_SERVICE_NAME") or service,
            traces_endpoint=traces,
            sampling_ratio=(
                config.sampling_ratio if config.sampling_ratio is not None else _ratio_from_env(env)
            ),
            enabled=config.enabled and not disabled,
            query_url=(
                config.query_url
                or env.get("KCT_JAEGER_QUERY_URL", "").rstrip("/")
                or DEFAULT_JAEGER_QUERY_URL
            ),
        )

    @classmethod
    def from_env(
        cls, service: str = "kct", environ: Mapping[str, str] | None = None
    ) -> TracingSettings:
        """Settings from ``OTEL_*`` / ``KCT_*`` variables alone (tracing on only when an
        OTLP endpoint variable is set)."""
        return cls.from_config(None, service, environ)


def _ratio_from_env(env: Mapping[str, str]) -> float:
    sampler = env.get("OTEL_TRACES_SAMPLER", "").strip().lower()
    raw = env.get("OTEL_TRACES_SAMPLER_ARG", "").strip()
    if sampler in {"always_off", "parentbased_always_off"}:
        return 0.0
    if sampler not in _RATIO_SAMPLERS or not raw:
        return 1.0
    try:
        ratio = float(raw)
    except ValueError:
        raise ConfigurationError(
            "OTEL_TRACES_SAMPLER_ARG must be a number between 0 and 1", value=raw[:40]
        ) from None
    if not 0.0 <= ratio <= 1.0:
        raise ConfigurationError(
            "OTEL_TRACES_SAMPLER_ARG must be a number between 0 and 1", value=raw[:40]
        )
    return ratio


def _check_url(url: str, what: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigurationError(f"{what}: expected an http:// or https:// URL", url=url[:200])
