"""The port contracts (``tests/contracts/``) on the real adapters: Kafka, Redis, ZooKeeper."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any, Protocol, TypeVar

import pytest

from connectors.kafka import KafkaAdmin, KafkaRecordConsumer, KafkaRecordProducer, KafkaSettings
from connectors.kafka.browser import KafkaTopicBrowser
from connectors.kafka.inspector import KafkaLogInspector, KafkaRecordTimestamps
from connectors.kafka.transactions import KafkaTransactionalProducer
from connectors.redis import (
    RedisEventPositionIndex,
    RedisPositionListener,
    RedisPositionNotifier,
    RedisReadModelStore,
    RedisSagaStepStore,
    RedisSettings,
)
from connectors.redis.replay_markers import RedisReplayMarkers
from connectors.zookeeper import ZooKeeperLockService, ZooKeeperSettings
from tests.contracts import unique
from tests.contracts.locks import LockServiceContract
from tests.contracts.log import LogContract, RecordConsumerContract, RecordProducerContract
from tests.contracts.monitor import LogInspectorContract, RecordTimestampsContract
from tests.contracts.offsets import OffsetSourceContract
from tests.contracts.positions import EventPositionIndexContract, PositionNotifierContract
from tests.contracts.read_model import (
    CheckpointedReadModelStoreContract,
    SagaStepStoreContract,
)
from tests.contracts.replay import ReplayMarkersContract, TopicBrowserContract
from tests.contracts.transactions import TransactionalProducerContract
from tests.integration.conftest import Endpoints
from toolkit.ports import RecordConsumer


class _Closeable(Protocol):
    def close(self) -> None: ...


_C = TypeVar("_C", bound=_Closeable)


class _Closing:
    """Closes what a test made, after the test."""

    _made: list[_Closeable]

    @pytest.fixture(autouse=True)
    def _close_after(self) -> Iterator[None]:
        self._made = []
        yield
        for made in reversed(self._made):
            made.close()

    def _keep(self, made: _C) -> _C:
        self._made.append(made)
        return made


class _Redis(_Closing):
    redis: RedisSettings

    @pytest.fixture(autouse=True)
    def _connect(self, endpoints: Endpoints) -> None:
        self.redis = RedisSettings(url=endpoints.redis_url)


class TestRedisReadModelStore(_Redis, CheckpointedReadModelStoreContract):
    def make_store(self) -> RedisReadModelStore:
        return self._keep(RedisReadModelStore(self.redis))


class TestRedisSagaStepStore(_Redis, SagaStepStoreContract):
    def make_store(self) -> RedisSagaStepStore:
        return self._keep(RedisSagaStepStore(self.redis))


class TestRedisPositions(_Redis, PositionNotifierContract):
    def make_pair(self) -> tuple[RedisPositionNotifier, RedisPositionListener]:
        notifier = self._keep(RedisPositionNotifier(self.redis))
        return notifier, self._keep(RedisPositionListener(self.redis).start())


class TestRedisEventPositionIndex(_Redis, EventPositionIndexContract):
    def make_index(self) -> RedisEventPositionIndex:
        return self._keep(RedisEventPositionIndex(self.redis))


class TestZooKeeperLockService(_Closing, LockServiceContract):
    @pytest.fixture(autouse=True)
    def _connect(self, endpoints: Endpoints) -> None:
        self.zookeeper = ZooKeeperSettings(
            hosts=endpoints.zookeeper_hosts, lock_root=f"/kct-test/{uuid.uuid4().hex[:10]}"
        )

    def make_service(self) -> ZooKeeperLockService:
        return self._keep(ZooKeeperLockService(self.zookeeper))


class _Kafka(_Closing, LogContract):
    """Factories over the real broker: one-partition topics, clients closed after."""

    kafka: KafkaSettings
    admin: KafkaAdmin

    @pytest.fixture(autouse=True)
    def _connect(self, kafka_settings: KafkaSettings, admin: KafkaAdmin) -> None:
        self.kafka, self.admin = kafka_settings, admin

    def new_topic(self) -> str:
        name = unique("topic")
        self.admin.create_topics([name], partitions=1)
        return name

    def make_producer(self) -> KafkaRecordProducer:
        return self._keep(KafkaRecordProducer(self.kafka))

    def make_consumer(self, group: str) -> KafkaRecordConsumer:
        return self._keep(KafkaRecordConsumer(self.kafka, group))

    def make_offsets(self) -> KafkaAdmin:
        return self.admin

    def make_transactions(self) -> KafkaTransactionalProducer:
        return self._keep(KafkaTransactionalProducer(self.kafka, unique("txn")))

    def group_metadata(self, consumer: RecordConsumer) -> Any:
        assert isinstance(consumer, KafkaRecordConsumer)
        return consumer.group_metadata()


class TestKafkaRecordProducer(_Kafka, RecordProducerContract):
    pass


class TestKafkaRecordConsumer(_Kafka, RecordConsumerContract):
    pass


class TestKafkaAdminOffsets(_Kafka, OffsetSourceContract):
    pass


class TestKafkaTransactionalProducer(_Kafka, TransactionalProducerContract):
    pass


class TestKafkaLogInspector(_Kafka, LogInspectorContract):
    def make_inspector(self) -> KafkaLogInspector:
        return KafkaLogInspector(self.kafka)


class TestKafkaRecordTimestamps(_Kafka, RecordTimestampsContract):
    def make_timestamps(self) -> KafkaRecordTimestamps:
        return self._keep(KafkaRecordTimestamps(self.kafka))


class TestKafkaTopicBrowser(_Kafka, TopicBrowserContract):
    def make_browser(self) -> KafkaTopicBrowser:
        return self._keep(KafkaTopicBrowser(self.kafka))


class TestRedisReplayMarkers(_Redis, ReplayMarkersContract):
    def make_markers(self) -> RedisReplayMarkers:
        return self._keep(RedisReplayMarkers(self.redis))
