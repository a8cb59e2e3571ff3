"""A process doing strong increments on one aggregate, recording its history.

``python -m tests.faults.strong_writer --bootstrap B --zookeeper Z --redis R
--topic T --projection P --lock-root L --account A --count N --out FILE``

Each increment is ``boundary.enforce`` of a read-modify-write (read the
balance from the read model, publish balance + 1) on a strong account: the
ZooKeeper lock, its fence, a Kafka transaction, the wait for the projection.
Every attempt appends one JSON line to FILE: ``start`` and ``end`` on the
machine-wide monotonic clock (comparable between processes), and either
``value`` and ``fence`` or the ``error`` (an attempt that failed may still
have been applied: its outcome is indeterminate).
"""

from __future__ import annotations

import argparse
import json
import time
import uuid

from connectors.kafka import KafkaSettings
from connectors.redis import RedisSettings
from connectors.zookeeper import ZooKeeperSettings
from tests.balances import balance_event
from toolkit.boundary import OperationContext
from toolkit.config import ConsistencyConfig
from toolkit.errors import ToolkitError
from toolkit.runtime.app import Kct, KctSettings


def main() -> None:
    parser = argparse.ArgumentParser()
    for name in ("bootstrap", "zookeeper", "redis", "topic", "projection", "lock-root"):
        parser.add_argument(f"--{name}", required=True)
    parser.add_argument("--account", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    kct = Kct(
        KctSettings(
            kafka=KafkaSettings(bootstrap_servers=args.bootstrap, client_id="strong-writer"),
            redis=RedisSettings(url=args.redis),
            zookeeper=ZooKeeperSettings(
                hosts=args.zookeeper, lock_root=args.lock_root, session_timeout=6.0
            ),
            node_id=f"writer-{uuid.uuid4().hex[:6]}",
        )
    )
    policy = ConsistencyConfig.model_validate(
        {
            "default_timeout": 20.0,
            "lock_timeout": 20.0,
            "projections": [args.projection],
            "strong": [{"type": "account", "id": args.account}],
        }
    )
    boundary = kct.boundary(policy, {"account": args.topic})

    def increment(ctx: OperationContext) -> int:
        doc = kct.store.get(args.projection, f"account:{ctx.aggregate_id}") or {}
        balance, seq = int(doc.get("balance", 0)), int(doc.get("seq", 0))
        ctx.publish(balance_event(ctx.aggregate_id, balance + 1, seq + 1))
        return balance + 1

    with open(args.out, "a", encoding="utf-8") as out:
        for _ in range(args.count):
            entry: dict[str, object] = {"start": time.monotonic()}
            try:
                result = boundary.enforce(args.account, increment, aggregate_type="account")
                entry |= {"value": result.value, "fence": result.fence}
            except ToolkitError as exc:
                entry["error"] = f"{type(exc).__name__}: {exc}"[:300]
                time.sleep(0.2)
            entry["end"] = time.monotonic()
            out.write(json.dumps(entry) + "\n")
            out.flush()
    kct.close()


if __name__ == "__main__":
    main()
