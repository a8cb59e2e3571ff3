"""The composition root: wires the core to Kafka, Avro and Redis adapters.

``Kct`` builds, lazily and once, the pieces a service needs (publisher,
projection runners, consistency manager, read-after-write) from
:class:`KctSettings`. Tests, benchmarks, the demo and (later) the sidecar use
it, so the wiring lives in one place.

Interceptors (:mod:`toolkit.interceptors`): tracing from the ``telemetry``
settings (:class:`~connectors.telemetry.OpenTelemetryTracingInterceptor`) and
any passed as ``Kct(interceptors=[...])`` (metrics) are chained once and
handed to every component; with none, the core never calls the seam.

Saga participants' consumer groups are namespaced by :func:`saga_group`
(deployment, saga types, participant), so independent deployments and test
runs on one cluster never share a group.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from connectors.avro import AvroCodec, AvroSchemaRegistry, bundled_schema_dir
from connectors.kafka import KafkaAdmin, KafkaRecordConsumer, KafkaRecordProducer, KafkaSettings
from connectors.kafka.browser import KafkaTopicBrowser
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
from connectors.telemetry import OpenTelemetryTracingInterceptor, TracingSettings
from connectors.zookeeper import ZooKeeperLockService, ZooKeeperSettings
from toolkit.boundary import ConsistencyBoundary, ConsistencyPolicy, OperationContext
from toolkit.config import DEFAULT_DEPLOYMENT, KctConfig
from toolkit.conflicts import ConflictResolver, resolver_from_config
from toolkit.consistency import EventualConsistencyManager, ReadAfterWrite
from toolkit.dead_letter import DeadLetterQueue
from toolkit.dead_letter_replay import DeadLetterReplayer
from toolkit.errors import ConfigurationError
from toolkit.hlc import HybridLogicalClock
from toolkit.interceptors import Interceptor, chain
from toolkit.positions import TopicPartition, is_valid_topic_name
from toolkit.projection import Projection, ProjectionRunner
from toolkit.publisher import EventPublisher
from toolkit.reader import EventReader
from toolkit.runtime.switch_interval import shorten_switch_interval
from toolkit.saga.client import SagaClient
from toolkit.saga.definition import SagaDefinition
from toolkit.saga.operations import SagaOperator
from toolkit.saga.participant import SagaParticipant, StepAction
from toolkit.saga.state import saga_state_projection
from toolkit.saga.watchdog import SagaWatchdog
from toolkit.tracker import ProjectionTracker

__all__ = ["SAGA_STATE", "Kct", "KctSettings", "saga_group"]

# The default name of the saga-state projection (the fold of saga replies).
SAGA_STATE = "kct-saga-state"


def saga_group(
    deployment: str, participant: str, saga_types: Iterable[str], namespace: str = ""
) -> str:
    """The consumer group (and dead-letter label) of a saga participant.

    ``kct.<deployment>.saga.<saga type>.<namespace><participant>``; a
    participant serving several saga types reads their command topics in one
    group named after all of them, sorted and joined by ``+``. Changing the
    deployment, the participant's name or its saga types names a new group,
    which reads the command topics from their start (its step records make it
    re-publish decided steps, not run them again).
    """
    return f"kct.{deployment}.saga.{'+'.join(sorted(saga_types))}.{namespace}{participant}"


def _default_node_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:4]}".replace(":", "-")


@dataclass(frozen=True)
class KctSettings:
    """Connections and identity of one process."""

    kafka: KafkaSettings = field(default_factory=KafkaSettings)
    redis: RedisSettings = field(default_factory=RedisSettings)
    zookeeper: ZooKeeperSettings = field(default_factory=ZooKeeperSettings)
    node_id: str = field(default_factory=_default_node_id)
    schema_dirs: tuple[Path, ...] = ()
    deployment: str = DEFAULT_DEPLOYMENT  # kct.yaml's ``deployment``, or KCT_DEPLOYMENT
    # Tracing (kct.yaml's ``telemetry``, OTEL_*): off unless configured.
    tracing: TracingSettings = field(default_factory=lambda: TracingSettings(enabled=False))

    def __post_init__(self) -> None:
        if len(self.deployment) > 64 or not is_valid_topic_name(self.deployment):
            raise ConfigurationError(
                "deployment: expected 1-64 characters of a-z, A-Z, 0-9, '.', '_', '-' "
                "(not '.' or '..')",
                deployment=self.deployment[:70],
            )

    @classmethod
    def from_config(cls, config: KctConfig) -> KctSettings:
        """Connections (with their credentials) from a loaded ``kct.yaml``: each
        connector's settings build themselves from their section."""
        node_id = f"{config.service}-{_default_node_id()}"
        return cls(
            kafka=KafkaSettings.from_config(config.kafka),
            redis=RedisSettings.from_config(config.redis),
            zookeeper=ZooKeeperSettings.from_config(config.zookeeper),
            node_id=node_id,
            deployment=config.deployment,
            tracing=TracingSettings.from_config(config.telemetry, config.service),
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> KctSettings:
        env = os.environ if environ is None else environ
        return cls(
            kafka=KafkaSettings.from_env(environ),
            redis=RedisSettings.from_env(environ),
            zookeeper=ZooKeeperSettings.from_env(environ),
            deployment=env.get("KCT_DEPLOYMENT") or DEFAULT_DEPLOYMENT,
            tracing=TracingSettings.from_env(environ=environ),
        )


class Kct:
    """Everything a service needs, wired once."""

    def __init__(
        self,
        settings: KctSettings | None = None,
        config: KctConfig | None = None,
        *,
        interceptors: Sequence[Interceptor] = (),
    ) -> None:
        self.config = config
        self._interceptors = tuple(interceptors)
        self._owned: list[KafkaTransactionalProducer] = []
        if settings is None:
            settings = KctSettings.from_config(config) if config else KctSettings.from_env()
        self.settings = settings

    @classmethod
    def from_config(cls, config: KctConfig) -> Kct:
        """Wired from a loaded ``kct.yaml``: connections, strong aggregates, conflict policies."""
        return cls(config=config)

    @cached_property
    def resolver(self) -> ConflictResolver | None:
        """The conflict resolver of the configuration's ``conflicts`` section, if any."""
        if self.config is None or not self.config.conflicts:
            return None
        return resolver_from_config(self.config.conflicts)

    @cached_property
    def tracing(self) -> OpenTelemetryTracingInterceptor | None:
        """The tracing interceptor, when ``settings.tracing`` is enabled."""
        if not self.settings.tracing.enabled:
            return None
        # Its exporter thread encodes spans holding the GIL: keep it from holding
        # the application's threads for up to 5 ms (see switch_interval).
        shorten_switch_interval()
        return OpenTelemetryTracingInterceptor.from_settings(self.settings.tracing)

    @cached_property
    def interceptor(self) -> Interceptor | None:
        """Tracing (outermost) and the given interceptors, chained; None without any."""
        return chain(self.tracing, *self._interceptors)

    @cached_property
    def codec(self) -> AvroCodec:
        dirs = (bundled_schema_dir(), *self.settings.schema_dirs)
        return AvroCodec(AvroSchemaRegistry.from_directories(*dirs))

    @cached_property
    def clock(self) -> HybridLogicalClock:
        return HybridLogicalClock(self.settings.node_id)

    @cached_property
    def producer(self) -> KafkaRecordProducer:
        return KafkaRecordProducer(self.settings.kafka)

    @cached_property
    def transactions(self) -> KafkaTransactionalProducer:
        """This process's transactional producer (its id is unique to this node)."""
        return KafkaTransactionalProducer(self.settings.kafka, f"kct-{self.settings.node_id}")

    @cached_property
    def locks(self) -> ZooKeeperLockService:
        return ZooKeeperLockService(self.settings.zookeeper, identifier=self.settings.node_id)

    @cached_property
    def admin(self) -> KafkaAdmin:
        return KafkaAdmin(self.settings.kafka)

    @cached_property
    def index(self) -> RedisEventPositionIndex:
        return RedisEventPositionIndex(self.settings.redis)

    @cached_property
    def publisher(self) -> EventPublisher:
        return EventPublisher(
            self.producer, self.codec, self.clock, self.index, interceptor=self.interceptor
        )

    @cached_property
    def store(self) -> RedisReadModelStore:
        return RedisReadModelStore(self.settings.redis)

    @cached_property
    def notifier(self) -> RedisPositionNotifier:
        return RedisPositionNotifier(self.settings.redis)

    @cached_property
    def listener(self) -> RedisPositionListener:
        return RedisPositionListener(self.settings.redis).start()

    @cached_property
    def tracker(self) -> ProjectionTracker:
        return ProjectionTracker(self.admin)

    @cached_property
    def consistency(self) -> EventualConsistencyManager:
        return EventualConsistencyManager(
            self.tracker, self.listener, self.index, interceptor=self.interceptor
        )

    def read_after_write(self, projections: Sequence[str], timeout: float = 5.0) -> ReadAfterWrite:
        return ReadAfterWrite(self.consistency, projections, timeout)

    def boundary(
        self,
        policy: ConsistencyPolicy | None,
        topics: Mapping[str, str],
        *,
        before_commit: Callable[[OperationContext], None] | None = None,
    ) -> ConsistencyBoundary:
        """A consistency boundary; ``topics`` maps aggregate types to their topics.

        ``policy`` None means the configuration's ``consistency`` section.
        """
        if policy is None:
            if self.config is None:
                raise ConfigurationError("no consistency policy given and no kct.yaml loaded")
            policy = self.config.consistency
        return ConsistencyBoundary(
            policy,
            self.publisher,
            topics,
            locks=self.locks,
            transactions=self.transactions,
            consistency=self.consistency,
            offsets=self.admin,
            before_commit=before_commit,
            interceptor=self.interceptor,
        )

    @cached_property
    def saga_steps(self) -> RedisSagaStepStore:
        """Participants' read models and once-only step outcomes."""
        return RedisSagaStepStore(self.settings.redis)

    def saga_participant(
        self,
        name: str,
        definitions: Mapping[str, SagaDefinition],
        actions: Mapping[str, StepAction],
        **options: Any,
    ) -> SagaParticipant:
        """A member of participant ``name``'s group (:func:`saga_group`), with its own
        transactional producer."""
        saga_types = [t for t, d in definitions.items() if name in d.participants]
        group = saga_group(
            self.settings.deployment, name, saga_types, str(options.get("namespace", ""))
        )
        consumer = KafkaRecordConsumer(self.settings.kafka, group)
        transactions = KafkaTransactionalProducer(
            self.settings.kafka, f"kct-{self.settings.node_id}-{name}-{uuid.uuid4().hex[:6]}"
        )
        self._owned.append(transactions)
        return SagaParticipant(
            name,
            definitions,
            actions,
            consumer=consumer,
            transactions=transactions,
            publisher=self.publisher,
            codec=self.codec,
            store=self.saga_steps,
            dead_letters=self.dead_letters(group),
            group_metadata=consumer.group_metadata,
            clock=self.clock,
            interceptor=self.interceptor,
            **options,
        )

    def saga_client(
        self, definitions: Mapping[str, SagaDefinition], state_projection: str = SAGA_STATE
    ) -> SagaClient:
        return SagaClient(
            definitions,
            transactions=self.transactions,
            publisher=self.publisher,
            states=self.store,
            state_projection=state_projection,
            interceptor=self.interceptor,
        )

    def saga_watchdog(
        self,
        definitions: Mapping[str, SagaDefinition],
        state_projection: str = SAGA_STATE,
        *,
        namespace: str = "",
    ) -> SagaWatchdog:
        return SagaWatchdog(
            definitions,
            namespace=namespace,
            steps=self.saga_steps,
            states=self.store,
            state_projection=state_projection,
            transactions=self.transactions,
            publisher=self.publisher,
            interceptor=self.interceptor,
        )

    @cached_property
    def browser(self) -> KafkaTopicBrowser:
        """Reads topics without a consumer group (dead letters, operators' tools)."""
        return KafkaTopicBrowser(self.settings.kafka)

    @cached_property
    def replay_markers(self) -> RedisReplayMarkers:
        return RedisReplayMarkers(self.settings.redis)

    def dead_letter_replayer(self, timeout: float = 10.0) -> DeadLetterReplayer:
        """Lists dead-letter topics and replays them once per event id (``kct dlq``)."""
        return DeadLetterReplayer(self.browser, self.producer, self.replay_markers, timeout=timeout)

    def saga_operator(
        self,
        definitions: Mapping[str, SagaDefinition],
        state_projection: str = SAGA_STATE,
        *,
        namespace: str = "",
    ) -> SagaOperator:
        """Retries and compensations by an operator (``kct saga retry | compensate``)."""
        return SagaOperator(
            definitions,
            states=self.store,
            state_projection=state_projection,
            steps=self.saga_steps,
            transactions=lambda: self.transactions,
            publisher=self.publisher,
            namespace=namespace,
        )

    def saga_state_runner(
        self, definitions: Mapping[str, SagaDefinition], state_projection: str = SAGA_STATE
    ) -> ProjectionRunner:
        """The projection folding saga replies into ``saga:<id>`` documents."""
        return self.runner(saga_state_projection(state_projection, definitions, self.interceptor))

    def runner(
        self,
        projection: Projection,
        *,
        max_batch: int = 500,
        after_store: Callable[[Mapping[TopicPartition, int]], None] | None = None,
        resolver: ConflictResolver | None = None,
        idle_expiry: float | None = 5.0,
    ) -> ProjectionRunner:
        """A new member of ``projection``'s consumer group (call ``run`` on a thread).

        Events go through ``resolver`` (default: the configuration's conflict
        policies, if any) before the projection's handlers. A reorder gap on a
        partition idle for ``idle_expiry`` seconds is closed through a gap tick
        written to that partition (so a rebuild decides the same way).
        """
        consumer = KafkaRecordConsumer(self.settings.kafka, projection.name)
        return ProjectionRunner(
            projection,
            consumer,
            self.codec,
            self.store,
            self.dead_letters(projection.name),
            notifier=self.notifier,
            clock=self.clock,
            max_batch=max_batch,
            after_store=after_store,
            resolver=resolver if resolver is not None else self.resolver,
            idle_expiry=idle_expiry,
            gap_ticks=self.publisher,
            interceptor=self.interceptor,
        )

    def dead_letters(self, consumer_group: str) -> DeadLetterQueue:
        """The dead-letter queue of ``consumer_group`` (through the interceptors)."""
        return DeadLetterQueue(self.producer, consumer_group, interceptor=self.interceptor)

    def reader(self, group: str, topics: Sequence[str]) -> EventReader:
        """A member of consumer group ``group`` reading ``topics`` as events; poison
        records go to their dead-letter topics. Call ``close()`` when done."""
        reader = EventReader(
            KafkaRecordConsumer(self.settings.kafka, group),
            self.codec,
            self.dead_letters(group),
            self.clock,
        )
        reader.subscribe(topics)
        return reader

    def close(self) -> None:
        """Stop the listener, flush the producer, close Redis connections."""
        if "listener" in self.__dict__:
            self.listener.close()
        if "producer" in self.__dict__:
            self.producer.close()
        if "transactions" in self.__dict__:
            self.transactions.close()
        for owned in self._owned:
            owned.close()
        if "locks" in self.__dict__:
            self.locks.close()
        for name in ("store", "notifier", "index", "saga_steps", "browser", "replay_markers"):
            if name in self.__dict__:
                self.__dict__[name].close()
        interceptor = self.__dict__.get("interceptor") or self.__dict__.get("tracing")
        if isinstance(interceptor, Interceptor):
            interceptor.close()  # flushes buffered spans
