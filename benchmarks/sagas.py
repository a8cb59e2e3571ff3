"""Saga throughput and latency, next to the raw Kafka cost of the same messages.

``python -m benchmarks.sagas [--sagas N] [--rate R] [--in-flight C] [--profile DIR]
[--retry-backoff-ms N] [--txn-probe]``

Both variants start sagas the same way: **in batches, one Kafka transaction per
batch** (``SagaClient.start_many`` for kct), holding every saga that is due
when the driver looks (at most :data:`MAX_START` per transaction). Two
measured phases per variant, after a warm-up:

* **max throughput** (closed loop): ``C`` sagas kept in flight; whenever some
  ended, the driver starts that many in one transaction. ``C`` is large enough
  that the participants, not the driver, set the pace: sagas/s is the ceiling.
* **open loop** at a fixed offered rate (default 500 sagas/s): saga ``i`` is
  due at ``t0 + i / rate``; the driver starts every due saga in one
  transaction, whatever is still running. Latency is measured **from the due
  time** (not from the start call), so a driver or a system that falls behind
  pays for it (no coordinated omission).

* **kct**: the 3-step ``OrderFulfillment`` saga of ``examples/order_fulfillment``
  (ReserveInventory -> ProcessPayment -> ConfirmOrder) on a fresh
  :class:`~examples.order_fulfillment.shop.Shop` (its own topics, 3
  partitions each), no failures (stock and wallets large enough). The three
  participants run in one child process each, as three services would
  (``max_batch`` = :data:`MAX_BATCH` commands per poll and transaction), the
  saga-state projection (a ProjectionRunner) in another. A saga ends when the saga-state
  read model (Redis) says ``COMPLETED``: the driver looks after each of the
  runner's announcements (Redis pub/sub) at the projection's ``totals``
  counter and, when it moved, at the status index (``status:<STATUS>``
  counter hashes, one ``HMGET`` of the sagas in flight). Per saga: 1
  ``SagaStarted`` + 3 commands + 3 replies = 7 messages, plus per command a
  dedup lookup and a once-only Redis script in the participant, and per
  message on the reply topic a read-model write by the runner.
* **baseline**: raw confluent-kafka, the same 7 messages per chain on fresh
  3-partition topics, the same process layout, the same driver and phases:
  a start transaction holds 2 records per due chain (``started`` to the reply
  topic, a command to hop 1); three hops, one child process each,
  consume their command topic as a group (read_committed, kct's consumer
  settings and poll pattern, :data:`MAX_BATCH` per poll) and, per poll, in
  one transaction produce a reply (and, for hops 1-2, the next command), add
  the consumer offsets with ``send_offsets_to_transaction`` and commit. The
  driver consumes the reply topic itself (read_committed); a chain ends when
  hop 3's reply arrives. Values are 256 opaque bytes, no headers, no Avro, no
  Redis: the floor for the Kafka work of a saga, not something kct could
  reach while keeping its guarantees.

``--profile DIR`` runs every kct service thread under cProfile and writes
``DIR/<role>.prof`` (slower than real: use it for shares, not rates).

Per hop (open loop): for kct, from each saga's state document
(``started_at_ms``, each step's ``execute_done_ms``: stamped when its
participant decided it, before that participant's transaction) and the driver's
due time and the moment it saw ``COMPLETED``; for the baseline, the moments
the driver's own read_committed consumer saw ``started`` and each hop's reply.
The participants' ``stats`` (printed when run alone) hold their committed
polls and the time spent deciding and in the transaction.

Transactional producers use librdkafka's ``retry.backoff.ms`` (100 ms), as kct
does; ``--retry-backoff-ms N`` sets another for both variants (kct: every
client, through ``kafka.extra``). ``--txn-probe`` only times back-to-back
transactions per ``retry.backoff.ms``: a transaction begun while the
coordinator still completes the previous commit is answered
CONCURRENT_TRANSACTIONS and retried after ``retry.backoff.ms``.
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import multiprocessing as mp
import os
import queue
import sys
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event
from typing import Any, Protocol

import redis
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
from benchmarks.machine import cpu_seconds_by_kind
from benchmarks.report import Section
from benchmarks.workers import raw_consumer_config
from examples.order_fulfillment.services import ACTIONS, PARTICIPANTS
from examples.order_fulfillment.shop import Shop
from toolkit.runtime.app import Kct
from toolkit.saga.state import TERMINAL, TOTALS_KEY, SagaStatus, status_key

MESSAGES_PER_SAGA = 7
HOPS = 3
VALUE_BYTES = 256
PLENTY = 10**12  # stock units and wallet cents: no saga fails for want of either
POLL_TIMEOUT = 0.1  # the participants' and hops' poll timeout (kct's default)
MAX_BATCH = 500  # commands per poll (and so per transaction), participants and hops alike
MAX_START = 500  # sagas per start transaction at most
RATE_TARGET = 1000.0  # sagas/s, max-throughput phase
SHARE_TARGET = 0.8  # of the raw baseline's max throughput
P99_TARGET_MS = 250.0  # open loop
OFFERED = 500.0  # sagas/s offered in the open-loop phase
CHECKED = 500  # the kct driver looks at the oldest this many sagas in flight (at least)
# --retry-backoff-ms, passed to the child processes (spawned) through their environment
RETRY_BACKOFF_ENV = "KCT_BENCH_SAGA_RETRY_BACKOFF_MS"
LIBRDKAFKA_RETRY_BACKOFF_MS = 100  # librdkafka's default retry.backoff.ms


@dataclass(frozen=True)
class Phase:
    """One measured phase: how many sagas, how fast, how long each took."""

    offered: float | None  # sagas/s offered (open loop); None: closed loop
    in_flight: int  # closed loop: sagas kept in flight; open loop: most seen
    seconds: float
    latency: Summary  # due (open) or start call (closed) -> end seen; errors = unfinished
    starts: Summary  # the start call alone (one transaction)
    per_start: float  # sagas per start transaction (mean)
    busy: float  # share of the phase the driver thread spent in start calls
    # CPU µs per saga (unit) by process kind over the phase, servers included
    cpu_us: dict[str, float] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.latency.count / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class SagasResult:
    sagas: int
    kct_max: Phase
    kct_open: Phase
    baseline_max: Phase
    baseline_open: Phase
    docs: Summary  # SagaStarted -> last reply in the state documents, open loop
    detail: dict[str, Any] = field(default_factory=dict)
    # open loop, per variant: hop label -> latency of that hop (see _kct_hops, _raw_hops)
    hops: dict[str, dict[str, Summary]] = field(default_factory=dict)

    headers = (
        "variant",
        "phase",
        "sagas",
        "seconds",
        "sagas/s",
        "per start txn",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "max ms",
        "unfinished",
    )

    def rows(self) -> list[list[str]]:
        def phase(p: Phase) -> str:
            if p.offered is None:
                return f"max, {p.in_flight} in flight"
            return f"open loop {p.offered:,.0f}/s"

        def row(label: str, p: Phase, s: Summary | None = None) -> list[str]:
            shown = s or p.latency
            whole = s is None
            return [
                label,
                phase(p) if whole else "",
                str(shown.count),
                f"{p.seconds:.1f}" if whole else "",
                f"{p.rate:,.0f}" if whole else "",
                f"{p.per_start:.1f}" if whole else "",
                *(f"{x:.1f}" for x in (shown.p50, shown.p95, shown.p99, shown.max)),
                str(shown.errors) if whole else "",
            ]

        kct = "kct: start -> COMPLETED in the saga-state read model"
        raw = "baseline: raw Kafka, the same 7 messages"
        return [
            row(kct, self.kct_max),
            row(
                "  of which SagaClient.start_many (1 transaction)",
                self.kct_max,
                self.kct_max.starts,
            ),
            row(raw, self.baseline_max),
            row(
                "  of which the start (1 transaction)", self.baseline_max, self.baseline_max.starts
            ),
            row(kct, self.kct_open),
            row("  of which SagaStarted -> last reply (state documents)", self.kct_open, self.docs),
            row(
                "  of which SagaClient.start_many (1 transaction)",
                self.kct_open,
                self.kct_open.starts,
            ),
            row(raw, self.baseline_open),
        ]

    @property
    def share(self) -> float:
        """kct's max throughput as a share of the baseline's."""
        return self.kct_max.rate / self.baseline_max.rate if self.baseline_max.rate else 0.0

    def verdicts(self) -> list[tuple[bool, str]]:
        d = self.detail
        clean = (
            not d.get("invariant_problems")
            and d.get("completed") == d.get("sagas_total")
            and self.kct_max.latency.errors == 0
        )
        openp = self.kct_open
        return [
            (
                self.kct_max.rate >= RATE_TARGET and clean,
                f"sagas >= {RATE_TARGET:,.0f}/s (max throughput, no failures): "
                f"{self.kct_max.rate:,.0f}/s, {d.get('completed', '?')} of "
                f"{d.get('sagas_total', '?')} completed",
            ),
            (
                self.share >= SHARE_TARGET and clean,
                f"sagas >= {SHARE_TARGET:.0%} of the raw baseline batching the same way: "
                f"{self.kct_max.rate:,.0f}/s vs {self.baseline_max.rate:,.0f}/s = {self.share:.0%}",
            ),
            (
                openp.latency.p99 < P99_TARGET_MS and openp.latency.errors == 0 and clean,
                f"saga p99 < {P99_TARGET_MS:g} ms at {openp.offered or 0:,.0f} sagas/s offered "
                f"(open loop): p50 {openp.latency.p50:.0f} ms, p99 {openp.latency.p99:.0f} ms "
                f"(baseline p99 {self.baseline_open.latency.p99:.0f} ms), "
                f"{openp.latency.errors} unfinished",
            ),
        ]


# -- child processes ---------------------------------------------------------------


def _run_member(member: Any, stop: Event, profile_to: str | None) -> None:
    if profile_to is None:
        member.run(stop)
        return
    profiler = cProfile.Profile()
    profiler.runcall(member.run, stop)
    profiler.dump_stats(profile_to)


def saga_services(
    *,
    bootstrap: str,
    redis_url: str,
    run_id: str,
    roles: list[str],
    stop: Event,
    results: Queue[dict[str, Any]],
    profile_dir: str | None = None,
) -> None:
    """Participants and/or the saga-state projection (``"state"``) of a Shop, until ``stop``."""
    kct = _saga_kct(bootstrap, redis_url, f"saga-{'-'.join(roles)}")
    shop = Shop(run_id=run_id)
    members: dict[str, Any] = {}
    for role in roles:
        if role == "state":
            members[role] = kct.saga_state_runner(shop.definitions, shop.state_projection)
        else:
            members[role] = kct.saga_participant(
                role,
                shop.definitions,
                ACTIONS[role],
                namespace=shop.namespace,
                max_batch=MAX_BATCH,
            )
    threads = [
        threading.Thread(
            target=_run_member,
            args=(m, stop, os.path.join(profile_dir, f"{r}.prof") if profile_dir else None),
            name=f"bench-{r}",
            daemon=True,
        )
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


def _retry_backoff_ms() -> int:
    """The transactional producers' ``retry.backoff.ms``: librdkafka's default, as
    kct's, unless ``--retry-backoff-ms`` set another (for both variants)."""
    chosen = os.environ.get(RETRY_BACKOFF_ENV)
    return int(chosen) if chosen else LIBRDKAFKA_RETRY_BACKOFF_MS


def _saga_kct(bootstrap: str, redis_url: str, role: str) -> Kct:
    """``make_kct``; with ``--retry-backoff-ms``, that value in ``kafka.extra`` of
    every client (as a kct.yaml would set it)."""
    kct = make_kct(bootstrap, redis_url, role)
    if not os.environ.get(RETRY_BACKOFF_ENV):
        return kct
    settings = kct.settings
    kct.close()
    extra = {**settings.kafka.extra, "retry.backoff.ms": _retry_backoff_ms()}
    kafka = settings.kafka.model_copy(update={"extra": extra})
    return Kct(dataclasses.replace(settings, kafka=kafka))


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
            "retry.backoff.ms": _retry_backoff_ms(),  # as kct's (librdkafka's default)
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
        messages = [m for m in _poll(consumer, MAX_BATCH, POLL_TIMEOUT) if m.error() is None]
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


def raw_hop(
    *, bootstrap: str, topics: list[str], hop: int, stop: Event, results: Queue[dict[str, Any]]
) -> None:
    """Hop ``hop`` of the baseline (one process, like a participant service), until ``stop``."""
    results.put({f"hop{hop}": _hop(bootstrap, topics, hop, f"{topics[HOPS]}.hop{hop}", stop)})


# -- the driver ----------------------------------------------------------------------


class _Driver(Protocol):
    def start(self, units: list[str]) -> None:
        """Start ``units`` in one transaction."""
        ...

    def ends(self, inflight: dict[str, float], timeout: float) -> list[str]:
        """Those of ``inflight`` that ended, waiting at most about ``timeout``."""
        ...


class _Phase:
    """Starts units in batches (one transaction each) and times them to their end."""

    def __init__(self, driver: _Driver, timeout: float) -> None:
        self.driver = driver
        self.timeout = timeout
        self.inflight: dict[str, float] = {}
        self.latencies: list[float] = []
        self.starts: list[float] = []
        self.batches: list[int] = []
        self.most = 0
        # epoch ms of each unit's due time and of the moment the driver saw it end
        self.epoch = time.time() - time.perf_counter()
        self.due_ms: dict[str, float] = {}
        self.seen_ms: dict[str, float] = {}

    def _start(self, units: list[str], due: list[float]) -> None:
        began = time.perf_counter()
        for unit, at in zip(units, due, strict=True):
            self.inflight[unit] = at if at else began
            self.due_ms[unit] = (self.epoch + self.inflight[unit]) * 1000
        self.driver.start(units)
        self.starts.append((time.perf_counter() - began) * 1000)
        self.batches.append(len(units))
        self.most = max(self.most, len(self.inflight))

    def _collect(self, timeout: float) -> None:
        for unit in self.driver.ends(self.inflight, timeout):
            now = time.perf_counter()
            self.latencies.append((now - self.inflight.pop(unit)) * 1000)
            self.seen_ms[unit] = (self.epoch + now) * 1000

    def closed(self, ids: list[str], in_flight: int) -> tuple[float, int]:
        """Keep ``in_flight`` running; returns (seconds, unfinished)."""
        at, begun = 0, time.perf_counter()
        deadline = begun + self.timeout
        while (at < len(ids) or self.inflight) and time.perf_counter() < deadline:
            free = min(in_flight - len(self.inflight), len(ids) - at, MAX_START)
            if free > 0:
                self._start(ids[at : at + free], [0.0] * free)
                at += free
            self._collect(0.02)
        return time.perf_counter() - begun, len(ids) - at + len(self.inflight)

    def open(self, ids: list[str], rate: float) -> tuple[float, int]:
        """Start saga ``i`` at ``t0 + i / rate`` (every due one in one transaction)."""
        at, begun = 0, time.perf_counter()
        deadline = begun + len(ids) / rate + self.timeout
        while (at < len(ids) or self.inflight) and time.perf_counter() < deadline:
            now = time.perf_counter()
            due = min(len(ids), int((now - begun) * rate) + 1, at + MAX_START)
            if due > at:
                self._start(ids[at:due], [begun + i / rate for i in range(at, due)])
                at = due
            wait = begun + at / rate - time.perf_counter() if at < len(ids) else 0.02
            self._collect(min(0.02, max(0.001, wait)))
        return time.perf_counter() - begun, len(ids) - at + len(self.inflight)

    def result(self, offered: float | None, in_flight: int, took: tuple[float, int]) -> Phase:
        seconds, unfinished = took
        spent = sum(self.starts) / 1000
        return Phase(
            offered,
            in_flight if offered is None else self.most,
            seconds,
            Summary.of(self.latencies, unfinished),
            Summary.of(self.starts),
            sum(self.batches) / len(self.batches) if self.batches else 0.0,
            spent / seconds if seconds > 0 else 0.0,
        )


@dataclass(frozen=True)
class Sizes:
    warmup: int
    sagas: int  # max-throughput phase
    in_flight: int
    rate: float  # open loop, sagas/s offered
    open_sagas: int

    @property
    def total(self) -> int:
        return self.warmup + self.sagas + self.open_sagas


# (epoch ms due, epoch ms the driver saw it end) per unit of the open-loop phase
Marks = dict[str, tuple[float, float]]


def _phases(ids: list[str], sizes: Sizes, driver: _Driver) -> tuple[Phase, Phase, Marks]:
    """Warm-up (not measured), max throughput (closed loop), open loop."""
    warm = ids[: sizes.warmup]
    loaded = ids[sizes.warmup : sizes.warmup + sizes.sagas]
    opened = ids[sizes.warmup + sizes.sagas :]
    _Phase(driver, 120).closed(warm, min(sizes.in_flight, 100))
    most = _Phase(driver, max(60.0, sizes.sagas / 20))
    before = cpu_seconds_by_kind()
    took = most.closed(loaded, sizes.in_flight)
    after = cpu_seconds_by_kind()
    ended = max(1, len(most.latencies))
    spent = {k: (v - before.get(k, 0.0)) * 1e6 / ended for k, v in after.items()}
    fastest = replace(
        most.result(None, sizes.in_flight, took),
        cpu_us={k: v for k, v in sorted(spent.items()) if v >= 1.0},
    )
    steady = _Phase(driver, 30.0)
    result = steady.result(sizes.rate, 0, steady.open(opened, sizes.rate))
    marks = {u: (steady.due_ms[u], seen) for u, seen in steady.seen_ms.items()}
    return fastest, result, marks


def _kct_hops(docs: Mapping[str, Mapping[str, Any]], marks: Marks) -> dict[str, Summary]:
    """Open loop, per completed saga: where its time went, from the state document's
    stamps (``started_at_ms``; each step's ``execute_done_ms``, stamped when the
    participant decided it, before its transaction commits) and the driver's marks."""
    hops: dict[str, list[float]] = defaultdict(list)
    for unit, (due, seen) in marks.items():
        doc = docs.get(unit)
        if doc is None or doc["status"] != SagaStatus.COMPLETED.value:
            continue
        stamps = [
            ("due -> SagaStarted stamped (driver)", float(doc["started_at_ms"])),
            *(
                (f"-> step {n} {s['name']} decided", float(s["execute_done_ms"]))
                for n, s in enumerate(doc["steps"], 1)
            ),
            ("-> driver sees COMPLETED", seen),
        ]
        before = due
        for label, at in stamps:
            hops[label].append(at - before)
            before = at
    return {label: Summary.of(samples) for label, samples in hops.items()}


def _raw_hops(visible: Mapping[str, list[float]], marks: Marks) -> dict[str, Summary]:
    """Open loop, per chain: when the driver's own read_committed consumer saw
    ``started`` and each hop's reply (epoch ms), from the due time."""
    hops: dict[str, list[float]] = defaultdict(list)
    labels = ["due -> started visible (start txn)"] + [
        f"-> hop {h} reply visible" for h in range(1, HOPS + 1)
    ]
    for unit, (due, _) in marks.items():
        seen = visible.get(unit, [])
        if len(seen) != len(labels):
            continue
        before = due
        for label, at in zip(labels, seen, strict=True):
            hops[label].append(at - before)
            before = at
    return {label: Summary.of(samples) for label, samples in hops.items()}


class _KctDriver:
    def __init__(self, kct: Kct, shop: Shop, orders: dict[str, dict[str, str]], url: str) -> None:
        self.kct, self.shop, self.orders = kct, shop, orders
        self.client = kct.saga_client(shop.definitions, shop.state_projection)
        self.listener = kct.listener
        self.version = self.listener.version
        self.behind = False  # sagas ended in the read model that the driver has not seen
        self.ended: dict[str, str] = {}
        self.redis = redis.Redis.from_url(url)
        # RedisReadModelStore's layout: counter hashes at kct:rm:{<projection>}:c:<key>.
        prefix = f"kct:rm:{{{shop.state_projection}}}:c:"
        self.indexes = [(s.value, f"{prefix}{status_key(s.value)}") for s in TERMINAL]

    def start(self, units: list[str]) -> None:
        self.client.start_many([("OrderFulfillment", self.orders[u], u) for u in units])

    def ends(self, inflight: dict[str, float], timeout: float) -> list[str]:
        version = self.listener.wait_for_update(self.version, timeout)
        if version == self.version and not self.behind:
            return []
        self.version = version
        totals = sum(self.kct.store.counters(self.shop.state_projection, TOTALS_KEY).values())
        behind = totals - len(self.ended)  # ended in the read model, not seen here yet
        if behind <= 0 or not inflight:
            self.behind = False
            return []
        # Sagas end about in start order: look at the oldest ones (a few times as many
        # as ended unseen), so the driver's own cost stays small with thousands in flight.
        units = list(inflight)[: max(CHECKED, 4 * behind)]
        pipe = self.redis.pipeline(transaction=False)
        for _, index in self.indexes:
            pipe.hmget(index, units)
        found = []
        for (status, _), values in zip(self.indexes, pipe.execute(), strict=True):
            for unit, value in zip(units, values, strict=True):
                if value is not None and int(value) > 0:
                    found.append(unit)
                    self.ended[unit] = status
        self.behind = behind > len(found)
        return found

    def documents(self, units: list[str]) -> dict[str, dict[str, Any]]:
        """The state documents of ``units`` (after the run)."""
        return {u: doc for u in units if (doc := self.client.status(u)) is not None}


class _RawDriver:
    def __init__(self, bootstrap: str, topics: list[str]) -> None:
        self.topics = topics
        self.producer = _hop_producer(bootstrap)
        self.consumer = Consumer(raw_consumer_config(bootstrap, f"{topics[HOPS]}.driver"))
        self.consumer.subscribe([topics[HOPS]])
        self.padding = b"x" * VALUE_BYTES
        self.final = f"|r{HOPS}|".encode()
        # epoch ms at which this read_committed consumer saw each chain's started, r1.. rN
        self.visible: dict[str, list[float]] = defaultdict(list)

    def start(self, units: list[str]) -> None:
        self.producer.begin_transaction()
        for chain in units:
            key = chain.encode()
            value = (key + b"|" + self.padding)[:VALUE_BYTES]
            self.producer.produce(self.topics[HOPS], key + b"|started|", key)
            self.producer.produce(self.topics[0], value, key)
        self.producer.commit_transaction(10)

    def ends(self, inflight: dict[str, float], timeout: float) -> list[str]:
        ended = []
        messages = _poll(self.consumer, MAX_BATCH, timeout)
        now = time.time() * 1000
        for message in messages:
            value = message.value()
            if message.error() is None and value is not None:
                chain, _, rest = value.partition(b"|")
                unit = chain.decode()
                if unit in inflight:
                    self.visible[unit].append(now)
                    if (b"|" + rest).startswith(self.final):
                        ended.append(unit)
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


def _measure_kct(
    ep: Endpoints, sizes: Sizes, progress: Callable[[str], None], profile_dir: str | None
) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    kct = _saga_kct(ep.kafka_bootstrap, ep.redis_url, "saga-driver")
    shop = _big_shop()
    shop.prepare(kct, partitions=PARTITIONS)
    stop, results = ctx.Event(), ctx.Queue()
    layout = [[p] for p in PARTICIPANTS] + [["state"]]  # one process per service
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
                "profile_dir": profile_dir,
            },
            name=f"bench-saga-{'-'.join(roles)}",
        )
        for roles in layout
    ]
    for child in children:
        child.start()
    try:
        orders = {saga_id: context for _, context, saga_id in shop.orders(sizes.total, 0.0)}
        ids = list(orders)
        driver = _KctDriver(kct, shop, orders, ep.redis_url)
        progress(
            f"  kct: {sizes.warmup} warm-up, {sizes.sagas} at {sizes.in_flight} in flight, "
            f"{sizes.open_sagas} at {sizes.rate:,.0f}/s"
        )
        fastest, steady, marks = _phases(ids, sizes, driver)
        docs = driver.documents(ids)
        problems = shop.invariants(kct, docs)
    finally:
        stop.set()
        stats = [_report(results) for _ in children]
        for child in children:
            child.join(timeout=30)
        delete_topics(kct, *(t for d in shop.definitions.values() for t in d.topics))
        for name in (shop.state_projection, *(shop.read_model(p) for p in PARTICIPANTS)):
            kct.store.reset(name)
        kct.close()

    opened = [docs[i] for i in ids[sizes.warmup + sizes.sagas :] if i in docs]
    completed = sum(d["status"] == SagaStatus.COMPLETED.value for d in docs.values())
    return {
        "max": fastest,
        "open": steady,
        "docs": Summary.of([float(d["updated_at_ms"] - d["started_at_ms"]) for d in opened]),
        "hops": _kct_hops(docs, marks),
        "detail": {
            "sagas_total": len(ids),
            "completed": completed,
            "invariant_problems": problems,
            "services": stats,
        },
    }


def _measure_baseline(
    ep: Endpoints, sizes: Sizes, progress: Callable[[str], None]
) -> tuple[Phase, Phase, dict[str, Summary]]:
    ctx = mp.get_context("spawn")
    kct = make_kct(ep.kafka_bootstrap, ep.redis_url, "saga-raw")
    topics = [unique(f"rawsaga.cmd{h}") for h in range(1, HOPS + 1)] + [unique("rawsaga.replies")]
    create_topics(kct, *topics)
    stop, results = ctx.Event(), ctx.Queue()
    children = [
        ctx.Process(
            target=raw_hop,
            kwargs={
                "bootstrap": ep.kafka_bootstrap,
                "topics": topics,
                "hop": hop,
                "stop": stop,
                "results": results,
            },
            name=f"bench-raw-hop{hop}",
        )
        for hop in range(1, HOPS + 1)
    ]
    for child in children:
        child.start()
    driver = _RawDriver(ep.kafka_bootstrap, topics)
    try:
        ids = [f"c{n}-{uuid.uuid4().hex[:6]}" for n in range(sizes.total)]
        progress("  baseline: the same phases with raw chains")
        fastest, steady, marks = _phases(ids, sizes, driver)
        return fastest, steady, _raw_hops(driver.visible, marks)
    finally:
        stop.set()
        for _ in children:
            _report(results)
        for child in children:
            child.join(timeout=30)
        driver.close()
        delete_topics(kct, *topics)
        kct.close()


def run_sagas(
    ep: Endpoints,
    sagas: int,
    progress: Callable[[str], None] = print,
    *,
    in_flight: int = 2000,
    rate: float = OFFERED,
    open_sagas: int | None = None,
    profile_dir: str | None = None,
) -> SagasResult:
    """Per variant: a warm-up, ``sagas`` at ``in_flight`` (max throughput), then
    ``open_sagas`` (default: as many) offered at ``rate`` sagas/s (open loop)."""
    sizes = Sizes(
        warmup=max(50, min(200, sagas // 10)),
        sagas=sagas,
        in_flight=in_flight,
        rate=rate,
        open_sagas=open_sagas if open_sagas is not None else sagas,
    )
    kct = _measure_kct(ep, sizes, progress, profile_dir)
    baseline_max, baseline_open, raw_hops = _measure_baseline(ep, sizes, progress)
    return SagasResult(
        sagas=sagas,
        kct_max=kct["max"],
        kct_open=kct["open"],
        baseline_max=baseline_max,
        baseline_open=baseline_open,
        docs=kct["docs"],
        detail=kct["detail"],
        hops={"kct": kct["hops"], "baseline": raw_hops},
    )


def sagas_section(result: SagasResult) -> Section:
    detail = result.detail
    problems = detail.get("invariant_problems") or []
    check = "held" if not problems else f"FAILED ({'; '.join(problems[:3])})"
    verdicts = " ".join(f"**{'PASS' if ok else 'FAIL'}** {text}." for ok, text in result.verdicts())
    km, bm = result.kct_max, result.baseline_max
    return Section(
        title="Choreographed saga vs the raw Kafka cost of its messages",
        head=list(SagasResult.headers),
        rows=result.rows(),
        notes=(
            "Both variants start sagas in batches, one Kafka transaction per batch holding "
            f"every saga due (at most {MAX_START}): kct with `SagaClient.start_many`, the "
            "baseline with 2 records per chain. Per variant, after a warm-up: **max** "
            f"throughput, {result.sagas} sagas with {km.in_flight} kept in flight (closed "
            "loop: whenever some ended, that many start; latency from the start call), then "
            f"**open loop**, {result.kct_open.latency.count + result.kct_open.latency.errors} "
            f"sagas offered at {result.kct_open.offered or 0:,.0f}/s (saga i due at "
            "t0 + i/rate, every due one started in one transaction; latency from the due "
            "time, so falling behind counts). **kct**: the 3-step `OrderFulfillment` saga of "
            "`examples/order_fulfillment` without failures on fresh 3-partition topics; the "
            "three participants in one process each (three services) "
            f"(`max_batch={MAX_BATCH}` commands per poll and transaction), the saga-state "
            "projection in another, no watchdog; a saga ends when the driver sees it "
            "`COMPLETED` in the saga-state read model (Redis; it looks after each of the "
            "runner's announcements). Per saga: "
            f"{MESSAGES_PER_SAGA} messages (1 `SagaStarted`, 3 commands, 3 replies), 3 "
            "dedup lookups and 3 once-only Redis scripts in the participants, 4 read-model "
            "writes by the projection. **baseline**: raw confluent-kafka with the same 7 "
            "messages per chain, the same layout, driver and phases: 3 hops (one process "
            f"each), each consuming its topic as a group ({MAX_BATCH} per poll, "
            "read_committed, kct's consumer settings and poll pattern) and, per poll, "
            "producing the replies and next commands with the consumer offsets in one "
            "transaction (`send_offsets_to_transaction`); the driver consumes the replies "
            "and stops the clock at hop 3's reply. 256-byte opaque values, no headers, no "
            "Avro, no Redis. In the max phase the driver thread spent "
            f"{km.busy:.0%} (kct) and {bm.busy:.0%} (baseline) of the time in start calls. "
            f"{detail.get('completed', '?')} of {detail.get('sagas_total', '?')} kct sagas "
            f"completed; stock and money invariants {check}. Both variants' transactional "
            f"producers use `retry.backoff.ms={_retry_backoff_ms()}`. "
            f"{_cpu_note(result)}{_hops_note(result)}{verdicts}"
        ),
    )


def _cpu_note(result: SagasResult) -> str:
    """Where the max phase's CPU went, per saga, by process kind (servers included)."""
    parts = []
    for label, phase in (("kct", result.kct_max), ("baseline", result.baseline_max)):
        if phase.cpu_us:
            total = sum(phase.cpu_us.values())
            shown = ", ".join(f"{k} {v:,.0f}" for k, v in phase.cpu_us.items())
            parts.append(f"{label} {total:,.0f} ({shown})")
    if not parts:
        return ""
    return (
        "CPU per saga in the max phase, µs, every process on the machine by kind "
        f"(2 cores = 2,000,000 µs per second): {'; '.join(parts)}. "
    )


def _hops_note(result: SagasResult) -> str:
    """Open loop, per hop, p50 / p99 ms (see ``_kct_hops`` and ``_raw_hops``)."""
    parts = []
    for variant, hops in result.hops.items():
        shown = "; ".join(f"{label} {h.p50:.0f} / {h.p99:.0f}" for label, h in hops.items())
        parts.append(f"{variant}: {shown}")
    return f"Open loop per hop, p50 / p99 ms: {'. '.join(parts)}. " if parts else ""


def probe_back_to_back(
    ep: Endpoints, backoffs: tuple[int, ...] = (100, 10, 5, 2), transactions: int = 200
) -> dict[int, tuple[Summary, Summary]]:
    """Back-to-back transactions (20 records, the offsets of a group, commit; the next
    begins at once), as a busy participant or hop runs them, per ``retry.backoff.ms``:
    (send_offsets_to_transaction, whole transaction) latencies. While the coordinator
    still writes the last commit's markers it answers CONCURRENT_TRANSACTIONS and the
    client retries after ``retry.backoff.ms``."""
    kct = make_kct(ep.kafka_bootstrap, ep.redis_url, "saga-probe")
    topics = [unique("txnprobe.out"), unique("txnprobe.src")]
    create_topics(kct, *topics)
    source = Consumer(raw_consumer_config(ep.kafka_bootstrap, topics[1]))
    source.subscribe([topics[1]])
    deadline = time.monotonic() + 30
    while not source.assignment() and time.monotonic() < deadline:
        source.poll(0.1)
    found: dict[int, tuple[Summary, Summary]] = {}
    try:
        for backoff in backoffs:
            os.environ[RETRY_BACKOFF_ENV] = str(backoff)
            producer = _hop_producer(ep.kafka_bootstrap)
            offsets_ms, whole_ms = [], []
            for n in range(transactions):
                began = time.perf_counter()
                producer.begin_transaction()
                for j in range(20):
                    producer.produce(topics[0], b"x" * VALUE_BYTES, partition=j % PARTITIONS)
                produced = time.perf_counter()
                wanted = [KafkaTopicPartition(topics[1], p, n) for p in range(PARTITIONS)]
                producer.send_offsets_to_transaction(wanted, source.consumer_group_metadata(), 10)
                offsets_ms.append((time.perf_counter() - produced) * 1000)
                producer.commit_transaction(10)
                whole_ms.append((time.perf_counter() - began) * 1000)
            producer.flush(5)
            skip = transactions // 10  # warm-up
            found[backoff] = (Summary.of(offsets_ms[skip:]), Summary.of(whole_ms[skip:]))
    finally:
        os.environ.pop(RETRY_BACKOFF_ENV, None)
        source.close()
        delete_topics(kct, *topics)
        kct.close()
    return found


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console

    from benchmarks.report import _table

    parser = argparse.ArgumentParser(prog="python -m benchmarks.sagas", description=__doc__)
    parser.add_argument("--sagas", type=int, default=5000, help="sagas in the max phase")
    parser.add_argument("--in-flight", type=int, default=2000, help="max phase: sagas in flight")
    parser.add_argument("--rate", type=float, default=OFFERED, help="open loop: sagas/s offered")
    parser.add_argument("--open-sagas", type=int, default=None, help="open loop: sagas")
    parser.add_argument("--profile", metavar="DIR", help="cProfile the kct services into DIR")
    parser.add_argument(
        "--retry-backoff-ms",
        type=int,
        help="transactional producers' retry.backoff.ms, kct (kafka.extra) and baseline alike "
        "(default: librdkafka's, 100)",
    )
    parser.add_argument(
        "--txn-probe",
        action="store_true",
        help="only time back-to-back transactions per retry.backoff.ms (100, 10, 5, 2)",
    )
    args = parser.parse_args(argv)
    if args.txn_probe:
        for backoff, (offsets, whole) in probe_back_to_back(endpoints()).items():
            print(
                f"retry.backoff.ms={backoff:>3}: send_offsets p50 {offsets.p50:6.1f} "
                f"p99 {offsets.p99:6.1f} ms; transaction p50 {whole.p50:6.1f} "
                f"p99 {whole.p99:6.1f} ms ({whole.count} back-to-back)"
            )
        return 0
    if args.retry_backoff_ms is not None:
        os.environ[RETRY_BACKOFF_ENV] = str(args.retry_backoff_ms)
    console = Console(width=None if sys.stdout.isatty() else 160)
    console.print(f"[bold]sagas[/] ({args.sagas} in the max phase, {args.rate:g}/s open loop)")
    started = time.perf_counter()
    if args.profile:
        os.makedirs(args.profile, exist_ok=True)
    result = run_sagas(
        endpoints(),
        args.sagas,
        console.print,
        in_flight=args.in_flight,
        rate=args.rate,
        open_sagas=args.open_sagas,
        profile_dir=args.profile,
    )
    section = sagas_section(result)
    console.print(_table(section.title, section.head, section.rows))
    console.print(section.notes)
    for variant, hops in result.hops.items():
        console.print(f"open loop, {variant}, per hop (ms): p50 / p95 / p99 / mean")
        for label, h in hops.items():
            console.print(f"  {label:<40} {h.p50:7.1f} {h.p95:7.1f} {h.p99:7.1f} {h.mean:7.1f}")
    for role, stats in enumerate(result.detail.get("services", [])):
        console.print(f"service {role}: {stats}")
    console.print(f"wall time: {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
