"""Tables (rich, on the terminal) and ``benchmarks/RESULTS.md`` (rewritten every run)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from benchmarks.common import Summary
from benchmarks.latency import LatencyResult
from benchmarks.throughput import Run, ThroughputResult

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
LATENCY_TARGET_MS = 5.0  # issue 16: p99 within 5 ms of the raw floor's p99
THROUGHPUT_TARGET = 0.9  # of the hand-written at-least-once projection


@dataclass(frozen=True)
class Verdict:
    target: str
    measured: str
    passed: bool

    @property
    def word(self) -> str:
        return "PASS" if self.passed else "FAIL"


def _ms(value: float) -> str:
    if math.isnan(value):
        return "-"
    return f"{value:.2f}" if value < 10 else f"{value:.1f}"


def latency_rows(lat: LatencyResult) -> list[list[str]]:
    floor_p99 = lat.floor.p99
    rows: list[tuple[str, Summary, bool]] = [
        ("kct: publish -> wait_for_consistency (pub/sub wake)", lat.kct, True),
        ("  of which publish until acked", lat.kct_publish, False),
        ("  of which wait_for_consistency", lat.kct_wait, False),
        ("seed design: publish -> has_applied every 100 ms", lat.seed, True),
        ("floor: raw producer -> raw consumer poll()", lat.floor, True),
        ("diagnostic: raw producer -> raw consume(500, 0.1)", lat.floor_consume, True),
    ]
    out = []
    for label, s, compare in rows:
        delta = f"{s.p99 - floor_p99:+.1f}" if compare and s.count else ""
        out.append(
            [
                label,
                str(s.count),
                _ms(s.p50),
                _ms(s.p95),
                _ms(s.p99),
                _ms(s.max),
                _ms(s.mean),
                str(s.errors),
                delta,
            ]
        )
    return out


LATENCY_HEAD = ["variant", "writes", "p50", "p95", "p99", "max", "mean", "timeouts", "p99 - floor"]
THROUGHPUT_HEAD = [
    "variant",
    "max_batch",
    "events",
    "seconds",
    "events/s (median)",
    "range of runs",
    "vs best raw",
    "vs hand-written ALO",
]

_MODE_LABEL = {
    "raw": "raw consumer, no decode",
    "runner": "kct ProjectionRunner -> Redis, committed",
    "hand_alo": "hand-written at-least-once -> Redis pipeline, committed",
    "hand_eo": "hand-written effectively-once (offsets in MULTI/EXEC)",
    "hand_alo_gc": "diagnostic: hand-written at-least-once, kct's GC tuning",
    "raw_avro": "diagnostic: raw consumer + Avro decode",
    "reader": "diagnostic: kct EventReader (decode, no apply)",
    "runner_x2": "scale-out: 2 ProjectionRunner processes, one group",
}


def throughput_rows(tp: ThroughputResult) -> list[list[str]]:
    raw = tp.best("raw")
    out = []
    for run in [*tp.runs, *tp.scale_out]:
        share = f"{run.rate / raw.rate:.0%}" if raw and raw.rate else "-"
        hand = tp.at("hand_alo", run.max_batch)
        vs_hand = f"{run.rate / hand.rate:.0%}" if hand and hand.rate else "-"
        label = _MODE_LABEL[run.mode]
        if run.detail.get("committed_equals_end") is False:
            label += " (COMMITTED != END)"
        rates = run.detail.get("rates", [run.rate])
        out.append(
            [
                label,
                str(run.max_batch),
                str(run.count),
                f"{run.seconds:.2f}",
                f"{run.rate:,.0f}",
                f"{min(rates):,.0f}-{max(rates):,.0f}",
                share,
                vs_hand,
            ]
        )
    return out


def _paired(runner: Run, hand: Run) -> str:
    """The ratio of each repetition's runner and hand-written runs (run next to each
    other): their spread says how much the median ratio can be trusted."""
    pairs = [
        r / h
        for r, h in zip(runner.detail.get("rates", []), hand.detail.get("rates", []), strict=False)
        if h
    ]
    if not pairs:
        return "no repetitions"
    return "per repetition " + ", ".join(f"{x:.0%}" for x in pairs)


def verdicts(lat: LatencyResult, tp: ThroughputResult) -> list[Verdict]:
    gap = lat.kct.p99 - lat.floor.p99
    lat_ok = lat.kct.errors == 0 and lat.kct.count > 0 and gap <= LATENCY_TARGET_MS
    pair = tp.versus_hand_written()
    runner, hand = pair if pair else (None, None)
    share = runner.rate / hand.rate if runner and hand and hand.rate else 0.0
    committed_ok = runner is not None and runner.detail.get("committed_equals_end") is True
    return [
        Verdict(
            f"read-after-write: kct p99 within {LATENCY_TARGET_MS:g} ms of the floor's p99",
            f"kct p99 {_ms(lat.kct.p99)} ms, floor p99 {_ms(lat.floor.p99)} ms, "
            f"gap {gap:+.1f} ms ({lat.kct.errors} timeouts)",
            lat_ok,
        ),
        Verdict(
            f"throughput: ProjectionRunner >= {THROUGHPUT_TARGET:.0%} of the hand-written "
            "at-least-once projection (medians, same max_batch)",
            (
                f"runner {runner.rate:,.0f}/s, hand-written {hand.rate:,.0f}/s "
                f"(max_batch={runner.max_batch}): {share:.0%}; {_paired(runner, hand)}"
                if runner and hand
                else "a run did not read every event"
            ),
            share >= THROUGHPUT_TARGET and committed_ok,
        ),
    ]


@dataclass(frozen=True)
class Section:
    """A further table of the suite: its title, columns, rows and what it measured."""

    title: str
    head: list[str]
    rows: list[list[str]]
    notes: str = ""


def _table(title: str, head: list[str], rows: list[list[str]]) -> Table:
    table = Table(title=title, title_justify="left")
    for i, name in enumerate(head):
        table.add_column(name, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*row)
    return table


def print_report(
    console: Console,
    facts: dict[str, str],
    lat: LatencyResult,
    tp: ThroughputResult,
    sections: list[Section] | None = None,
) -> None:
    console.print(_table("Read-after-write latency (ms)", LATENCY_HEAD, latency_rows(lat)))
    console.print(_table("Projection throughput", THROUGHPUT_HEAD, throughput_rows(tp)))
    for section in sections or []:
        console.print(_table(section.title, section.head, section.rows))
    for key, value in facts.items():
        console.print(f"[bold]{key}[/]: {value}")
    for v in verdicts(lat, tp):
        style = "green" if v.passed else "red"
        console.print(f"[bold {style}]{v.word}[/] {v.target}: {v.measured}")


def _md_table(head: list[str], rows: list[list[str]]) -> str:
    rule = "|" + "|".join(["---"] + ["--:"] * (len(head) - 1)) + "|"
    lines = ["| " + " | ".join(head) + " |", rule]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_results(
    *,
    date: str,
    command: str,
    wall_seconds: float,
    quick: bool,
    facts: dict[str, str],
    lat: LatencyResult,
    tp: ThroughputResult,
    sections: list[Section] | None = None,
) -> Path:
    runner = lat.runner
    text = f"""# Benchmark results

Generated by the benchmark harness; rewritten by every run (see `README.md`
for what each figure means).

- Date: {date}
- Command: `{command}`{" (quick sizes)" if quick else ""}
- Wall time of the run: {wall_seconds:.0f} s
{chr(10).join(f"- {k}: {v}" for k, v in facts.items())}

## Verdicts

{chr(10).join(f"- **{v.word}** {v.target}: {v.measured}" for v in verdicts(lat, tp))}

## Read-after-write latency (milliseconds)

Interleaved rounds after {lat.warmup} warm-up rounds. kct and the seed design
write to one fresh 3-partition topic read by one ProjectionRunner (its own
process, `max_batch=500`); each floor has its own fresh 3-partition topic and
consumer process. The seed design and the `consume()` diagnostic run on every
n-th round only (their `writes` column). The runner applied
{runner.get("applied", "?")} events in {runner.get("batches", "?")} batches.

{_md_table(LATENCY_HEAD, latency_rows(lat))}

## Projection throughput

{tp.events:,} `OrderPlaced` events on a fresh 3-partition topic (pre-loaded
through kct's publisher in {tp.preload_seconds:.1f} s). Each run is a new
consumer group in its own process, its clock started right before the
consumer is created (group join included); runner runs end when the group's
committed offsets equal the end offsets (checked with the admin API after
each run). Every variant ran {tp.reps} times, interleaved; the table shows the
median run and the range of all runs.

{_md_table(THROUGHPUT_HEAD, throughput_rows(tp))}
"""
    for section in sections or []:
        text += (
            f"\n## {section.title}\n\n{section.notes}\n\n{_md_table(section.head, section.rows)}\n"
        )
    RESULTS.write_text(text)
    return RESULTS
