"""Readiness probe for a Kafka cluster: does a metadata request list a broker?

Guarantee: ``kafka_ready`` returns True only after a real metadata round trip
that names at least one broker, i.e. the broker accepts client requests.
Failure modes: never raises for an unreachable or starting cluster; it answers
False (connection refused, timeout, broker not yet registered).
"""

from __future__ import annotations

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

__all__ = ["kafka_ready"]


def kafka_ready(bootstrap: str, timeout: float) -> bool:
    """True if ``bootstrap`` answers a metadata request listing a broker within ``timeout``."""
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
    return bool(metadata.brokers)
