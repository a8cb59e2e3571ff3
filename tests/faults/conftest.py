"""Fault tests use the integration tests' real-server fixtures (and their failure report)."""

from tests.integration.conftest import (
    admin,
    codec,
    create_topic,
    endpoints,
    group_id,
    kafka_settings,
    kct,
    make_kct,
    producer,
    pytest_runtest_makereport,
)

__all__ = [
    "admin",
    "codec",
    "create_topic",
    "endpoints",
    "group_id",
    "kafka_settings",
    "kct",
    "make_kct",
    "producer",
    "pytest_runtest_makereport",
]
