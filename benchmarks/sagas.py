"""Saga throughput and latency, next to the raw Kafka cost of the same messages.

``python -m benchmarks.sagas [--sagas N] [--concurrency C]``

* **kct**: the 3-step ``OrderFulfillment`` saga of ``examples/order_fulfillment``
  (ReserveInventory -> ProcessPayment -> ConfirmOrder) on a fresh
  :class:`~examples.order_fulfillment.shop.Shop` (its own topics, 3
  partitions each), no failures (stock and wallets large enough). The three
  participants run on threads of one child process, the saga-state
  projection (a ProjectionRunner) in another. The driver (this process,
  one thread) keeps ``C`` sagas in flight: it starts each with
  ``SagaClient.start`` (one Kafka transaction: ``SagaStarted`` + the first
  command) and sees it end when the saga's document in the saga-state read
  model (Redis) says ``COMPLETED``; it looks after each announcement of the
  runner (Redis pub/sub), when the projection's ``totals`` counter moved.
  Per saga: 1 ``SagaStarted`` + 3 commands + 3 replies = 7 messages in 4
  transactions, plus per command a dedup lookup and a once-only Redis script
  in the participant, and per reply a read-model write by the runner.
* **baseline**: raw confluent-kafka, the same 7 messages in 4 transactions
  per chain on fresh 3-partition topics, the same process layout and the
  same steady concurrency: the driver starts a chain with a transaction of 2
  records (``started`` to the reply topic, a command to hop 1); three hop
  threads in one child process each consume their command topic as a group
  (read_committed, kct's consumer settings and poll pattern) and, per poll,
  in one transaction produce a reply (and, for hops 1-2, the next command),
  add the consumer offsets with ``send_offsets_to_transaction`` and commit.
  The driver consumes the reply topic itself (read_committed); a chain ends
  when hop 3's reply arrives. Values are 256 opaque bytes, no headers, no
  Avro, no Redis: the floor for the Kafka work of a saga, not something kct
  could reach while keeping its guarantees.

Latency is per saga, start call to end seen by the driver (same clock). A
warm-up (group joins, producer set-up) runs first and is not measured.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import queue
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event
from typing import Any

from confluent_kafka import Consumer, Message, Producer
from confluent_kafka import TopicPartition as KafkaTopicPartition

from benchmarks.common import (
    PARTITIONS,
    Endpoints,
    Summary,
    create_topics,
    delete_topics,
    endpoints,
    make_kct,
    unique,
)
from benchmarks.report import Section
from benchmarks.workers import raw_consumer_config
from examples.order_fulfillment.services import ACTIONS, PARTICIPANTS
from examples.order_fulfillment.shop import Shop
from toolkit.runtime.app import Kct
from toolkit.saga.state import TERMINAL, TOTALS_KEY, SagaStatus, saga_key

MESSAGES_PER_SAGA = 7
TRANSACTIONS_PER_SAGA = 4
HOPS = 3
VALUE_BYTES = 256
PLENTY = 10**12  # stock units and wallet cents: no saga fails for want of either
POLL_TIMEOUT = 0.1  # the participants' and hops' poll timeout (kct's default)


@dataclass(frozen=True)
class Variant:
    """One measured phase: units started at a steady concurrency, how fast, how long each took."""

    in_flight: int
    seconds: float
    latency: Summary  # start -> end seen by the driver; errors = unfinished
    starts: Summary  # the start call alone (one transaction)

    @property
    def busy(self) -> float:
        """The share of the phase the driver thread spent in start calls."""
        spent = self.starts.mean * self.starts.count / 1000
        return spent / self.seconds if self.seconds > 0 and self.starts.count else 0.0

    @property
    def rate(self) -> float:
        return self.latency.count / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class SagasResult:
    sagas: int
    kct: Variant  # throughput phase
    kct_single: Variant  # latency phase, one saga in flight
    baseline: Variant
    baseline_single: Variant
    docs: Summary  # SagaStarted -> last reply, state documents of the throughput phase
    docs_single: Summary  # the same, latency phase
    detail: dict[str, Any] = field(default_factory=dict)

    headers = (
        "variant",
        "in flight",
        "sagas",
        "seconds",
        "sagas/s",
        "messages/s",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "max ms",
        "unfinished",
    )

    def rows(self) -> list[list[str]]:
        def row(label: str, v: Variant, s: Summary | None = None) -> list[str]:
            shown = s or v.latency
            whole = s is None
            return [
                label,
                str(v.in_flight) if whole else "",
                str(shown.count),
                f"{v.seconds:.1f}" if whole else "",
                f"{v.rate:,.0f}" if whole else "",
                f"{v.rate * MESSAGES_PER_SAGA:,.0f}" if whole else "",
                *(f"{x:.1f}" for x in (shown.p50, shown.p95, shown.p99, shown.max)),
                str(shown.errors) if whole else "",
            ]

        return [
            row("kct: start -> COMPLETED in the saga-state read model", self.kct),
            row("  of which SagaStarted -> last reply (state documents)", self.kct, self.docs),
            row("  of which SagaClient.start (1 transaction)", self.kct, self.kct.starts),
            row("kct: start -> COMPLETED in the saga-state read model", self.kct_single),
            row(
                "  of which SagaStarted -> last reply (state documents)",
                self.kct_single,
                self.docs_single,
            ),
            row("baseline: raw Kafka, the same 7 messages in 4 txns", self.baseline),
            row("  of which the start (1 transaction)", self.baseline, self.baseline.starts),
            row(
                "baseline: raw Kafka, the same 7 messages in 4 txns",
                self.baseline_single,
            ),
        ]

    @property
    def share(self) -> float:
        """kct's throughput as a share of the baseline's."""
        return self.kct.rate / self.baseline.rate if self.baseline.rate else 0.0


# -- child processes ---------------------------------------------------------------


def saga_services(
    *,
    bootstrap: str,
    redis_url: str,
    run_id: str,
    roles: list[str],
    stop: Event,
    results: Queue[dict[str, Any]],
) -> None:
    """Participants and/or the saga-state projection (``"state"``) of a Shop, until ``stop``."""
    kct = make_kct(bootstrap, redis_url, f"saga-{'-'.join(roles)}")
    shop = Shop(run_id=run_id)
    members: dict[str, Any] = {}
    for role in roles:
        if role == "state":
            members[role] = kct.saga_state_runner(shop.definitions, shop.state_projection)
        else:
            members[role] = kct.saga_participant(
                role, shop.definitions, ACTIONS[role], namespace=shop.namespace
            )
    threads = [
        threading.Thread(target=m.run, args=(stop,), name=f"bench-{r}", daemon=True)
        for r, m in members.items()
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stats: dict[str, Any] = {}
    for role, member in members.items():
        stats[role] = dict(member.stats) if role != "state" else {"applied": member.stats.applied}
        member.close()
    kct.close()
    results.put(stats)


def _hop_producer(bootstrap: str) -> Producer:
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "client.id": "kct-bench-raw-hop",
            "transactional.id": f"bench-hop-{uuid.uuid4().hex[:10]}",
            "transaction.timeout.ms": 15_000,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 1,
        }
    )
    producer.init_transactions(10)
    return producer


def _poll(consumer: Consumer, max_records: int, timeout: float) -> list[Message]:
    """KafkaRecordConsumer's pattern: wait for the first record, drain what is fetched."""
    first = consumer.poll(timeout)
    if first is None:
        return []
    return [first, *consumer.consume(num_messages=max_records - 1, timeout=0)]


def _hop(bootstrap: str, topics: list[str], hop: int, group: str, stop: Event) -> int:
    """Hop ``hop`` (1-based): command in, reply (+ next command) out, offsets in the txn."""
    consumer = Consumer(raw_consumer_config(bootstrap, group))
    consumer.subscribe([topics[hop - 1]])
    producer = _hop_producer(bootstrap)
    replies, following = topics[HOPS], topics[hop] if hop < HOPS else None
    handled = 0
    while not stop.is_set():
        messages = [m for m in _poll(consumer, 100, POLL_TIMEOUT) if m.error() is None]
        if not messages:
            continue
        producer.begin_transaction()
        offsets: dict[tuple[str, int], int] = {}
        for message in messages:
            value, key = message.value() or b"", message.key()
            chain = value.split(b"|", 1)[0]
            producer.produce(replies, chain + f"|r{hop}|".encode() + value[:200], key)
            if following is not None:
                producer.produce(following, value, key)
            offsets[(message.topic() or "", message.partition() or 0)] = (message.offset() or 0) + 1
        producer.send_offsets_to_transaction(
            [KafkaTopicPartition(t, p, o) for (t, p), o in offsets.items()],
            consumer.consumer_group_metadata(),
            10,
        )
        producer.commit_transaction(10)
        handled += len(messages)
    consumer.close()
    producer.flush(5)
    return handled


def raw_hops(
    *, bootstrap: str, topics: list[str], stop: Event, results: Queue[dict[str, Any]]
) -> None:
    """The three hops of the baseline, on threads, until ``stop``."""
    counts: dict[str, int] = {}

    def run(hop: int) -> None:
        counts[f"hop{hop}"] = _hop(bootstrap, topics, hop, f"{topics[HOPS]}.hop{hop}", stop)

    threads = [threading.Thread(target=run, args=(h,), daemon=True) for h in (1, 2, 3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    results.put(counts)


# -- the driver ----------------------------------------------------------------------


Ends = Callable[[dict[str, float]], list[str]]  # the units in flight -> those that ended


class _Steady:
    """Keeps ``concurrency`` units in flight; records start -> end latency of each."""

    def __init__(self, concurrency: int, timeout: float) -> None:
        self.concurrency = concurrency
        self.timeout = timeout
        self.inflight: dict[str, float] = {}
        self.latencies: list[float] = []
        self.starts: list[float] = []

    def run(
        self,
        ids: list[str],
        start: Callable[[str], None],
        wait_for_ends: Ends,
    ) -> tuple[float, int]:
        """Start every id, wait for all; returns (seconds, unfinished)."""
        pending = deque(ids)
        begun = time.perf_counter()
        deadline = begun + self.timeout
        while (pending or self.inflight) and time.perf_counter() < deadline:
            while pending and len(self.inflight) < self.concurrency:
                unit = pending.popleft()
                began = self.inflight[unit] = time.perf_counter()
                start(unit)
                self.starts.append((time.perf_counter() - began) * 1000)
            for unit in wait_for_ends(self.inflight):
                started = self.inflight.pop(unit)
                self.latencies.append((time.perf_counter() - started) * 1000)
        return time.perf_counter() - begun, len(pending) + len(self.inflight)

    def variant(self, ids: list[str], start: Callable[[str], None], wait: Ends) -> Variant:
        seconds, unfinished = self.run(ids, start, wait)
        latency = Summary.of(self.latencies, unfinished)
        return Variant(self.concurrency, seconds, latency, Summary.of(self.starts))


class _KctDriver:
    def __init__(self, kct: Kct, shop: Shop, orders: dict[str, dict[str, str]]) -> None:
        self.kct, self.shop, self.orders = kct, shop, orders
        self.client = kct.saga_client(shop.definitions, shop.state_projection)
        self.listener = kct.listener
        self.version = self.listener.version
        self.finished = 0
        self.docs: dict[str, dict[str, Any]] = {}

    def start(self, saga_id: str) -> None:
        self.client.start("OrderFulfillment", self.orders[saga_id], saga_id=saga_id)

    def wait_for_ends(self, inflight: dict[str, float]) -> list[str]:
        self.version = self.listener.wait_for_update(self.version, 0.05)
        projection = self.shop.state_projection
        finished = sum(self.kct.store.counters(projection, TOTALS_KEY).values())
        if finished == self.finished:
            return []
        self.finished = finished
        ended = []
        for saga_id in list(inflight):
            doc = self.kct.store.get(projection, saga_key(saga_id))
            if doc is not None and doc["status"] in TERMINAL:
                ended.append(saga_id)
                self.docs[saga_id] = doc
        return ended


class _RawDriver:
    def __init__(self, bootstrap: str, topics: list[str]) -> None:
        self.topics = topics
        self.producer = _hop_producer(bootstrap)
        self.consumer = Consumer(raw_consumer_config(bootstrap, f"{topics[HOPS]}.driver"))
        self.consumer.subscribe([topics[HOPS]])
        self.padding = b"x" * VALUE_BYTES

    def start(self, chain: str) -> None:
        key = chain.encode()
        value = (key + b"|" + self.padding)[:VALUE_BYTES]
        self.producer.begin_transaction()
        self.producer.produce(self.topics[HOPS], key + b"|started|", key)
        self.producer.produce(self.topics[0], value, key)
        self.producer.commit_transaction(10)

    def wait_for_ends(self, inflight: dict[str, float]) -> list[str]:
        ended = []
        final = f"|r{HOPS}|".encode()
        for message in _poll(self.consumer, 500, 0.05):
            value = message.value()
            if message.error() is None and value is not None:
                chain, _, rest = value.partition(b"|")
                if (b"|" + rest).startswith(final) and chain.decode() in inflight:
                    ended.append(chain.decode())
        return ended

    def close(self) -> None:
        self.consumer.close()
        self.producer.flush(5)


def _report(results: Queue[dict[str, Any]]) -> dict[str, Any]:
    try:
        return results.get(timeout=60)
    except queue.Empty:
        return {"error": "a child process did not report"}


def _big_shop() -> Shop:
    return Shop(
        skus={"widget": PLENTY, "gadget": PLENTY},
        customers={f"customer-{n}": PLENTY for n in range(10)},
    )


def _phases(
    ids: list[str],
    sizes: tuple[int, int, int],
    concurrency: int,
    start: Callable[[str], None],
    wait_for_ends: Ends,
) -> tuple[Variant, Variant]:
    """Warm-up (not measured), throughput at ``concurrency``, latency at 1 in flight."""
    warmup, sagas, single = sizes
    _Steady(concurrency, 120).run(ids[:warmup], start, wait_for_ends)
    loaded = _Steady(concurrency, max(60.0, sagas / 5))
    throughput = loaded.variant(ids[warmup : warmup + sagas], start, wait_for_ends)
    alone = _Steady(1, max(60.0, single))
    return throughput, alone.variant(ids[warmup + sagas :], start, wait_for_ends)


def _measure_kct(
    ep: Endpoints, sizes: tuple[int, int, int], concurrency: int, progress: Callable[[str], None]
) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    kct = make_kct(ep.kafka_bootstrap, ep.redis_url, "saga-driver")
    shop = _big_shop()
    shop.prepare(kct, partitions=PARTITIONS)
    stop, results = ctx.Event(), ctx.Queue()
    layout = [list(PARTICIPANTS), ["state"]]
    children = [
        ctx.Process(
            target=saga_services,
            kwargs={
                "bootstrap": ep.kafka_bootstrap,
                "redis_url": ep.redis_url,
                "run_id": shop.run_id,
                "roles": roles,
                "stop": stop,
                "results": results,
            },
            name=f"bench-saga-{'-'.join(roles)}",
        )
        for roles in layout
    ]
    for child in children:
        child.start()
    warmup, sagas, _single = sizes
    try:
        orders = {saga_id: context for _, context, saga_id in shop.orders(sum(sizes), 0.0)}
        ids = list(orders)
        driver = _KctDriver(kct, shop, orders)
        progress(f"  kct: {warmup} warm-up, {sagas} at {concurrency} in flight, {_single} alone")
        loaded, single = _phases(ids, sizes, concurrency, driver.start, driver.wait_for_ends)
        problems = shop.invariants(kct, driver.docs)
    finally:
        stop.set()
        stats = [_report(results) for _ in children]
        for child in children:
            child.join(timeout=30)
        delete_topics(kct, *(t for d in shop.definitions.values() for t in d.topics))
        for name in (shop.state_projection, *(shop.read_model(p) for p in PARTICIPANTS)):
            kct.store.reset(name)
        kct.close()

    def docs(chosen: list[str]) -> Summary:
        found = [driver.docs[i] for i in chosen if i in driver.docs]
        return Summary.of([float(d["updated_at_ms"] - d["started_at_ms"]) for d in found])

    completed = sum(d["status"] == SagaStatus.COMPLETED.value for d in driver.docs.values())
    return {
        "loaded": loaded,
        "single": single,
        "docs": docs(ids[warmup : warmup + sagas]),
        "docs_single": docs(ids[warmup + sagas :]),
        "detail": {
            "sagas_total": len(ids),
            "completed": completed,
            "invariant_problems": problems,
            "services": stats,
        },
    }


def _measure_baseline(
    ep: Endpoints, sizes: tuple[int, int, int], concurrency: int, progress: Callable[[str], None]
) -> tuple[Variant, Variant]:
    ctx = mp.get_context("spawn")
    kct = make_kct(ep.kafka_bootstrap, ep.redis_url, "saga-raw")
    topics = [unique(f"rawsaga.cmd{h}") for h in range(1, HOPS + 1)] + [unique("rawsaga.replies")]
    create_topics(kct, *topics)
    stop, results = ctx.Event(), ctx.Queue()
    child = ctx.Process(
        target=raw_hops,
        kwargs={
            "bootstrap": ep.kafka_bootstrap,
            "topics": topics,
            "stop": stop,
            "results": results,
        },
        name="bench-raw-hops",
    )
    child.start()
    driver = _RawDriver(ep.kafka_bootstrap, topics)
    try:
        ids = [f"c{n}-{uuid.uuid4().hex[:6]}" for n in range(sum(sizes))]
        progress("  baseline: the same phases with raw chains")
        return _phases(ids, sizes, concurrency, driver.start, driver.wait_for_ends)
    finally:
        stop.set()
        _report(results)
        child.join(timeout=30)
        driver.close()
        delete_topics(kct, *topics)
        kct.close()


def run_sagas(
    ep: Endpoints,
    sagas: int,
    progress: Callable[[str], None] = print,
    *,
    concurrency: int = 50,
) -> SagasResult:
    """Per variant: a warm-up, ``sagas`` at ``concurrency`` in flight, then a tenth alone."""
    sizes = (max(20, min(100, sagas // 10)), sagas, max(20, sagas // 10))
    kct = _measure_kct(ep, sizes, concurrency, progress)
    baseline, baseline_single = _measure_baseline(ep, sizes, concurrency, progress)
    return SagasResult(
        sagas=sagas,
        kct=kct["loaded"],
        kct_single=kct["single"],
        baseline=baseline,
        baseline_single=baseline_single,
        docs=kct["docs"],
        docs_single=kct["docs_single"],
        detail=kct["detail"],
    )


def sagas_section(result: SagasResult) -> Section:
    detail = result.detail
    problems = detail.get("invariant_problems") or []
    check = "held" if not problems else f"FAILED ({'; '.join(problems[:3])})"
    return Section(
        title="Choreographed saga vs the raw Kafka cost of its messages",
        head=list(SagasResult.headers),
        rows=result.rows(),
        notes=(
            f"Per variant, after a warm-up: {result.sagas} sagas kept {result.kct.in_flight} in "
            f"flight (throughput; latency under load), then {result.kct_single.latency.count} "
            "one at a time (latency), started by one driver thread. **kct**: the 3-step "
            "`OrderFulfillment` saga of `examples/order_fulfillment` without failures on fresh "
            "3-partition topics; the three participants on threads of one process, the "
            "saga-state projection in another, no watchdog; latency from before "
            "`SagaClient.start` until the driver reads `COMPLETED` from the saga's document in "
            "Redis (it looks after each of the runner's announcements). Per saga: "
            f"{MESSAGES_PER_SAGA} messages (1 `SagaStarted`, 3 commands, 3 replies) in "
            f"{TRANSACTIONS_PER_SAGA} Kafka transactions, 3 dedup lookups "
            "and 3 once-only Redis scripts in the participants, 4 read-model writes by the "
            "projection. **baseline**: raw confluent-kafka with the same 7 messages in 4 "
            "transactions per chain, the same layout and phases: a 2-record start transaction, "
            "then 3 hops (threads of one process), each consuming its topic as a group "
            "(read_committed, kct's consumer settings and poll pattern) and, per poll, "
            "producing the reply and the next command with the consumer offsets in one "
            "transaction (`send_offsets_to_transaction`); the driver itself consumes the "
            "replies and stops the clock at hop 3's reply. 256-byte opaque values, no headers, "
            "no Avro, no Redis. messages/s = sagas/s x 7. Under load, latency is mostly "
            "waiting: with a fixed number in flight it is about in-flight / throughput. The "
            "single driver thread spent "
            f"{result.kct.busy:.0%} (kct) and {result.baseline.busy:.0%} (baseline) of the "
            "loaded phase in start calls: starting sagas is part of what limits throughput. "
            f"kct reached {result.share:.0%} of the baseline's throughput; "
            f"{detail.get('completed', '?')} of {detail.get('sagas_total', '?')} sagas "
            f"completed; stock and money invariants {check}."
        ),
    )


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console

    from benchmarks.report import _table

    parser = argparse.ArgumentParser(prog="python -m benchmarks.sagas", description=__doc__)
    parser.add_argument("--sagas", type=int, default=1000, help="measured sagas per variant")
    parser.add_argument("--concurrency", type=int, default=50, help="sagas in flight")
    args = parser.parse_args(argv)
    console = Console(width=None if sys.stdout.isatty() else 160)
    console.print(f"[bold]sagas[/] ({args.sagas} per variant, {args.concurrency} in flight)")
    started = time.perf_counter()
    result = run_sagas(endpoints(), args.sagas, console.print, concurrency=args.concurrency)
    section = sagas_section(result)
    console.print(_table(section.title, section.head, section.rows))
    console.print(section.notes)
    console.print(f"wall time: {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
