"""A merge function for the ``merge`` conflict strategy (see ``examples/kct.yaml``).

``merge(current, incoming)`` gets the payload the projection last applied for
the aggregate (or None) and a conflicting event (one whose sequence is not
above the last applied one: two writers updated the same version), and
returns the event to apply. Here: list fields are united (items added by
either writer are kept), other fields take the incoming value.
"""

from __future__ import annotations

from typing import Any

from toolkit.envelope import Envelope


def merge_carts(current: dict[str, Any] | None, incoming: Envelope) -> Envelope:
    merged = dict(incoming.payload)
    for field, value in (current or {}).items():
        if isinstance(value, list) and isinstance(merged.get(field), list):
            merged[field] = value + [v for v in merged[field] if v not in value]
    return incoming.with_changes(payload=merged)
