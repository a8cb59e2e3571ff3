"""The core speaks to ports: no driver import anywhere in toolkit/ but the composition root."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DRIVERS = {"confluent_kafka", "redis", "kazoo", "fastavro", "opentelemetry"}
CORE = sorted(
    p for p in (ROOT / "toolkit").rglob("*.py") if "runtime" not in p.relative_to(ROOT).parts
)


def _imported_roots(path: Path) -> set[str]:
    roots: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def test_core_modules_exist() -> None:
    assert len(CORE) >= 8


@pytest.mark.parametrize("path", CORE, ids=lambda p: str(p.relative_to(ROOT)))
def test_core_imports_no_driver_and_no_connector(path: Path) -> None:
    forbidden = _imported_roots(path) & (DRIVERS | {"connectors"})
    assert not forbidden, f"{path.name} imports {sorted(forbidden)}; go through a port"
