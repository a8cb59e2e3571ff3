"""Strong vs eventual operation latency, and lock acquire+release, in one run.

Variants, interleaved round by round on one 3-partition topic read by one
``balances`` ProjectionRunner in its own process:

* ``eventual``: ``enforce`` on an eventual account: run the operation,
  publish (acks=all), return the token. Nobody waits.
* ``eventual + wait``: the same, then ``wait_for_consistency`` on the
  projection: the eventual way to get the strong path's guarantee on reads.
* ``strong``: ``enforce`` on a strong account: ZooKeeper lock and fence,
  barrier, Kafka transaction with the lock check, commit, wait for the
  projection, release.
* ``lock acquire+release``: ``ZooKeeperLockService`` alone, and its
  baseline, kazoo's ``Lock`` recipe on a plain client (what it wraps).
* ``raw transaction``: confluent-kafka begin/produce/commit of one record,
  the floor of the strong path's Kafka cost.

Target (issue 16): strong p50 at most 3x the eventual p50, both from the same
interleaved rounds; the section's notes print PASS or FAIL, the strong path's
mean per phase (``release`` is the rest of the strong operation's time: the
release and the boundary's own bookkeeping) and the sum of the raw baselines.

Every operation is the same read-modify-write of one balance (read the read
model, publish the new balance).
"""

from __future__ import annotations

import multiprocessing as mp
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Producer
from kazoo.client import KazooClient

from benchmarks import workers
from benchmarks.common import Endpoints, Summary, create_topics, delete_topics, make_kct, unique
from benchmarks.report import Section
from tests.balances import balance_event
from toolkit.boundary import OperationContext
from toolkit.config import ConsistencyConfig, StrongRule
from toolkit.runtime.app import Kct

VARIANTS = (
    ("strong", "strong: lock + barrier + transaction + wait + release"),
    ("eventual", "eventual: publish, return the token"),
    ("eventual_wait", "eventual + wait_for_consistency"),
    ("lock", "ZooKeeperLockService acquire+release"),
    ("kazoo_lock", "baseline: kazoo Lock acquire+release"),
    ("raw_txn", "baseline: raw Kafka transaction (1 record)"),
)
PHASES = ("lock", "barrier", "operation", "commit", "wait", "release")
TARGET_RATIO = 3.0  # issue 16: strong p50 <= 3x eventual p50


@dataclass
class BoundaryResult:
    ops: int
    summaries: dict[str, Summary]
    phases_ms: dict[str, float] = field(default_factory=dict)

    headers = ("variant", "ops", "p50 ms", "p95 ms", "p99 ms", "max ms", "mean ms", "errors")

    def rows(self) -> list[list[str]]:
        out = []
        for key, label in VARIANTS:
            s = self.summaries[key]
            out.append(
                [label, str(s.count)]
                + [f"{v:.2f}" for v in (s.p50, s.p95, s.p99, s.max, s.mean)]
                + [str(s.errors)]
            )
        return out

    def phase_line(self) -> str:
        return ", ".join(f"{p} {self.phases_ms.get(p, 0):.2f}" for p in PHASES)

    @property
    def ratio(self) -> float:
        """Strong p50 over eventual p50 (same rounds)."""
        eventual = self.summaries["eventual"].p50
        return self.summaries["strong"].p50 / eventual if eventual else float("inf")

    def verdict(self) -> str:
        ok = self.ratio <= TARGET_RATIO
        return (
            f"**{'PASS' if ok else 'FAIL'}** strong p50 <= {TARGET_RATIO:g}x eventual "
            f"({self.summaries['strong'].p50:.2f} / {self.summaries['eventual'].p50:.2f} ms "
            f"= {self.ratio:.2f}x)."
        )

    def floor_line(self) -> str:
        """The raw primitives alone: kazoo's lock and a bare Kafka transaction."""
        raw = self.summaries["kazoo_lock"].p50 + self.summaries["raw_txn"].p50
        eventual = self.summaries["eventual"].p50
        return (
            f"Raw primitives alone (kazoo lock acquire+release p50 + raw transaction p50): "
            f"{raw:.2f} ms = {raw / eventual if eventual else float('inf'):.2f}x eventual, "
            "before any barrier or wait."
        )


def _policy(projection: str) -> ConsistencyConfig:
    return ConsistencyConfig(
        default_timeout=10.0,
        lock_timeout=10.0,
        projections=(projection,),
        strong=(StrongRule(type="account", pattern="strong-*"),),
    )


def _read_modify_write(kct: Kct, projection: str) -> Callable[[OperationContext], None]:
    def operation(ctx: OperationContext) -> None:
        doc = kct.store.get(projection, f"account:{ctx.aggregate_id}") or {"balance": 0, "seq": 0}
        ctx.publish(balance_event(ctx.aggregate_id, int(doc["balance"]) + 1, int(doc["seq"]) + 1))

    return operation


class _Session:
    """The processes, clients and variants of one run."""

    def __init__(self, ep: Endpoints) -> None:
        ctx = mp.get_context("spawn")
        self.ep = ep
        self.kct = make_kct(ep.kafka_bootstrap, ep.redis_url, "boundary", ep.zookeeper_hosts)
        self.topic, self.txn_topic = unique("accounts"), unique("rawtxn")
        self.name = unique("balances")
        create_topics(self.kct, self.topic, self.txn_topic)
        self.stop = ctx.Event()
        self.results: Any = ctx.Queue()
        self.runner = ctx.Process(
            target=workers.projection_runner,
            kwargs={
                "bootstrap": ep.kafka_bootstrap,
                "redis_url": ep.redis_url,
                "topic": self.topic,
                "name": self.name,
                "max_batch": 500,
                "stop": self.stop,
                "results": self.results,
                "profile": False,
                "read_model": "balances",
            },
            name="bench-boundary-runner",
        )
        self.runner.start()
        self.boundary = self.kct.boundary(_policy(self.name), {"account": self.topic})
        self.operation = _read_modify_write(self.kct, self.name)
        self.kazoo = KazooClient(hosts=ep.zookeeper_hosts)
        self.kazoo.start(timeout=10)
        self.kazoo_root = f"/kct-bench/kazoo-{uuid.uuid4().hex[:8]}"
        self.raw = Producer(
            {
                "bootstrap.servers": ep.kafka_bootstrap,
                "transactional.id": f"bench-raw-{uuid.uuid4().hex[:8]}",
                "linger.ms": 1,
            }
        )
        self.raw.init_transactions(10)
        self.phases: dict[str, float] = dict.fromkeys(PHASES, 0.0)

    def run(self, key: str, n: int) -> None:
        getattr(self, key)(n)

    def strong(self, n: int) -> None:
        started = time.perf_counter()
        result = self.boundary.enforce(f"strong-{n % 4}", self.operation, aggregate_type="account")
        elapsed = time.perf_counter() - started
        for phase in PHASES[:-1]:
            self.phases[phase] += result.timings.get(phase, 0.0) * 1000
        # The release and the boundary's own bookkeeping: what the phases leave.
        self.phases["release"] += (elapsed - sum(result.timings.values())) * 1000

    def eventual(self, n: int) -> None:
        self.boundary.enforce(f"eventual-{n % 4}", self.operation, aggregate_type="account")

    def eventual_wait(self, n: int) -> None:
        result = self.boundary.enforce(
            f"eventual-w{n % 4}", self.operation, aggregate_type="account"
        )
        self.kct.consistency.wait_for_consistency(result.token, [self.name], 10)

    def lock(self, n: int) -> None:
        self.kct.locks.acquire(f"bench/lock-{n % 4}", 10).release()

    def kazoo_lock(self, n: int) -> None:
        recipe = self.kazoo.Lock(f"{self.kazoo_root}/lock-{n % 4}", "bench")
        recipe.acquire(timeout=10)
        recipe.release()

    def raw_txn(self, n: int) -> None:
        self.raw.begin_transaction()
        self.raw.produce(self.txn_topic, b"x", key=f"k{n % 4}".encode())
        self.raw.commit_transaction(10)

    def close(self) -> None:
        self.stop.set()
        self.runner.join(timeout=30)
        self.kazoo.stop()
        self.kazoo.close()
        self.raw.flush(5)
        delete_topics(self.kct, self.topic, self.txn_topic)
        self.kct.close()


def run_boundary(
    ep: Endpoints, *, ops: int, progress: Callable[[str], None] = print
) -> BoundaryResult:
    """``ops`` measured rounds (after a warm-up), each running every variant once."""
    session = _Session(ep)
    samples: dict[str, list[float]] = {key: [] for key, _ in VARIANTS}
    errors = dict.fromkeys(samples, 0)
    warmup = max(5, ops // 20)
    try:
        for n in range(warmup + ops):
            measuring = n >= warmup
            if n == warmup:
                session.phases = dict.fromkeys(PHASES, 0.0)
            for key, _ in VARIANTS:
                started = time.perf_counter()
                try:
                    session.run(key, n)
                except Exception as exc:  # counted, shown in the table
                    errors[key] += 1
                    progress(f"  {key} failed: {exc}")
                    continue
                if measuring:
                    samples[key].append((time.perf_counter() - started) * 1000)
            if measuring and (n - warmup + 1) % max(1, ops // 4) == 0:
                progress(f"  {n - warmup + 1}/{ops} rounds")
    finally:
        session.close()
    measured = len(samples["strong"]) or 1
    return BoundaryResult(
        ops=ops,
        summaries={k: Summary.of(v, errors[k]) for k, v in samples.items()},
        phases_ms={p: t / measured for p, t in session.phases.items()},
    )


def boundary_section(result: BoundaryResult) -> Section:
    return Section(
        title="Strong vs eventual operation latency (ms)",
        head=list(BoundaryResult.headers),
        rows=result.rows(),
        notes=(
            f"{result.ops} interleaved rounds after a warm-up; each round runs every variant "
            "once. Every operation is a read-modify-write of one account balance (read the "
            "`balances` read model in Redis, publish `BalanceSet`) on a 3-partition topic read "
            "by one ProjectionRunner in its own process. The strong path's mean per phase: "
            f"{result.phase_line()} ms. `eventual + wait` gives reads the guarantee the strong "
            f"path gives, without mutual exclusion. {result.floor_line()} {result.verdict()}"
        ),
    )
