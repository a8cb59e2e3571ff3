"""Contract suites: one abstract suite per port, each with a ``make_*()`` factory.

A suite is a class named ``...Contract`` (pytest does not collect it); a test
module subclasses it as ``Test...`` and implements the factories, once in
``tests/unit/test_contracts.py`` for the in-memory implementation and once
in ``tests/integration/test_contracts.py`` for the real adapter. Both must
pass the same assertions: what the suite checks is what the port promises.
"""

from __future__ import annotations

import uuid

from tests.waiting import eventually

__all__ = ["eventually", "unique"]


def unique(prefix: str) -> str:
    """A name no other test uses (projections, groups, aggregates on shared servers)."""
    return f"contract-{prefix}-{uuid.uuid4().hex[:10]}"
