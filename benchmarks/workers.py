"""Entry points of the benchmark's child processes (started with ``spawn``).

Every consumer runs in its own process so it never shares the GIL with the
writer or the waiter being timed. Results travel back over multiprocessing
queues and pipes; nothing is cached between runs.
"""

from __future__ import annotations

import cProfile
import io
import pstats
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event
from typing import Any

from confluent_kafka import Consumer

from benchmarks.common import PLACED, make_kct
from benchmarks.handwritten import hand_written
from connectors.kafka import KafkaRecordConsumer, KafkaSettings
from tests.balances import balances
from tests.order_stats import order_stats
from toolkit.dead_letter import DeadLetterQueue
from toolkit.projection import ProjectionRunner
from toolkit.reader import EventReader
from toolkit.runtime.gc_tuning import tune_gc

# Floor consumers use the settings KafkaRecordConsumer uses (connectors/kafka/consumer.py).
FLOOR_POLL_TIMEOUT = 0.1
# Modes whose process runs with kct's GC tuning, as `kct sidecar` runs its loops
# (toolkit/runtime/gc_tuning.py); ``hand_alo_gc`` shows what it gives the baseline.
GC_TUNED = frozenset({"runner", "hand_alo_gc"})


def raw_consumer_config(bootstrap: str, group: str) -> dict[str, Any]:
    return {
        "bootstrap.servers": bootstrap,
        "client.id": "kct-bench-raw",
        "group.id": group,
        "auto.offset.reset": "earliest",
        "session.timeout.ms": 10_000,
        "fetch.wait.max.ms": 50,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "isolation.level": "read_committed",
    }


def _profiled(enabled: bool, body: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    if not enabled:
        return body()
    profiler = cProfile.Profile()
    result = profiler.runcall(body)
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(22)
    stats.sort_stats("cumulative").print_stats(30)
    result["profile"] = out.getvalue()
    return result


# -- latency ---------------------------------------------------------------------


def projection_runner(
    *,
    bootstrap: str,
    redis_url: str,
    topic: str,
    name: str,
    max_batch: int,
    stop: Event,
    results: Queue[dict[str, Any]],
    profile: bool,
    read_model: str = "order_stats",
) -> None:
    """A kct ProjectionRunner, until ``stop``; reports its stats."""
    kct = make_kct(bootstrap, redis_url, "runner")
    projection = balances(name, topic) if read_model == "balances" else order_stats(name, [topic])
    runner = kct.runner(projection, max_batch=max_batch)
    tune_gc()

    def body() -> dict[str, Any]:
        runner.run(stop)  # type: ignore[arg-type]  # duck-typed: only is_set() is used
        return {}

    result = _profiled(profile, body)
    runner.close()
    kct.close()
    stats = runner.stats
    result.update(applied=stats.applied, batches=stats.batches, errors=stats.handler_errors)
    results.put(result)


def floor_consumer(
    *, bootstrap: str, topic: str, group: str, conn: Connection, stop: Event, batch: bool
) -> None:
    """Raw consumer: sends (send_ns, receive_ns) for each record back to the writer.

    ``batch=False`` reads with ``Consumer.poll`` (returns on the first record);
    ``batch=True`` with ``Consumer.consume(500, 0.1)``, the call kct's
    KafkaRecordConsumer makes.
    """
    consumer = Consumer(raw_consumer_config(bootstrap, group))
    consumer.subscribe([topic])
    while not stop.is_set():
        if batch:
            messages = consumer.consume(num_messages=500, timeout=FLOOR_POLL_TIMEOUT)
        else:
            message = consumer.poll(FLOOR_POLL_TIMEOUT)
            messages = [] if message is None else [message]
        received = time.time_ns()
        for message in messages:
            value = message.value()
            if message.error() is None and value is not None:
                conn.send((int(value), received))
    consumer.close()


# -- throughput ------------------------------------------------------------------


def throughput(
    *,
    mode: str,
    bootstrap: str,
    redis_url: str,
    topic: str,
    group: str,
    expected: int,
    max_batch: int,
    results: Queue[dict[str, Any]],
    profile: bool,
) -> None:
    """Read ``expected`` events of ``topic`` as a fresh group; report the elapsed time.

    Modes: ``runner`` (kct ProjectionRunner: decode, apply, store, commit,
    announce), ``hand_alo``/``hand_eo`` (the hand-written at-least-once and
    effectively-once projections of ``benchmarks/handwritten.py``;
    ``hand_alo_gc`` the first with kct's GC tuning), ``raw``
    (confluent-kafka consume, no decode), ``raw_avro``
    (raw consume + kct's Avro codec on each value), ``reader`` (kct's
    EventReader: consume + envelope and Avro decode, nothing applied).
    The clock starts right before the consumer is created (group join
    included), everything else (schemas, Redis clients, producer) is built first.
    """
    kct = make_kct(bootstrap, redis_url, f"tp-{mode}")
    codec, _store, _notifier, _clock, producer = (
        kct.codec,
        kct.store,
        kct.notifier,
        kct.clock,
        kct.producer,
    )
    deadline = time.monotonic() + 600

    def run_runner() -> dict[str, Any]:
        runner = kct.runner(order_stats(group, [topic]), max_batch=max_batch)
        while runner.stats.applied + runner.stats.handler_errors < expected:
            runner.run_once()
            if time.monotonic() > deadline:
                break
        runner.flush()  # the last full batch's store step and commit, if still in flight
        done = time.perf_counter()
        stats = runner.stats
        runner.close()
        return {
            "done": done,
            "count": stats.applied,
            "batches": stats.batches,
            "commit_failures": stats.commit_failures,
        }

    def run_raw(decode: bool) -> dict[str, Any]:
        consumer = Consumer(raw_consumer_config(bootstrap, group))
        consumer.subscribe([topic])
        count = 0
        while count < expected and time.monotonic() < deadline:
            for message in consumer.consume(num_messages=max_batch, timeout=0.1):
                if message.error() is not None:
                    continue
                if decode:
                    headers: Any = dict(message.headers() or [])
                    codec.decode(message.value() or b"", headers["schema"].decode())
                count += 1
        done = time.perf_counter()
        consumer.close()
        return {"done": done, "count": count}

    def run_reader() -> dict[str, Any]:
        consumer = KafkaRecordConsumer(KafkaSettings(bootstrap_servers=bootstrap), group)
        reader = EventReader(consumer, codec, DeadLetterQueue(producer, group), kct.clock)
        reader.subscribe([topic])
        count = 0
        while count < expected and time.monotonic() < deadline:
            count += len(reader.poll(max_batch, 0.1))
        done = time.perf_counter()
        reader.close()
        return {"done": done, "count": count}

    writer_schema = kct.codec.registry.current(PLACED)
    schemas = {writer_schema.ref: writer_schema.parsed}

    def run_hand(effectively_once: bool) -> dict[str, Any]:
        return hand_written(
            consumer_config=raw_consumer_config(bootstrap, group),
            redis_url=redis_url,
            schemas=schemas,
            topic=topic,
            projection=group,
            expected=expected,
            max_batch=max_batch,
            effectively_once=effectively_once,
            deadline=deadline,
        )

    bodies: dict[str, Callable[[], dict[str, Any]]] = {
        "runner": run_runner,
        "hand_alo": lambda: run_hand(effectively_once=False),
        "hand_alo_gc": lambda: run_hand(effectively_once=False),
        "hand_eo": lambda: run_hand(effectively_once=True),
        "raw": lambda: run_raw(decode=False),
        "raw_avro": lambda: run_raw(decode=True),
        "reader": run_reader,
    }
    if mode in GC_TUNED:
        tune_gc()
    started = time.perf_counter()
    result = _profiled(profile, bodies[mode])
    result["seconds"] = result.pop("done") - started
    kct.close()
    results.put(result)


def throughput_member(
    *,
    bootstrap: str,
    redis_url: str,
    topic: str,
    group: str,
    end: list[int],
    max_batch: int,
    stored: Any,
    finished: Any,
    ready: Any,
    results: Queue[dict[str, Any]],
) -> None:
    """One of several ProjectionRunner processes in one group (scale-out row).

    ``stored`` (shared array, one slot per partition, under its lock) holds the
    highest offset any member has stored; ``finished`` is set by the member
    whose store completed the topic (every partition at ``end``). That member's
    clock stops when its run cycle returns (it committed synchronously); every
    member's clock starts after ``ready`` (a barrier), before its consumer is
    created. Times use ``time.monotonic`` (CLOCK_MONOTONIC: one clock for all
    processes of the machine).

    ``heartbeat.interval.ms`` is 100 (librdkafka's default: 3000): a member
    learns of a rebalance from its heartbeat, so with the default the member
    that joined first would read the whole topic before the second one got
    partitions. The run includes the group join and that one rebalance.
    """
    kct = make_kct(bootstrap, redis_url, "tp-member")
    _warm = (kct.codec, kct.store, kct.notifier, kct.clock, kct.producer, kct.resolver)
    # Kct.runner's wiring, with the heartbeat setting on the consumer only.
    member_kafka = kct.settings.kafka.model_copy(update={"extra": {"heartbeat.interval.ms": 100}})
    completed_here = False

    def after_store(offsets: Any) -> None:
        nonlocal completed_here
        with stored.get_lock():
            for tp, offset in offsets.items():
                stored[tp.partition] = max(stored[tp.partition], offset)
            if not finished.value and all(stored[p] >= o for p, o in enumerate(end)):
                finished.value = 1
                completed_here = True

    tune_gc()
    ready.wait(timeout=120)
    started = time.monotonic()
    runner = ProjectionRunner(
        order_stats(group, [topic]),
        KafkaRecordConsumer(member_kafka, group),
        kct.codec,
        kct.store,
        DeadLetterQueue(kct.producer, group),
        notifier=kct.notifier,
        clock=kct.clock,
        max_batch=max_batch,
        after_store=after_store,
        resolver=kct.resolver,
    )
    deadline = started + 600
    done = None
    while not finished.value and time.monotonic() < deadline:
        runner.run_once()
        if completed_here:
            done = time.monotonic()
    stats = runner.stats
    runner.close()
    kct.close()
    results.put(
        {
            "started": started,
            "done": done,
            "applied": stats.applied,
            "batches": stats.batches,
            "ownership_lost": stats.ownership_lost,
        }
    )
