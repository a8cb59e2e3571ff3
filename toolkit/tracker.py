"""Where a projection is: its consumer group's committed offsets, read from Kafka.

``ProjectionTracker`` is the source of truth for "has this projection applied
that write?": a projection has applied a position exactly when its group's
committed offset on that partition is greater than the position's offset.

Failure modes: Kafka errors surface as the ``OffsetSource``'s connector
errors (``AdminError``); nothing is cached, every answer is fresh.
"""

from __future__ import annotations

from toolkit.ports import OffsetSource
from toolkit.positions import ConsistencyToken, Position, TopicPartition

__all__ = ["ProjectionTracker"]


class ProjectionTracker:
    """Projection positions from committed offsets."""

    def __init__(self, offsets: OffsetSource) -> None:
        self._offsets = offsets

    def positions(
        self, projection: str, topics: set[str] | frozenset[str]
    ) -> dict[TopicPartition, int]:
        """Committed (next-to-read) offset per partition of ``topics``."""
        return self._offsets.committed_offsets(projection, sorted(topics))

    def has_applied(self, projection: str, position: Position) -> bool:
        committed = self.positions(projection, {position.topic})
        return position.is_applied_by(committed.get(position.topic_partition))

    def behind(self, projection: str, token: ConsistencyToken) -> dict[TopicPartition, int]:
        """Per partition of ``token`` not yet applied: how many offsets to go."""
        return token.behind(self.positions(projection, token.topics))
