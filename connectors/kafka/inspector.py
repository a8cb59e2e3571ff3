"""What the consistency monitor reads of Kafka, in batched requests.

``KafkaLogInspector`` implements the ``LogInspector`` port: for all topics at
once, one metadata request per topic and three concurrent list-offsets
requests (earliest; latest ``read_committed``, the last stable offset; latest
``read_uncommitted``, the high watermark); committed offsets with one request
per group, all groups in flight together; live members of every group in one
describe-groups request. Never one request per partition.

``KafkaRecordTimestamps`` implements ``RecordTimestamps`` with one
long-lived, group-less ``read_committed`` consumer: each call assigns every
asked partition at its offset and reads until each has given its first
record (or reached the last stable offset), so N lagging partitions cost one
round of fetches, not N.

Failure modes: every Kafka error becomes ``AdminError`` naming the topic,
partition or group; requests that get no answer in ``timeout`` seconds raise
``AdminError`` too. A describe that fails for one group reports that group as
unknown (state ``unknown``, no members) rather than failing the others.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from confluent_kafka import (
    Consumer,
    ConsumerGroupTopicPartitions,
    IsolationLevel,
    KafkaError,
    KafkaException,
)
from confluent_kafka import TopicPartition as KafkaTopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.admin._listoffsets import ListOffsetsResultInfo, OffsetSpec

from connectors.kafka.settings import KafkaSettings
from toolkit.errors import AdminError
from toolkit.ports import GroupMembers, LogOffsets
from toolkit.positions import TopicPartition

__all__ = ["KafkaLogInspector", "KafkaRecordTimestamps"]

_EARLIEST = OffsetSpec.earliest()  # type: ignore[no-untyped-call]
_LATEST = OffsetSpec.latest()  # type: ignore[no-untyped-call]


def _kafka_error(exc: KafkaException) -> str:
    error = exc.args[0] if exc.args else exc
    return error.str() if isinstance(error, KafkaError) else str(error)


class KafkaLogInspector:
    """Batched offsets and group queries for the monitor."""

    def __init__(self, settings: KafkaSettings, *, timeout: float = 10.0) -> None:
        self._admin = AdminClient(settings.client_config())  # type: ignore[arg-type]
        self._timeout = timeout

    def _result(self, future: Future[Any], **context: object) -> Any:
        try:
            return future.result(timeout=self._timeout)
        except FutureTimeout:
            raise AdminError(
                "Kafka did not answer the admin request in time", timeout_s=self._timeout, **context
            ) from None
        except KafkaException as exc:
            raise AdminError(f"admin request failed: {_kafka_error(exc)}", **context) from exc

    def partitions(self, topics: Iterable[str]) -> list[TopicPartition]:
        """Every partition of ``topics`` (a topic that does not exist has none)."""
        found: list[TopicPartition] = []
        for topic in dict.fromkeys(topics):
            try:
                metadata = self._admin.list_topics(topic=topic, timeout=self._timeout)
            except KafkaException as exc:
                raise AdminError(
                    f"metadata request failed: {_kafka_error(exc)}", topic=topic
                ) from exc
            described = metadata.topics.get(topic)
            if described is None or described.error is not None:
                continue
            found.extend(TopicPartition(topic, p) for p in sorted(described.partitions))
        return found

    def log_offsets(self, topics: Iterable[str]) -> dict[TopicPartition, LogOffsets]:
        tps = self.partitions(topics)
        if not tps:
            return {}
        ktps = [KafkaTopicPartition(tp.topic, tp.partition) for tp in tps]
        requests = [
            (spec, isolation)
            for spec, isolation in (
                (_EARLIEST, IsolationLevel.READ_UNCOMMITTED),
                (_LATEST, IsolationLevel.READ_COMMITTED),
                (_LATEST, IsolationLevel.READ_UNCOMMITTED),
            )
        ]
        inflight = [
            self._admin.list_offsets(
                dict.fromkeys(ktps, spec), isolation_level=isolation, request_timeout=self._timeout
            )
            for spec, isolation in requests
        ]
        answers: list[dict[TopicPartition, int]] = []
        for futures in inflight:
            answer: dict[TopicPartition, int] = {}
            for ktp, future in futures.items():
                result = self._result(future, topic=ktp.topic, partition=ktp.partition)
                assert isinstance(result, ListOffsetsResultInfo)
                answer[TopicPartition(ktp.topic, ktp.partition)] = result.offset
            answers.append(answer)
        start, stable, end = answers
        return {tp: LogOffsets(start[tp], stable[tp], end[tp]) for tp in tps}

    def group_offsets(
        self, groups: Mapping[str, Sequence[TopicPartition]]
    ) -> dict[str, dict[TopicPartition, int]]:
        inflight = {
            group: self._admin.list_consumer_group_offsets(
                [
                    ConsumerGroupTopicPartitions(
                        group, [KafkaTopicPartition(tp.topic, tp.partition) for tp in tps]
                    )
                ],
                request_timeout=self._timeout,
            )[group]
            for group, tps in groups.items()
            if tps
        }
        out: dict[str, dict[TopicPartition, int]] = {group: {} for group in groups}
        for group, future in inflight.items():
            result = self._result(future, group=group)
            assert isinstance(result, ConsumerGroupTopicPartitions)
            out[group] = {
                TopicPartition(p.topic, p.partition): p.offset
                for p in result.topic_partitions or []
                if p.offset >= 0 and p.error is None
            }
        return out

    def group_members(self, groups: Sequence[str]) -> dict[str, GroupMembers]:
        wanted = list(dict.fromkeys(groups))
        if not wanted:
            return {}
        futures = self._admin.describe_consumer_groups(wanted, request_timeout=self._timeout)
        out: dict[str, GroupMembers] = {}
        for group, future in futures.items():
            try:
                described = self._result(future, group=group)
            except AdminError:
                out[group] = GroupMembers("unknown", 0)
                continue
            assigned = frozenset(
                TopicPartition(tp.topic, tp.partition)
                for member in described.members or []
                if member.assignment is not None
                for tp in member.assignment.topic_partitions or []
            )
            state = getattr(described.state, "name", str(described.state)).lower()
            out[group] = GroupMembers(state, len(described.members or []), assigned)
        return out

    def delete_groups(self, groups: Sequence[str]) -> None:
        """Delete consumer groups (empty ones: ``kct monitor verify``'s scratch group)."""
        if not groups:
            return
        futures = self._admin.delete_consumer_groups(list(groups), request_timeout=self._timeout)
        for group, future in futures.items():
            self._result(future, group=group)


class KafkaRecordTimestamps:
    """Reads the timestamp of the first committed record at given offsets."""

    def __init__(self, settings: KafkaSettings) -> None:
        config = settings.client_config(**{"fetch.wait.max.ms": 10})
        config.update(
            {
                # A group id is required by the client; this one never joins or commits.
                "group.id": f"kct.monitor.timestamps.{uuid.uuid4().hex}",
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "isolation.level": "read_committed",
                "enable.partition.eof": True,
                # One record per partition is all a call needs.
                "max.partition.fetch.bytes": 65536,
            }
        )
        try:
            self._consumer = Consumer(config)
        except KafkaException as exc:
            raise AdminError(f"invalid consumer configuration: {_kafka_error(exc)}") from exc

    def timestamps(
        self, offsets: Mapping[TopicPartition, int], timeout: float
    ) -> dict[TopicPartition, int]:
        if not offsets:
            return {}
        wanted = {(tp.topic, tp.partition): offset for tp, offset in offsets.items()}
        found: dict[TopicPartition, int] = {}
        done: set[tuple[str, int]] = set()
        consumer = self._consumer
        try:
            consumer.assign([KafkaTopicPartition(t, p, o) for (t, p), o in wanted.items()])
            deadline = time.monotonic() + timeout
            while len(done) < len(wanted):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                for message in consumer.consume(num_messages=500, timeout=min(left, 0.2)):
                    key = (message.topic(), message.partition())
                    if key in done or key not in wanted:
                        continue
                    error = message.error()
                    if error is not None:
                        if error.code() == KafkaError._PARTITION_EOF:
                            done.add(key)  # nothing committed between the offset and the end
                            continue
                        if error.fatal():
                            raise KafkaException(error)
                        continue
                    offset = message.offset()
                    if offset is None or offset < wanted[key]:
                        continue  # fetched for an earlier assignment
                    done.add(key)
                    _kind, stamp = message.timestamp()
                    if stamp >= 0:
                        found[TopicPartition(*key)] = stamp
            consumer.unassign()
        except KafkaException as exc:
            raise AdminError(f"cannot read record timestamps: {_kafka_error(exc)}") from exc
        return found

    def close(self) -> None:
        self._consumer.close()
