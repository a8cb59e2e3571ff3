"""The fault suite's linearizability checker catches what it must (tests/faults/history.py)."""

from __future__ import annotations

from tests.faults.history import Op, check_log, violations


def test_a_sequential_history_with_an_indeterminate_failure_is_linearizable() -> None:
    ops = [Op(0, 1, 1), Op(2, 3, None), Op(4, 5, 3), Op(4.5, 6, 4)]
    assert violations(ops, final=4) == []


def test_duplicates_gaps_and_real_time_inversions_are_reported() -> None:
    assert "values returned twice: [1]" in violations([Op(0, 1, 1), Op(0, 1, 1)], 2)[0]
    assert "no operation accounts for" in violations([Op(0, 1, 1)], final=3)[0]
    # b started after a ended, yet got the smaller value.
    [problem] = violations([Op(0, 1, 2), Op(2, 3, 1)], final=2)
    assert "real-time order broken" in problem
    # Overlapping operations may take either order.
    assert violations([Op(0, 3, 2), Op(1, 2, 1)], final=2) == []


def test_the_log_must_hold_1_to_n_with_fences_never_going_back() -> None:
    assert check_log([1, 2, 3], [5, 5, 9]) == []
    assert "not 1..3" in check_log([1, 1, 2], [5, 6, 7])[0]
    assert "stale fence" in check_log([1, 2, 3], [5, 9, 7])[0]
