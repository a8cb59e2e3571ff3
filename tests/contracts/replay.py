"""Contracts of ``TopicBrowser`` (reading a topic without a group) and
``ReplayMarkers`` (once-only claims of replayed dead letters)."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod

from tests.contracts import unique
from tests.contracts.log import LogContract
from toolkit.errors import AdminError
from toolkit.ports import ReplayMarkers, TopicBrowser
from toolkit.positions import Position

__all__ = ["ReplayMarkersContract", "TopicBrowserContract"]


class TopicBrowserContract(LogContract):
    @abstractmethod
    def make_browser(self) -> TopicBrowser: ...

    def test_read_gives_every_record_in_offset_order_and_an_empty_topic_none(self) -> None:
        topic, empty = self.new_topic(), self.new_topic()
        offsets = self.write(topic, "a", "b", "c")
        browser = self.make_browser()
        found = browser.read(topic, None, 20.0)
        assert [(r.offset, r.value) for r in found] == list(
            zip(offsets, [b"a", b"b", b"c"], strict=True)
        )
        assert found[0].header("n") == b"a" and found[0].key == b"k"
        assert browser.read(empty, None, 20.0) == []

    def test_read_since_starts_at_the_first_record_written_then(self) -> None:
        topic = self.new_topic()
        self.write(topic, "old")
        time.sleep(0.05)
        since = time.time_ns() // 1_000_000
        self.write(topic, "new")
        browser = self.make_browser()
        assert [r.value for r in browser.read(topic, since, 20.0)] == [b"new"]
        assert browser.read(topic, since + 3_600_000, 20.0) == []

    def test_fetch_gives_the_record_at_its_coordinates_or_none(self) -> None:
        topic = self.new_topic()
        offsets = self.write(topic, "a", "b")
        browser = self.make_browser()
        found = browser.fetch(Position(topic, 0, offsets[1]), 20.0)
        assert found is not None and found.value == b"b" and found.offset == offsets[1]
        assert browser.fetch(Position(topic, 0, offsets[1] + 5), 20.0) is None

    def test_an_unknown_topic_is_an_admin_error(self) -> None:
        try:
            self.make_browser().read(unique("missing"), None, 5.0)
        except AdminError as exc:
            assert "no such topic" in str(exc)
        else:
            raise AssertionError("expected AdminError")


class ReplayMarkersContract(ABC):
    @abstractmethod
    def make_markers(self) -> ReplayMarkers: ...

    def test_the_first_claim_wins_and_the_others_see_its_mark(self) -> None:
        markers, key = self.make_markers(), unique("mark")
        assert markers.claim(key, {"state": "claimed", "by": 1}) is None
        assert markers.claim(key, {"state": "claimed", "by": 2}) == {"state": "claimed", "by": 1}

    def test_a_confirmed_mark_replaces_the_claim_and_only_it_can_be_replaced(self) -> None:
        markers, key = self.make_markers(), unique("mark")
        markers.claim(key, {"state": "claimed"})
        markers.confirm(key, {"state": "replayed", "copy": "t:0:5"})
        mark = {"state": "replayed", "copy": "t:0:5"}
        assert markers.claim(key, {"state": "claimed"}, replacing={"state": "other"}) == mark
        assert markers.claim(key, {"state": "claimed", "n": 2}, replacing=mark) is None
        assert markers.claim(key, {"state": "x"}) == {"state": "claimed", "n": 2}

    def test_a_released_claim_can_be_claimed_again(self) -> None:
        markers, key = self.make_markers(), unique("mark")
        markers.claim(key, {"state": "claimed"})
        markers.release(key)
        assert markers.claim(key, {"state": "claimed"}) is None
