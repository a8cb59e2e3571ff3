"""KafkaAdmin against the real broker: a topic's partitions are remembered briefly,
and forgotten when the admin itself deletes or creates the topic."""

from __future__ import annotations

import uuid

import pytest

from connectors.kafka import KafkaAdmin, KafkaSettings
from connectors.kafka.admin import PARTITIONS_TTL
from tests.integration.conftest import Endpoints
from tests.waiting import eventually
from toolkit.errors import AdminError
from toolkit.positions import TopicPartition


def test_partitions_are_remembered_and_a_recreated_topic_is_asked_again(
    endpoints: Endpoints,
) -> None:
    admin = KafkaAdmin(KafkaSettings(bootstrap_servers=endpoints.kafka_bootstrap))
    topic = f"test.admin.{uuid.uuid4().hex[:8]}"
    admin.create_topics([topic], partitions=3)
    assert admin.partitions([topic]) == [TopicPartition(topic, p) for p in range(3)]
    assert admin.end_offsets([topic]) == {TopicPartition(topic, p): 0 for p in range(3)}
    assert 0 < PARTITIONS_TTL <= 30

    admin.delete_topics([topic])

    def recreated() -> bool:  # the broker may take a moment to let the name be reused
        try:
            admin.create_topics([topic], partitions=1)
        except AdminError:
            return False
        return True

    eventually(recreated, 30.0, every=0.5)
    # Asked again at once, not answered from memory for PARTITIONS_TTL seconds.
    assert admin.partitions([topic]) == [TopicPartition(topic, 0)]
    admin.delete_topics([topic])
    with pytest.raises(AdminError):
        admin.partitions([f"test.admin.missing.{uuid.uuid4().hex[:8]}"])
