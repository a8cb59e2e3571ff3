"""In-memory ``OffsetSource`` over an :class:`~tests.fakes.log.InMemoryLog`."""

from __future__ import annotations

from collections.abc import Iterable

from tests.fakes.log import InMemoryLog
from toolkit.positions import TopicPartition

__all__ = ["InMemoryOffsets"]


class InMemoryOffsets:
    """OffsetSource over an InMemoryLog; counts how often it is asked."""

    def __init__(self, log: InMemoryLog) -> None:
        self.log = log
        self.queries = 0

    def committed_offsets(self, group: str, topics: Iterable[str]) -> dict[TopicPartition, int]:
        self.queries += 1
        wanted = set(topics)
        return {tp: o for tp, o in self.log.committed.get(group, {}).items() if tp.topic in wanted}

    def end_offsets(
        self, topics: Iterable[str], *, include_open_transactions: bool = False
    ) -> dict[TopicPartition, int]:
        ends = {TopicPartition(t, 0): len(self.log.topics.get(t, [])) for t in topics}
        if include_open_transactions:
            return {tp: end + self.log.pending.get(tp.topic, 0) for tp, end in ends.items()}
        return ends
