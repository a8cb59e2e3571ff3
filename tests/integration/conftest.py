"""Real-server fixtures.

Tests attach to the stack named by ``KCT_KAFKA_BOOTSTRAP`` (and friends) when
set, for running against your own servers; otherwise they bring up the local
stack (``kct stack up``, idempotent). They never skip: a stack that cannot be
reached fails the run. When a test fails, the tail of each server log is
attached to its report.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from connectors.avro import AvroCodec, AvroSchemaRegistry, bundled_schema_dir
from connectors.kafka import KafkaAdmin, KafkaRecordProducer, KafkaSettings
from connectors.redis import RedisSettings
from connectors.zookeeper import ZooKeeperSettings
from toolkit.dead_letter import dead_letter_topic
from toolkit.runtime.app import Kct, KctSettings
from toolkit.runtime.stack import LocalStack


@dataclass(frozen=True)
class Endpoints:
    kafka_bootstrap: str
    zookeeper_hosts: str
    redis_url: str
    otlp_grpc: str
    jaeger_query_url: str
    log_dir: Path | None
    kafka_sasl_bootstrap: str = ""  # a SASL_PLAINTEXT SCRAM-SHA-512 listener
    otlp_http: str = "http://127.0.0.1:4318"  # the OTLP/HTTP receiver (tracing tests)


@pytest.fixture(scope="session")
def endpoints() -> Endpoints:
    if os.environ.get("KCT_KAFKA_BOOTSTRAP"):
        return Endpoints(
            kafka_bootstrap=os.environ["KCT_KAFKA_BOOTSTRAP"],
            zookeeper_hosts=os.environ.get("KCT_ZOOKEEPER_HOSTS", "127.0.0.1:2181"),
            redis_url=os.environ.get("KCT_REDIS_URL", "redis://127.0.0.1:6379/0"),
            otlp_grpc=os.environ.get("KCT_OTLP_ENDPOINT", "127.0.0.1:4317"),
            jaeger_query_url=os.environ.get("KCT_JAEGER_QUERY_URL", "http://127.0.0.1:16686"),
            log_dir=None,
            kafka_sasl_bootstrap=os.environ.get("KCT_KAFKA_SASL_BOOTSTRAP", ""),
            otlp_http=os.environ.get("KCT_OTLP_ENDPOINT", "http://127.0.0.1:4318"),
        )
    stack = LocalStack()
    stack.up()
    found = stack.endpoints()
    return Endpoints(
        kafka_bootstrap=found.kafka_bootstrap,
        zookeeper_hosts=found.zookeeper_hosts,
        redis_url=found.redis_url,
        otlp_grpc=found.otlp_grpc,
        jaeger_query_url=found.jaeger_query_url,
        log_dir=stack.layout.logs,
        kafka_sasl_bootstrap=found.kafka_sasl_bootstrap,
        otlp_http=found.otlp_http,
    )


@pytest.fixture(scope="session")
def kafka_settings(endpoints: Endpoints) -> KafkaSettings:
    return KafkaSettings(bootstrap_servers=endpoints.kafka_bootstrap, client_id="kct-tests")


@pytest.fixture(scope="session")
def admin(kafka_settings: KafkaSettings) -> KafkaAdmin:
    return KafkaAdmin(kafka_settings)


@pytest.fixture(scope="session")
def codec() -> AvroCodec:
    return AvroCodec(AvroSchemaRegistry.from_directories(bundled_schema_dir()))


@pytest.fixture
def producer(kafka_settings: KafkaSettings) -> Iterator[KafkaRecordProducer]:
    made = KafkaRecordProducer(kafka_settings)
    yield made
    made.close()


@pytest.fixture
def create_topic(admin: KafkaAdmin) -> Callable[..., str]:
    """Create a uniquely named topic (and its dead-letter topic); returns its name."""

    def create(prefix: str, partitions: int = 3) -> str:
        name = f"test.{prefix}.{uuid.uuid4().hex[:10]}"
        admin.create_topics([name, dead_letter_topic(name)], partitions=partitions)
        return name

    return create


@pytest.fixture
def group_id() -> str:
    return f"test-group-{uuid.uuid4().hex[:10]}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.when != "call" or not report.failed:
        return
    log_dir = LocalStack().layout.logs
    for log in sorted(log_dir.glob("*.log")) if log_dir.is_dir() else []:
        lines = log.read_text(errors="replace").splitlines()[-25:]
        report.sections.append((f"server log {log.name} (last 25 lines)", "\n".join(lines)))


@pytest.fixture
def make_kct(endpoints: Endpoints) -> Iterator[Callable[[], Kct]]:
    """Makes composition roots wired to the real stack (one per simulated process:
    own node id, ZooKeeper session and transactional producer); closes them all."""
    made: list[Kct] = []
    lock_root = f"/kct-test/{uuid.uuid4().hex[:10]}"

    def make() -> Kct:
        app = Kct(
            KctSettings(
                kafka=KafkaSettings(
                    bootstrap_servers=endpoints.kafka_bootstrap, client_id="kct-tests"
                ),
                redis=RedisSettings(url=endpoints.redis_url),
                zookeeper=ZooKeeperSettings(
                    hosts=endpoints.zookeeper_hosts, lock_root=lock_root, session_timeout=6.0
                ),
                node_id=f"test-{uuid.uuid4().hex[:6]}",
            )
        )
        made.append(app)
        return app

    yield make
    for app in made:
        app.close()


@pytest.fixture
def kct(make_kct: Callable[[], Kct]) -> Kct:
    """The composition root wired to the real stack."""
    return make_kct()
