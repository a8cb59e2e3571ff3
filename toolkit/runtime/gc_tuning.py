"""Garbage-collector settings for long-running kct processes (runners, participants, sidecars).

Why: CPython frees most objects by reference counting; its cyclic collector
only exists for cycles, yet it also walks every surviving container. A
projection cycle keeps a whole batch alive (hundreds of events, about twenty
objects each) across many young collections, so each batch is promoted to
the oldest generation and soon triggers a full collection, which traverses
everything the process holds: imported modules, clients, schemas, tens of
thousands of objects, 30-50 ms each. Measured on a ProjectionRunner with
defaults: a fifth to a third of its CPU time, and the main source of
run-to-run variance (``benchmarks/README.md``, "Garbage collection").

What :func:`tune_gc` does, once start-up is done:

* ``gc.freeze()``: everything alive now (start-up state, which never becomes
  garbage) moves to a permanent generation the collector no longer scans;
* a young-generation threshold of 10,000 allocations instead of 700, so a
  batch is collected (and promoted) a few times instead of dozens.

Reference counting still frees every object without cycles at once, and
cycles are still collected, only less often. ``kct sidecar`` calls it after
building its loops; a service hosting runners or participants in its own
process may call it once its set-up is done.
"""

from __future__ import annotations

import gc

__all__ = ["YOUNG_THRESHOLD", "tune_gc"]

YOUNG_THRESHOLD = 10_000


def tune_gc() -> None:
    """Freeze the start-up heap and collect the young generation less often."""
    gc.collect()  # start-up garbage goes now, not into the permanent generation
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
