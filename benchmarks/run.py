"""``python -m benchmarks.run [--quick] [--profile] [--only NAME]``: run every benchmark,
print, write RESULTS.md.

Full sizes take a few minutes on a 2-core machine; ``--quick`` under one.
``--profile`` runs quick sizes with the projection runners under cProfile,
prints where their time goes and leaves RESULTS.md alone. ``--only NAME``
runs one of the sections after the throughput table alone (e.g. ``sagas``),
prints its table, notes and verdicts, and leaves RESULTS.md alone.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console

from benchmarks.boundary import boundary_section, run_boundary
from benchmarks.common import Endpoints, endpoints
from benchmarks.compare import write_json
from benchmarks.conflicts import conflicts_section, run_conflicts
from benchmarks.durability import durability_section, run_durability
from benchmarks.latency import run_latency
from benchmarks.machine import machine_facts
from benchmarks.monitor import monitor_section, run_monitor
from benchmarks.report import Section, _table, print_report, write_results
from benchmarks.sagas import run_sagas, sagas_section
from benchmarks.sidecar import run_sidecar_bench, sidecar_section
from benchmarks.throughput import run_throughput
from benchmarks.tracing import run_tracing, tracing_section

FULL = {
    "writes": 2000,
    "seed_writes": 400,
    "consume_writes": 200,
    "events": 50_000,
    "boundary_ops": 300,
    "decisions": 200_000,
    "sagas": 5000,  # per phase: max throughput, then open loop at 500/s (10 s)
    "saga_in_flight": 2000,
    "trace_events": 40_000,
    "trace_writes": 1000,
    "trace_reps": 7,
    "throughput_reps": 3,
    "sidecar_writes": 1000,
    "sidecar_bulk": 20_000,
    "durability_records": 6000,
}
QUICK = {
    "writes": 200,
    "seed_writes": 60,
    "consume_writes": 20,
    "events": 5_000,
    "boundary_ops": 40,
    "decisions": 20_000,
    "sagas": 300,
    "saga_in_flight": 300,
    "trace_events": 3_000,
    "trace_writes": 60,
    "trace_reps": 2,
    "throughput_reps": 1,
    "sidecar_writes": 150,
    "sidecar_bulk": 5_000,
    "durability_records": 600,
}


def _command(quick: bool) -> str:
    if os.environ.get("MAKELEVEL"):
        return "make bench QUICK=1" if quick else "make bench"
    python = Path(sys.executable)
    try:
        shown = str(python.relative_to(Path.cwd()))
    except ValueError:
        shown = str(python)
    return shlex.join([shown, "-m", "benchmarks.run", *sys.argv[1:]])


def _sections(
    ep: Endpoints, sizes: dict[str, int], quick: bool, console: Console
) -> dict[str, Callable[[], Section]]:
    """The benchmarks that report one section each, by name (``--only``)."""
    say = console.print
    return {
        "boundary": lambda: boundary_section(
            run_boundary(ep, ops=sizes["boundary_ops"], progress=say)
        ),
        "conflicts": lambda: conflicts_section(run_conflicts(sizes["decisions"], say)),
        "sagas": lambda: sagas_section(
            run_sagas(ep, sizes["sagas"], say, in_flight=sizes["saga_in_flight"])
        ),
        "durability": lambda: durability_section(
            run_durability(ep, sizes["durability_records"], say)
        ),
        "monitor": lambda: monitor_section(run_monitor(ep, 10 if quick else 30, say)),
        "tracing": lambda: tracing_section(
            run_tracing(
                ep, sizes["trace_events"], sizes["trace_writes"], say, reps=sizes["trace_reps"]
            )
        ),
        "sidecar": lambda: sidecar_section(
            run_sidecar_bench(ep, sizes["sidecar_writes"], sizes["sidecar_bulk"], say)
        ),
    }


_ONLY = ("boundary", "conflicts", "sagas", "durability", "monitor", "tracing", "sidecar")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes (< 1 minute)")
    parser.add_argument(
        "--profile", action="store_true", help="cProfile the runners; RESULTS.md untouched"
    )
    parser.add_argument(
        "--only", choices=_ONLY, help="run this benchmark alone; RESULTS.md untouched"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    quick = args.quick or args.profile
    sizes = QUICK if quick else FULL
    # Under make/CI stdout is no terminal: rich would wrap the tables at 80 columns.
    console = Console(width=None if sys.stdout.isatty() else 130)
    started = time.perf_counter()
    date = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")

    ep = endpoints()
    if args.only:
        section = _sections(ep, sizes, quick, console)[args.only]()
        console.print(_table(section.title, section.head, section.rows))
        console.print(section.notes)
        console.print(f"wall time: {time.perf_counter() - started:.0f} s")
        return 0
    facts = machine_facts(ep)
    console.print(f"[bold]read-after-write latency[/] ({sizes['writes']} writes per variant)")
    lat = run_latency(
        ep,
        writes=sizes["writes"],
        seed_writes=sizes["seed_writes"],
        consume_writes=sizes["consume_writes"],
        profile=args.profile,
        progress=console.print,
    )
    console.print(f"  (read-after-write: {time.perf_counter() - started:.0f} s)")
    console.print(f"[bold]projection throughput[/] ({sizes['events']:,} events)")
    began = time.perf_counter()
    tp = run_throughput(
        ep,
        events=sizes["events"],
        # Quick: one max_batch (the 500), so the smoke test stays under a minute.
        batches=(500,) if quick else (500, 2000),
        reps=sizes["throughput_reps"],
        diagnostics=not quick,
        profile=args.profile,
        progress=console.print,
    )
    console.print(f"  (throughput: {time.perf_counter() - began:.0f} s)")
    sections: list[Section] = []
    for name, measure in _sections(ep, sizes, quick, console).items():
        console.print(f"[bold]{name}[/]")
        began = time.perf_counter()
        sections.append(measure())
        console.print(f"  ({name}: {time.perf_counter() - began:.0f} s)")
    wall = time.perf_counter() - started

    print_report(console, facts, lat, tp, sections)
    console.print(f"wall time: {wall:.0f} s")
    if args.profile:
        console.print("[bold]latency runner profile[/]", lat.runner.get("profile", "-"))
        for run in tp.runs:
            if "profile" in run.detail:
                console.print(f"[bold]throughput runner profile, max_batch={run.max_batch}[/]")
                console.print(run.detail["profile"])
        return 0
    path = write_results(
        date=date,
        command=_command(args.quick),
        wall_seconds=wall,
        quick=args.quick,
        facts=facts,
        lat=lat,
        tp=tp,
        sections=sections,
    )
    json_path = write_json(
        date=date, command=_command(args.quick), quick=args.quick, lat=lat, tp=tp
    )
    console.print(f"wrote {path} and {json_path} (make bench-compare: what moved)")
    # A missed target is a finding, not a harness failure: exit 0 either way.
    return 0


if __name__ == "__main__":
    sys.exit(main())
