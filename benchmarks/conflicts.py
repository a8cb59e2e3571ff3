"""Conflict resolver throughput: decisions per second, per strategy, pure CPU.

One delivery sequence is generated (seeded, so every row and every run sees
the same): events of 1,000 aggregates interleaved at random, each
aggregate's sequences 1, 2, ... with HLCs rising; 10% of the events are
delivered 1-3 places late within their aggregate's own stream (so the
resolver really sees them out of order), and 5% of deliveries are
redeliveries of an event 1-20 places earlier. Each row resolves the whole
sequence with a fresh :class:`~toolkit.conflicts.ConflictResolver` on a fresh
dict-backed ``ConflictState`` (single thread), then calls ``expire`` once
with a clock far in the future; the clock covers both. Rows:

* ``no policy (pass-through)``: the baseline, same loop, nothing to decide;
* each strategy alone (``merge`` with a dict-union merge function);
* the pipeline ``deduplicate+reorder+last_write_wins``;
* the same pipeline over a ``ReadModelBatch`` (500 decisions per batch, its
  net changes kept in a dict): what a projection runner pays, copies
  included, without any server.

``accepted``/``rejected`` count events (a released event counts when
released; buffered events count in neither until then).

Standalone: ``.venv/bin/python -m benchmarks.conflicts [--decisions N]``.
"""

from __future__ import annotations

import argparse
import copy
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from benchmarks.report import Section
from toolkit.conflicts import ConflictResolver, Resolution, ResolverPolicy
from toolkit.envelope import Envelope
from toolkit.hlc import HLCTimestamp
from toolkit.ports import ReadModelChange
from toolkit.read_model import ReadModelBatch

AGGREGATES = 1_000
DUPLICATES = 0.05
OUT_OF_ORDER = 0.10
BATCH = 500
SEED = 20_240_601
PIPELINE = ("deduplicate", "reorder", "last_write_wins")


@dataclass(frozen=True)
class ConflictsRun:
    strategy: str
    decisions: int
    seconds: float
    accepted: int
    rejected: int

    @property
    def rate(self) -> float:
        return self.decisions / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class ConflictsResult:
    decisions: int
    aggregates: int
    duplicates: float
    out_of_order: float
    runs: list[ConflictsRun]

    headers: ClassVar[list[str]] = [
        "strategy",
        "decisions",
        "seconds",
        "decisions/s",
        "accepted",
        "rejected",
    ]

    def rows(self) -> list[list[str]]:
        return [
            [
                r.strategy,
                f"{r.decisions:,}",
                f"{r.seconds:.3f}",
                f"{r.rate:,.0f}",
                f"{r.accepted:,}",
                f"{r.rejected:,}",
            ]
            for r in self.runs
        ]

    def run(self, strategy: str) -> ConflictsRun | None:
        return next((r for r in self.runs if r.strategy == strategy), None)


# -- workload ------------------------------------------------------------------------


def deliveries(decisions: int, seed: int = SEED) -> list[Envelope]:
    """The delivery sequence described in the module docstring."""
    rng = random.Random(seed)
    owners = [rng.randrange(AGGREGATES) for _ in range(decisions)]  # then cut to size
    streams: dict[int, list[Envelope]] = {}
    for n, owner in enumerate(owners):
        stream = streams.setdefault(owner, [])
        stream.append(_event(owner, len(stream) + 1, n))
    # Deliver 10% of each aggregate's events 1-3 places late in its own stream.
    for stream in streams.values():
        for i in range(len(stream) - 1, -1, -1):
            if rng.random() < OUT_OF_ORDER:
                late = stream.pop(i)
                stream.insert(min(len(stream), i + rng.randint(1, 3)), late)
    cursors = {owner: iter(stream) for owner, stream in streams.items()}
    ordered = [next(cursors[owner]) for owner in owners]
    out: list[Envelope] = []
    for e in ordered:
        out.append(e)
        if rng.random() < DUPLICATES / (1 - DUPLICATES):
            out.append(out[-rng.randint(1, min(20, len(out)))])
    return out[:decisions]


def _event(owner: int, sequence: int, n: int) -> Envelope:
    return Envelope(
        "kct.bench.Changed",
        "account",
        f"acc-{owner}",
        sequence,
        {"balance_cents": n, "tags": [f"t{n % 7}"], "note": "benchmark"},
        event_id=f"acc-{owner}-{sequence}",
        hlc=HLCTimestamp(1_700_000_000_000 + n, 0, f"node-{n % 3}"),
    )


def _union(current: dict[str, Any] | None, incoming: Envelope) -> Envelope:
    merged = {**(current or {}), **incoming.payload}
    merged["tags"] = sorted({*(current or {}).get("tags", []), *incoming.payload["tags"]})
    return incoming.with_changes(payload=merged)


# -- states ---------------------------------------------------------------------------


class DictConflictState:
    """A ConflictState in a dict; the resolver never mutates what get() returns."""

    def __init__(self) -> None:
        self.documents: dict[str, dict[str, Any]] = {}

    def get(self, key: str) -> dict[str, Any] | None:
        return self.documents.get(key)

    def put(self, key: str, document: Mapping[str, Any]) -> None:
        self.documents[key] = dict(document)

    def delete(self, key: str) -> None:
        self.documents.pop(key, None)


class _DictReadModelStore:
    """Just enough of a ReadModelStore for a ReadModelBatch; keeps applied changes."""

    def __init__(self) -> None:
        self.documents: dict[str, Any] = {}

    def get(self, projection: str, key: str) -> dict[str, Any] | None:
        found = self.documents.get(key)
        return None if found is None else copy.deepcopy(found)

    def counters(self, projection: str, key: str) -> dict[str, int]:
        return {}

    def apply(self, changes: Sequence[ReadModelChange]) -> None:
        for change in changes:
            if change.kind == "put":
                self.documents[change.key] = change.document
            elif change.kind == "delete":
                self.documents.pop(change.key, None)


# -- measuring --------------------------------------------------------------------------

_FAR_FUTURE = 2**62


def _tally(resolutions: Iterator[Resolution]) -> tuple[int, int]:
    accepted = rejected = 0
    for resolution in resolutions:
        accepted += len(resolution.accepted)
        rejected += len(resolution.rejected)
    return accepted, rejected


def _measure(label: str, policy: ResolverPolicy | None, events: list[Envelope]) -> ConflictsRun:
    resolver = ConflictResolver({"account": policy} if policy is not None else {})
    state = DictConflictState()
    resolve = resolver.resolve
    started = time.perf_counter()
    accepted, rejected = _tally(resolve(e, state, 0) for e in events)
    late_accepted, late_rejected = _tally(iter(resolver.expire(state, _FAR_FUTURE)))
    seconds = time.perf_counter() - started
    return ConflictsRun(
        label, len(events), seconds, accepted + late_accepted, rejected + late_rejected
    )


def _measure_batched(label: str, policy: ResolverPolicy, events: list[Envelope]) -> ConflictsRun:
    resolver = ConflictResolver({"account": policy})
    store = _DictReadModelStore()
    accepted = rejected = 0
    started = time.perf_counter()
    for start in range(0, len(events), BATCH):
        batch = ReadModelBatch(store, "bench")
        a, r = _tally(resolver.resolve(e, batch, 0) for e in events[start : start + BATCH])
        store.apply(batch.net_changes())
        accepted, rejected = accepted + a, rejected + r
    batch = ReadModelBatch(store, "bench")
    a, r = _tally(iter(resolver.expire(batch, _FAR_FUTURE)))
    store.apply(batch.net_changes())
    seconds = time.perf_counter() - started
    return ConflictsRun(label, len(events), seconds, accepted + a, rejected + r)


def run_conflicts(decisions: int, progress: Callable[[str], None]) -> ConflictsResult:
    """Decisions per second per strategy (see the module docstring)."""
    progress(f"conflicts: generating {decisions:,} deliveries over {AGGREGATES:,} aggregates")
    events = deliveries(decisions)
    cases: list[tuple[str, ResolverPolicy | None]] = [
        ("no policy (pass-through)", None),
        ("deduplicate", ResolverPolicy(("deduplicate",))),
        ("reorder", ResolverPolicy(("reorder",))),
        ("last_write_wins", ResolverPolicy(("last_write_wins",))),
        ("first_write_wins", ResolverPolicy(("first_write_wins",))),
        ("reject", ResolverPolicy(("reject",))),
        ("merge", ResolverPolicy(("merge",), merge=_union)),
        ("+".join(PIPELINE), ResolverPolicy(PIPELINE)),
    ]
    runs = []
    for label, policy in cases:
        progress(f"conflicts: {label}")
        runs.append(_measure(label, policy, events))
    label = f"  same, over a ReadModelBatch ({BATCH}/batch)"
    progress(f"conflicts: {label}")
    runs.append(_measure_batched(label, ResolverPolicy(PIPELINE), events))
    return ConflictsResult(decisions, AGGREGATES, DUPLICATES, OUT_OF_ORDER, runs)


def conflicts_section(result: ConflictsResult) -> Section:
    decisions = result.runs[0].decisions if result.runs else 0
    return Section(
        title="Conflict resolver decisions per second",
        head=list(result.headers),
        rows=result.rows(),
        notes=(
            f"{decisions:,} deliveries over 1,000 aggregates (5% duplicates, 10% delivered 1-3 "
            "places late within their aggregate), one thread, state in a dict "
            "(`ConflictState`); the last row keeps the state in a `ReadModelBatch` of 500 "
            "events over an in-memory store (no server). Baseline: no policy (pass-through), "
            "measured in the same run."
        ),
    )


def main(argv: Sequence[str] | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--decisions", type=int, default=200_000)
    args = parser.parse_args(argv)
    console = Console()
    result = run_conflicts(args.decisions, lambda line: console.print(line, style="dim"))
    table = Table(
        title=(
            f"Conflict resolver: {result.decisions:,} deliveries, {result.aggregates:,} "
            f"aggregates, {result.duplicates:.0%} duplicates, "
            f"{result.out_of_order:.0%} out of order (single thread)"
        )
    )
    for i, header in enumerate(result.headers):
        if i == 0:
            table.add_column(header, overflow="fold")
        else:
            table.add_column(header, justify="right", no_wrap=True)
    for row in result.rows():
        table.add_row(*row)
    console.print(table)


if __name__ == "__main__":
    main()
