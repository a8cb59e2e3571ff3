"""The public surface: ``from toolkit import ...`` for every name in ``__all__``, typed
packages, and a light ``import toolkit.errors`` (drivers load only with ``Kct``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import toolkit

ROOT = Path(__file__).resolve().parents[2]


def test_every_exported_name_resolves_to_the_object_of_its_module() -> None:
    assert toolkit.__all__ == sorted(toolkit.__all__)
    for name in toolkit.__all__:
        value = getattr(toolkit, name)
        assert getattr(value, "__name__", name) == name
    assert set(toolkit.__all__) <= set(dir(toolkit))


def test_the_readme_names_are_exported() -> None:
    from toolkit import Envelope, Kct, Projection, load_saga_definitions  # noqa: F401

    assert {"Kct", "Envelope", "Projection", "ConsistencyToken", "StepFailed"} <= set(
        toolkit.__all__
    )


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        toolkit.Nope  # noqa: B018


def test_importing_the_errors_loads_no_driver() -> None:
    code = (
        "import sys, toolkit.errors, toolkit.positions; "
        "loaded = {'confluent_kafka', 'redis', 'kazoo', 'fastavro'} & set(sys.modules); "
        "print(sorted(loaded))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize("package", ["toolkit", "connectors"])
def test_both_packages_are_typed(package: str) -> None:
    assert (ROOT / package / "py.typed").is_file()
