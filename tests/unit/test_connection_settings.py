"""Connectors' settings build themselves from kct.yaml sections, with one default each;
Redis errors are translated in one place."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import redis
from pydantic import SecretStr, ValidationError

from connectors.kafka import KafkaSettings
from connectors.redis import (
    RedisEventPositionIndex,
    RedisReadModelStore,
    RedisSagaStepStore,
    RedisSettings,
)
from connectors.zookeeper import ZooKeeperSettings
from toolkit.config import (
    DEFAULT_KAFKA_BOOTSTRAP,
    KafkaConfig,
    RedisConfig,
    ZooKeeperConfig,
    parse_config,
)
from toolkit.errors import StoreError
from toolkit.runtime.app import KctSettings
from toolkit.runtime.stack import LocalStack

BASE = "version: 1\nkafka:\n  bootstrap_servers: 127.0.0.1:19092\n"


def test_each_default_is_the_same_in_kct_yaml_the_settings_and_the_stack() -> None:
    zookeeper, config = ZooKeeperSettings(), ZooKeeperConfig()
    assert (zookeeper.hosts, zookeeper.lock_root, zookeeper.session_timeout) == (
        config.hosts,
        config.lock_root,
        config.session_timeout,
    )
    assert zookeeper.lock_acl == config.lock_acl == "open"
    assert RedisSettings().url == RedisConfig().url
    assert KafkaSettings().client_id == KafkaConfig(bootstrap_servers="h:1").client_id
    found = LocalStack(port_offset=0).endpoints()
    assert found.kafka_bootstrap == KafkaSettings().bootstrap_servers == DEFAULT_KAFKA_BOOTSTRAP
    assert found.zookeeper_hosts == zookeeper.hosts
    assert found.redis_url == RedisSettings().url


def test_settings_from_kct_yaml_carry_every_section() -> None:
    config = parse_config(
        BASE
        + "zookeeper:\n  hosts: zk:2181\n  lock_root: /a/b\n  session_timeout: 4\n"
        + "  auth: {username: u, password: zk-secret}\n  tls: {ca_file: /ca.pem}\n"
        + "redis:\n  url: redis://r:6379/2\n  username: ru\n  password: redis-secret\n"
        + "  tls: {ca_file: /rca.pem, verify_hostname: false}\n"
    )
    settings = KctSettings.from_config(config)
    zk = settings.zookeeper
    assert (zk.hosts, zk.lock_root, zk.session_timeout, zk.lock_acl) == (
        "zk:2181",
        "/a/b",
        4.0,
        "creator_all",
    )
    assert zk.auth_username == "u" and zk.use_tls and zk.ca_file == "/ca.pem"
    assert zk.auth_password is not None and zk.auth_password.get_secret_value() == "zk-secret"
    redis = settings.redis
    assert (redis.url, redis.username, redis.ca_file, redis.verify_hostname) == (
        "rediss://r:6379/2",
        "ru",
        "/rca.pem",
        False,
    )
    assert "zk-secret" not in repr(settings) and "redis-secret" not in repr(settings)


def test_secret_like_kafka_extra_options_stay_secret() -> None:
    config = parse_config(
        BASE + "  extra:\n    ssl.key.pem: PEM-KEY-MATERIAL\n    linger.ms: 5\n"
        "    sasl.oauthbearer.config: principal=me\n"
    )
    kafka = KctSettings.from_config(config).kafka
    assert dict(kafka.extra) == {"security.protocol": "PLAINTEXT", "linger.ms": 5}
    assert set(kafka.secrets) == {"ssl.key.pem", "sasl.oauthbearer.config"}
    assert "PEM-KEY-MATERIAL" not in repr(kafka) and "principal=me" not in repr(kafka)
    client = kafka.client_config()
    assert client["ssl.key.pem"] == "PEM-KEY-MATERIAL"
    assert client["sasl.oauthbearer.config"] == "principal=me"


@pytest.mark.parametrize("root", ["kct/locks", "/kct/locks/", "/kct//locks", "/kct/a b"])
def test_lock_root_has_one_rule(root: str) -> None:
    with pytest.raises(ValidationError, match="absolute znode path"):
        ZooKeeperSettings(lock_root=root)
    with pytest.raises(ValidationError, match="absolute znode path"):
        ZooKeeperConfig(lock_root=root)


def test_lock_acl_has_one_rule() -> None:
    password = SecretStr("p")
    assert ZooKeeperSettings(auth_username="u", auth_password=password).lock_acl == "creator_all"
    chosen = ZooKeeperSettings(auth_username="u", auth_password=password, lock_acl="open")
    assert chosen.lock_acl == "open"
    with pytest.raises(ValidationError, match=r"creator_all needs zookeeper\.auth"):
        ZooKeeperSettings(lock_acl="creator_all")


def test_redis_errors_become_store_errors_in_one_place_without_credentials() -> None:
    settings = RedisSettings(url="redis://:hunter2@127.0.0.1:1/0", socket_timeout=0.5)
    store, steps = RedisReadModelStore(settings), RedisSagaStepStore(settings)
    index = RedisEventPositionIndex(settings)
    failing: list[tuple[Callable[[], object], str, dict[str, str]]] = [
        (lambda: store.get("orders", "k"), "Redis read failed", {"projection": "orders"}),
        (
            lambda: steps.outcome("inventory", "k"),
            "Redis read failed",
            {"participant": "inventory"},
        ),
        (lambda: index.lookup("e1"), "Redis event index read failed", {}),
    ]
    for call, message, context in failing:
        with pytest.raises(StoreError) as raised:
            call()
        assert str(raised.value).startswith(message)
        assert "hunter2" not in str(raised.value)
        assert raised.value.context["redis"] == "redis://***@127.0.0.1:1/0"
        assert context.items() <= raised.value.context.items()
        assert isinstance(raised.value.__cause__, redis.RedisError)
