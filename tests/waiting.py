"""Waiting in tests: poll a condition until it holds, fail with what was awaited."""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["eventually"]


def eventually(
    check: Callable[[], bool],
    timeout: float = 10.0,
    what: str = "condition",
    every: float = 0.05,
) -> None:
    """Wait until ``check()`` holds, checking every ``every`` seconds; fail the test
    (``AssertionError`` naming ``what``) after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not hold within {timeout} s")
        time.sleep(every)
