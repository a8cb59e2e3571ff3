"""Readiness probe for a Kafka cluster: does a metadata request list a broker?

Guarantee: ``kafka_ready`` returns True only after a real metadata round trip
that names at least one broker, i.e. the broker accepts client requests; given
``broker_id``, one that names that broker: in KRaft a broker is listed once it
has registered with the controllers and is unfenced, so a cluster whose every
node passed is whole (a node that answers but is not registered yet made
topic creation with replication factor 3 fail).
Failure modes: never raises for an unreachable or starting cluster; it answers
False (connection refused, timeout, broker not yet registered).
"""

from __future__ import annotations

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

__all__ = ["kafka_ready"]


def kafka_ready(bootstrap: str, timeout: float, broker_id: int | None = None) -> bool:
    """True if ``bootstrap`` answers a metadata request within ``timeout`` listing a
    broker (``broker_id``, if given)."""
    admin = AdminClient(
        {
            "bootstrap.servers": bootstrap,
            "socket.timeout.ms": max(1000, int(timeout * 1000)),
            # A broker that is still starting refuses connections: that is an
            # expected answer here, not something to print to stderr.
            "log_level": 0,
        }
    )
    try:
        metadata = admin.list_topics(timeout=timeout)
    except KafkaException:
        return False
    if broker_id is not None:
        return broker_id in metadata.brokers
    return bool(metadata.brokers)
