"""Kafka administration: topics, end offsets, and consumer groups' committed offsets.

``KafkaAdmin`` implements the ``OffsetSource`` port. End offsets are read with
``read_committed`` isolation (the last stable offset), so open or aborted
transactions do not count as lag. ``create_topics`` is idempotent and returns
only once every partition has a leader, so a write right after it succeeds.
Its replication comes from the call, else from the settings (kct.yaml's
``kafka.topics``), else from the cluster: min(3, brokers) replicas and
``min.insync.replicas`` min(2, replicas); asking for more replicas than the
cluster has brokers raises ``AdminError`` naming both numbers.

Failure modes: every Kafka error is translated into ``AdminError`` naming the
topic or group; a request that gets no answer in ``timeout`` seconds raises
``AdminError`` too.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, TypeVar

from confluent_kafka import (
    ConsumerGroupTopicPartitions,
    IsolationLevel,
    KafkaError,
    KafkaException,
)
from confluent_kafka import TopicPartition as KafkaTopicPartition
from confluent_kafka.admin import AdminClient

# Re-exported by confluent_kafka.admin at run time, but not in its type stubs.
from confluent_kafka.admin._listoffsets import ListOffsetsResultInfo, OffsetSpec
from confluent_kafka.admin._metadata import ClusterMetadata
from confluent_kafka.cimpl import NewTopic

from connectors.kafka.errors import kafka_error
from connectors.kafka.settings import KafkaSettings
from toolkit.errors import AdminError
from toolkit.positions import TopicPartition

__all__ = ["KafkaAdmin"]

_T = TypeVar("_T")
_LATEST = OffsetSpec.latest()  # type: ignore[no-untyped-call]

# Answers that only mean "metadata is still settling" (a new topic's leader,
# a group coordinator loading); librdkafka does not flag all as retriable.
_TRANSIENT = frozenset(
    {
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.UNKNOWN_TOPIC_OR_PART,
        KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
        KafkaError.COORDINATOR_NOT_AVAILABLE,
        KafkaError.NOT_COORDINATOR,
    }
)


PARTITIONS_TTL = 5.0  # seconds a topic's partition list is trusted


class KafkaAdmin:
    """Topic management and offset queries."""

    def __init__(self, settings: KafkaSettings, *, timeout: float = 30.0) -> None:
        self._admin = AdminClient(settings.client_config())  # type: ignore[arg-type]
        self._timeout = timeout
        # topic -> (valid until, partition ids): see partitions()
        self._known_partitions: dict[str, tuple[float, list[int]]] = {}
        self._replication_factor = settings.replication_factor
        self._min_insync_replicas = settings.min_insync_replicas

    def create_topics(
        self,
        names: Iterable[str],
        *,
        partitions: int = 3,
        replication_factor: int | None = None,
        min_insync_replicas: int | None = None,
        config: Mapping[str, str] | None = None,
    ) -> None:
        """Create topics that do not exist yet and wait until they are usable.

        Replication: the arguments, else the settings, else fit to the cluster
        (see the module docstring); ``config`` may still override
        ``min.insync.replicas``.
        """
        wanted = list(dict.fromkeys(names))
        if not wanted:
            return
        self._forget_partitions(wanted)
        replicas, isr = self._replication(wanted, replication_factor, min_insync_replicas)
        topic_config = {"min.insync.replicas": str(isr), **dict(config or {})}
        futures = self._admin.create_topics(
            [NewTopic(n, partitions, replicas, config=topic_config) for n in wanted],
            request_timeout=self._timeout,
        )
        self._await_topics(futures, "create", already_done=KafkaError.TOPIC_ALREADY_EXISTS)
        self._wait_for_leaders(wanted)

    def _replication(
        self, topics: list[str], replication_factor: int | None, min_insync_replicas: int | None
    ) -> tuple[int, int]:
        """(replication factor, min.insync.replicas) for new topics, checked against the cluster."""
        brokers = len(self._metadata().brokers)
        replicas = replication_factor or self._replication_factor or max(1, min(3, brokers))
        if replicas > brokers:
            raise AdminError(
                f"replication factor {replicas} asked for but the cluster has {brokers} "
                f"broker{'s' if brokers != 1 else ''} (kct.yaml: kafka.topics.replication_factor)",
                topics=",".join(topics),
                replication_factor=replicas,
                brokers=brokers,
            )
        isr = min_insync_replicas or self._min_insync_replicas or min(2, replicas)
        if isr > replicas:
            raise AdminError(
                f"min.insync.replicas {isr} exceeds the replication factor {replicas}: "
                "no write could ever be acknowledged (kct.yaml: kafka.topics)",
                topics=",".join(topics),
                replication_factor=replicas,
                min_insync_replicas=isr,
            )
        return replicas, isr

    def _await_topics(
        self, futures: Mapping[str, Future[Any]], verb: str, already_done: int
    ) -> None:
        """Wait for per-topic results; the ``already_done`` error code counts as success."""
        for name, future in futures.items():
            try:
                self._result(future, topic=name)
            except KafkaException as exc:
                if exc.args[0].code() != already_done:
                    raise AdminError(
                        f"cannot {verb} topic: {exc.args[0].str()}", topic=name
                    ) from exc

    def _result(self, future: Future[Any], **context: str) -> object:
        """A request's answer; raises AdminError when Kafka does not answer in time."""
        try:
            return future.result(timeout=self._timeout)
        except FutureTimeout:
            raise AdminError(
                "Kafka did not answer the admin request in time", timeout_s=self._timeout, **context
            ) from None

    def _wait_for_leaders(self, topics: list[str]) -> None:
        deadline = time.monotonic() + self._timeout
        delay = 0.01
        while True:
            metadata = self._metadata()
            ready = all(
                t in metadata.topics
                and metadata.topics[t].error is None
                and metadata.topics[t].partitions
                and all(p.leader >= 0 for p in metadata.topics[t].partitions.values())
                for t in topics
            )
            if ready:
                return
            if time.monotonic() > deadline:
                raise AdminError("topics have no leader yet", topics=",".join(topics))
            time.sleep(delay)
            delay = min(delay * 2, 0.5)

    def delete_topics(self, names: Iterable[str]) -> None:
        names = list(names)
        self._forget_partitions(names)
        futures = self._admin.delete_topics(names, request_timeout=self._timeout)
        self._await_topics(futures, "delete", already_done=KafkaError.UNKNOWN_TOPIC_OR_PART)

    def _metadata(self, topic: str | None = None) -> ClusterMetadata:
        try:
            return self._admin.list_topics(topic=topic, timeout=self._timeout)
        except KafkaException as exc:
            error = kafka_error(exc)
            raise AdminError(
                f"Kafka did not answer the metadata request: {error.str()}",
                timeout_s=self._timeout,
                code=error.name(),
            ) from exc

    def topics(self) -> set[str]:
        metadata = self._metadata()
        return {name for name in metadata.topics if not name.startswith("__")}

    def partitions(self, topics: Iterable[str]) -> list[TopicPartition]:
        """Every partition of the topics; raises AdminError for a topic that does not exist.

        A topic's partitions are remembered for ``PARTITIONS_TTL`` seconds: every
        barrier and wait asks for them, and the metadata round trip was half a
        millisecond of each. Partitions are only ever added, and producers
        themselves learn of new ones only at their own metadata refresh (minutes).
        """
        found: list[TopicPartition] = []
        now = time.monotonic()
        for topic in topics:
            known = self._known_partitions.get(topic)
            if known is None or known[0] < now:
                # Ask for this topic only: a whole-cluster metadata request grows
                # with the number of topics.
                described = self._metadata(topic).topics.get(topic)
                if described is None or described.error is not None:
                    self._known_partitions.pop(topic, None)
                    raise AdminError("topic does not exist", topic=topic)
                known = (now + PARTITIONS_TTL, sorted(described.partitions))
                self._known_partitions[topic] = known
            found.extend(TopicPartition(topic, p) for p in known[1])
        return found

    def _forget_partitions(self, topics: Iterable[str]) -> None:
        """Ask Kafka again next time: the topics are being created or deleted."""
        for topic in topics:
            self._known_partitions.pop(topic, None)

    def _retrying(self, request: Callable[[], _T]) -> _T:
        """Run a request again while Kafka answers with a retriable error
        (e.g. a leader not yet known right after topic creation)."""
        deadline = time.monotonic() + self._timeout
        delay = 0.02
        while True:
            try:
                return request()
            except AdminError as exc:
                cause = exc.__cause__
                retriable = isinstance(cause, KafkaException) and (
                    cause.args[0].retriable() or cause.args[0].code() in _TRANSIENT
                )
                if not retriable or time.monotonic() + delay > deadline:
                    raise
            time.sleep(delay)
            delay = min(delay * 2, 1.0)

    def end_offsets(
        self, topics: Iterable[str], *, include_open_transactions: bool = False
    ) -> dict[TopicPartition, int]:
        wanted = list(topics)
        isolation = (
            IsolationLevel.READ_UNCOMMITTED
            if include_open_transactions
            else IsolationLevel.READ_COMMITTED
        )
        return self._retrying(lambda: self._end_offsets(wanted, isolation))

    def _end_offsets(
        self, topics: list[str], isolation: IsolationLevel
    ) -> dict[TopicPartition, int]:
        tps = self.partitions(topics)
        if not tps:
            return {}
        futures = self._admin.list_offsets(
            {KafkaTopicPartition(tp.topic, tp.partition): _LATEST for tp in tps},
            isolation_level=isolation,
            request_timeout=self._timeout,
        )
        offsets: dict[TopicPartition, int] = {}
        for ktp, future in futures.items():
            try:
                result = self._result(future, topic=ktp.topic)
                assert isinstance(result, ListOffsetsResultInfo)
                offsets[TopicPartition(ktp.topic, ktp.partition)] = result.offset
            except KafkaException as exc:
                raise AdminError(
                    f"cannot read end offset: {exc.args[0].str()}",
                    topic=ktp.topic,
                    partition=ktp.partition,
                ) from exc
        return offsets

    def committed_offsets(self, group: str, topics: Iterable[str]) -> dict[TopicPartition, int]:
        wanted = list(topics)
        return self._retrying(lambda: self._committed_offsets(group, wanted))

    def _committed_offsets(self, group: str, topics: list[str]) -> dict[TopicPartition, int]:
        tps = self.partitions(topics)
        request = ConsumerGroupTopicPartitions(
            group, [KafkaTopicPartition(tp.topic, tp.partition) for tp in tps]
        )
        futures = self._admin.list_consumer_group_offsets([request], request_timeout=self._timeout)
        try:
            result = self._result(futures[group], group=group)
            assert isinstance(result, ConsumerGroupTopicPartitions)
        except KafkaException as exc:
            raise AdminError(
                f"cannot read committed offsets: {exc.args[0].str()}", group=group
            ) from exc
        return {
            TopicPartition(p.topic, p.partition): p.offset
            for p in result.topic_partitions or []
            if p.offset >= 0 and p.error is None
        }
