"""kct's pytest plugin without servers (pytester): its option, and a clear failure, never
a skip or a hang, when there is no stack to attach to. The fixtures on the real stack:
tests/integration/test_pytest_plugin.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from toolkit.positions import ConsistencyToken, Position
from toolkit.runtime.pytest_plugin import _token

pytest_plugins = ["pytester"]


def test_the_plugin_is_registered_with_its_option(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--help")
    result.stdout.fnmatch_lines(["*--kct-start-stack*"])


def test_without_a_stack_a_test_using_the_fixtures_fails_saying_what_to_do(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in ("KCT_KAFKA_BOOTSTRAP", "KCT_REDIS_URL", "KCT_ZOOKEEPER_HOSTS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KCT_STATE_DIR", str(tmp_path / "no-stack"))
    monkeypatch.setenv("KCT_STACK_PORT_OFFSET", "19000")  # nothing listens there
    pytester.makepyfile(test_user="def test_it(kct_app):\n    raise AssertionError('ran')\n")
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*kct: no stack to attach to: run `kct stack up`*"])
    result.stdout.no_fnmatch_line("*ran*")


def test_what_was_written_becomes_one_token() -> None:
    a, b = Position("t", 0, 5), Position("t", 1, 7)
    token = ConsistencyToken.of([a, b])
    assert _token(a) == ConsistencyToken.of([a])
    assert _token([a, b]) == token
    assert _token(token.to_string()) == token
    assert _token(token) is token
