"""What every benchmark shares: endpoints, the composition root, names, events, statistics.

The projection is a copy of the order read model the integration tests use
(``tests/order_stats.py``): a document per order and three counters per
event, so each event costs the read model a realistic handful of writes.
"""

from __future__ import annotations

import math
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from connectors.kafka import KafkaSettings
from connectors.redis import RedisSettings
from connectors.zookeeper import ZooKeeperSettings
from toolkit.config import DEFAULT_ZOOKEEPER_HOSTS
from toolkit.dead_letter import dead_letter_topic
from toolkit.envelope import Envelope
from toolkit.runtime.app import Kct, KctSettings

PLACED = "kct.examples.orders.OrderPlaced"
PARTITIONS = 3
RUN_ID = uuid.uuid4().hex[:8]


@dataclass(frozen=True)
class Endpoints:
    kafka_bootstrap: str
    redis_url: str
    local_stack: bool
    zookeeper_hosts: str = DEFAULT_ZOOKEEPER_HOSTS


def endpoints() -> Endpoints:
    """``KCT_KAFKA_BOOTSTRAP``/``KCT_REDIS_URL`` when set, else the local stack (started)."""
    if os.environ.get("KCT_KAFKA_BOOTSTRAP"):
        return Endpoints(
            os.environ["KCT_KAFKA_BOOTSTRAP"],
            os.environ.get("KCT_REDIS_URL", "redis://127.0.0.1:6379/0"),
            local_stack=False,
            zookeeper_hosts=os.environ.get("KCT_ZOOKEEPER_HOSTS", "127.0.0.1:2181"),
        )
    from toolkit.runtime.stack import LocalStack

    stack = LocalStack()
    stack.up()
    found = stack.endpoints()
    return Endpoints(
        found.kafka_bootstrap,
        found.redis_url,
        local_stack=True,
        zookeeper_hosts=found.zookeeper_hosts,
    )


def make_kct(bootstrap: str, redis_url: str, role: str, zookeeper_hosts: str | None = None) -> Kct:
    return Kct(
        KctSettings(
            kafka=KafkaSettings(bootstrap_servers=bootstrap, client_id=f"kct-bench-{role}"),
            redis=RedisSettings(url=redis_url),
            zookeeper=ZooKeeperSettings(
                hosts=zookeeper_hosts or DEFAULT_ZOOKEEPER_HOSTS, lock_root=f"/kct-bench/{RUN_ID}"
            ),
            node_id=f"bench-{role}-{os.getpid()}",
        )
    )


def unique(kind: str) -> str:
    """A fresh topic or group name for this run."""
    return f"bench.{kind}.{RUN_ID}.{uuid.uuid4().hex[:6]}"


def create_topics(kct: Kct, *names: str) -> None:
    """3-partition topics (and the dead-letter topics a runner writes to)."""
    kct.admin.create_topics(
        [n for name in names for n in (name, dead_letter_topic(name))], partitions=PARTITIONS
    )


def delete_topics(kct: Kct, *names: str) -> None:
    kct.admin.delete_topics([n for name in names for n in (name, dead_letter_topic(name))])


def placed_event(order_id: str, n: int) -> Envelope:
    total = 100 + n % 997
    return Envelope(
        PLACED,
        "order",
        order_id,
        1,
        {
            "order_id": order_id,
            "customer_id": f"c{n % 50}",
            "lines": [{"sku": "widget", "quantity": 1, "unit_price_cents": total}],
            "total_cents": total,
            "currency": "EUR",
        },
    )


@dataclass(frozen=True)
class Summary:
    """Latency percentiles in milliseconds (nearest-rank)."""

    count: int
    p50: float
    p95: float
    p99: float
    max: float
    mean: float
    errors: int = 0

    @classmethod
    def of(cls, samples_ms: Sequence[float], errors: int = 0) -> Summary:
        if not samples_ms:
            return cls(0, math.nan, math.nan, math.nan, math.nan, math.nan, errors)
        ordered = sorted(samples_ms)

        def rank(q: float) -> float:
            return ordered[max(0, math.ceil(q * len(ordered)) - 1)]

        return cls(
            len(ordered),
            rank(0.50),
            rank(0.95),
            rank(0.99),
            ordered[-1],
            sum(ordered) / len(ordered),
            errors,
        )
