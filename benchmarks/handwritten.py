"""The projections a user would write by hand, the baselines of the throughput target.

Both maintain the read model of ``tests/order_stats.py`` (per ``OrderPlaced``: one
order document, two customer counters, one global counter) in the Redis layout
``RedisReadModelStore`` uses (``kct:rm:{<projection>}:d:<key>`` JSON documents,
``...:c:<key>`` hashes, ``...:offsets``), so ``store.reset`` cleans them up and the
data written is the runner's:

- **at-least-once**: confluent-kafka consumer (kct's consumer settings, manual
  commits), fastavro ``schemaless_reader`` per value, the batch's changes netted
  the way one would by hand (documents in one ``MSET``, one ``HINCRBY`` per
  counter field with the batch's sum) and sent in one Redis pipeline (no
  transaction), then a synchronous Kafka commit of the batch's offsets. A crash
  between the pipeline and the commit re-applies the batch.
- **effectively-once**: the same, plus the batch's next offsets written to the
  offsets hash inside the same ``MULTI``/``EXEC``, and each assigned partition
  started at the offset stored in Redis (``on_assign``), the beginning if none.

What neither does (and the runner does): envelope header validation, dead
letters, the conflict resolver, fences, the conditional (zombie-refusing) store
step, announcements to waiters, the store-offset watch. Events of other types
are skipped; a record that does not decode stops the run.
"""

from __future__ import annotations

import io
import json
import time
from typing import Any

import redis
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from fastavro import schemaless_reader

from benchmarks.common import PLACED

__all__ = ["hand_written"]


def hand_written(
    *,
    consumer_config: dict[str, Any],
    redis_url: str,
    schemas: dict[str, Any],
    topic: str,
    projection: str,
    expected: int,
    max_batch: int,
    effectively_once: bool,
    deadline: float,
) -> dict[str, Any]:
    """Apply ``expected`` events of ``topic``; ``schemas`` maps a ``schema`` header to a
    parsed fastavro schema. Returns ``done`` (perf_counter) and ``count``."""
    client = redis.Redis.from_url(redis_url)
    prefix = f"kct:rm:{{{projection}}}:"
    offsets_key = prefix + "offsets"
    consumer = Consumer(consumer_config)

    def on_assign(c: Any, partitions: list[TopicPartition]) -> None:
        stored = client.hmget(offsets_key, [f"{tp.topic}:{tp.partition}" for tp in partitions])
        for tp, value in zip(partitions, stored, strict=True):
            tp.offset = OFFSET_BEGINNING if value is None else int(value)
        c.assign(partitions)

    if effectively_once:
        consumer.subscribe([topic], on_assign=on_assign)
    else:
        consumer.subscribe([topic])
    count = 0
    while count < expected and time.monotonic() < deadline:
        messages = consumer.consume(num_messages=max_batch, timeout=0.1)
        if not messages:
            continue
        documents, increments, nexts, applied = _netted(messages, prefix, schemas)
        count += applied
        if not nexts:
            continue
        totals = (f"{prefix}c:totals", "events")
        increments[totals] = sum(v for (_, f), v in increments.items() if f == "orders")
        pipe = client.pipeline(transaction=effectively_once)
        if documents:
            pipe.mset(documents)
        for (key, name), amount in increments.items():
            if amount:
                pipe.hincrby(key, name, amount)
        if effectively_once:
            pipe.hset(offsets_key, mapping={f"{t}:{n}": o for (t, n), o in nexts.items()})
        pipe.execute()
        consumer.commit(
            offsets=[TopicPartition(t, n, o) for (t, n), o in nexts.items()], asynchronous=False
        )
    done = time.perf_counter()
    consumer.close()
    client.close()
    return {"done": done, "count": count}


_dumps = json.JSONEncoder(separators=(",", ":"), sort_keys=True).encode
_PLACED = PLACED.encode()


def _netted(
    messages: list[Any], prefix: str, schemas: dict[str, Any]
) -> tuple[dict[str, str], dict[tuple[str, str], int], dict[tuple[str, int], int], int]:
    """A batch's documents, summed counter increments, next offsets and event count."""
    count = 0
    documents: dict[str, str] = {}
    increments: dict[tuple[str, str], int] = {}
    nexts: dict[tuple[str, int], int] = {}
    for message in messages:
        if message.error() is not None:
            continue
        nexts[(message.topic() or "", message.partition() or 0)] = (message.offset() or 0) + 1
        headers: dict[str, Any] = dict(message.headers() or [])
        if headers.get("event_type") != _PLACED:
            continue
        schema = schemas[headers["schema"].decode()]
        p: Any = schemaless_reader(io.BytesIO(message.value() or b""), schema, None)
        customer = f"{prefix}c:customer:{p['customer_id']}"
        document = {
            "status": "placed",
            "total": p["total_cents"],
            "seq": int(headers["sequence"]),
        }
        documents[f"{prefix}d:order:{p['order_id']}"] = _dumps(document)
        increments[(customer, "orders")] = increments.get((customer, "orders"), 0) + 1
        increments[(customer, "cents")] = increments.get((customer, "cents"), 0) + int(
            p["total_cents"]
        )
        count += 1
    return documents, increments, nexts, count
