"""Fault tests use the integration tests' real-server fixtures (and their failure report),
and, for the replicated cases, a cluster of their own (:mod:`tests.faults.cluster`)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest

from connectors.kafka import KafkaAdmin, KafkaSettings
from connectors.redis import RedisSettings
from connectors.zookeeper import ZooKeeperSettings
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
from toolkit.runtime.app import Kct, KctSettings
from toolkit.runtime.stack import LocalStack

from .cluster import RUNS, cluster_stack, keep_cluster

__all__ = [
    "admin",
    "cluster",
    "cluster_admin",
    "cluster_kafka",
    "codec",
    "create_topic",
    "endpoints",
    "group_id",
    "kafka_settings",
    "kct",
    "make_cluster_kct",
    "make_kct",
    "producer",
    "pytest_runtest_makereport",
    "pytest_runtest_teardown",
    "pytest_terminal_summary",
]


@pytest.fixture(scope="session")
def cluster() -> Iterator[LocalStack]:
    """The fault suite's three-node cluster: up on first use, down after the last
    test that uses it (``pytest_runtest_teardown``) or at the session's end."""
    stack = cluster_stack()
    stack.up()
    yield stack
    if not keep_cluster():
        stack.down()


@pytest.hookimpl(trylast=True)  # after the test's own fixtures are torn down
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    """Take the cluster down as soon as no later test needs it: the rest of the
    run (integration, unit) should not share two cores with three idle brokers."""
    if keep_cluster() or "cluster" not in getattr(item, "fixturenames", ()):
        return
    items = item.session.items
    later = items[items.index(item) + 1 :] if item in items else []
    if not any("cluster" in getattr(i, "fixturenames", ()) for i in later):
        cluster_stack().down()


@pytest.fixture(scope="session")
def cluster_kafka(cluster: LocalStack) -> KafkaSettings:
    # What a user of a 3-broker cluster writes in kct.yaml (kafka.topics), so a
    # topic made while a broker is down is refused instead of made with RF 2.
    return KafkaSettings(
        bootstrap_servers=cluster.endpoints().kafka_bootstrap,
        client_id="kct-faults",
        replication_factor=3,
        min_insync_replicas=2,
    )


@pytest.fixture(scope="session")
def cluster_admin(cluster_kafka: KafkaSettings) -> KafkaAdmin:
    return KafkaAdmin(cluster_kafka)


@pytest.fixture
def make_cluster_kct(
    cluster: LocalStack, cluster_kafka: KafkaSettings
) -> Iterator[Callable[[], Kct]]:
    """Composition roots wired to the cluster (one per simulated process)."""
    made: list[Kct] = []
    lock_root = f"/kct-faults/{uuid.uuid4().hex[:10]}"
    found = cluster.endpoints()

    def make() -> Kct:
        app = Kct(
            KctSettings(
                kafka=cluster_kafka,
                # The cluster's Redis runs appendfsync always: checked, as kct.yaml's
                # redis.durability.fsync: always would.
                redis=RedisSettings(url=found.redis_url, durability_fsync="always"),
                zookeeper=ZooKeeperSettings(
                    hosts=found.zookeeper_hosts, lock_root=lock_root, session_timeout=6.0
                ),
                node_id=f"fault-{uuid.uuid4().hex[:6]}",
            )
        )
        made.append(app)
        return app

    yield make
    for app in made:
        app.close()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if RUNS:
        terminalreporter.section("fault runs")
        for run in RUNS:
            terminalreporter.write_line(run.line())
