"""Peak memory of a projection runner deduplicating N distinct ids in one aggregate.

In-memory ports, so only the runner's own memory is measured: the batch
journal must hold one copy of the dedup window per batch, not per event.

    .venv/bin/python -m benchmarks.dedup_memory 60000
"""

from __future__ import annotations

import resource
import sys
import time

from connectors.avro import AvroCodec, AvroSchemaRegistry, bundled_schema_dir
from tests.fakes import InMemoryLog, InMemoryReadModelStore
from tests.order_stats import order_stats, placed_event
from toolkit.conflicts import ConflictResolver, ResolverPolicy
from toolkit.dead_letter import DeadLetterQueue
from toolkit.hlc import HybridLogicalClock
from toolkit.projection import ProjectionRunner
from toolkit.publisher import EventPublisher


def main(events: int) -> str:
    codec = AvroCodec(AvroSchemaRegistry.from_directories(bundled_schema_dir()))
    log = InMemoryLog()
    publisher = EventPublisher(log, codec, HybridLogicalClock("writer"))
    for start in range(0, events, 5000):
        publisher.publish_all(
            "orders",
            [placed_event("o-1", "c", 1, s + 1) for s in range(start, min(events, start + 5000))],
        )
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    runner = ProjectionRunner(
        order_stats("stats", ["orders"]),
        log.consumer("stats"),
        codec,
        InMemoryReadModelStore(),
        DeadLetterQueue(log, "stats"),
        resolver=ConflictResolver({"order": ResolverPolicy(("deduplicate",), dedup_window=10_000)}),
    )
    started = time.perf_counter()
    while runner.run_once():
        pass
    elapsed = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return (
        f"events={events} applied={runner.stats.applied} rss_before_run={before / 1024:.0f} MB "
        f"peak={peak / 1024:.0f} MB run={elapsed:.1f} s"
    )


if __name__ == "__main__":
    print(main(int(sys.argv[1]) if len(sys.argv) > 1 else 60_000))
