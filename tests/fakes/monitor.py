"""In-memory ``LogInspector`` and ``RecordTimestamps`` over an ``InMemoryLog``."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from tests.fakes.log import InMemoryLog
from toolkit.errors import AdminError
from toolkit.ports import GroupMembers, LogOffsets
from toolkit.positions import TopicPartition

__all__ = ["InMemoryLogInspector"]


class InMemoryLogInspector:
    """LogInspector and RecordTimestamps over an InMemoryLog (one partition per topic).

    ``members`` sets a group's live members; ``start`` moves a topic's log start
    (retention); ``fail`` makes every request raise AdminError; ``reads``
    counts the timestamps asked for.
    """

    def __init__(self, log: InMemoryLog) -> None:
        self.log = log
        self.members: dict[str, GroupMembers] = {}
        self.start: dict[str, int] = {}
        self.fail = False
        self.reads = 0

    def _check(self) -> None:
        if self.fail:
            raise AdminError("injected failure")

    def log_offsets(self, topics: Iterable[str]) -> dict[TopicPartition, LogOffsets]:
        self._check()
        out = {}
        for topic in topics:
            if topic not in self.log.topics:
                continue  # no such topic: absent, as Kafka leaves it
            stable = len(self.log.topics[topic])
            end = stable + self.log.pending.get(topic, 0)
            out[TopicPartition(topic, 0)] = LogOffsets(self.start.get(topic, 0), stable, end)
        return out

    def group_offsets(
        self, groups: Mapping[str, Sequence[TopicPartition]]
    ) -> dict[str, dict[TopicPartition, int]]:
        self._check()
        return {
            group: {tp: o for tp, o in self.log.committed.get(group, {}).items() if tp in tps}
            for group, tps in groups.items()
        }

    def group_members(self, groups: Sequence[str]) -> dict[str, GroupMembers]:
        self._check()
        return {g: self.members.get(g, GroupMembers("empty", 0)) for g in groups}

    def timestamps(
        self, offsets: Mapping[TopicPartition, int], timeout: float
    ) -> dict[TopicPartition, int]:
        self._check()
        out: dict[TopicPartition, int] = {}
        for tp, offset in offsets.items():
            self.reads += 1
            records = self.log.topics.get(tp.topic, [])
            stamp = records[offset].timestamp_ms if offset < len(records) else None
            if stamp is not None:
                out[tp] = stamp
        return out
