"""Benchmark 9: what durable saga step records cost (kct.yaml ``redis.durability``).

Saga step records (a participant's effect and its once-only outcome, one Lua
script) cannot be rebuilt from Kafka. Three ways to keep them, measured side
by side in one run on the stack's Redis, interleaved in rounds so drift hits
all alike:

* **everysec**: ``appendfsync everysec`` (the single-node stack's setting): a
  host crash can lose the last second of acknowledged records;
* **always**: ``appendfsync always`` (``CONFIG SET`` for the run, restored
  after): every record is on disk before Redis answers;
* **everysec + WAIT 1**: a replica (a second ``redis-server`` started for the
  run) must hold each record before the participant goes on
  (``redis.durability.wait_replicas: 1``).

Each variant writes the same records (a reservation: two counter changes and
the outcome) from 4 threads, as 4 participants would; latency is per
``record_once`` call. ``python -m benchmarks.durability [records]``.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial

import redis

from benchmarks.common import Endpoints, Summary, endpoints
from benchmarks.report import Section
from connectors.redis import RedisSagaStepStore, RedisSettings
from toolkit.ports import ReadModelChange

THREADS = 4
ROUNDS = 3
VARIANTS = ("everysec", "always", "everysec + WAIT 1")


@dataclass(frozen=True)
class DurabilityResult:
    records: int
    seconds: dict[str, float]
    latency: dict[str, Summary]

    def rate(self, variant: str) -> float:
        return self.records / self.seconds[variant]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def _replica(primary_port: int) -> Iterator[None]:
    """A replica of the stack's Redis for the run (no persistence of its own)."""
    server = shutil.which("redis-server") or "/usr/bin/redis-server"
    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="kct-bench-replica-") as work:
        proc = subprocess.Popen(
            [
                *(server, "--port", str(port), "--bind", "127.0.0.1", "--dir", work),
                *(
                    "--replicaof",
                    "127.0.0.1",
                    str(primary_port),
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ),
            ],
            stdout=subprocess.DEVNULL,
        )
        try:
            client = redis.Redis(port=port)
            deadline = time.monotonic() + 30
            while client.info("replication").get("master_link_status") != "up":
                if time.monotonic() > deadline:
                    raise RuntimeError("the benchmark's Redis replica never synchronised")
                time.sleep(0.1)
            client.close()
            yield
        finally:
            proc.kill()
            proc.wait(10)


def _write(store: RedisSagaStepStore, participant: str, keys: list[str]) -> list[float]:
    samples = []
    for key in keys:
        changes = [
            ReadModelChange("increment", "reserved", field="widget", amount=1),
            ReadModelChange("increment", "moves", field="reservations", amount=1),
        ]
        began = time.perf_counter()
        store.record_once(participant, key, changes, {"status": "SUCCESS", "key": key})
        samples.append((time.perf_counter() - began) * 1000)
    return samples


def _round(
    make_store: Callable[[], RedisSagaStepStore], participant: str, count: int
) -> tuple[float, list[float]]:
    stores = [make_store() for _ in range(THREADS)]
    per = count // THREADS
    results: list[list[float]] = [[] for _ in range(THREADS)]
    keys = [[f"{uuid.uuid4().hex}" for _ in range(per)] for _ in range(THREADS)]

    def work(i: int) -> None:
        results[i] = _write(stores[i], participant, keys[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(THREADS)]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    for store in stores:
        store.close()
    return elapsed, [s for r in results for s in r]


def run_durability(
    ep: Endpoints, records: int, progress: Callable[[str], None] = print
) -> DurabilityResult:
    url = ep.redis_url
    admin = redis.Redis.from_url(url)
    original = str(admin.config_get("appendfsync").get("appendfsync", "everysec"))
    primary_port = int(admin.connection_pool.connection_kwargs.get("port", 6379))
    participant = f"bench-durability-{uuid.uuid4().hex[:8]}"
    per_round = max(THREADS, records // ROUNDS)
    seconds = dict.fromkeys(VARIANTS, 0.0)
    samples: dict[str, list[float]] = {v: [] for v in VARIANTS}
    plain = RedisSettings(url=url)
    waiting = RedisSettings(url=url, wait_replicas=1, wait_timeout=5.0)
    try:
        with _replica(primary_port):
            for round_no in range(ROUNDS):
                for variant in VARIANTS:
                    admin.config_set("appendfsync", "always" if variant == "always" else "everysec")
                    settings = waiting if "WAIT" in variant else plain
                    elapsed, got = _round(
                        partial(RedisSagaStepStore, settings), participant, per_round
                    )
                    seconds[variant] += elapsed
                    samples[variant] += got
                progress(f"  durability round {round_no + 1}/{ROUNDS} done")
    finally:
        admin.config_set("appendfsync", original)
        for key in admin.scan_iter(f"kct:rm:{{{participant}}}:*", count=1000):
            admin.delete(key)
        admin.close()
    return DurabilityResult(
        records=per_round * ROUNDS,
        seconds=seconds,
        latency={v: Summary.of(samples[v]) for v in VARIANTS},
    )


def durability_section(result: DurabilityResult) -> Section:
    base = result.rate("everysec")
    rows = [
        [
            variant,
            f"{result.rate(variant):,.0f}",
            f"{result.latency[variant].p50:.2f}",
            f"{result.latency[variant].p99:.2f}",
            f"{result.rate(variant) / base:.2f}x",
        ]
        for variant in VARIANTS
    ]
    return Section(
        title="Step records and Redis durability (redis.durability)",
        head=["variant", "records/s", "p50 ms", "p99 ms", "throughput vs everysec"],
        rows=rows,
        notes=(
            f"{result.records:,} step records per variant (`RedisSagaStepStore.record_once`: "
            f"a reservation, two counter changes and the outcome) from {THREADS} threads, "
            f"in {ROUNDS} interleaved rounds, on the stack's Redis. **everysec**: "
            "`appendfsync everysec`, a host crash loses up to the last second; **always**: "
            "`appendfsync always` (`CONFIG SET` for the run), nothing acknowledged is lost; "
            "**everysec + WAIT 1**: `redis.durability.wait_replicas: 1` against a replica "
            "started for the run, a record is acknowledged once a second server holds it. "
            "A saga step also costs a Kafka transaction (several ms), so the saga-level "
            "difference is smaller than the record-level one."
        ),
    )


def main() -> None:
    records = int(sys.argv[1]) if len(sys.argv) > 1 else 3000
    result = run_durability(endpoints(), records)
    section = durability_section(result)
    for row in section.rows:
        print("  ".join(row))


if __name__ == "__main__":
    main()
