"""A projection runner in its own process, for crash tests (``kill -9``).

    python -m tests.integration.projection_worker --topic T --group G \
        --bootstrap B --redis R [--crash-after-batches N] [--exit-when-caught-up]

With ``--crash-after-batches N`` it SIGKILLs itself right after the N-th
batch reached Redis and before its Kafka commit: the worst moment.
With ``--exit-when-caught-up`` it exits cleanly once the group's committed
offsets reach the topic's end offsets (partitions still held by a killed
member are applied once its session expires and the group rebalances).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections.abc import Mapping

from connectors.kafka import KafkaSettings
from connectors.redis import RedisSettings
from tests.order_stats import order_stats
from toolkit.positions import TopicPartition
from toolkit.runtime.app import Kct, KctSettings


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--topic", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--redis", required=True)
    parser.add_argument("--crash-after-batches", type=int, default=0)
    parser.add_argument("--max-batch", type=int, default=50)
    parser.add_argument("--exit-when-caught-up", action="store_true")
    args = parser.parse_args()

    kct = Kct(
        KctSettings(
            kafka=KafkaSettings(bootstrap_servers=args.bootstrap),
            redis=RedisSettings(url=args.redis),
        )
    )
    batches = 0

    def after_store(_offsets: Mapping[TopicPartition, int]) -> None:
        nonlocal batches
        batches += 1
        if args.crash_after_batches and batches >= args.crash_after_batches:
            os.kill(os.getpid(), signal.SIGKILL)

    runner = kct.runner(
        order_stats(args.group, [args.topic]), max_batch=args.max_batch, after_store=after_store
    )
    next_check = time.monotonic()
    while True:
        applied = runner.run_once()
        if args.exit_when_caught_up and not applied and time.monotonic() >= next_check:
            next_check = time.monotonic() + 0.5
            end = {tp: o for tp, o in kct.admin.end_offsets([args.topic]).items() if o > 0}
            if kct.admin.committed_offsets(args.group, [args.topic]) == end:
                break
    print(f"worker {os.getpid()} exiting: {runner.stats}", file=sys.stderr)
    runner.close()
    kct.close()


if __name__ == "__main__":
    main()
