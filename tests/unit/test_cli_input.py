"""Every ``kct`` command with bad input: a clear error, never a traceback or a secret.

Each case runs :func:`toolkit.runtime.cli.main` in-process (the console entry
point, with its error handling) and checks its exit code and output. Commands
that need servers are pointed at 127.0.0.1 ports nothing listens on, or at
malformed URLs, so they must fail; no case can start or stop a stack: every
``stack`` case has an invalid option, offset or state directory, and
``KCT_STATE_DIR`` is a fresh temporary directory.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import click
import pytest

from toolkit.runtime.app import KctSettings, saga_group
from toolkit.runtime.cli import cli, main
from toolkit.runtime.config_cli import check_environment
from toolkit.runtime.redaction import redact

SECRET = "S3CRET-hunter2"
BASE = "version: 1\nkafka:\n  bootstrap_servers: 127.0.0.1:1\n"
# Files, by name, written into the test's directory ({dir} in arguments).
FILES = {
    "sasl-scalar.yaml": BASE + f"  security_protocol: SASL_SSL\n  sasl: 'svc:{SECRET}'\n",
    "zk-scalar.yaml": BASE + f"zookeeper:\n  auth: 'svc:{SECRET}'\n",
    "bootstrap-creds.yaml": f"version: 1\nkafka:\n  bootstrap_servers: 'svc:{SECRET}@b:9092'\n",
    "bootstrap-url.yaml": f"version: 1\nkafka:\n  bootstrap_servers: 'SSL://svc:{SECRET}@b:1'\n",
    "extra-secrets.yaml": BASE
    + f"  extra:\n    ssl.key.pem: '{SECRET}'\n    sasl.oauthbearer.config: 'secret={SECRET}'\n",
    "deep.yaml": BASE + "x: " + "[" * 5000 + "]" * 5000 + "\n",
    "globs.yaml": BASE
    + "consistency:\n  strong:\n    - {pattern: 'vip-['}\n    - {pattern: '[z-a]*'}\n",
    "redis-password.yaml": BASE + f"redis:\n  url: redis://127.0.0.1:1/0\n  password: '{SECRET}'\n",
    "redis-url-password.yaml": BASE + f"redis:\n  url: 'redis://:{SECRET}@127.0.0.1:1/0'\n",
    "bad-deployment.yaml": BASE + "deployment: '..'\n",
    "unknown-key.yaml": BASE + f"kafka_password: '{SECRET}'\n",
    "sidecar-no-service.yaml": BASE + "sidecar:\n  projections:\n    v: {topics: [a], path: /v}\n",
    "sidecar-no-token.yaml": BASE + "sidecar:\n  auth_token_env: KCT_TEST_NO_SUCH_TOKEN\n",
    "sidecar-bad-handler.yaml": BASE
    + "sidecar:\n  listen: 127.0.0.1:0\n  projections:\n    v: {handler: 'kct_no_such:x'}\n",
    "sagas.yaml": "sagas:\n  T:\n    steps:\n      - {name: A, participant: p, command: a}\n",
}
UNREACHABLE = {
    "KCT_KAFKA_BOOTSTRAP": "127.0.0.1:1",
    "KCT_REDIS_URL": f"redis://kct:{SECRET}@127.0.0.1:1/0",
    "KCT_ZOOKEEPER_HOSTS": "127.0.0.1:1",
}


@dataclass(frozen=True)
class Case:
    """``kct <args>`` with ``env``; ``code`` is the exit code wanted (1: error, 2: usage)."""

    args: tuple[str, ...]
    code: int
    expected: str = ""
    env: tuple[tuple[str, str], ...] = ()

    @property
    def id(self) -> str:
        shown = " ".join(self.args).replace("{dir}/", "")
        extra = ",".join(f"{k}={v}" for k, v in self.env)
        return f"{shown} [{extra}]" if extra else shown


def case(
    *args: str,
    code: int = 1,
    expected: str = "",
    env: Mapping[str, str] | None = None,
    **variables: str,
) -> Case:
    return Case(args, code, expected, tuple({**(env or {}), **variables}.items()))


CASES = [
    # kct
    case("no-such-command", code=2, expected="No such command"),
    case("--no-such-option", code=2, expected="No such option"),
    # kct config check
    case("config", "check", code=2, expected="Missing argument 'PATH'"),
    case("config", "check", "{dir}/missing.yaml", expected="configuration file not found"),
    case("config", "check", "{dir}", code=2, expected="is a directory"),
    case("config", "check", "/dev/zero", expected="larger than 1 MiB"),
    case("config", "check", "{dir}/big.yaml", expected="larger than 1 MiB"),
    case("config", "check", "{dir}/latin1.yaml", expected="must be UTF-8; byte 0xe9 at offset"),
    case("config", "check", "{dir}/deep.yaml", expected="nested deeper than 64 levels"),
    case("config", "check", "{dir}/sasl-scalar.yaml", expected="kafka.sasl: expected a mapping"),
    case("config", "check", "{dir}/zk-scalar.yaml", expected="zookeeper.auth: expected a mapping"),
    case("config", "check", "{dir}/bootstrap-creds.yaml", expected="must not contain credentials"),
    case("config", "check", "{dir}/bootstrap-url.yaml", expected="must not contain credentials"),
    case("config", "check", "{dir}/globs.yaml", expected="invalid glob 'vip-['"),
    case("config", "check", "{dir}/redis-url-password.yaml", expected="must not contain a pass"),
    case("config", "check", "{dir}/bad-deployment.yaml", expected="deployment: expected"),
    case("config", "check", "{dir}/unknown-key.yaml", expected="kafka_password: unknown key"),
    case("config", "check", "{dir}/extra-secrets.yaml", code=0, expected="valid"),
    case("config", "check", "{dir}/extra-secrets.yaml", "--json", code=0, expected='"***"'),
    case(
        "config",
        "check",
        "{dir}/redis-password.yaml",
        "--aggregate",
        "no-colon",
        code=2,
        expected="expected TYPE:ID",
    ),
    # kct status / lag / monitor verify|serve
    case("status", "--config", "{dir}/missing.yaml", expected="configuration file not found"),
    case("status", "--checks", "1", code=2, expected="Invalid value for '--checks'"),
    case("lag", "--config", "{dir}/extra-secrets.yaml", expected="monitor.projections is empty"),
    case("monitor", "verify", code=2, expected="Missing argument 'PROJECTION'"),
    case("monitor", "verify", "x", "--sample", "0", code=2, expected="Invalid value"),
    case("monitor", "serve", "--config", "{dir}/missing.yaml", expected="not found"),
    # kct dashboard
    case("dashboard", "--config", "{dir}/missing.yaml", expected="not found"),
    case(
        "dashboard",
        *("--config", "{dir}/extra-secrets.yaml"),
        expected="monitor.projections is empty",
    ),
    case("dashboard", "--listen", "nowhere", code=2, expected="Invalid value for '--listen'"),
    case("dashboard", "--interval", "0", code=2, expected="Invalid value for '--interval'"),
    # kct saga status / list
    case("saga", "status", code=2, expected="Missing argument 'SAGA_ID'"),
    case("saga", "status", "x", KCT_REDIS_URL="notaurl", expected="KCT_REDIS_URL: expected"),
    case(
        "saga",
        "status",
        "x",
        KCT_REDIS_URL=f"http://svc:{SECRET}@127.0.0.1:1/0",
        expected="KCT_REDIS_URL: expected a redis://",
    ),
    case("saga", "status", "x", KCT_REDIS_URL="redis://127.0.0.1:99999/0", expected="port"),
    case("saga", "status", "x", env=UNREACHABLE, expected="Redis read failed"),
    case("saga", "status", "x", KCT_DEPLOYMENT="..", expected="deployment: expected"),
    case("saga", "status", "x", "--config", "{dir}/missing.yaml", expected="not found"),
    case("saga", "status", "x", "--config", "{dir}/sasl-scalar.yaml", expected="kafka.sasl"),
    case("saga", "status", "x", "--config", "{dir}/redis-password.yaml", expected="Redis"),
    case("saga", "status", "x", "--projection", "", env=UNREACHABLE, expected="Redis"),
    case("saga", "list", "--limit", "-5", code=2, expected="-5 is not in the range x>=0"),
    case("saga", "list", "--limit", "many", code=2, expected="'many' is not a valid integer"),
    case("saga", "list", KCT_REDIS_URL="notaurl", expected="KCT_REDIS_URL: expected"),
    case("saga", "list", env=UNREACHABLE, expected="Redis read failed"),
    case("trace", code=2, expected="Missing argument 'ID'"),
    case("trace", "0" * 31 + "1", "--jaeger", "notaurl", expected="Jaeger query URL"),
    case("trace", "0" * 31 + "1", "--jaeger", "http://127.0.0.1:1", expected="cannot reach"),
    case("trace", "x", env=UNREACHABLE, expected="Redis"),
    case("trace", "x", "--wait", "-1", code=2, expected="-1.0 is not in the range 0<=x<=600"),
    case("trace", "x", "--config", "{dir}/missing.yaml", expected="not found"),
    case("saga", "list", "--json", "--config", "{dir}/deep.yaml", expected="nested deeper"),
    case("saga", "list", "--config", "{dir}/redis-url-password.yaml", expected="password"),
    case("saga", "list", "--status", "stuk", code=2, expected="'stuk' is not one of"),
    case("saga", "list", "--older-than", "soon", code=2, expected="'soon' is not a duration"),
    case("saga", "list", "--older-than", "99999d", code=2, expected="longer than ten years"),
    case("saga", "list", "--status", "stuck", env=UNREACHABLE, expected="Redis read failed"),
    # kct saga show / retry / compensate
    case("saga", "show", code=2, expected="Missing argument 'SAGA_ID'"),
    case("saga", "show", "x", KCT_REDIS_URL="notaurl", expected="KCT_REDIS_URL: expected"),
    case("saga", "show", "x", env=UNREACHABLE, expected="Redis read failed"),
    case("saga", "retry", "x", code=2, expected="Missing option '--sagas'"),
    case("saga", "retry", "x", "--sagas", "{dir}/missing.yaml", expected="cannot read saga"),
    case("saga", "retry", "x", "--sagas", "{dir}/sagas.yaml", env=UNREACHABLE, expected="Redis"),
    case("saga", "retry", "x", "--sagas", "{dir}/globs.yaml", expected="sagas"),
    case(
        "saga",
        "retry",
        *("x", "--sagas", "{dir}/sagas.yaml"),
        KCT_KAFKA_BOOTSTRAP=f"svc:{SECRET}@127.0.0.1:1",
        expected="KCT_KAFKA_BOOTSTRAP: must not contain credentials",
    ),
    case("saga", "compensate", code=2, expected="Missing argument 'SAGA_ID'"),
    case("saga", "compensate", "x", "--sagas", "{dir}", code=2, expected="is a directory"),
    case(
        "saga",
        "compensate",
        *("x", "--sagas", "{dir}/sagas.yaml"),
        env=UNREACHABLE,
        expected="Redis read failed",
    ),
    # kct dlq list / show / replay
    case("dlq", "list", code=2, expected="Missing argument 'TOPIC'"),
    case("dlq", "list", "orders dlq", code=2, expected="is not a Kafka topic name"),
    case("dlq", "list", "orders.dlq", env=UNREACHABLE, expected="error: Kafka metadata request"),
    case("dlq", "list", "orders.dlq", KCT_REDIS_URL="notaurl", expected="KCT_REDIS_URL"),
    case("dlq", "show", "..", code=2, expected="is not a Kafka topic name"),
    case("dlq", "show", "o.dlq", "--since", "yesterday", code=2, expected="neither a duration"),
    case("dlq", "show", "o.dlq", "--config", "{dir}/sasl-scalar.yaml", expected="kafka.sasl"),
    case("dlq", "replay", "o.dlq", "--since", "-5m", code=2, expected="neither a duration"),
    case(
        "dlq",
        "replay",
        "o.dlq",
        KCT_KAFKA_BOOTSTRAP=f"svc:{SECRET}@127.0.0.1:1",
        expected="KCT_KAFKA_BOOTSTRAP: must not contain credentials",
    ),
    # kct demo (never reaches the stack: every case has an invalid option or variable)
    case("demo", "--events", "-1", code=2, expected="-1 is not in the range 1<=x<=100000"),
    case("demo", "--events", "0", code=2, expected="not in the range"),
    case("demo", "--events", "1000000000", code=2, expected="not in the range"),
    case("demo", "--orders", "0", code=2, expected="not in the range 1<=x<=10000"),
    case("demo", "--orders", "x", code=2, expected="not a valid integer"),
    case(
        "demo",
        "--use-running-kafka",
        KCT_KAFKA_BOOTSTRAP=f"svc:{SECRET}@127.0.0.1:1",
        expected="KCT_KAFKA_BOOTSTRAP: must not contain credentials",
    ),
    case("demo", "--use-running-kafka", KCT_REDIS_URL="notaurl", expected="KCT_REDIS_URL"),
    case("demo", "--use-running-kafka", KCT_ZOOKEEPER_HOSTS="zk", expected="KCT_ZOOKEEPER_HOSTS"),
    case("demo", "--use-running-kafka", KCT_DEPLOYMENT="a/b", expected="KCT_DEPLOYMENT"),
    # kct sidecar (never one that gets as far as serving)
    case("sidecar", code=2, expected="Missing option '--config'"),
    case("sidecar", "--config", "{dir}/missing.yaml", expected="configuration file not found"),
    case("sidecar", "--config", "{dir}/sidecar-no-service.yaml", expected="need 'service.url'"),
    case("sidecar", "--config", "{dir}/sidecar-no-token.yaml", expected="is not set"),
    case("sidecar", "--config", "{dir}/sidecar-bad-handler.yaml", expected="cannot import"),
    case("sidecar", "--config", "{dir}/sidecar-bad-handler.yaml", "--listen=x", expected="listen"),
    case(
        "sidecar",
        *("--config", "{dir}/redis-url-password.yaml"),
        expected="must not contain a pass",
    ),
    # kct stack up / down / status (never a valid offset and state directory together)
    case("stack", "up", "--port-offset", "-1", code=2, expected="not in the range 0<=x<=20000"),
    case("stack", "up", "--port-offset", "99999", code=2, expected="not in the range"),
    case("stack", "up", KCT_STACK_PORT_OFFSET="ten", expected="KCT_STACK_PORT_OFFSET"),
    case("stack", "up", KCT_STACK_PORT_OFFSET="99999", expected="between 0 and 20000"),
    case("stack", "up", "--state-dir", "/proc/kct-no-such/dir", expected="error:"),
    case("stack", "up", "--state-dir", "{dir}/big.yaml", code=2, expected="is a file"),
    case("stack", "up", "--cluster=yes", code=2, expected="does not take a value"),
    case("stack", "up", "--cluster", "--port-offset", "-2", code=2, expected="not in the range"),
    case("stack", "up", "--cluster", KCT_STACK_PORT_OFFSET="x", expected="KCT_STACK_PORT_OFFSET"),
    case("stack", "down", "--port-offset", "x", code=2, expected="not a valid integer"),
    case("stack", "down", KCT_STACK_PORT_OFFSET="-3", expected="KCT_STACK_PORT_OFFSET"),
    case("stack", "down", "--state-dir", "/proc/kct-no-such/dir", expected="No such file"),
    case("stack", "status", "--port-offset", "-1", code=2, expected="not in the range"),
    case("stack", "status", KCT_STACK_PORT_OFFSET="1e3", expected="KCT_STACK_PORT_OFFSET"),
    case(
        "stack",
        "status",
        *("--state-dir", "/proc/kct-no-such/dir", "--port-offset", "20000"),
        expected="port offset 20000",
    ),
]


def _leaf_commands(group: click.Group, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from _leaf_commands(command, (*prefix, name))
        else:
            yield (*prefix, name)


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name, text in FILES.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "big.yaml").write_text(BASE + "x: " + "a" * (5 * 1024 * 1024) + "\n")
    (tmp_path / "latin1.yaml").write_bytes(BASE.encode() + "service: caf\xe9\n".encode("latin-1"))
    for name in (*UNREACHABLE, "KCT_DEPLOYMENT", "KCT_STACK_PORT_OFFSET"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KCT_STATE_DIR", str(tmp_path / "state"))  # never the real stack's
    monkeypatch.setenv("COLUMNS", "200")
    return tmp_path


def _run(args: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> tuple[int | str | None, str]:
    with pytest.raises(SystemExit) as info:
        main(list(args))
        sys.exit(0)  # a command that returns normally
    captured = capsys.readouterr()
    return info.value.code, captured.out + captured.err


def test_every_command_is_covered() -> None:
    covered = {c.args[: len(leaf)] for c in CASES for leaf in _leaf_commands(cli)}
    for leaf in _leaf_commands(cli):
        assert leaf in covered, f"kct {' '.join(leaf)} has no bad-input case"


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_input_gives_a_clear_error_without_traceback_or_secret(
    case: Case,
    workdir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name, value in case.env:
        monkeypatch.setenv(name, value)
    args = tuple(arg.replace("{dir}", str(workdir)) for arg in case.args)
    code, output = _run(args, capsys)
    assert "Traceback" not in output
    assert SECRET not in output
    assert code == case.code, output
    assert case.expected in output
    if code == 1 and args[:2] != ("stack", "status"):  # status: a table of what is down
        assert output.startswith("error: "), output


def test_unexpected_errors_are_one_line_without_traceback_and_redacted(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken(path: object) -> None:
        raise ValueError(f"boom at redis://svc:{SECRET}@h/0 password={SECRET}\nsecond line")

    monkeypatch.setattr("toolkit.runtime.config_cli.load_config", broken)
    code, output = _run(("config", "check", str(workdir / "deep.yaml")), capsys)
    assert code == 1
    assert output.strip() == (
        "error: unexpected ValueError: boom at redis://***@h/0 password=*** "
        "(a bug: please report it; -v shows more)"
    )


def test_interrupt_and_os_errors_are_one_line(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def interrupted(path: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("toolkit.runtime.config_cli.load_config", interrupted)
    code, output = _run(("config", "check", str(workdir / "deep.yaml")), capsys)
    assert (code, output.strip()) == (130, "aborted")  # after click's newline

    def denied(path: object) -> None:
        raise PermissionError(13, "Permission denied", "/etc/kct.yaml")

    monkeypatch.setattr("toolkit.runtime.config_cli.load_config", denied)
    code, output = _run(("config", "check", str(workdir / "deep.yaml")), capsys)
    assert (code, output) == (1, "error: Permission denied: /etc/kct.yaml\n")


def test_redact_masks_url_credentials_and_secret_pairs_but_not_field_paths() -> None:
    assert redact("at rediss://u:pw@h:1/0 and redis://:pw@h") == (
        "at rediss://***@h:1/0 and redis://***@h"
    )
    assert redact("clientSecret=abc scope=x (password='pw')") == (
        "clientSecret=*** scope=x (password='***')"
    )
    text = "kct.yaml:7: kafka.sasl.password: expected a non-empty value"
    assert redact(text) == text


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("KCT_REDIS_URL", "notaurl", "expected a redis://, rediss:// or unix:// URL"),
        ("KCT_REDIS_URL", f"redis://:{SECRET}@h:port/0", "the port is not 1-65535"),
        ("KCT_REDIS_URL", f"redis://:{SECRET}@h/db", "db: a number"),
        ("KCT_REDIS_URL", "unix://", "unix:///path"),
        ("KCT_KAFKA_BOOTSTRAP", f"u:{SECRET}@h:1", "must not contain credentials"),
        ("KCT_KAFKA_BOOTSTRAP", "h", "expected 'host:port"),
        ("KCT_ZOOKEEPER_HOSTS", "h:0", "expected 'host:port"),
        ("KCT_DEPLOYMENT", ".", "expected 1-64 characters"),
    ],
)
def test_check_environment_names_the_variable_and_never_echoes_a_url(
    name: str, value: str, expected: str
) -> None:
    from toolkit.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match=name) as info:
        check_environment({name: value})
    assert expected in str(info.value)
    assert SECRET not in str(info.value)


def test_check_environment_accepts_good_and_unset_variables() -> None:
    check_environment({})
    check_environment(
        {
            "KCT_REDIS_URL": f"rediss://u:{SECRET}@redis.internal:6380/2",
            "KCT_KAFKA_BOOTSTRAP": "k1:9092,k2:9092",
            "KCT_ZOOKEEPER_HOSTS": "127.0.0.1:12181",
            "KCT_DEPLOYMENT": "eu-west.prod_2",
        }
    )
    check_environment({"KCT_REDIS_URL": "unix:///run/redis.sock", "KCT_REDIS_URL_X": "x"})


# --- saga consumer groups: namespaced by deployment, saga type and participant ------------


def test_saga_groups_are_namespaced_by_deployment_saga_type_and_participant() -> None:
    assert saga_group("default", "payment", ["OrderFulfillment"]) == (
        "kct.default.saga.OrderFulfillment.payment"
    )
    assert saga_group("prod", "payment", ["Refund", "OrderFulfillment"], "shop-1-") == (
        "kct.prod.saga.OrderFulfillment+Refund.shop-1-payment"
    )
    assert saga_group("a", "p", ["T"]) != saga_group("b", "p", ["T"])
    assert saga_group("a", "p", ["T"]) != saga_group("a", "p", ["U"])


def test_deployment_comes_from_kct_yaml_or_the_environment_default_default() -> None:
    from toolkit.config import parse_config

    assert KctSettings().deployment == "default"
    assert KctSettings.from_env({}).deployment == "default"
    assert KctSettings.from_env({"KCT_DEPLOYMENT": "ci-42"}).deployment == "ci-42"
    config = parse_config(BASE + "deployment: staging\n", environ={})
    assert KctSettings.from_config(config).deployment == "staging"
    from toolkit.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="deployment"):
        KctSettings(deployment="a b")


def test_participants_join_the_namespaced_group(monkeypatch: pytest.MonkeyPatch) -> None:
    """``Kct.saga_participant`` names its consumer group and dead-letter label with it."""
    from examples.order_fulfillment.services import SAGA_TYPE, definitions
    from toolkit.runtime import app

    groups: list[str] = []

    class Consumer:
        def __init__(self, settings: object, group: str) -> None:
            groups.append(group)
            raise RuntimeError("stop here: no Kafka in unit tests")

    monkeypatch.setattr(app, "KafkaRecordConsumer", Consumer)
    kct = app.Kct(KctSettings(deployment="ci-7"))
    with pytest.raises(RuntimeError, match="stop here"):
        kct.saga_participant("inventory", definitions(), {}, namespace="shop-x-")
    assert groups == [f"kct.ci-7.saga.{SAGA_TYPE}.shop-x-inventory"]


# --- the installed entry point ----------------------------------------------------------------


ENTRY_POINT = "from toolkit.runtime.cli import main; main()"  # what the kct script runs


def test_the_console_script_fails_cleanly(tmp_path: Path) -> None:
    """``KCT_REDIS_URL=notaurl kct saga status x`` through the real entry point."""
    env = {**os.environ, "KCT_REDIS_URL": "notaurl", "KCT_STATE_DIR": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-c", ENTRY_POINT, "saga", "status", "x"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr == (
        "error: KCT_REDIS_URL: expected a redis://, rediss:// or unix:// URL "
        "(variable='KCT_REDIS_URL')\n"
    )
    assert "Traceback" not in result.stdout + result.stderr


@pytest.mark.slow
def test_demo_against_unreachable_servers_fails_cleanly(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """About 30 s: the admin request times out. Nothing listens on 127.0.0.1:1."""
    for name, value in UNREACHABLE.items():
        monkeypatch.setenv(name, value)
    code, output = _run(("demo", "--use-running-kafka", "--events", "1", "--orders", "1"), capsys)
    assert code == 1
    assert output.startswith("error: Kafka did not answer"), output
    assert "Traceback" not in output and SECRET not in output
