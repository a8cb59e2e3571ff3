"""The wheel works on its own: built from this checkout, installed into a fresh
virtualenv, ``kct --help`` and ``kct demo`` run there with no source checkout.

The virtualenv gets the wheel and nothing of the checkout; its dependencies
come from this test run's environment through a ``.pth`` line naming that
environment's site-packages (``.pth`` files *inside* it, such as the editable
install's, are not processed), so the test needs no network and takes seconds.
The wheel is built with pip (hatchling from pip's cache). It checks that
``toolkit`` is imported from the new virtualenv and that ``examples`` is not
importable at all.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.integration.conftest import Endpoints

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def _run(args: list[str], cwd: Path, env: dict[str, str], timeout: float = 300) -> str:
    result = subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert result.returncode == 0, f"{args}: {result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv with the wheel of this checkout; returns its bin directory."""
    root = tmp_path_factory.mktemp("wheel")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(root), str(REPO)],
        root,
        env,
    )
    (wheel,) = root.glob("kafka_consistency_toolkit-*.whl")
    venv = root / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], root, env)
    python = venv / "bin" / "python"
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "--no-deps",
            "-q",
            str(wheel),
        ],
        root,
        env,
    )
    site = Path(
        _run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            root,
            env,
        ).strip()
    )
    (site / "kct-test-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv / "bin"


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return {**env, **extra}


def test_the_installed_package_comes_from_the_wheel(installed: Path, tmp_path: Path) -> None:
    code = (
        "import importlib.util, toolkit, connectors; "
        "print(toolkit.__file__); print(connectors.__file__); "
        "print(importlib.util.find_spec('examples')); "
        "import toolkit.runtime.demo_shop.services as s; print(s.SAGAS_FILE.is_file())"
    )
    out = _run([str(installed / "python"), "-c", code], tmp_path, _clean_env()).splitlines()
    venv = str(installed.parent)
    assert out[0].startswith(venv) and out[1].startswith(venv), out
    assert out[2] == "None"  # no source checkout on the path
    assert out[3] == "True"  # sagas.yaml travels in the wheel
    for package in ("toolkit", "connectors"):
        assert list(installed.parent.glob(f"lib/python3*/site-packages/{package}/py.typed"))


def test_kct_help_and_kct_demo_run_from_the_wheel(
    installed: Path, tmp_path: Path, endpoints: Endpoints
) -> None:
    kct = str(installed / "kct")
    help_text = _run([kct, "--help"], tmp_path, _clean_env())
    for command in ("demo", "saga", "dlq", "stack"):
        assert command in help_text
    # Against the running local stack (kct demo attaches to it), or your own servers.
    args = [kct, "demo", "--events", "4", "--orders", "8"]
    env = _clean_env()
    if endpoints.log_dir is None:
        args.append("--use-running-kafka")
    out = _run(args, tmp_path, env, timeout=600)
    assert "ok: all 4 events of this run consumed" in out
    assert "ok: stock and money conserved" in out
