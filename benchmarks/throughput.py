"""Projection throughput: a kct ProjectionRunner vs a raw consumer on the same topic.

One 3-partition topic is pre-loaded with M Avro ``OrderPlaced`` events
(through kct's publisher, ``publish_all`` in chunks). Then, one fresh
consumer group per run, each in its own process, reads all of it:

* ``raw``: confluent-kafka ``Consumer.consume`` with kct's consumer
  settings, no decoding: the floor;
* ``runner``: a kct ProjectionRunner applying every event to Redis, the
  offsets stored with the data and committed to Kafka. Its clock stops when
  the run cycle that applied the last event returned (that cycle committed
  synchronously); the harness then checks with the admin API that the
  group's committed offsets equal the topic's end offsets;
* ``raw_avro`` and ``reader`` (diagnostics, at the runner's best
  ``max_batch``): raw consume + kct's Avro codec per value, and kct's
  EventReader (record conversion + envelope and Avro decode), nothing
  applied: where the time between ``raw`` and ``runner`` goes.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from benchmarks import workers
from benchmarks.common import (
    Endpoints,
    create_topics,
    delete_topics,
    make_kct,
    placed_event,
    unique,
)

CHUNK = 1000
MEMBERS = 2  # runner processes of the scale-out row (the machine has 2 cores)


@dataclass(frozen=True)
class Run:
    mode: str
    max_batch: int
    count: int
    seconds: float
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.count / self.seconds if self.seconds > 0 else 0.0


@dataclass
class ThroughputResult:
    events: int
    preload_seconds: float
    runs: list[Run]  # one per (mode, max_batch): the median repetition
    reps: int
    # Scale-out (mode "runner_x2"): MEMBERS runner processes in one group, at the
    # single runner's best max_batch. Kept apart from ``runs`` so that the
    # verdict (single runner vs raw) and its table stay as they are.
    scale_out: list[Run] = field(default_factory=list)

    def best(self, mode: str) -> Run | None:
        of_mode = [r for r in self.runs if r.mode == mode and r.count == self.events]
        return max(of_mode, key=lambda r: r.rate) if of_mode else None

    def at(self, mode: str, max_batch: int) -> Run | None:
        """The median run of ``mode`` at ``max_batch``, if it read every event."""
        found = [r for r in self.runs if r.mode == mode and r.max_batch == max_batch]
        return found[0] if found and found[0].count == self.events else None

    def versus_hand_written(self) -> tuple[Run, Run] | None:
        """The best runner median and the hand-written at-least-once median at its batch."""
        runner = self.best("runner")
        hand = self.at("hand_alo", runner.max_batch) if runner else None
        return (runner, hand) if runner and hand else None


# Modes that store a read model and commit: their committed offsets are checked
# after each run and their read model is reset.
STORING = ("runner", "runner_x2", "hand_alo", "hand_eo", "hand_alo_gc")


def _median(runs: list[Run]) -> Run:
    """The repetition with the median rate; the detail keeps every rate and all checks."""
    ordered = sorted(runs, key=lambda r: r.rate)
    middle = ordered[(len(ordered) - 1) // 2]
    detail = {
        **middle.detail,
        "rates": [r.rate for r in runs],
    }
    if any("committed_equals_end" in r.detail for r in runs):
        detail["committed_equals_end"] = all(r.detail.get("committed_equals_end") for r in runs)
    if profiled := [r.detail["profile"] for r in runs if "profile" in r.detail]:
        detail["profile"] = profiled[0]
    return Run(middle.mode, middle.max_batch, min(r.count for r in runs), middle.seconds, detail)


def _child(
    ctx: Any, mode: str, ep: Endpoints, topic: str, *, expected: int, max_batch: int, profile: bool
) -> Run:
    results: Any = ctx.Queue()
    group = unique(f"tp-{mode}")
    proc = ctx.Process(
        target=workers.throughput,
        kwargs={
            "mode": mode,
            "bootstrap": ep.kafka_bootstrap,
            "redis_url": ep.redis_url,
            "topic": topic,
            "group": group,
            "expected": expected,
            "max_batch": max_batch,
            "results": results,
            "profile": profile,
        },
        name=f"bench-tp-{mode}",
    )
    proc.start()
    try:
        out: dict[str, Any] = results.get(timeout=660)
    finally:
        proc.join(timeout=60)
        if proc.is_alive():
            proc.terminate()
    out["group"] = group
    return Run(mode, max_batch, int(out.pop("count")), float(out.pop("seconds")), out)


def _members(ctx: Any, ep: Endpoints, topic: str, *, end: dict[Any, int], max_batch: int) -> Run:
    """MEMBERS ProjectionRunner processes in one fresh group, until the topic is stored."""
    results: Any = ctx.Queue()
    group = unique("tp-runner-x2")
    ends = [end[tp] for tp in sorted(end, key=lambda tp: tp.partition)]
    stored = ctx.Array("q", [0] * len(ends))
    finished = ctx.Value("b", 0)
    ready = ctx.Barrier(MEMBERS)
    procs = [
        ctx.Process(
            target=workers.throughput_member,
            kwargs={
                "bootstrap": ep.kafka_bootstrap,
                "redis_url": ep.redis_url,
                "topic": topic,
                "group": group,
                "end": ends,
                "max_batch": max_batch,
                "stored": stored,
                "finished": finished,
                "ready": ready,
                "results": results,
            },
            name=f"bench-tp-member-{n}",
        )
        for n in range(MEMBERS)
    ]
    for proc in procs:
        proc.start()
    try:
        outs: list[dict[str, Any]] = [results.get(timeout=660) for _ in procs]
    finally:
        for proc in procs:
            proc.join(timeout=60)
            if proc.is_alive():
                proc.terminate()
    started = min(o["started"] for o in outs)
    dones = [o["done"] for o in outs if o["done"] is not None]
    count = sum(end.values()) if dones else sum(stored[:])
    seconds = (dones[0] if dones else max(o["started"] for o in outs) + 600) - started
    detail = {
        "group": group,
        "applied_per_member": [o["applied"] for o in outs],
        "ownership_lost": sum(o["ownership_lost"] for o in outs),
    }
    return Run("runner_x2", max_batch, count, seconds, detail)


def run_throughput(
    ep: Endpoints,
    *,
    events: int,
    batches: Sequence[int] = (500, 2000),
    reps: int = 3,
    profile: bool = False,
    progress: Callable[[str], None] = print,
    diagnostics: bool = True,
) -> ThroughputResult:
    """Every variant, interleaved; ``diagnostics=False`` (quick) runs only the three
    rows the verdict needs: raw, hand-written at-least-once, runner."""
    ctx = mp.get_context("spawn")
    kct = make_kct(ep.kafka_bootstrap, ep.redis_url, "loader")
    topic = unique("tp")
    create_topics(kct, topic)
    started = time.perf_counter()
    for start in range(0, events, CHUNK):
        chunk = [placed_event(f"t{n}", n) for n in range(start, min(events, start + CHUNK))]
        kct.publisher.publish_all(topic, chunk)
    preload = time.perf_counter() - started
    end = kct.admin.end_offsets([topic])
    if sum(end.values()) != events:
        raise RuntimeError(f"pre-load wrote {sum(end.values())} records, expected {events}")
    progress(f"  pre-loaded {events} events in {preload:.1f}s")

    samples: dict[tuple[str, int], list[Run]] = {}

    def measure(mode: str, batch: int, rep: int) -> None:
        if mode == "runner_x2":
            run = _members(ctx, ep, topic, end=end, max_batch=batch)
        else:
            run = _child(
                ctx,
                mode,
                ep,
                topic,
                expected=events,
                max_batch=batch,
                profile=profile and mode == "runner" and rep == 0,
            )
        if mode in STORING:
            committed = kct.admin.committed_offsets(run.detail["group"], [topic])
            run.detail["committed_equals_end"] = committed == end
            kct.store.reset(run.detail["group"])
        samples.setdefault((mode, batch), []).append(run)
        progress(f"  {mode:<8} max_batch={batch:<5} rep {rep + 1}: {run.rate:>9,.0f} events/s")

    try:
        for rep in range(reps):  # repetitions interleaved, so drift hits every variant
            for batch in batches:
                for mode in ("raw", "hand_alo", "runner", "hand_eo")[: 4 if diagnostics else 3]:
                    measure(mode, batch, rep)
        best = max(batches, key=lambda b: _median(samples[("runner", b)]).rate)
        for rep in range(reps if diagnostics else 0):
            for mode in ("raw_avro", "reader", "hand_alo_gc", "runner_x2"):
                measure(mode, best, rep)
    finally:
        delete_topics(kct, topic)
        kct.close()
    runs = [_median(group) for key, group in samples.items() if key[0] != "runner_x2"]
    scale_out = [_median(group) for key, group in samples.items() if key[0] == "runner_x2"]
    return ThroughputResult(events, preload, runs, reps, scale_out)


def main() -> None:
    """``python -m benchmarks.throughput [events]``: this benchmark alone, scale-out row
    included; prints the medians, writes nothing."""
    import sys

    from benchmarks.common import endpoints

    events = int(sys.argv[1]) if len(sys.argv) > 1 else 50_000
    tp = run_throughput(endpoints(), events=events)
    raw = tp.best("raw")
    for run in tp.runs + tp.scale_out:
        share = f"{run.rate / raw.rate:.0%}" if raw and raw.rate else "-"
        hand = tp.at("hand_alo", run.max_batch)
        vs_hand = f"{run.rate / hand.rate:.0%}" if hand and hand.rate else "-"
        checked = run.detail.get("committed_equals_end")
        print(
            f"{run.mode:<10} max_batch={run.max_batch:<5} {run.count:>7} events "
            f"{run.seconds:6.2f} s {run.rate:>10,.0f}/s  {share:>4} of best raw, "
            f"{vs_hand:>4} of hand-written ALO"
            + ("" if checked is None else f"  committed==end: {checked}")
        )


if __name__ == "__main__":
    main()
