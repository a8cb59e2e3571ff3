"""Read-after-write latency: kct vs the seed design vs raw Kafka, interleaved in one run.

Each round writes one record per variant, one after the other, so drift of
the machine (page cache, GC, a noisy neighbour) hits every variant alike:

* ``kct``: ``kct.publisher.publish`` (acks=all) then
  ``kct.consistency.wait_for_consistency(position, projection, timeout=10)``,
  woken by the runner's Redis pub/sub announcement. The ProjectionRunner
  runs in its own process.
* ``seed``: the same publish and runner; the waiter polls
  ``kct.tracker.has_applied`` (the group's committed offsets) with a
  ``time.sleep(0.1)`` between checks: the design kct replaces. Every
  ``seed_every``-th round only, to keep the run short.
* ``floor``: a raw confluent-kafka producer (acks=all, idempotent,
  linger.ms=1) writes its send time; a raw consumer in another process,
  with kct's consumer settings, reads it with ``poll()`` and pipes back its
  receive time. No Redis, no kct.
* ``floor-consume``: the same, but the consumer reads with
  ``consume(num_messages=500, timeout=0.1)``, the call kct's consumer makes
  (diagnostic; every ``batch_every``-th round).
"""

from __future__ import annotations

import multiprocessing as mp
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from confluent_kafka import Producer

from benchmarks import workers
from benchmarks.common import (
    Endpoints,
    Summary,
    create_topics,
    delete_topics,
    make_kct,
    placed_event,
    unique,
)
from toolkit.errors import ConsistencyTimeout
from toolkit.runtime.app import Kct
from toolkit.runtime.gc_tuning import tune_gc

FIRST_TIMEOUT = 60.0  # the first write of a variant also waits for its consumer to join
TIMEOUT = 10.0


@dataclass
class LatencyResult:
    warmup: int
    kct: Summary
    kct_publish: Summary
    kct_wait: Summary
    seed: Summary
    floor: Summary
    floor_consume: Summary
    runner: dict[str, Any] = field(default_factory=dict)


class _Floor:
    """A raw producer writing to a topic read by a raw consumer process."""

    def __init__(self, producer: Producer, topic: str, conn: Connection) -> None:
        self.producer, self.topic, self.conn = producer, topic, conn

    def once(self, n: int, timeout: float) -> float | None:
        sent = time.time_ns()
        self.producer.produce(self.topic, value=str(sent).encode(), key=f"k{n}".encode())
        self.producer.flush(timeout)
        deadline = time.monotonic() + timeout
        while self.conn.poll(max(0.0, deadline - time.monotonic())):
            echoed, received = self.conn.recv()
            if echoed == sent:
                return float(received - sent) / 1e6
        return None


def _kct_once(kct: Kct, topic: str, name: str, n: int, timeout: float) -> tuple[float, float]:
    """(publish-to-ack ms, total ms); raises ConsistencyTimeout."""
    started = time.perf_counter()
    published = kct.publisher.publish(topic, placed_event(f"k{n}", n))
    acked = time.perf_counter()
    kct.consistency.wait_for_consistency(published.position, name, timeout=timeout)
    done = time.perf_counter()
    return (acked - started) * 1000, (done - started) * 1000


def _seed_once(kct: Kct, topic: str, name: str, n: int, timeout: float) -> float | None:
    started = time.perf_counter()
    published = kct.publisher.publish(topic, placed_event(f"s{n}", n))
    while not kct.tracker.has_applied(name, published.position):
        if time.perf_counter() - started > timeout:
            return None
        time.sleep(0.1)
    return (time.perf_counter() - started) * 1000


class _Session:
    """The processes, clients and samples of one latency run."""

    def __init__(self, ep: Endpoints, profile: bool) -> None:
        ctx = mp.get_context("spawn")
        self.kct = make_kct(ep.kafka_bootstrap, ep.redis_url, "writer")
        self.topic, floor_topic, consume_topic = unique("raw"), unique("floor"), unique("fc")
        self.topics = [self.topic, floor_topic, consume_topic]
        self.name = unique("raw-proj")
        create_topics(self.kct, *self.topics)
        _ = self.kct.listener, self.kct.consistency  # subscribed before the first wait
        self.stop = ctx.Event()
        self.results: Any = ctx.Queue()
        self.procs = [
            ctx.Process(
                target=workers.projection_runner,
                kwargs={
                    "bootstrap": ep.kafka_bootstrap,
                    "redis_url": ep.redis_url,
                    "topic": self.topic,
                    "name": self.name,
                    "max_batch": 500,
                    "stop": self.stop,
                    "results": self.results,
                    "profile": profile,
                },
                name="bench-runner",
            )
        ]
        self.producer = Producer(
            {
                "bootstrap.servers": ep.kafka_bootstrap,
                "client.id": "kct-bench-floor",
                "acks": "all",
                "enable.idempotence": True,
                "linger.ms": 1,
            }
        )
        self.floors: list[_Floor] = []
        for topic, batch in ((floor_topic, False), (consume_topic, True)):
            receiver, sender = ctx.Pipe(duplex=False)
            self.procs.append(
                ctx.Process(
                    target=workers.floor_consumer,
                    kwargs={
                        "bootstrap": ep.kafka_bootstrap,
                        "topic": topic,
                        "group": unique("floor-group"),
                        "conn": sender,
                        "stop": self.stop,
                        "batch": batch,
                    },
                    name=f"bench-floor-{'consume' if batch else 'poll'}",
                )
            )
            self.floors.append(_Floor(self.producer, topic, receiver))
        self.samples: dict[str, list[float]] = {
            k: [] for k in ("kct", "pub", "seed", "floor", "fc")
        }
        self.errors = dict.fromkeys(self.samples, 0)
        self.first = dict.fromkeys(self.samples, True)

    def start(self) -> None:
        for proc in self.procs:
            proc.start()

    def _timeout(self, key: str) -> float:
        first, self.first[key] = self.first[key], False
        return FIRST_TIMEOUT if first else TIMEOUT

    def _record(self, key: str, value: float | None, measuring: bool) -> None:
        if not measuring:
            return
        if value is None:
            self.errors[key] += 1
        else:
            self.samples[key].append(value)

    def taken(self, key: str) -> int:
        return len(self.samples[key]) + self.errors[key]

    def floor(self, n: int, measuring: bool, *, consume: bool = False) -> None:
        key = "fc" if consume else "floor"
        self._record(key, self.floors[int(consume)].once(n, self._timeout(key)), measuring)

    def kct_write(self, n: int, measuring: bool) -> None:
        try:
            pub_ms, total_ms = _kct_once(self.kct, self.topic, self.name, n, self._timeout("kct"))
        except ConsistencyTimeout:
            self._record("kct", None, measuring)
            self._record("pub", None, measuring)
            return
        self._record("kct", total_ms, measuring)
        self._record("pub", pub_ms, measuring)

    def seed_write(self, n: int, measuring: bool) -> None:
        value = _seed_once(self.kct, self.topic, self.name, n, self._timeout("seed"))
        self._record("seed", value, measuring)

    def check_applied(self, n: int) -> None:
        if self.errors["kct"] == 0 and self.kct.store.get(self.name, f"order:k{n}") is None:
            raise RuntimeError("the last kct write is not in the read model after its wait")

    def close(self) -> dict[str, Any]:
        self.stop.set()
        try:
            runner_stats: dict[str, Any] = self.results.get(timeout=60)
        except Exception as exc:  # report it, but never hide the measurements
            runner_stats = {"error": f"no stats from the runner: {exc!r}"}
        for proc in self.procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.terminate()
        self.producer.flush(5)
        self.kct.store.reset(self.name)
        delete_topics(self.kct, *self.topics)
        self.kct.close()
        return runner_stats

    def result(self, warmup: int, runner: dict[str, Any]) -> LatencyResult:
        s, e = self.samples, self.errors
        wait = [t - p for t, p in zip(s["kct"], s["pub"], strict=True)]
        return LatencyResult(
            warmup=warmup,
            kct=Summary.of(s["kct"], e["kct"]),
            kct_publish=Summary.of(s["pub"], e["pub"]),
            kct_wait=Summary.of(wait),
            seed=Summary.of(s["seed"], e["seed"]),
            floor=Summary.of(s["floor"], e["floor"]),
            floor_consume=Summary.of(s["fc"], e["fc"]),
            runner=runner,
        )


def run_latency(
    ep: Endpoints,
    *,
    writes: int,
    seed_writes: int,
    consume_writes: int,
    warmup: int = 50,
    profile: bool = False,
    progress: Callable[[str], None] = print,
) -> LatencyResult:
    session = _Session(ep, profile)
    seed_every = max(1, writes // max(1, seed_writes))
    consume_every = max(1, writes // max(1, consume_writes))
    try:
        session.start()
        for i in range(warmup + writes):
            measuring = i >= warmup
            if i == warmup:
                tune_gc()  # this process's heap frozen: no full-collection pause in a round
                progress(f"  warm-up done ({warmup} rounds), measuring {writes} rounds")
            elif measuring and (i - warmup) % max(1, writes // 4) == 0:
                progress(f"  round {i - warmup}/{writes}")
            session.floor(i, measuring)
            session.kct_write(i, measuring)
            if i % seed_every == 0 and not (measuring and session.taken("seed") >= seed_writes):
                session.seed_write(i, measuring)
            if i % consume_every == 0 and not (measuring and session.taken("fc") >= consume_writes):
                session.floor(i, measuring, consume=True)
        session.check_applied(warmup + writes - 1)
    finally:
        runner = session.close()
    return session.result(warmup, runner)
