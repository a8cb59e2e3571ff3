"""kct.yaml: the model, the loader's precise errors, secrets, and `kct config check`."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from textwrap import dedent

import pytest
from click.testing import CliRunner

from connectors.kafka import KafkaSettings
from connectors.redis import RedisSettings
from toolkit.config import KctConfig, load_config, parse_config
from toolkit.errors import ConfigurationError
from toolkit.runtime.cli import cli, main

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "kct.yaml"
SECRETS = {
    "KAFKA_PASSWORD": "kafka-Hunter2",
    "ZK_PASSWORD": "zk-Hunter2",
    "REDIS_PASSWORD": "redis-Hunter2",
}
BASE = "version: 1\nkafka:\n  bootstrap_servers: 127.0.0.1:19092\n"


def _parse(text: str, environ: dict[str, str] | None = None) -> KctConfig:
    return parse_config(dedent(text), source="kct.yaml", environ=environ or {})


def _error(text: str, environ: dict[str, str] | None = None) -> ConfigurationError:
    with pytest.raises(ConfigurationError) as info:
        _parse(text, environ)
    error = info.value
    assert error.__cause__ is None  # nothing chained that could leak an input
    assert error.__context__ is None or error.__suppress_context__
    return error


def _assert_secret_free(text: str) -> None:
    for secret in (*SECRETS.values(), "Hunter2", "8675309"):
        assert secret not in text


# --- malformed files: each names file, line, field and what was expected ------------


def test_yaml_syntax_error_unclosed_quote_points_where_the_quote_opens() -> None:
    error = _error("""\
        version: 1
        kafka:
          bootstrap_servers: "127.0.0.1:19092
          client_id: kct
        """)
    assert str(error).startswith(
        "kct.yaml:3: invalid YAML: found unexpected end of stream (while scanning a quoted scalar)"
    )
    assert error.context["file"] == "kct.yaml" and error.context["line"] == 3


def test_yaml_bad_indentation_is_a_syntax_error_on_that_line() -> None:
    error = _error("""\
        version: 1
        kafka:
          bootstrap_servers: 127.0.0.1:19092
         client_id: kct
        """)
    assert str(error).startswith(
        "kct.yaml:4: invalid YAML: bad indentation, this line does not line up with the ones above"
    )
    assert error.context["line"] == 4


def test_tab_indentation_is_named() -> None:
    error = _error("version: 1\nkafka:\n\tbootstrap_servers: 127.0.0.1:19092\n")
    assert str(error).startswith("kct.yaml:3: tab character: YAML indentation must use spaces")
    assert error.context["line"] == 3


def test_duplicate_key_is_an_error_with_both_lines() -> None:
    error = _error(BASE + "  client_id: a\n  client_id: b\n")
    assert "kct.yaml:5: kafka.client_id: duplicate key (first at line 4)" in str(error)
    assert (error.context["line"], error.context["field"]) == (5, "kafka.client_id")


def test_unknown_key_suggests_the_field_meant() -> None:
    error = _error("""\
        version: 1
        kafka:
          bootstrap_servers: 127.0.0.1:19092
          bootstrap_server: 127.0.0.1:19093
        """)
    assert (
        "kct.yaml:4: kafka.bootstrap_server: unknown key (did you mean 'bootstrap_servers'?)"
        in str(error)
    )
    assert "19093" not in str(error)  # the value of an unknown key is never echoed


def test_unknown_key_without_a_close_match_lists_the_fields() -> None:
    error = _error(BASE + "consistency:\n  strong:\n    - type: a\n      colour: red\n")
    assert (
        "kct.yaml:7: consistency.strong[0].colour: unknown key; expected one of: type, id, "
        "pattern, timeout, lock_timeout, projections" in str(error)
    )


def test_missing_required_field_points_at_the_parent_line() -> None:
    error = _error("version: 1\nservice: orders\nkafka:\n  client_id: kct\n")
    assert "kct.yaml:3: kafka.bootstrap_servers: required but missing" in str(error)
    assert error.context == {"file": "kct.yaml", "line": 3, "field": "kafka.bootstrap_servers"}
    top = _error("version: 1\nservice: orders\n")
    assert "kct.yaml:1: kafka: required but missing" in str(top)


def test_wrong_type_names_the_expected_type() -> None:
    error = _error(BASE + "consistency:\n  default_timeout: soon\n")
    assert "kct.yaml:5: consistency.default_timeout: expected a number, got 'soon'" in str(error)


@pytest.mark.parametrize(
    ("tail", "expected"),
    [
        (
            "consistency:\n  strong:\n    - type: a\n    - id: b\n      timeout: -3\n",
            "kct.yaml:8: consistency.strong[1].timeout: expected a number > 0, got -3",
        ),
        (
            "zookeeper:\n  session_timeout: 0\n",
            "kct.yaml:5: zookeeper.session_timeout: expected a number > 0, got 0",
        ),
        (
            "conflicts:\n  cart:\n    strategies: [deduplicate]\n    dedup_window: 0\n",
            "kct.yaml:7: conflicts.cart.dedup_window: expected a number > 0, got 0",
        ),
    ],
)
def test_out_of_range(tail: str, expected: str) -> None:
    assert expected in str(_error(BASE + tail))


def test_invalid_enums_list_the_choices() -> None:
    protocol = _error(BASE + "  security_protocol: SASL_PLAIN\n")
    assert (
        "kct.yaml:4: kafka.security_protocol: expected 'PLAINTEXT', 'SSL', 'SASL_PLAINTEXT' or "
        "'SASL_SSL', got 'SASL_PLAIN'" in str(protocol)
    )
    strategy = _error(BASE + "conflicts:\n  order: [deduplicate, newest_wins]\n")
    assert (
        "kct.yaml:5: conflicts.order[1]: expected 'last_write_wins', 'first_write_wins', "
        "'deduplicate', 'reorder', 'merge' or 'reject', got 'newest_wins'" in str(strategy)
    )
    assert strategy.context["line"] == 5


def test_sasl_protocol_needs_a_sasl_section_and_plaintext_refuses_one() -> None:
    missing = _error(BASE + "  security_protocol: SASL_SSL\n")
    assert "kct.yaml:2: kafka.sasl: required when security_protocol is SASL_SSL" in str(missing)
    extra = _error(BASE + "  sasl:\n    username: u\n    password: ${KAFKA_PASSWORD}\n", SECRETS)
    assert (
        "kct.yaml:4: kafka.sasl: only allowed with security_protocol SASL_PLAINTEXT or SASL_SSL "
        "(it is PLAINTEXT)" in str(extra)
    )
    _assert_secret_free(str(extra))


def test_undefined_variable_is_named_with_its_line_and_no_other_value() -> None:
    error = _error(
        BASE + "  client_id: ${CLIENT_ID}\nredis:\n  password: ${REDIS_PASSWORD}\n",
        {"REDIS_PASSWORD": SECRETS["REDIS_PASSWORD"]},
    )
    assert str(error).startswith(
        "kct.yaml:4: kafka.client_id: environment variable CLIENT_ID is not set "
        "(write ${CLIENT_ID:-default} for a default)"
    )
    assert error.context["line"] == 4
    _assert_secret_free(str(error))


def test_malformed_reference_is_an_error() -> None:
    error = _error(BASE + "  client_id: ${not-a-name}\n")
    assert "kct.yaml:4: kafka.client_id: expected ${NAME} or ${NAME:-default}" in str(error)


def test_redis_url_with_a_password_is_refused_without_echoing_it() -> None:
    error = _error(BASE + "redis:\n  url: redis://:Hunter2@cache:6379/0\n")
    assert "kct.yaml:5: redis.url: must not contain a password; set redis.password" in str(error)
    _assert_secret_free(str(error))


def test_invalid_strong_rules() -> None:
    error = _error(
        BASE + "consistency:\n  strong:\n    - id: a\n      pattern: 'a*'\n    - timeout: 2\n"
    )
    assert "kct.yaml:6: consistency.strong[0]: expected id or pattern, not both" in str(error)
    assert "kct.yaml:8: consistency.strong[1]: expected at least one of type, id, pattern" in str(
        error
    )


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        (
            "order: [reorder, last_write_wins, deduplicate]",
            "kct.yaml:5: conflicts.order: expected deduplicate/reorder first and "
            "'last_write_wins' last, got [reorder, last_write_wins, deduplicate]",
        ),
        (
            "order: [last_write_wins, merge]",
            "kct.yaml:5: conflicts.order: expected at most one of last_write_wins, "
            "first_write_wins, merge, reject, got ['last_write_wins', 'merge']",
        ),
        (
            "order: [deduplicate, deduplicate]",
            "kct.yaml:5: conflicts.order: strategy 'deduplicate' is listed twice",
        ),
        (
            "cart:\n    strategies: [deduplicate, merge]",
            "kct.yaml:5: conflicts.cart.merge: strategy 'merge' needs merge: "
            "'module.path:function'",
        ),
        (
            "cart:\n    strategies: [merge]\n    merge: not a path",
            "kct.yaml:7: conflicts.cart.merge: expected 'module.path:function', got 'not a path'",
        ),
        (
            "cart:\n    strategies: [reject]\n    merge: app.m:f",
            "kct.yaml:7: conflicts.cart.merge: only allowed when strategies include 'merge'",
        ),
    ],
)
def test_invalid_conflict_policies(policy: str, expected: str) -> None:
    assert expected in str(_error(BASE + "conflicts:\n  " + policy + "\n"))


def test_empty_file_top_level_list_and_unsupported_version() -> None:
    for empty in ("", "# only a comment\n"):
        assert str(_error(empty)).startswith("kct.yaml: the file is empty; expected a mapping")
    listed = _error("- version: 1\n")
    assert str(listed).startswith("kct.yaml:1: expected a mapping at the top level, got a list")
    version = _error("version: 2\nkafka:\n  anything: goes\n")
    assert str(version).startswith(
        "kct.yaml:1: version: unsupported version 2; this kct reads version 1"
    )
    assert "anything" not in str(version)  # the rest may be fine in a version 2 file


def test_every_problem_is_reported_one_per_line_and_the_first_is_in_the_context() -> None:
    error = _error(
        BASE + "zookeeper:\n  session_timeout: 0\n  lock_root: /kct/\nredis:\n  url: http://x\n"
    )
    assert str(error).splitlines()[:4] == [
        "3 problems in kct.yaml:",
        "  kct.yaml:5: zookeeper.session_timeout: expected a number > 0, got 0",
        "  kct.yaml:6: zookeeper.lock_root: expected an absolute znode path like '/kct/locks' "
        "(no trailing /), got '/kct/'",
        "  kct.yaml:8: redis.url: expected a redis:// or rediss:// URL, got scheme 'http' "
        "(file='kct.yaml', line=5, field='zookeeper.session_timeout')",
    ]


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "kct.yaml"
    with pytest.raises(ConfigurationError, match="configuration file not found") as info:
        load_config(path)
    assert info.value.context["file"] == str(path)


# --- secrets --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "password",
    ["{value: Hunter2}", "8675309", "[Hunter2]", '""'],
    ids=["mapping", "number", "list", "empty"],
)
def test_invalid_secret_is_never_echoed(password: str) -> None:
    sasl = f"  security_protocol: SASL_SSL\n  sasl:\n    username: u\n    password: {password}\n"
    error = _error(BASE + sasl)
    assert "kct.yaml:7: kafka.sasl.password: expected a" in str(error)
    _assert_secret_free(str(error))


def test_secret_in_a_typo_or_a_broken_line_is_never_echoed() -> None:
    typo = _error(BASE + "redis:\n  pasword: Hunter2\n")
    assert "kct.yaml:5: redis.pasword: unknown key (did you mean 'password'?)" in str(typo)
    broken = _error(BASE + 'redis:\n  password: "Hunter2\n')
    assert "kct.yaml:5: invalid YAML" in str(broken)
    extra = _error(BASE + "  extra:\n    ssl.keystore.password: Hunter2\n")
    assert "kct.yaml:4: kafka.extra: 'ssl.keystore.password' may not be set in extra" in str(extra)
    for error in (typo, broken, extra):
        _assert_secret_free(str(error))


def test_secrets_stay_out_of_repr_and_describe() -> None:
    config = load_config(EXAMPLE, SECRETS)
    _assert_secret_free(repr(config))
    _assert_secret_free(str(config))
    view = config.describe()
    _assert_secret_free(json.dumps(view))
    assert view["kafka"]["sasl"]["password"] == "***"
    assert view["zookeeper"]["auth"]["password"] == "***"
    assert view["redis"]["password"] == "***"
    assert config.kafka.sasl is not None
    assert config.kafka.sasl.password.get_secret_value() == SECRETS["KAFKA_PASSWORD"]


# --- what a valid file means ------------------------------------------------------------


def test_the_example_loads() -> None:
    config = load_config(EXAMPLE, SECRETS)
    assert config.source == str(EXAMPLE)
    assert config.service == "orders"
    assert config.kafka.bootstrap_servers == "kafka-1:9093,kafka-2:9093"  # ${...:-default}
    assert config.zookeeper.lock_acl == "creator_all"  # the default with auth
    assert config.redis.redis_url() == "rediss://redis.internal:6380/0"
    assert config.conflicts["account"].strategies == ("last_write_wins",)
    assert config.conflicts["cart"].merge == "examples.merging:merge_carts"
    assert "source" not in config.model_dump()


def test_defaults_for_every_section_but_kafka() -> None:
    config = _parse(BASE)
    assert config.service == "kct"
    assert config.kafka.security_protocol == "PLAINTEXT"
    assert config.zookeeper.hosts == "127.0.0.1:12181"
    assert config.zookeeper.lock_root == "/kct/locks"
    assert config.zookeeper.lock_acl == "open"
    assert config.redis.redis_url() == "redis://127.0.0.1:16379/0"
    assert config.consistency.strong == ()
    assert config.conflicts == {}
    assert not config.consistency.is_strong("order", "o-1")
    assert config.consistency.timeout_for("order", "o-1") == 5.0
    assert config.consistency.projections_for("order", "o-1") == ()
    with pytest.raises(ValueError, match="frozen"):
        config.service = "other"


def test_strong_rules_match_by_type_id_pattern_and_type_plus_pattern() -> None:
    consistency = load_config(EXAMPLE, SECRETS).consistency
    assert consistency.is_strong("account", "anything")  # type
    assert consistency.is_strong("order", "order-42")  # id
    assert consistency.is_strong("invoice", "order-42")  # id, any type
    assert consistency.is_strong("order", "vip-7")  # type + pattern
    assert not consistency.is_strong("invoice", "vip-7")  # pattern, wrong type
    assert not consistency.is_strong("order", "order-43")
    assert not consistency.is_strong("order", "VIP-7")  # globs are case-sensitive
    rule = consistency.rule_for("order", "vip-7")
    assert rule is not None and rule.kind == "type+pattern"
    pattern_only = _parse(BASE + "consistency:\n  strong:\n    - pattern: 'tmp-?'\n")
    assert pattern_only.consistency.is_strong("any", "tmp-1")
    assert not pattern_only.consistency.is_strong("any", "tmp-10")


def test_per_rule_overrides_and_defaults() -> None:
    consistency = load_config(EXAMPLE, SECRETS).consistency
    assert consistency.timeout_for("order", "vip-7") == 10.0
    assert consistency.lock_timeout_for("order", "vip-7") == 2.0
    assert consistency.projections_for("order", "vip-7") == ("order-summary", "vip-view")
    assert consistency.timeout_for("account", "a-1") == 5.0
    assert consistency.lock_timeout_for("account", "a-1") == 5.0
    assert consistency.projections_for("account", "a-1") == ("order-summary",)


def test_interpolation_defaults_and_escape() -> None:
    config = _parse(
        """\
        version: 1
        kafka:
          bootstrap_servers: ${BOOT:-127.0.0.1:19092}
          client_id: "lit-$${NOT_A_VAR}-${EMPTY:-fallback}-$5"
        zookeeper:
          session_timeout: ${ZK_TIMEOUT:-7.5}
        """,
        {"EMPTY": ""},
    )
    assert config.kafka.bootstrap_servers == "127.0.0.1:19092"
    assert config.kafka.client_id == "lit-${NOT_A_VAR}-fallback-$5"
    assert config.zookeeper.session_timeout == 7.5
    assert _parse(BASE.replace("127.0.0.1:19092", "${B}"), {"B": "k:1"}).kafka.bootstrap_servers


def test_librdkafka_config_for_sasl_ssl_with_client_certificate() -> None:
    config = _parse(
        """\
        version: 1
        kafka:
          bootstrap_servers: 127.0.0.1:19092
          security_protocol: SASL_SSL
          sasl: {mechanism: SCRAM-SHA-256, username: svc, password: "${KAFKA_PASSWORD}"}
          tls:
            ca_file: /ca.pem
            cert_file: /client.pem
            key_file: /client.key
            key_password: ${KEY_PASSWORD}
            verify_hostname: false
          extra: {linger.ms: 5}
        """,
        {"KAFKA_PASSWORD": "kafka-Hunter2", "KEY_PASSWORD": "key-Hunter2"},
    )
    assert config.kafka.librdkafka_config() == {
        "bootstrap.servers": "127.0.0.1:19092",
        "client.id": "kct",
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-256",
        "sasl.username": "svc",
        "sasl.password": "kafka-Hunter2",
        "ssl.ca.location": "/ca.pem",
        "ssl.certificate.location": "/client.pem",
        "ssl.key.location": "/client.key",
        "ssl.key.password": "key-Hunter2",
        "ssl.endpoint.identification.algorithm": "none",
        "linger.ms": 5,
    }
    _assert_secret_free(repr(config) + json.dumps(config.describe()))


def test_zookeeper_acl_and_redis_tls() -> None:
    error = _error(BASE + "zookeeper:\n  lock_acl: creator_all\n")
    assert "kct.yaml:5: zookeeper.lock_acl: creator_all needs zookeeper.auth" in str(error)
    config = _parse(BASE + "redis:\n  url: redis://cache:6379/2\n  tls: {ca_file: /ca.pem}\n")
    assert config.redis.redis_url() == "rediss://cache:6379/2"


# --- kct config check ---------------------------------------------------------------------


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner(env={**SECRETS, "COLUMNS": "160"})


def test_check_prints_the_resolved_consistency_map(runner: CliRunner) -> None:
    result = runner.invoke(cli, ["config", "check", str(EXAMPLE)])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert f"valid: {EXAMPLE}" in out
    assert "kafka-1:9093,kafka-2:9093 (SASL_SSL, SASL SCRAM-SHA-512 as svc-orders)" in out
    assert "auth digest (kct-orders), ACL creator_all" in out
    assert "strong rules" in out
    assert "│ 2 │ type+pattern │ order:vip-* │ 10 s    │ 2 s          │ order-summary" in out
    assert "│ 1 │ id           │ order-42    │ 5 s" in out
    assert "conflict policies" in out and "examples.merging:merge_carts" in out
    _assert_secret_free(out)


def test_check_answers_for_given_aggregates(runner: CliRunner) -> None:
    result = runner.invoke(
        cli,
        ["config", "check", str(EXAMPLE), "--aggregate", "order:vip-7", "--aggregate", "cart:c"],
    )
    assert result.exit_code == 0, result.output
    assert "│ order:vip-7 │ yes" in result.stdout
    assert "│ cart:c      │ no (eventual)" in result.stdout
    bad = runner.invoke(cli, ["config", "check", str(EXAMPLE), "--aggregate", "no-colon"])
    assert bad.exit_code == 2 and "expected TYPE:ID" in bad.output


def test_check_json(runner: CliRunner) -> None:
    result = runner.invoke(
        cli, ["config", "check", str(EXAMPLE), "--json", "--aggregate", "order:vip-7"]
    )
    assert result.exit_code == 0, result.output
    view = json.loads(result.stdout)
    assert view["service"] == "orders"
    assert view["consistency"]["strong"][2] == {
        "match": "type+pattern",
        "type": "order",
        "id": None,
        "pattern": "vip-*",
        "timeout": 10.0,
        "lock_timeout": 2.0,
        "projections": ["order-summary", "vip-view"],
    }
    assert view["aggregates"][0]["strong"] is True and view["aggregates"][0]["rule"] == 2
    _assert_secret_free(result.stdout)


def test_check_of_a_bad_file_exits_1_with_the_message_on_stderr(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "kct.yaml"
    path.write_text(BASE + "  sasl: {username: u, password: Hunter2}\n")
    monkeypatch.setattr(sys, "argv", ["kct", "config", "check", str(path)])
    with pytest.raises(SystemExit) as info:
        main()
    assert info.value.code == 1
    captured = capsys.readouterr()
    assert captured.err.startswith(f"error: {path}:4: kafka.sasl: only allowed with")
    assert captured.out == ""
    _assert_secret_free(captured.err)
    raised = CliRunner().invoke(cli, ["config", "check", str(path)])
    assert raised.exit_code == 1 and isinstance(raised.exception, ConfigurationError)


def test_tls_sections_are_checked() -> None:
    plaintext = _error(BASE + "  tls: {ca_file: /ca.pem}\n")
    assert (
        "kct.yaml:4: kafka.tls: only allowed with security_protocol SSL or SASL_SSL "
        "(it is PLAINTEXT)" in str(plaintext)
    )
    half = _error(BASE + "  security_protocol: SSL\n  tls:\n    cert_file: /c.pem\n")
    assert "kct.yaml:5: kafka.tls: expected cert_file and key_file together" in str(half)
    orphan = _error(BASE + "redis:\n  tls: {key_password: x}\n")
    assert "kct.yaml:5: redis.tls.key_password: unknown key" in str(orphan)


def test_check_shows_globs_as_text_not_markup(runner: CliRunner, tmp_path: Path) -> None:
    path = tmp_path / "kct.yaml"
    path.write_text(BASE + "consistency:\n  strong:\n    - pattern: '[ab]*'\n")
    result = runner.invoke(cli, ["config", "check", str(path), "--aggregate", "t:[ab]"])
    assert result.exit_code == 0, result.output
    assert "│ 0 │ pattern │ [ab]*" in result.stdout
    assert "│ t:[ab]    │ no (eventual)" in result.stdout


def test_the_examples_conflict_policies_build_a_resolver_whose_merge_keeps_both_carts() -> None:
    from toolkit.conflicts import resolver_from_config
    from toolkit.envelope import Envelope
    from toolkit.hlc import HLCTimestamp

    resolver = resolver_from_config(load_config(EXAMPLE, SECRETS).conflicts)
    state: dict[str, dict[str, object]] = {}

    class State:
        def get(self, key: str) -> dict[str, object] | None:
            return state.get(key)

        def put(self, key: str, document: object) -> None:
            state[key] = dict(document)  # type: ignore[call-overload]

        def delete(self, key: str) -> None:
            state.pop(key, None)

    def cart(items: list[str], node: str) -> Envelope:
        return Envelope(
            "CartUpdated", "cart", "c-1", 1, {"items": items}, hlc=HLCTimestamp(1, 0, node)
        )

    first = resolver.resolve(cart(["apple"], "a"), State())
    second = resolver.resolve(cart(["pear"], "b"), State())  # same version: a concurrent update
    assert [e.payload["items"] for e in first.accepted] == [["apple"]]
    assert second.reason == "merged"
    assert [e.payload["items"] for e in second.accepted] == [["apple", "pear"]]


# --- hostile input: secrets, sizes, nesting, encodings, globs (issue 10) ------------------


@pytest.mark.parametrize(
    ("section", "line", "field"),
    [
        ("  security_protocol: SASL_SSL\n  sasl: 'svc:Hunter2'\n", 5, "kafka.sasl"),
        ("zookeeper:\n  auth: 'svc:Hunter2'\n", 5, "zookeeper.auth"),
        ("zookeeper:\n  auth: [svc, Hunter2]\n", 5, "zookeeper.auth"),
    ],
)
def test_a_credentials_section_given_as_a_scalar_is_never_echoed(
    section: str, line: int, field: str
) -> None:
    error = _error(BASE + section)
    assert f"kct.yaml:{line}: {field}: expected a mapping" in str(error)
    _assert_secret_free(str(error))


@pytest.mark.parametrize(
    "servers",
    [
        "svc:Hunter2@broker:9092",
        "SASL_SSL://svc:Hunter2@broker:9092",
        "broker:9092,svc:Hunter2@other:9092",
        "svc:Hunter2@broker",
    ],
)
def test_credentials_in_bootstrap_servers_are_refused_without_echoing_them(servers: str) -> None:
    error = _error(f"version: 1\nkafka:\n  bootstrap_servers: '{servers}'\n")
    assert "kct.yaml:3: kafka.bootstrap_servers: must not contain credentials" in str(error)
    _assert_secret_free(str(error))
    hosts = _error(BASE + f"zookeeper:\n  hosts: '{servers}'\n")
    assert "kct.yaml:5: zookeeper.hosts: must not contain credentials" in str(hosts)
    _assert_secret_free(str(hosts))


SECRET_EXTRA = {
    "ssl.key.pem": "-----BEGIN PRIVATE KEY----- Hunter2",
    "sasl.oauthbearer.config": "clientId=svc clientSecret=Hunter2",
    "sasl.oauthbearer.token.endpoint.url": "https://idp/token?key=Hunter2",
    "sasl.kerberos.jaas": "Hunter2",
    "ssl.credentials.file": "Hunter2",
}


def _secret_extra_file(tmp_path: Path) -> Path:
    extra = "".join(f"    {key}: '{value}'\n" for key, value in SECRET_EXTRA.items())
    path = tmp_path / "kct.yaml"
    path.write_text(BASE + "  extra:\n    socket.keepalive.enable: true\n" + extra)
    return path


def test_secret_like_extra_options_are_redacted_but_passed_to_librdkafka(tmp_path: Path) -> None:
    config = load_config(_secret_extra_file(tmp_path), {})
    view = config.describe()
    assert view["kafka"]["extra"] == {
        "socket.keepalive.enable": True,
        **dict.fromkeys(SECRET_EXTRA, "***"),
    }
    _assert_secret_free(json.dumps(view))
    options = config.kafka.librdkafka_config()
    assert options["ssl.key.pem"] == SECRET_EXTRA["ssl.key.pem"]  # the one place that reveals


def test_check_and_check_json_never_print_a_secret_extra_option(
    runner: CliRunner, tmp_path: Path
) -> None:
    path = _secret_extra_file(tmp_path)
    for args in (["config", "check", str(path)], ["config", "check", str(path), "--json"]):
        result = runner.invoke(cli, args)
        assert result.exit_code == 0, result.output
        _assert_secret_free(result.output)


@pytest.mark.parametrize(
    "value",
    ["[" * 5000 + "]" * 5000, "{a: " * 5000 + "}" * 5000, "[" * 65 + "]" * 65],
    ids=["lists-5000", "mappings-5000", "lists-65"],
)
def test_deep_nesting_is_a_clear_error_not_a_recursion_error(value: str) -> None:
    error = _error(BASE + f"x: {value}\n")
    assert str(error).startswith("kct.yaml:4: nested deeper than 64 levels")


def test_nesting_up_to_the_limit_is_read() -> None:
    error = _error(BASE + "x: " + "[" * 63 + "]" * 63 + "\n")
    assert "kct.yaml:4: x: unknown key" in str(error)  # parsed, then refused as a key


def test_alias_bombs_and_recursive_aliases_are_refused() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{n}: &a{n} [{', '.join([f'*a{n - 1}'] * 10)}]" for n in range(1, 9)]
    bomb = _error(BASE + "\n".join(lines) + "\n")
    assert str(bomb).startswith("kct.yaml: more than 100000 values")
    loop = _error(BASE + "x: &loop [*loop]\n")
    assert str(loop).startswith("kct.yaml:4: an alias (*name) refers to a value that contains it")


def test_too_many_problems_are_counted_not_listed() -> None:
    items = "".join(f"    - [{n}]\n" for n in range(200))
    error = _error(BASE + "consistency:\n  projections:\n" + items)
    message = str(error)
    assert message.startswith("200 problems in kct.yaml:")
    assert "... and 150 more" in message
    assert len(message.splitlines()) == 52


def test_files_over_1_mib_are_refused_quickly(tmp_path: Path) -> None:
    import time

    path = tmp_path / "kct.yaml"
    path.write_text(BASE + "x: " + "a" * (5 * 1024 * 1024) + "\n")
    started = time.monotonic()
    with pytest.raises(ConfigurationError, match=r"larger than 1 MiB, the limit for a kct\.yaml"):
        load_config(path, {})
    with pytest.raises(ConfigurationError, match="larger than 1 MiB"):
        parse_config(path.read_text(), source="kct.yaml", environ={})
    assert time.monotonic() - started < 2
    if Path("/dev/zero").exists():  # endless: read no more than the limit
        with pytest.raises(ConfigurationError, match="larger than 1 MiB"):
            load_config("/dev/zero", {})


def test_non_utf8_file_names_the_line_and_byte_offset(tmp_path: Path) -> None:
    path = tmp_path / "kct.yaml"
    path.write_bytes(BASE.encode() + b"service: caf\xe9\n")
    with pytest.raises(ConfigurationError) as info:
        load_config(path, {})
    offset = len(BASE) + len("service: caf")
    assert str(info.value).startswith(
        f"{path}:4: the file must be UTF-8; byte 0xe9 at offset {offset} is not"
    )
    assert info.value.context["line"] == 4


def test_directories_and_unreadable_paths_are_configuration_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="cannot read the file"):
        load_config(tmp_path, {})


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("vip-[", "invalid glob 'vip-[': '[' at character 5 is never closed"),
        ("[z-a]*", "invalid glob '[z-a]*': the range z-a is empty (did you mean a-z?)"),
        ("[!9-0]x", "the range 9-0 is empty"),
        ("a[]", "'[' at character 2 is never closed"),
        ("[ab][", "'[' at character 5 is never closed"),
    ],
)
def test_invalid_or_never_matching_globs_are_refused_with_their_line(
    pattern: str, expected: str
) -> None:
    error = _error(BASE + f"consistency:\n  strong:\n    - type: t\n      pattern: '{pattern}'\n")
    assert f"kct.yaml:7: consistency.strong[0].pattern: invalid glob '{pattern}'" in str(error)
    assert expected in str(error)


@pytest.mark.parametrize(
    ("pattern", "matching", "other"),
    [
        ("vip-*", "vip-7", "v-7"),
        ("[ab]*", "b1", "c1"),
        ("[!a-c]x", "dx", "bx"),
        ("[]]x", "]x", "ax"),
        ("[-a]", "-", "b"),
        ("[a-]", "-", "b"),
        ("[[]x", "[x", "x"),
        ("[a-c-e]", "-", "d"),  # fnmatch reads a-c, then '-' and 'e'
    ],
)
def test_valid_globs_are_kept_and_match_as_fnmatch_does(
    pattern: str, matching: str, other: str
) -> None:
    rule = _parse(BASE + f"consistency:\n  strong:\n    - pattern: '{pattern}'\n").consistency
    assert rule.is_strong("t", matching)
    assert not rule.is_strong("t", other)


def test_deployment_defaults_and_is_a_kafka_safe_name() -> None:
    assert _parse(BASE).deployment == "default"
    assert _parse(BASE + "deployment: eu-west.prod_2\n").deployment == "eu-west.prod_2"
    assert load_config(EXAMPLE, SECRETS).deployment == "orders-prod"
    for bad in ("'..'", "'.'", "'a b'", "'x/y'", "''", "'" + "d" * 65 + "'", "7"):
        error = _error(BASE + f"deployment: {bad}\n")
        assert "kct.yaml:4: deployment: expected" in str(error)


def test_topic_replication_settings_reach_the_kafka_settings_and_are_checked() -> None:
    config = parse_config(BASE + "  topics: {replication_factor: 3, min_insync_replicas: 2}\n")
    settings = KafkaSettings.from_config(config.kafka)
    assert (settings.replication_factor, settings.min_insync_replicas) == (3, 2)
    unset = KafkaSettings.from_config(parse_config(BASE).kafka)
    assert (unset.replication_factor, unset.min_insync_replicas) == (None, None)
    error = _error(BASE + "  topics:\n    replication_factor: 2\n    min_insync_replicas: 3\n")
    assert "kct.yaml:4: kafka.topics: min_insync_replicas 3 exceeds replication_factor 2" in str(
        error
    )
    assert "kafka.topics.replication_factor: expected a number > 0, got 0" in str(
        _error(BASE + "  topics: {replication_factor: 0}\n")
    )


def test_redis_durability_settings_reach_the_redis_settings_and_are_checked() -> None:
    tail = "redis:\n  durability: {fsync: always, wait_replicas: 1, wait_timeout: 0.5}\n"
    settings = RedisSettings.from_config(parse_config(BASE + tail).redis)
    assert (settings.durability_fsync, settings.wait_replicas, settings.wait_timeout) == (
        "always",
        1,
        0.5,
    )
    assert RedisSettings.from_config(parse_config(BASE).redis).durability_fsync == "any"
    error = str(_error(BASE + "redis:\n  durability: {fsync: sometimes}\n"))
    assert "redis.durability.fsync" in error and "always" in error
