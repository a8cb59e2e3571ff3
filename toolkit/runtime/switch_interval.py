"""A shorter GIL switch interval for processes whose request threads share the GIL
with busy background threads (a sidecar's loops, tracing's span exporter).

Why: CPython hands the GIL to a waiting thread only after the running one has
held it for the switch interval, 5 ms by default. A thread answering a request
(or timing a read-after-write) that wakes while a loop decodes a batch, or
while the exporter encodes spans for OTLP, waits up to that long: measured as
+2 to +3 ms on the p99 of the sidecar's publish and of a traced
read-after-write (``benchmarks/README.md``). A shorter interval bounds that
wait; the cost is more hand-overs between busy threads (a few microseconds
each).
"""

from __future__ import annotations

import sys

__all__ = ["LATENCY_SWITCH_INTERVAL", "shorten_switch_interval"]

LATENCY_SWITCH_INTERVAL = 0.0002  # seconds


def shorten_switch_interval(seconds: float = LATENCY_SWITCH_INTERVAL) -> None:
    """Set the switch interval to ``seconds`` unless it is already shorter."""
    if sys.getswitchinterval() > seconds:
        sys.setswitchinterval(seconds)
