"""In-memory ``TransactionalProducer`` over an :class:`~tests.fakes.log.InMemoryLog`.

A transaction buffers its records and consumer offsets; the log sees them
only at commit (counted in ``log.pending`` while open), so readers never see
an aborted record. ``fail_commits`` makes the next commits raise
``TransactionAborted`` (nothing written), like a fenced or timed-out
transaction.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any

from tests.fakes.log import InMemoryLog
from toolkit.errors import TransactionAborted
from toolkit.ports import OutgoingRecord
from toolkit.positions import Position, TopicPartition

__all__ = ["InMemoryTransaction", "InMemoryTransactionalProducer"]


class InMemoryTransaction:
    """Buffers records and offsets; the log sees them only at commit."""

    def __init__(self, owner: InMemoryTransactionalProducer) -> None:
        self._owner = owner
        self._records: list[OutgoingRecord] = []
        self._offsets: tuple[Mapping[TopicPartition, int], Any] | None = None
        self._done = False

    def produce(self, records: Sequence[OutgoingRecord]) -> list[Position]:
        pending = self._owner.log.pending
        for record in records:
            pending[record.topic] = pending.get(record.topic, 0) + 1
        self._records.extend(records)
        return [Position(r.topic, 0, 0) for r in records]  # not known before the commit

    def send_offsets(self, offsets: Mapping[TopicPartition, int], group_metadata: Any) -> None:
        self._offsets = (dict(offsets), group_metadata)

    def commit(self) -> None:
        self._end()
        if self._owner.fail_commits > 0:
            self._owner.fail_commits -= 1
            raise TransactionAborted("injected abort")
        self._owner.log.produce(self._records)
        if self._offsets is not None:
            offsets, group = self._offsets
            self._owner.log.committed.setdefault(str(group), {}).update(offsets)
        self._owner.commits += 1

    def abort(self) -> None:
        self._end()

    def _end(self) -> None:
        if self._done:
            return
        self._done = True
        pending = self._owner.log.pending
        for record in self._records:
            pending[record.topic] -= 1

    def __enter__(self) -> InMemoryTransaction:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self._done:
            self.abort()


class InMemoryTransactionalProducer:
    """Starts :class:`InMemoryTransaction`s; counts commits."""

    def __init__(self, log: InMemoryLog) -> None:
        self.log = log
        self.fail_commits = 0
        self.commits = 0

    def begin(self) -> InMemoryTransaction:
        return InMemoryTransaction(self)

    def close(self) -> None:
        pass
