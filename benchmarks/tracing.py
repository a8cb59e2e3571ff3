"""What tracing costs: projection throughput and read-after-write latency with tracing
off, on at 100 % sampling and on at 1 %, in the same run; and the cost of one span.

* **Throughput**: one 3-partition topic per mode, pre-loaded with the same
  ``OrderPlaced`` events through a publisher traced like that mode (so the
  events carry sampled, unsampled or no ``traceparent``). Each run is a fresh
  consumer group read by a ProjectionRunner traced like the mode (spans
  exported over OTLP/HTTP to the stack's Jaeger by the SDK's batch processor,
  as in production), in this process, timed from its creation until it applied
  every event. Modes run interleaved, ``reps`` times; the median is shown.
* **Read-after-write latency**: per mode a ProjectionRunner in its own
  process (traced like the mode) on its own topic, and a writer here whose
  ``read_after_write`` (publish, then wait for the runner) is traced like the
  mode. Rounds interleave the modes.
* **Per span**: the ``process`` hook around a no-op handler, timed on this
  thread against the same call without an interceptor: a sampled span (with
  the batch processor, export off-thread) and an unsampled message (1 % mode).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from benchmarks.common import (
    Endpoints,
    Summary,
    create_topics,
    delete_topics,
    placed_event,
    unique,
)
from benchmarks.report import Section
from connectors.kafka import KafkaSettings
from connectors.redis import RedisSettings
from connectors.telemetry import OpenTelemetryTracingInterceptor, TracingSettings
from tests.order_stats import order_stats
from toolkit.envelope import ConsumedEvent
from toolkit.positions import Position
from toolkit.runtime.app import Kct, KctSettings
from toolkit.runtime.gc_tuning import tune_gc

MODES: tuple[tuple[str, float | None], ...] = (("off", None), ("100%", 1.0), ("1%", 0.01))
THROUGHPUT_LOSS_GOAL = 0.05  # at 1 %: at most 5 % fewer events/s than off
P99_GOAL_MS = 1.0  # at 1 %: at most +1 ms p99
CHUNK = 1000


def otlp_endpoint(ep: Endpoints) -> str:
    """The stack's OTLP/HTTP receiver (``KCT_OTLP_ENDPOINT`` against your own servers)."""
    if not ep.local_stack:
        return os.environ.get("KCT_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    from toolkit.runtime.stack import LocalStack

    return LocalStack().endpoints().otlp_http


def traced_kct(bootstrap: str, redis_url: str, role: str, ratio: float | None, otlp: str) -> Kct:
    tracing = (
        TracingSettings(enabled=False)
        if ratio is None
        else TracingSettings(
            service_name=f"bench-{role}",
            traces_endpoint=f"{otlp}/v1/traces",
            sampling_ratio=ratio,
        )
    )
    return Kct(
        KctSettings(
            kafka=KafkaSettings(bootstrap_servers=bootstrap, client_id=f"kct-bench-{role}"),
            redis=RedisSettings(url=redis_url),
            node_id=f"bench-{role}-{os.getpid()}",
            tracing=tracing,
        )
    )


def latency_runner(
    *,
    bootstrap: str,
    redis_url: str,
    topic: str,
    name: str,
    ratio: float | None,
    otlp: str,
    stop: Any,
) -> None:
    """A ProjectionRunner traced like its mode, until ``stop`` (spawned process)."""
    kct = traced_kct(bootstrap, redis_url, f"raw-runner-{name[-6:]}", ratio, otlp)
    runner = kct.runner(order_stats(name, [topic]))
    tune_gc()
    runner.run(stop)
    runner.close()
    kct.close()


@dataclass
class TracingResult:
    events: int
    writes: int
    reps: int
    # Events per CPU second of the runner's process (all its threads: exporter
    # included), robust on a shared machine; and per wall second.
    rates: dict[str, list[float]] = field(default_factory=dict)
    walls: dict[str, list[float]] = field(default_factory=dict)
    latency: dict[str, Summary] = field(default_factory=dict)
    per_span_us: dict[str, float] = field(default_factory=dict)

    def rate(self, mode: str) -> float:
        return statistics.median(self.rates[mode])

    def _pairs(self, mode: str) -> list[tuple[float, float]]:
        """(mode, off) rates of each repetition: the two ran next to each other
        (100 % has off runs of its own, in its own phase)."""
        offs = self.rates.get(f"off@{mode}", self.rates["off"])
        return [(m, o) for m, o in zip(self.rates[mode], offs, strict=True) if m and o]

    def loss(self, mode: str) -> float:
        """The median over repetitions of each pair's loss: on a shared machine the
        drift between repetitions is larger than the difference within a pair."""
        pairs = self._pairs(mode)
        return 1 - statistics.median(m / o for m, o in pairs) if pairs else 1.0

    def added_us(self, mode: str) -> float:
        pairs = self._pairs(mode)
        return statistics.median((1 / m - 1 / o) * 1e6 for m, o in pairs) if pairs else 0.0

    def p99_gap(self, mode: str) -> float:
        return self.latency[mode].p99 - self.latency["off"].p99

    def verdicts(self) -> list[str]:
        loss, gap = self.loss("1%"), self.p99_gap("1%")
        return [
            f"{'PASS' if loss <= THROUGHPUT_LOSS_GOAL else 'FAIL'} at 1 % sampling, "
            f"throughput loss {loss:+.1%} (goal at most 5 %)",
            f"{'PASS' if gap <= P99_GOAL_MS else 'FAIL'} at 1 % sampling, read-after-write "
            f"p99 {gap:+.2f} ms (goal at most +1 ms)",
        ]


def _throughput(
    ep: Endpoints, events: int, reps: int, otlp: str, progress: Callable[[str], None]
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    topics: dict[str, str] = {}
    writers: list[Kct] = []
    for mode, ratio in MODES:
        writer = traced_kct(ep.kafka_bootstrap, ep.redis_url, "tp-writer", ratio, otlp)
        writers.append(writer)
        topic = topics[mode] = unique(f"trace-tp-{mode.rstrip('%')}")
        create_topics(writer, topic)
        for start in range(0, events, CHUNK):
            batch = [placed_event(f"o-{n}", n) for n in range(start, min(events, start + CHUNK))]
            writer.publisher.publish_all(topic, batch)
    rates: dict[str, list[float]] = {mode: [] for mode, _ in MODES}
    walls: dict[str, list[float]] = {mode: [] for mode, _ in MODES}
    ratios = dict(MODES)
    # Two phases: off and 1 % in pairs taking turns to go first, then 100 %
    # each next to an off run of its own. Jaeger, on the same two cores, ingests
    # a 100 % run's spans for seconds afterwards, slowing whatever runs next:
    # interleaved, that noise swamped the 1 % pairs.
    # "headers" (diagnostic): an untraced runner on the 1 % topic, i.e. what the
    # trace context headers alone cost, apart from the interceptor.
    full_reps = max(2, (reps + 1) // 2)
    firsts: list[tuple[str, ...]] = [("off", "headers", "1%"), ("1%", "headers", "off")]
    runs = [firsts[rep % 2] for rep in range(reps)]
    runs += [("off@100%", "100%")] * full_reps
    for rep, order in enumerate(runs):
        for label in order:
            mode = {"off@100%": "off", "headers": "1%"}.get(label, label)
            ratio = None if label == "headers" else ratios[mode]
            app = traced_kct(ep.kafka_bootstrap, ep.redis_url, "tp-runner", ratio, otlp)
            tune_gc()  # every run starts from the same collector state (as a sidecar's)
            started, cpu = time.perf_counter(), time.process_time()
            group = unique("trace-tp-group")
            runner = app.runner(order_stats(group, [topics[mode]]))
            deadline = started + 300
            while runner.stats.applied < events and time.perf_counter() < deadline:
                runner.run_once()
            runner.flush()
            seconds = time.perf_counter() - started
            cpu_seconds = time.process_time() - cpu  # every thread of this process
            applied = runner.stats.applied
            runner.close()
            app.store.reset(group)  # a run's read model is not kept (the stack's Redis stays small)
            app.close()
            done = applied == events
            rates.setdefault(label, []).append(applied / cpu_seconds if done else 0.0)
            walls.setdefault(label, []).append(applied / seconds if done else 0.0)
            progress(
                f"  run {rep + 1} tracing {label}: {applied / cpu_seconds:,.0f} events per "
                f"CPU second, {applied / seconds:,.0f} events/s"
            )
        time.sleep(3.0 if "100%" in order else 1.0)  # Jaeger ingests a 100 % run's spans
    delete_topics(writers[0], *topics.values())
    for writer in writers:
        writer.close()
    return rates, walls


def _latency(
    ep: Endpoints, writes: int, otlp: str, progress: Callable[[str], None]
) -> dict[str, Summary]:
    ctx = mp.get_context("spawn")
    stop = ctx.Event()
    setup = traced_kct(ep.kafka_bootstrap, ep.redis_url, "raw-setup", None, otlp)
    topics = {mode: unique(f"trace-raw-{mode.rstrip('%')}") for mode, _ in MODES}
    names = {mode: unique(f"trace-raw-proj-{mode.rstrip('%')}") for mode, _ in MODES}
    create_topics(setup, *topics.values())
    procs = [
        ctx.Process(
            target=latency_runner,
            kwargs={
                "bootstrap": ep.kafka_bootstrap,
                "redis_url": ep.redis_url,
                "topic": topics[mode],
                "name": names[mode],
                "ratio": ratio,
                "otlp": otlp,
                "stop": stop,
            },
            name=f"bench-trace-runner-{mode}",
        )
        for mode, ratio in MODES
    ]
    for proc in procs:
        proc.start()
    writers = {
        mode: traced_kct(ep.kafka_bootstrap, ep.redis_url, "raw-writer", ratio, otlp)
        for mode, ratio in MODES
    }
    samples: dict[str, list[float]] = {mode: [] for mode, _ in MODES}
    try:
        warmup = 30
        for n in range(warmup + writes):
            if n == warmup:
                tune_gc()  # this process's heap frozen: no full-collection pause in a round
            for mode, _ in MODES:
                app = writers[mode]
                raw = app.read_after_write([names[mode]], timeout=60 if n == 0 else 10)
                event = placed_event(f"o-{n}", n)
                started = time.perf_counter()
                raw.execute(
                    lambda app=app, mode=mode, event=event: [  # type: ignore[misc]
                        app.publisher.publish(topics[mode], event).position
                    ],
                    lambda: None,
                )
                if n >= warmup:
                    samples[mode].append((time.perf_counter() - started) * 1000)
        progress(f"  {writes} read-after-writes per mode")
    finally:
        stop.set()
        for proc in procs:
            proc.join(timeout=30)
        for app in writers.values():
            app.close()
        for name in names.values():
            setup.store.reset(name)
        delete_topics(setup, *topics.values())
        setup.close()
    return {mode: Summary.of(values) for mode, values in samples.items()}


def _per_span(otlp: str, calls: int = 20_000) -> dict[str, float]:
    """Microseconds the ``process`` hook adds on the caller's thread."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    class Discard(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    provider = TracerProvider(
        resource=Resource.create({"service.name": "bench-span"}),
        sampler=ParentBased(TraceIdRatioBased(1.0)),
    )
    provider.add_span_processor(BatchSpanProcessor(Discard(), max_queue_size=calls * 2))
    hooks = OpenTelemetryTracingInterceptor(provider)
    trace_id, span_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    sampled = placed_event("o-1", 1).with_changes(traceparent=f"00-{trace_id}-{span_id}-01")
    unsampled = sampled.with_changes(traceparent=f"00-{trace_id}-{span_id}-00")
    position = Position("orders", 0, 42)

    def noop() -> None:
        return None

    def timed(body: Callable[[], None]) -> float:
        started = time.perf_counter()
        for _ in range(calls):
            body()
        return (time.perf_counter() - started) / calls * 1e6

    events = {
        "sampled": ConsumedEvent(sampled, position),
        "unsampled": ConsumedEvent(unsampled, position),
    }
    baseline = timed(noop)
    out = {
        kind: timed(lambda e=event: hooks.process(e, "group", noop)) - baseline  # type: ignore[misc]
        for kind, event in events.items()
    }
    envelope = placed_event("o-2", 2)

    def send() -> None:
        hooks.publish([("orders", envelope)], False, lambda m: [position])

    out["send"] = timed(send) - baseline
    hooks.close()
    return out


def run_tracing(
    ep: Endpoints, events: int, writes: int, progress: Callable[[str], None], reps: int = 5
) -> TracingResult:
    otlp = otlp_endpoint(ep)
    result = TracingResult(events=events, writes=writes, reps=reps)
    result.per_span_us = _per_span(otlp)
    progress("  per span: " + ", ".join(f"{k} {v:.1f} µs" for k, v in result.per_span_us.items()))
    # Latency first: after the 100 % throughput runs Jaeger is busy ingesting
    # their spans for a while, on the same two cores.
    result.latency = _latency(ep, writes, otlp, progress)
    result.rates, result.walls = _throughput(ep, events, reps, otlp, progress)
    return result


def tracing_section(result: TracingResult) -> Section:
    rows = []
    for mode, _ in MODES:
        rates = result.rates[mode]
        lat = result.latency[mode]
        rows.append(
            [
                f"tracing {mode}",
                f"{result.rate(mode):,.0f}",
                f"{min(rates):,.0f}-{max(rates):,.0f}",
                f"{statistics.median(result.walls[mode]):,.0f}",
                "-" if mode == "off" else f"{-result.loss(mode):+.1%}",
                "-" if mode == "off" else f"{result.added_us(mode):+.1f}",
                f"{lat.p50:.2f}",
                f"{lat.p99:.2f}",
                "-" if mode == "off" else f"{result.p99_gap(mode):+.2f}",
            ]
        )
    if result.rates.get("headers"):
        headers = result.rates["headers"]
        pairs = [(h, o) for h, o in zip(headers, result.rates["off"], strict=True) if h and o]
        loss = 1 - statistics.median(h / o for h, o in pairs) if pairs else 1.0
        added = statistics.median((1 / h - 1 / o) * 1e6 for h, o in pairs) if pairs else 0.0
        rows.append(
            [
                "  1 % events, runner untraced (headers alone)",
                f"{statistics.median(headers):,.0f}",
                f"{min(headers):,.0f}-{max(headers):,.0f}",
                f"{statistics.median(result.walls['headers']):,.0f}",
                f"{-loss:+.1%}",
                f"{added:+.1f}",
                "",
                "",
                "",
            ]
        )
    spans = result.per_span_us
    return Section(
        title="Tracing cost: off, 100 % and 1 % sampling",
        head=[
            "mode",
            "events/CPU-s (median)",
            "range",
            "events/s wall",
            "vs off",
            "µs/event",
            "RAW p50 ms",
            "RAW p99 ms",
            "p99 vs off",
        ],
        rows=rows,
        notes=(
            f"Projection throughput: {result.events:,} `OrderPlaced` events per mode on its own "
            f"3-partition topic, one fresh consumer group per run, {result.reps} repetitions "
            "(median, range) of off and 1 % taking turns to go first, with between them an "
            "untraced runner on the 1 % topic (what the trace context headers alone cost); then "
            "100 % runs, each next to an off run of its own (`vs off` pairs them), since Jaeger "
            "ingesting a 100 % run's spans on the same cores slows whatever runs next; events "
            "published "
            "traced like the mode, runner traced like the mode (with kct's GC tuning, as a "
            "sidecar runs it), spans exported over OTLP/HTTP to the stack's Jaeger. Rates are per "
            "CPU second of the runner's process (every thread, the exporter's included): the "
            "wall-clock rate on a shared 2-core machine swings by 2x between runs. `vs off` and "
            "`µs/event` (added CPU time) are the medians of each repetition's pair (mode and off "
            "run next to each other). Read-after-write: "
            f"{result.writes} interleaved `read_after_write` rounds per mode (publish, wait for a "
            "runner process traced like the mode). On the caller's thread, one sampled "
            f"`process` span costs {spans.get('sampled', 0):.1f} µs, a `send` span with its "
            f"header injection {spans.get('send', 0):.1f} µs, an unsampled message "
            f"{spans.get('unsampled', 0):.1f} µs. " + " ".join(result.verdicts()) + "."
        ),
    )
