"""Sidecar overhead: HTTP publish and publish+wait next to the same calls in-process.

A ``kct sidecar`` child process hosts the projection (a counter, by import
path); the benchmark alternates in-process calls (``publisher.publish``,
then ``wait_for_consistency`` on that projection) with the same operations
over HTTP on one kept-alive connection (``POST /v1/publish/{topic}``, then
``POST /v1/wait``; and in one request, ``POST /v1/publish/{topic}?wait=``),
so every wait is on the same runner. Added latency = HTTP
minus in-process, per percentile (goal: p99 at most 2 ms). Bulk: events per
second through ``POST /v1/publish/{topic}/bulk`` (500 per request) and
through ``publish_all`` in-process.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.common import Endpoints, Summary, create_topics, make_kct, placed_event, unique
from benchmarks.report import Section
from toolkit.envelope import Envelope
from toolkit.projection import Projection
from toolkit.read_model import ReadModelBatch
from toolkit.runtime.gc_tuning import tune_gc

ROOT = Path(__file__).resolve().parents[1]
# HTTP operations: publish; publish then POST /v1/wait (two requests); publish with
# ?wait= (one request). Both waits compare with the in-process publish + wait.
OPERATIONS = ("publish", "publish+wait", "publish?wait")
IN_PROCESS = {"publish?wait": "publish+wait"}
# The target applies to publish and to read-your-writes in its one-request form.
GOAL_OPERATIONS = ("publish", "publish?wait")


def __getattr__(name: str) -> Projection:  # the sidecar imports bench_<id> by path
    topic = os.environ.get("KCT_BENCH_TOPIC")
    if not name.startswith("bench_") or topic is None:
        raise AttributeError(name)
    projection = Projection(name, [topic])

    @projection.on("kct.examples.orders.OrderPlaced")
    def count(event: Envelope, view: ReadModelBatch) -> None:
        view.increment("totals", "events")

    return projection


def _body(event: Envelope) -> dict[str, Any]:
    return {
        "event_type": event.event_type,
        "aggregate_type": event.aggregate_type,
        "aggregate_id": event.aggregate_id,
        "sequence": event.sequence,
        "payload": dict(event.payload),
    }


@dataclass
class SidecarResult:
    writes: int
    bulk_events: int
    latency: dict[str, Summary] = field(default_factory=dict)
    bulk_rate: dict[str, float] = field(default_factory=dict)

    def local(self, op: str) -> Summary:
        """The in-process call ``op`` is compared with (one-request wait: publish+wait)."""
        return self.latency[f"in-process {IN_PROCESS.get(op, op)}"]

    def added_p99(self, op: str) -> float:
        return self.latency[f"http {op}"].p99 - self.local(op).p99


class _Client:
    def __init__(self, port: int) -> None:
        self._connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self._connection.connect()
        # http.client sends headers and body in two writes: without TCP_NODELAY, Nagle holds
        # the body until the server's delayed ACK (40 ms). Real clients (httpx, Node) set it.
        assert self._connection.sock is not None
        self._connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def post(self, path: str, body: Any) -> dict[str, Any]:
        self._connection.request(
            "POST", path, json.dumps(body), {"Content-Type": "application/json"}
        )
        answer = self._connection.getresponse()
        data = answer.read()
        if answer.status != 200:
            raise RuntimeError(f"{path}: {answer.status} {data[:200]!r}")
        parsed: dict[str, Any] = json.loads(data)
        return parsed


def _start(
    ep: Endpoints, topic: str, name: str, directory: Path
) -> tuple[subprocess.Popen[bytes], int]:
    config = directory / "kct.yaml"
    config.write_text(
        "version: 1\nservice: bench\n"
        f"kafka: {{bootstrap_servers: '{ep.kafka_bootstrap}'}}\n"
        f"zookeeper: {{hosts: '{ep.zookeeper_hosts}'}}\nredis: {{url: '{ep.redis_url}'}}\n"
        f"sidecar:\n  publish_topics: [{topic}]\n"
        f"  projections:\n    {name}: {{handler: 'benchmarks.sidecar:{name}'}}\n"
    )
    log = directory / "sidecar.log"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "toolkit.runtime.cli",
            "sidecar",
            "--config",
            str(config),
            "--listen",
            "127.0.0.1:0",
        ],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "KCT_BENCH_TOPIC": topic},
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        found = re.search(rb"listening on http://127\.0\.0\.1:(\d+)", log.read_bytes())
        if found:
            port = int(found.group(1))
            while time.monotonic() < deadline:  # until it serves and its runner joined
                if process.poll() is not None:
                    break
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                try:  # "listening" is printed as the server starts: it may not accept yet
                    connection.request("GET", "/readyz")
                    if connection.getresponse().status == 200:
                        return process, port
                except OSError:
                    pass
                finally:
                    connection.close()
                time.sleep(0.1)
        time.sleep(0.05)
    process.kill()
    raise RuntimeError(f"sidecar did not start: {log.read_text()[-2000:]}")


def run_sidecar_bench(
    ep: Endpoints, writes: int, bulk_events: int, progress: Callable[[str], None]
) -> SidecarResult:
    result = SidecarResult(writes, bulk_events)
    kct = make_kct(ep.kafka_bootstrap, ep.redis_url, "sidecar", ep.zookeeper_hosts)
    topic = unique("sidecar")
    name = f"bench_{topic.rsplit('.', 1)[-1]}"
    create_topics(kct, topic)
    with tempfile.TemporaryDirectory(prefix="kct-bench-sidecar-") as tmp:
        process, port = _start(ep, topic, name, Path(tmp))
        try:
            client = _Client(port)
            samples: dict[str, list[float]] = {
                k: []
                for k in (
                    "in-process publish",
                    "http publish",
                    "in-process publish+wait",
                    "http publish+wait",
                    "http publish?wait",
                )
            }
            for n in range(writes + 20):
                if n == 20:
                    tune_gc()  # as the sidecar does: no full-collection pause in a round
                event = placed_event(f"o-{n}", n)
                t0 = time.perf_counter()
                kct.publisher.publish(topic, event)
                t1 = time.perf_counter()
                client.post(f"/v1/publish/{topic}", _body(event))
                t2 = time.perf_counter()
                written = kct.publisher.publish(topic, event)
                kct.consistency.wait_for_consistency(written.position, [name], 10)
                t3 = time.perf_counter()
                token = client.post(f"/v1/publish/{topic}", _body(event))["token"]
                client.post("/v1/wait", {"token": token, "projections": [name], "timeout": 10})
                t4 = time.perf_counter()
                client.post(f"/v1/publish/{topic}?wait={name}&timeout=10", _body(event))
                t5 = time.perf_counter()
                if n >= 20:  # warm-up excluded
                    for key, seconds in (
                        ("in-process publish", t1 - t0),
                        ("http publish", t2 - t1),
                        ("in-process publish+wait", t3 - t2),
                        ("http publish+wait", t4 - t3),
                        ("http publish?wait", t5 - t4),
                    ):
                        samples[key].append(seconds * 1000)
            result.latency = {k: Summary.of(v) for k, v in samples.items()}
            for key, summary in result.latency.items():
                progress(f"  {key}: p50 {summary.p50:.2f} ms, p99 {summary.p99:.2f} ms")
            events = [placed_event(f"b-{n}", n) for n in range(bulk_events)]
            t0 = time.perf_counter()
            for first in range(0, bulk_events, 500):
                kct.publisher.publish_all(topic, events[first : first + 500])
            result.bulk_rate["in-process"] = bulk_events / (time.perf_counter() - t0)
            bodies = [_body(e) for e in events]
            t0 = time.perf_counter()
            for first in range(0, bulk_events, 500):
                client.post(f"/v1/publish/{topic}/bulk", {"events": bodies[first : first + 500]})
            result.bulk_rate["http"] = bulk_events / (time.perf_counter() - t0)
            progress(
                f"  bulk: {result.bulk_rate['http']:,.0f} events/s over HTTP, "
                f"{result.bulk_rate['in-process']:,.0f} in-process"
            )
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(30)
            kct.close()
    return result


def sidecar_section(result: SidecarResult) -> Section:
    rows = []
    labels = {
        "publish": "publish",
        "publish+wait": "publish, then POST /v1/wait (2 requests)",
        "publish?wait": "publish?wait= (1 request)",
    }
    for op in OPERATIONS:
        local, remote = result.local(op), result.latency[f"http {op}"]
        rows.append(
            [
                labels[op],
                f"{local.p50:.2f}",
                f"{local.p99:.2f}",
                f"{remote.p50:.2f}",
                f"{remote.p99:.2f}",
                f"{remote.p50 - local.p50:+.2f}",
                f"{result.added_p99(op):+.2f}",
            ]
        )
    rows.append(
        [
            "bulk publish (events/s)",
            f"{result.bulk_rate['in-process']:,.0f}",
            "",
            f"{result.bulk_rate['http']:,.0f}",
            "",
            "",
            "",
        ]
    )
    worst = max(result.added_p99(op) for op in GOAL_OPERATIONS)
    verdict = f"{'PASS' if worst <= 2 else 'FAIL'} (worst added p99 {worst:+.2f} ms)"
    return Section(
        title="Sidecar HTTP API vs in-process calls",
        head=[
            "operation",
            "in-process p50 ms",
            "p99 ms",
            "HTTP p50 ms",
            "p99 ms",
            "added p50",
            "added p99",
        ],
        rows=rows,
        notes=(
            f"{result.writes} interleaved rounds per operation on one 3-partition topic; "
            "HTTP on one kept-alive connection to a `kct sidecar` child process that also "
            "runs the projection every wait uses. Read-your-writes over HTTP two ways: "
            "publish then `POST /v1/wait` (two requests), and `POST /v1/publish/{topic}"
            "?wait={projection}` (one request); both against the in-process publish + "
            "`wait_for_consistency`. Bulk: "
            f"{result.bulk_events:,} events in requests of 500. Goal: added p99 at most "
            f"2 ms for publish and for publish-and-wait (one request): {verdict}."
        ),
    )
