from itertools import pairwise

from hypothesis import given
from hypothesis import strategies as st

from toolkit.hlc import HLCTimestamp, HybridLogicalClock


class SteppedClock:
    def __init__(self, readings: list[int]) -> None:
        self.readings = readings
        self.i = 0

    def __call__(self) -> int:
        value = self.readings[min(self.i, len(self.readings) - 1)]
        self.i += 1
        return value


@given(st.lists(st.integers(0, 10**13), min_size=1, max_size=200))
def test_now_is_strictly_monotonic_even_when_wall_clock_jumps_back(readings: list[int]) -> None:
    clock = HybridLogicalClock("n1", SteppedClock(readings))
    stamps = [clock.now() for _ in readings]
    assert all(a < b for a, b in pairwise(stamps))


def test_observe_moves_past_a_remote_timestamp_from_the_future() -> None:
    clock = HybridLogicalClock("local", lambda: 1_000)
    remote = HLCTimestamp(5_000, 7, "remote")
    merged = clock.observe(remote)
    assert merged > remote
    assert clock.now() > merged


def test_ties_are_broken_by_node_id() -> None:
    assert HLCTimestamp(10, 0, "a") < HLCTimestamp(10, 0, "b")


def test_string_round_trip() -> None:
    stamp = HLCTimestamp(1_700_000_000_000, 3, "svc-1")
    assert HLCTimestamp.parse(str(stamp)) == stamp
