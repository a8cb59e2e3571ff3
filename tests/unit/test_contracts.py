"""The port contracts (``tests/contracts/``) on the in-memory implementations."""

from __future__ import annotations

import time
from typing import Any

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
from tests.fakes import (
    InMemoryConsumer,
    InMemoryEventPositionIndex,
    InMemoryLockService,
    InMemoryLog,
    InMemoryLogInspector,
    InMemoryOffsets,
    InMemoryPositions,
    InMemoryReadModelStore,
    InMemoryReplayMarkers,
    InMemorySagaStepStore,
    InMemoryTopicBrowser,
    InMemoryTransactionalProducer,
)
from toolkit.ports import RecordConsumer


class TestInMemoryReadModelStore(CheckpointedReadModelStoreContract):
    def make_store(self) -> InMemoryReadModelStore:
        return InMemoryReadModelStore()


class TestInMemorySagaStepStore(SagaStepStoreContract):
    def make_store(self) -> InMemorySagaStepStore:
        return InMemorySagaStepStore()


class InMemoryLogFactories(LogContract):
    """One in-memory log per test, shared by everything the test makes."""

    _log: InMemoryLog | None = None

    @property
    def log(self) -> InMemoryLog:
        if self._log is None:
            self._log = InMemoryLog()
            self._log.clock_ms = lambda: time.time_ns() // 1_000_000  # CreateTime, like Kafka
        return self._log

    def new_topic(self) -> str:
        name = unique("topic")
        self.log.topics[name] = []  # created, empty
        return name

    def make_producer(self) -> InMemoryLog:
        return self.log

    def make_consumer(self, group: str) -> InMemoryConsumer:
        return self.log.consumer(group)

    def make_offsets(self) -> InMemoryOffsets:
        return InMemoryOffsets(self.log)

    def make_transactions(self) -> InMemoryTransactionalProducer:
        return InMemoryTransactionalProducer(self.log)

    def group_metadata(self, consumer: RecordConsumer) -> Any:
        assert isinstance(consumer, InMemoryConsumer)
        return consumer.group


class TestInMemoryRecordProducer(InMemoryLogFactories, RecordProducerContract):
    pass


class TestInMemoryRecordConsumer(InMemoryLogFactories, RecordConsumerContract):
    pass


class TestInMemoryOffsets(InMemoryLogFactories, OffsetSourceContract):
    pass


class TestInMemoryTransactionalProducer(InMemoryLogFactories, TransactionalProducerContract):
    pass


class TestInMemoryPositions(PositionNotifierContract):
    def make_pair(self) -> tuple[InMemoryPositions, InMemoryPositions]:
        positions = InMemoryPositions()
        return positions, positions


class TestInMemoryEventPositionIndex(EventPositionIndexContract):
    def make_index(self) -> InMemoryEventPositionIndex:
        return InMemoryEventPositionIndex()


class TestInMemoryLockService(LockServiceContract):
    def make_service(self) -> InMemoryLockService:
        return InMemoryLockService()


class TestInMemoryLogInspector(InMemoryLogFactories, LogInspectorContract):
    def make_inspector(self) -> InMemoryLogInspector:
        return InMemoryLogInspector(self.log)


class TestInMemoryRecordTimestamps(InMemoryLogFactories, RecordTimestampsContract):
    def make_timestamps(self) -> InMemoryLogInspector:
        return InMemoryLogInspector(self.log)


class TestInMemoryTopicBrowser(InMemoryLogFactories, TopicBrowserContract):
    def make_browser(self) -> InMemoryTopicBrowser:
        return InMemoryTopicBrowser(self.log)


class TestInMemoryReplayMarkers(ReplayMarkersContract):
    def make_markers(self) -> InMemoryReplayMarkers:
        return InMemoryReplayMarkers()
