"""Shared pytest wiring: integration tests get the `integration` marker by folder."""

from __future__ import annotations

from pathlib import Path

import pytest

_MARK_BY_FOLDER = {"integration": pytest.mark.integration, "faults": pytest.mark.faults}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        folder = Path(str(item.fspath)).parent.name
        mark = _MARK_BY_FOLDER.get(folder)
        if mark is not None:
            item.add_marker(mark)
