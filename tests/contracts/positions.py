"""Contracts of ``PositionNotifier``/``PositionListener`` and ``EventPositionIndex``."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod

from tests.contracts import unique
from toolkit.ports import EventPositionIndex, PositionListener, PositionNotifier
from toolkit.positions import Position, TopicPartition

__all__ = ["EventPositionIndexContract", "PositionNotifierContract"]

TP0, TP1 = TopicPartition("contract.orders", 0), TopicPartition("contract.orders", 1)


class PositionNotifierContract(ABC):
    """Announcements reach a listener, which keeps the highest offsets (or a rewind's)."""

    @abstractmethod
    def make_pair(self) -> tuple[PositionNotifier, PositionListener]:
        """A notifier and a listener already listening to it."""

    def publish_and_wait(
        self,
        notifier: PositionNotifier,
        listener: PositionListener,
        projection: str,
        offsets: dict[TopicPartition, int],
        *,
        rewound: bool = False,
    ) -> int:
        before = listener.version
        notifier.publish(projection, offsets, rewound=rewound)
        deadline = time.monotonic() + 10.0
        version = before
        while version == before and time.monotonic() < deadline:
            version = listener.wait_for_update(before, 1.0)
        assert version > before, "the announcement did not arrive"
        return version

    def test_nothing_announced_is_empty(self) -> None:
        _, listener = self.make_pair()
        assert listener.latest(unique("p")) == {}

    def test_an_announcement_wakes_a_waiter_and_shows_in_latest(self) -> None:
        notifier, listener = self.make_pair()
        name = unique("p")
        self.publish_and_wait(notifier, listener, name, {TP0: 5, TP1: 2})
        assert listener.latest(name) == {TP0: 5, TP1: 2}

    def test_the_listener_keeps_the_highest_offsets(self) -> None:
        notifier, listener = self.make_pair()
        name = unique("p")
        self.publish_and_wait(notifier, listener, name, {TP0: 5})
        self.publish_and_wait(notifier, listener, name, {TP0: 3, TP1: 1})
        assert listener.latest(name) == {TP0: 5, TP1: 1}

    def test_a_rewind_lowers_what_the_listener_holds(self) -> None:
        notifier, listener = self.make_pair()
        name = unique("p")
        self.publish_and_wait(notifier, listener, name, {TP0: 5, TP1: 4})
        self.publish_and_wait(notifier, listener, name, {TP0: 2}, rewound=True)
        assert listener.latest(name) == {TP0: 2, TP1: 4}

    def test_projections_are_separate(self) -> None:
        notifier, listener = self.make_pair()
        one, two = unique("p"), unique("p")
        self.publish_and_wait(notifier, listener, one, {TP0: 5})
        assert listener.latest(two) == {}

    def test_waiting_without_an_announcement_times_out_with_the_same_version(self) -> None:
        _, listener = self.make_pair()
        version = listener.version
        started = time.monotonic()
        assert listener.wait_for_update(version, 0.2) == version
        assert time.monotonic() - started >= 0.15


class EventPositionIndexContract(ABC):
    """Event ids map to where their events were written."""

    @abstractmethod
    def make_index(self) -> EventPositionIndex: ...

    def test_recorded_events_are_found_and_others_are_not(self) -> None:
        index = self.make_index()
        first, second = unique("e"), unique("e")
        index.record([(first, Position("t", 0, 7)), (second, Position("t", 2, 0))])
        assert index.lookup(first) == Position("t", 0, 7)
        assert index.lookup(second) == Position("t", 2, 0)
        assert index.lookup(unique("e")) is None

    def test_nothing_to_record_is_fine(self) -> None:
        self.make_index().record([])
