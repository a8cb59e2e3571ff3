"""Status rules of the monitor on scripted offset histories (no servers)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from toolkit.monitor_rules import (
    Health,
    Observation,
    PartitionWindow,
    Status,
    Thresholds,
    health_of,
    worst,
)

# (committed, last stable offset, live member) per check, one second apart.
History = Sequence[tuple[int | None, int, bool]]


def run(history: History, size: int = 5, thresholds: Thresholds | None = None) -> list[Status]:
    window = PartitionWindow(size)
    statuses = []
    for at, (committed, stable, live) in enumerate(history):
        lag = stable - (committed or 0)
        window.observe(Observation(float(at), committed, 0, stable, stable, lag, live=live))
        statuses.append(window.evaluate(None, thresholds or Thresholds()).status)
    return statuses


def test_caught_up_and_idle_is_ok_forever_even_without_members() -> None:
    assert set(run([(100, 100, False)] * 20)) == {Status.OK}


def test_a_consumer_keeping_up_is_ok() -> None:
    history = [(i * 10, i * 10 + 3, True) for i in range(12)]
    assert set(run(history)) == {Status.OK}


def test_stop_when_nobody_consumes_and_the_offset_never_moves_for_a_full_window() -> None:
    history = [(50, 100, False)] * 6
    assert run(history) == [Status.OK] * 4 + [Status.STOP] * 2


def test_stall_when_a_live_member_holds_the_partition_but_does_not_move() -> None:
    history = [(50, 100, True)] * 5
    assert run(history)[-1] is Status.STALL


def test_not_stalled_when_lag_appears_only_at_the_last_check() -> None:
    history = [(100, 100, True)] * 4 + [(100, 101, True)]
    assert run(history)[-1] is Status.OK


def test_group_without_commits_and_lag_stops() -> None:
    assert run([(None, 10, False)] * 5)[-1] is Status.STOP


def test_rewind_while_the_reset_is_in_the_window_then_ok() -> None:
    history = [(100, 100, True), (100, 100, True), (0, 100, True)] + [(100, 100, True)] * 5
    statuses = run(history)
    assert statuses[2] is Status.REWIND
    assert statuses[-1] is Status.OK  # the rewind left the window


def test_warn_while_lag_grows_then_ok_as_the_burst_drains() -> None:
    growing = [(0, 10, True), (5, 30, True), (10, 60, True), (20, 90, True)]
    draining = [(60, 90, True), (90, 90, True)]
    statuses = run(growing + draining, size=10)
    assert statuses[:2] == [Status.OK, Status.OK]  # two checks could be noise
    assert statuses[2:4] == [Status.WARN, Status.WARN]
    assert statuses[4:] == [Status.OK, Status.OK]


def test_thresholds_breach_with_their_status() -> None:
    assert run([(0, 11, True)], thresholds=Thresholds(max_lag_events=10))[-1] is Status.WARN
    assert run([(0, 10, True)], thresholds=Thresholds(max_lag_events=10))[-1] is Status.OK
    breach = Thresholds(max_lag_events=10, breach=Status.ERR)
    assert run([(0, 11, True)], thresholds=breach)[-1] is Status.ERR
    window = PartitionWindow(3)
    window.observe(Observation(0.0, 0, 0, 5, 5, 5, live=True))
    assert window.evaluate(30.5, Thresholds(max_lag_seconds=30)).status is Status.WARN
    assert window.evaluate(29.0, Thresholds(max_lag_seconds=30)).status is Status.OK


def test_err_when_committed_is_outside_the_log() -> None:
    window = PartitionWindow(3)
    window.observe(Observation(0.0, 5, 10, 20, 20, 10))
    verdict = window.evaluate(None, Thresholds())
    assert verdict.status is Status.ERR and "below the log start" in verdict.reason
    window.observe(Observation(1.0, 30, 10, 20, 20, 0))
    assert "past the log end" in window.evaluate(None, Thresholds()).reason


def test_err_when_the_read_model_is_behind_the_commit_twice() -> None:
    window = PartitionWindow(3)
    lost = Observation(0.0, 50, 0, 50, 50, 0, stored=20, has_model=True)
    window.observe(lost)
    assert window.evaluate(None, Thresholds()).status is Status.OK  # one check: a runner racing
    window.observe(lost)
    assert window.evaluate(None, Thresholds()).status is Status.ERR


def test_store_ahead_of_the_commit_is_normal() -> None:
    window = PartitionWindow(3)
    for at in range(3):
        window.observe(Observation(float(at), 40, 0, 50, 50, 10, 50, True, True))
    assert window.evaluate(None, Thresholds()).status is Status.STALL  # not ERR


def test_worst_and_health() -> None:
    assert worst([]) is Status.OK
    assert worst([Status.WARN, Status.STOP, Status.REWIND]) is Status.STOP
    assert health_of(Status.OK) is Health.HEALTHY
    assert health_of(Status.REWIND) is Health.DEGRADED
    assert [health_of(s).exit_code for s in (Status.WARN, Status.STALL, Status.ERR)] == [1, 2, 2]


def test_a_window_needs_two_observations() -> None:
    with pytest.raises(ValueError):
        PartitionWindow(1)
