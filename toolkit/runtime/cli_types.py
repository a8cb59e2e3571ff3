"""Option types the ``kct`` commands share: durations (``5m``) and points in time.

``Duration`` reads ``90``, ``90s``, ``5m``, ``2h``, ``1d`` (and ``1h30m``) as
a ``timedelta``; ``Since`` reads a duration (that long ago) or an ISO 8601
time (``2025-01-31T12:00``, UTC when no offset is given) as epoch
milliseconds. Anything else is click's usage error (exit code 2) naming the
option.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta

import click

__all__ = ["DURATION", "SINCE", "Duration", "Since", "parse_duration"]

_PART = re.compile(r"(\d+(?:\.\d+)?)([smhd]?)")
_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_MAX_SECONDS = 10 * 365 * 86400


def parse_duration(text: str) -> timedelta:
    """``5m`` -> 5 minutes; ValueError for anything that is not a duration."""
    raw = text.strip().lower()
    if not raw or len(raw) > 32 or _PART.sub("", raw):
        raise ValueError(f"{text!r} is not a duration like 90s, 5m, 2h or 1d")
    seconds = sum(float(n) * _UNIT[u] for n, u in _PART.findall(raw))
    if seconds > _MAX_SECONDS:
        raise ValueError(f"{text!r} is longer than ten years")
    return timedelta(seconds=seconds)


class Duration(click.ParamType):  # type: ignore[type-arg]  # generic only in newer click
    name = "duration"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> timedelta:
        if isinstance(value, timedelta):
            return value
        try:
            return parse_duration(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class Since(click.ParamType):  # type: ignore[type-arg]
    """A point in time as epoch milliseconds: a duration ago, or an ISO 8601 time."""

    name = "time"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> int:
        if isinstance(value, int):
            return value
        text = str(value)
        try:
            ago = parse_duration(text)
        except ValueError:
            pass
        else:
            return time.time_ns() // 1_000_000 - int(ago.total_seconds() * 1000)
        try:
            moment = datetime.fromisoformat(text[:64])
        except ValueError:
            self.fail(
                f"{text[:64]!r} is neither a duration (10m, 2h) nor an ISO 8601 time", param, ctx
            )
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return int(moment.timestamp() * 1000)


DURATION = Duration()
SINCE = Since()
