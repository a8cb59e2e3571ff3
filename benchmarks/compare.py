"""``benchmarks/results.json`` (written by every full or quick run) and ``make bench-compare``.

``results.json`` holds the run's ratios, each with its noise: the ratio times the
sum of the relative half-ranges of the repetitions of its two sides (a figure
measured once gets ``MIN_NOISE``). Before a run overwrites it, the previous file
is kept as ``results.previous.json`` (not tracked).

``python -m benchmarks.compare [OLD [NEW]]`` prints the ratios that moved by more
than the larger of the two noises. OLD defaults to ``results.previous.json``, or
else the committed ``results.json`` (``git show HEAD:benchmarks/results.json``);
NEW to ``results.json``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from benchmarks.latency import LatencyResult
from benchmarks.throughput import Run, ThroughputResult

__all__ = ["PREVIOUS", "RESULTS_JSON", "compare", "ratios", "write_json"]

HERE = Path(__file__).resolve().parent
RESULTS_JSON = HERE / "results.json"
PREVIOUS = HERE / "results.previous.json"
MIN_NOISE = 0.02  # relative, for a side measured once
LATENCY_NOISE_MS = 2.0  # p99 gaps of a few hundred writes move by about this much


def _spread(run: Run) -> float:
    rates = [float(r) for r in run.detail.get("rates", [run.rate]) if r > 0]
    if len(rates) < 2 or not run.rate:
        return MIN_NOISE
    return max(MIN_NOISE, (max(rates) - min(rates)) / 2 / run.rate)


def _ratio(top: Run | None, bottom: Run | None) -> dict[str, float] | None:
    if top is None or bottom is None or not bottom.rate:
        return None
    value = top.rate / bottom.rate
    return {"value": round(value, 4), "noise": round(value * (_spread(top) + _spread(bottom)), 4)}


def ratios(lat: LatencyResult, tp: ThroughputResult) -> dict[str, dict[str, float]]:
    """Every ratio of the run, by name."""
    out: dict[str, dict[str, float] | None] = {}
    pair = tp.versus_hand_written()
    if pair:
        runner, hand = pair
        out["throughput.runner/hand_alo"] = _ratio(runner, hand)
        out["throughput.hand_eo/hand_alo"] = _ratio(tp.at("hand_eo", runner.max_batch), hand)
        out["throughput.hand_alo/raw"] = _ratio(hand, tp.at("raw", runner.max_batch))
    raw = tp.best("raw")
    for mode in ("runner", "raw_avro", "reader"):
        out[f"throughput.{mode}/raw"] = _ratio(tp.best(mode), raw)
    for run in tp.scale_out:
        out[f"throughput.{run.mode}/runner"] = _ratio(run, tp.best("runner"))
    if lat.kct.count and lat.floor.count:
        out["latency.kct_p99-floor_p99_ms"] = {
            "value": round(lat.kct.p99 - lat.floor.p99, 3),
            "noise": LATENCY_NOISE_MS,
        }
    return {k: v for k, v in out.items() if v is not None}


def write_json(
    *, date: str, command: str, quick: bool, lat: LatencyResult, tp: ThroughputResult
) -> Path:
    """Keep the last results.json as results.previous.json, write this run's."""
    if RESULTS_JSON.exists():
        shutil.copyfile(RESULTS_JSON, PREVIOUS)
    rates = {
        f"{run.mode}@{run.max_batch}": {
            "median": round(run.rate),
            "runs": [round(r) for r in run.detail.get("rates", [run.rate])],
        }
        for run in [*tp.runs, *tp.scale_out]
    }
    document = {
        "date": date,
        "command": command,
        "quick": quick,
        "events": tp.events,
        "ratios": ratios(lat, tp),
        "throughput_rates": rates,
    }
    RESULTS_JSON.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
    return RESULTS_JSON


def _load(path: str | None, default: Path, committed: bool) -> dict[str, Any] | None:
    if path:
        loaded: dict[str, Any] = json.loads(Path(path).read_text())
        return loaded
    if default.exists():
        loaded = json.loads(default.read_text())
        return loaded
    if committed:
        shown = subprocess.run(
            ["git", "show", "HEAD:benchmarks/results.json"],
            cwd=HERE.parent,
            capture_output=True,
            text=True,
            check=False,
        )
        if shown.returncode == 0:
            loaded = json.loads(shown.stdout)
            return loaded
    return None


def compare(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """One line per ratio that moved by more than the noise (or appeared, or went)."""
    lines = []
    before, after = old.get("ratios", {}), new.get("ratios", {})
    for name in sorted(set(before) | set(after)):
        was, now = before.get(name), after.get(name)
        if was is None or now is None:
            lines.append(f"{name}: {'new' if was is None else 'gone'}")
            continue
        moved = now["value"] - was["value"]
        noise = max(was["noise"], now["noise"])
        if abs(moved) > noise:
            lines.append(
                f"{name}: {was['value']:.3f} -> {now['value']:.3f} "
                f"({moved:+.3f}, noise {noise:.3f}) {'up' if moved > 0 else 'down'}"
            )
    return lines


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    old = _load(args[0] if args else None, PREVIOUS, committed=True)
    new = _load(args[1] if len(args) > 1 else None, RESULTS_JSON, committed=False)
    if old is None or new is None:
        print("nothing to compare: need a previous results.json and a new one")
        return 1
    if old.get("quick") != new.get("quick"):
        print("warning: one run used quick sizes, the other full sizes")
    print(f"{old.get('date')} ({old.get('command')}) -> {new.get('date')} ({new.get('command')})")
    lines = compare(old, new)
    for line in lines:
        print(line)
    if not lines:
        print("no ratio moved by more than its noise")
    return 0


if __name__ == "__main__":
    sys.exit(main())
