"""shorten_switch_interval: the GIL switch interval only ever gets shorter."""

from __future__ import annotations

import sys

import pytest

from toolkit.runtime.switch_interval import LATENCY_SWITCH_INTERVAL, shorten_switch_interval


def test_switch_interval_is_shortened_never_lengthened() -> None:
    before = sys.getswitchinterval()
    try:
        sys.setswitchinterval(0.005)
        shorten_switch_interval()
        assert sys.getswitchinterval() == pytest.approx(LATENCY_SWITCH_INTERVAL)
        sys.setswitchinterval(0.0001)
        shorten_switch_interval()
        assert sys.getswitchinterval() == pytest.approx(0.0001)
    finally:
        sys.setswitchinterval(before)
