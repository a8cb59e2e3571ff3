"""Readiness probe for a Kafka cluster: does a metadata request list a broker?

Guarantee: ``kafka_ready`` returns True only after a real metadata round trip
that names at least one broker, i.e. the broker accepts client requests.
``kafka_can_replicate`` asks the controller to validate (not create) a topic
with ``replicas`` replicas: it passes once that many brokers are registered
and unfenced. A restarted node answers metadata requests while it still
replays the metadata log (a minute on a long-lived stack), listing itself from
its old image, so answering is not enough for a cluster: topic creation with
replication factor 3 failed in a CI run that started right then.
Failure modes: never raises for an unreachable or starting cluster; it answers
False (connection refused, timeout, broker not yet registered).
"""

from __future__ import annotations

import uuid

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

__all__ = ["kafka_brokers", "kafka_can_replicate", "kafka_ready"]


def _admin(bootstrap: str, timeout: float) -> AdminClient:
    return AdminClient(
        {
            "bootstrap.servers": bootstrap,
            "socket.timeout.ms": max(1000, int(timeout * 1000)),
            # A broker that is still starting refuses connections: that is an
            # expected answer here, not something to print to stderr.
            "log_level": 0,
        }
    )


def kafka_ready(bootstrap: str, timeout: float) -> bool:
    """True if ``bootstrap`` answers a metadata request listing a broker within ``timeout``."""
    return kafka_brokers(bootstrap, timeout) > 0


def kafka_brokers(bootstrap: str, timeout: float) -> int:
    """How many brokers the metadata of ``bootstrap`` lists (0 if it does not answer)."""
    try:
        return len(_admin(bootstrap, timeout).list_topics(timeout=timeout).brokers)
    except KafkaException:
        return 0


def kafka_can_replicate(bootstrap: str, replicas: int, timeout: float) -> bool:
    """True if the controller would create a topic with ``replicas`` replicas now
    (a validate-only request: nothing is created)."""
    admin = _admin(bootstrap, timeout)
    topic = f"kct-readiness-probe-{uuid.uuid4().hex[:8]}"
    futures = admin.create_topics(
        [NewTopic(topic, num_partitions=1, replication_factor=replicas)],
        validate_only=True,
        request_timeout=timeout,
    )
    try:
        futures[topic].result(timeout)
    except KafkaException:
        return False
    return True
