"""The fault suite's own cluster (`kct stack up --cluster`), its size, and what a run reports.

The cluster gets its own state directory and port offset (``KCT_CLUSTER_STATE_DIR``,
default ``<state dir>-cluster``; ``KCT_CLUSTER_PORT_OFFSET``, default the run's
offset + 2500, clear of the single-node stacks at +0, +1000 and +2000 that the
other tests use). The session brings it up on first use and takes it down at
the end (``KCT_KEEP_CLUSTER=1`` keeps it, for quick reruns).

``KCT_FAULTS_SIZE=full`` (``make faults``) runs the sizes the issue names;
the default is the reduced CI size.
"""

from __future__ import annotations

import os
import random
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from connectors.kafka import KafkaRecordConsumer, KafkaSettings
from toolkit.ports import ConsumedRecord
from toolkit.runtime.stack import LocalStack, default_port_offset, default_state_dir

_REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Size:
    """How much each fault run does."""

    name: str
    copy_events: int
    copy_rate: int  # events per second each copier aims at, so faults land mid-copy
    projection_events: int
    sagas: int
    increments: int
    broker_kills: int  # in the projection and saga runs


CI = Size(
    "ci",
    copy_events=20_000,
    copy_rate=600,
    projection_events=6_000,
    sagas=300,
    increments=500,
    broker_kills=3,
)
FULL = Size(
    "full",
    copy_events=100_000,
    copy_rate=1_200,
    projection_events=30_000,
    sagas=1_000,
    increments=1_500,
    broker_kills=8,
)


def size() -> Size:
    return FULL if os.environ.get("KCT_FAULTS_SIZE", "ci").lower() == "full" else CI


def cluster_stack() -> LocalStack:
    state = os.environ.get("KCT_CLUSTER_STATE_DIR")
    state_dir = Path(state) if state else Path(f"{default_state_dir()}-cluster")
    raw = os.environ.get("KCT_CLUSTER_PORT_OFFSET")
    offset = int(raw) if raw else default_port_offset() + 2500
    return LocalStack(state_dir=state_dir, port_offset=offset, cluster=True)


def keep_cluster() -> bool:
    return os.environ.get("KCT_KEEP_CLUSTER", "") == "1"


@dataclass
class Progress:
    """Applied events over time, sampled by a thread, to measure pauses after faults.

    ``make_read`` runs in the sampling thread and returns the function that
    reads the count, so its Kafka or Redis client belongs to that thread alone.
    """

    make_read: Callable[[], Callable[[], int | None]]
    interval: float = 0.2
    samples: list[tuple[float, int]] = field(default_factory=list)
    error: str = ""  # why the last sample failed
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Progress:
        self._thread = threading.Thread(target=self._run, name="progress", daemon=True)
        self._thread.start()
        return self

    @classmethod
    def of_group(cls, bootstrap: str, group: str, topic: str) -> Progress:
        """Committed offsets of ``group`` on ``topic``, read by a child process."""
        argv = guarded("tests.faults.progress", "--bootstrap", bootstrap)
        argv += ["--group", group, "--topic", topic]
        return cls(lambda: _ChildSampler(argv))

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def _run(self) -> None:
        read = self.make_read()
        try:
            self._sample(read)
        finally:
            close = getattr(read, "close", None)
            if close is not None:
                close()

    def _sample(self, read: Callable[[], int | None]) -> None:
        while not self._stop.wait(self.interval):
            try:
                value = read()
            except Exception as exc:  # a sample lost to the very fault being measured
                self.error = f"{type(exc).__name__}: {exc}"
                value = None
            if value is not None:
                self.samples.append((time.monotonic(), value))

    @property
    def latest(self) -> int:
        return self.samples[-1][1] if self.samples else 0

    def pauses(self, total: int) -> list[float]:
        """Seconds between successive increases of the applied count, until ``total``."""
        out: list[float] = []
        last_t, last_v = None, -1
        for t, v in self.samples:
            if v > last_v:
                if last_t is not None:
                    out.append(t - last_t)
                last_t, last_v = t, v
            if v >= total:
                break
        return out


class _ChildSampler:
    """The latest count a sampler child process printed; the child is restarted if it dies."""

    def __init__(self, argv: list[str]) -> None:
        self.argv = argv
        self.latest: int | None = None
        self.error = ""
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._child: subprocess.Popen[str] | None = None
        threading.Thread(target=self._follow, name="sampler", daemon=True).start()

    def _follow(self) -> None:
        while not self._closed.is_set():
            child = subprocess.Popen(
                self.argv,
                cwd=_REPO,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
            self._child = child
            assert child.stdout is not None
            for line in child.stdout:
                text = line.strip()
                with self._lock:
                    if text.isdigit():
                        self.latest = int(text)
                    else:
                        self.error = text
            child.wait()
            with self._lock:
                self.error = f"sampler exited with {child.returncode}; restarted"

    def __call__(self) -> int | None:
        with self._lock:
            if self.error and self.latest is None:
                raise RuntimeError(self.error)
            return self.latest

    def close(self) -> None:
        self._closed.set()
        if self._child is not None:
            self._child.kill()
            self._child.wait(5)


def guarded(module: str, *args: str) -> list[str]:
    """The command line running ``module`` as a child that dies with the test process."""
    return [sys.executable, "-m", "tests.faults.guarded", module, *args]


def _pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


@dataclass
class FaultRun:
    """What one fault run prints: events, faults, lost, duplicated, time to recover."""

    name: str
    events: int
    faults: dict[str, int]
    lost: int
    duplicated: int
    pauses: list[float]  # between increases of the applied count (Progress.pauses)
    seconds: float
    extra: str = ""

    def line(self) -> str:
        faults = ", ".join(f"{n} {k}" for k, n in self.faults.items() if n) or "none"
        return (
            f"{self.name} [{size().name}]: {self.events} events in {self.seconds:.0f} s; "
            f"faults: {faults}; lost {self.lost}, duplicated {self.duplicated}; "
            f"time to recover (pause in applied events) p50 {_pct(self.pauses, 50):.1f} s, "
            f"p99 {_pct(self.pauses, 99):.1f} s, max {max(self.pauses, default=0):.1f} s"
            + (f"; {self.extra}" if self.extra else "")
        )


RUNS: list[FaultRun] = []


def report(run: FaultRun) -> None:
    """Print the run's figures now and in the session's summary."""
    RUNS.append(run)
    print(run.line())  # the figures the issue asks each run to print


class Chaos:
    """Faults injected at random into a run, counted and timed."""

    def __init__(self, cluster: LocalStack, seed: str) -> None:
        self.cluster = cluster
        self.rng = random.Random(seed)
        self.faults: Counter[str] = Counter()
        self.times: list[float] = []
        self.brokers = [n for n in cluster.node_names if n.startswith("kafka-")]
        self._next_broker = time.monotonic() + 3

    def note(self, kind: str) -> None:
        self.faults[kind] += 1
        self.times.append(time.monotonic())

    def broker_due(self) -> bool:
        return time.monotonic() >= self._next_broker

    def bounce_broker(self) -> None:
        """kill -9 one broker, leave it down 1-4 s, start it again and wait until it answers."""
        node = self.rng.choice(self.brokers)
        self.note("broker kill -9")
        self.cluster.kill(node)
        time.sleep(self.rng.uniform(1.0, 4.0))
        self.cluster.start(node)
        self._next_broker = time.monotonic() + self.rng.uniform(3.0, 6.0)

    def run(
        self,
        done: Callable[[], bool],
        inject: Callable[[], None],
        timeout: float,
        status: Callable[[], str],
        max_faults: int = 1_000,
    ) -> None:
        """Every 1-2.5 s: print ``status()``, stop when ``done()``, else ``inject()``
        (until ``max_faults`` were injected; then only wait)."""
        started = time.monotonic()
        while True:
            time.sleep(self.rng.uniform(1.0, 2.5))
            elapsed = time.monotonic() - started
            print(f"{elapsed:5.1f} s: {status()} {dict(self.faults)}", flush=True)
            if done():
                return
            assert elapsed < timeout, f"not done within {timeout:.0f} s: {status()}"
            if sum(self.faults.values()) < max_faults:
                inject()

    def heal(self) -> None:
        for name in self.cluster.node_names:
            self.cluster.thaw(name)
            self.cluster.start(name)


def read_committed_records(
    settings: KafkaSettings, topic: str, expected: int, within: float = 120.0
) -> list[ConsumedRecord]:
    """Every committed record of ``topic`` (a fresh group, read_committed), reading
    on for 3 s once ``expected`` are in: extra copies must be seen, not missed."""
    consumer = KafkaRecordConsumer(settings, f"verify-{uuid.uuid4().hex[:8]}")
    consumer.subscribe([topic])
    records: list[ConsumedRecord] = []
    deadline = time.monotonic() + within
    quiet_until = None
    try:
        while time.monotonic() < deadline:
            records.extend(consumer.poll(5000, 0.5))
            if len(records) >= expected:
                quiet_until = quiet_until or time.monotonic() + 3
                if time.monotonic() > quiet_until:
                    break
    finally:
        consumer.close()
    return records
