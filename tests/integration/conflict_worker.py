"""A projection runner with a one-writer conflict policy in its own process,
for restart tests (``kill -9`` and SIGTERM):

    python -m tests.integration.conflict_worker --topic T --group G \
        --bootstrap B --redis R --max-wait SECONDS

It applies ``[deduplicate, reorder]`` events of aggregate type ``account``
to a read model recording each account's applied sequences
(``order:<id>`` -> ``{"sequences": [...]}``). SIGTERM stops it cleanly
(the runner finishes its cycle, commits and leaves the group).
"""

from __future__ import annotations

import argparse
import signal
import threading
from types import FrameType

from connectors.kafka import KafkaSettings
from connectors.redis import RedisSettings
from tests.balances import BALANCE_SET
from toolkit.conflicts import ConflictResolver, ResolverPolicy
from toolkit.envelope import Envelope
from toolkit.projection import Projection
from toolkit.read_model import ReadModelBatch
from toolkit.runtime.app import Kct, KctSettings


def applied_order(name: str, topic: str) -> Projection:
    projection = Projection(name, [topic])

    @projection.on(BALANCE_SET)
    def record(event: Envelope, view: ReadModelBatch) -> None:
        key = f"order:{event.aggregate_id}"
        doc = view.get(key) or {"sequences": []}
        view.put(key, {"sequences": [*doc["sequences"], event.sequence]})

    return projection


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--topic", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--redis", required=True)
    parser.add_argument("--max-wait", type=float, required=True)
    args = parser.parse_args()
    kct = Kct(
        KctSettings(
            kafka=KafkaSettings(bootstrap_servers=args.bootstrap),
            redis=RedisSettings(url=args.redis),
        )
    )
    policy = ResolverPolicy(
        ("deduplicate", "reorder"), reorder_max_wait_ms=round(args.max_wait * 1000)
    )
    runner = kct.runner(
        applied_order(args.group, args.topic),
        max_batch=200,
        resolver=ConflictResolver({"account": policy}),
    )
    stop = threading.Event()

    def terminate(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, terminate)
    runner.run(stop)
    runner.close()
    kct.close()


if __name__ == "__main__":
    main()
