"""A linearizability check for a history of increments on one counter.

Each operation has a ``start`` and an ``end`` (one clock for all processes)
and either the value it returned (the counter after its increment) or an
error (indeterminate: it may or may not have taken effect). With ``final``
the counter's value at the end, the history is linearizable iff:

* the successful values are distinct and within 1..final;
* every value in 1..final that no successful operation returned can be
  explained by a failed (indeterminate) one: there are at least as many
  failed operations as missing values (a failed operation that took effect
  must also have started before the counter reached its value; we check the
  count, the stronger order check needs the failed operations' effects,
  which the log gives and :func:`check_log` verifies);
* real-time order: if operation a ended before operation b started, a's
  value is smaller than b's.

For increments the third rule is the whole of linearizability once values
are distinct and dense: ordering by value is then the only candidate
linearization, and it must respect real time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise


@dataclass(frozen=True)
class Op:
    start: float
    end: float
    value: int | None  # None: failed, outcome unknown


def violations(ops: Sequence[Op], final: int) -> list[str]:
    """Every rule the history breaks (empty: linearizable)."""
    problems: list[str] = []
    done = sorted((op for op in ops if op.value is not None), key=lambda op: op.value or 0)
    values = [op.value or 0 for op in done]
    duplicates = sorted({v for v in values if values.count(v) > 1})
    if duplicates:
        problems.append(f"values returned twice: {duplicates[:10]}")
    outside = [v for v in values if not 1 <= v <= final]
    if outside:
        problems.append(f"values outside 1..{final}: {outside[:10]}")
    missing = final - len(set(values) - set(outside))
    failed = sum(1 for op in ops if op.value is None)
    if missing > failed:
        problems.append(f"{missing} increments applied that no operation accounts for")
    # Real time: a's end < b's start => a.value < b.value. Scanning by value,
    # b is violated when some larger-valued op ended before b started.
    latest_start_before: list[tuple[int | None, float]] = []
    smallest_end_after = float("inf")
    for op in reversed(done):
        if smallest_end_after < op.start:
            latest_start_before.append((op.value, op.start))
        smallest_end_after = min(smallest_end_after, op.end)
    if latest_start_before:
        problems.append(
            "real-time order broken: a later operation returned a smaller value "
            f"(values {[v for v, _ in latest_start_before[:10]]})"
        )
    return problems


def check_log(balances: Sequence[int], fences: Sequence[int]) -> list[str]:
    """The aggregate's committed events in log order: balances 1..N, fences never decreasing."""
    problems: list[str] = []
    if list(balances) != list(range(1, len(balances) + 1)):
        bad = [(i, b) for i, b in enumerate(balances, 1) if b != i][:5]
        problems.append(f"committed balances are not 1..{len(balances)} in order: {bad}")
    stale = [(i, f) for i, (p, f) in enumerate(pairwise(fences), 2) if f < p]
    if stale:
        problems.append(f"a write with a stale fence was committed: {stale[:5]}")
    return problems
