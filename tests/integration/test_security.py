"""kct.yaml's credentials against real servers: Kafka SASL/SCRAM and a Redis ACL user."""

from __future__ import annotations

import secrets
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
import yaml
from confluent_kafka.admin import (
    AdminClient,
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialDeletion,
    UserScramCredentialUpsertion,
)

from connectors.kafka import KafkaAdmin
from tests.balances import balance_event
from tests.integration.conftest import Endpoints
from toolkit.config import parse_config
from toolkit.errors import AdminError, StoreError
from toolkit.positions import ConsistencyToken
from toolkit.runtime.app import Kct, KctSettings

pytestmark = pytest.mark.integration


def _require_sasl_listener(endpoints: Endpoints) -> str:
    if not endpoints.kafka_sasl_bootstrap:
        raise AssertionError(
            "these tests need a SASL_PLAINTEXT SCRAM-SHA-512 listener: the local stack has "
            "one; against your own servers set KCT_KAFKA_SASL_BOOTSTRAP"
        )
    return endpoints.kafka_sasl_bootstrap


@pytest.fixture
def scram_user(endpoints: Endpoints) -> Iterator[tuple[str, str]]:
    """A SCRAM-SHA-512 user created on the broker through the admin API."""
    user, password = f"kct-{uuid.uuid4().hex[:8]}", secrets.token_urlsafe(18)
    admin = AdminClient({"bootstrap.servers": endpoints.kafka_bootstrap})
    info = ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 4096)
    upsert = UserScramCredentialUpsertion(user, info, password.encode(), secrets.token_bytes(16))
    for future in admin.alter_user_scram_credentials([upsert]).values():
        future.result(timeout=30)
    yield user, password
    deletion = UserScramCredentialDeletion(user, ScramMechanism.SCRAM_SHA_512)
    for future in admin.alter_user_scram_credentials([deletion]).values():
        future.result(timeout=30)


def configured(endpoints: Endpoints, kafka: dict[str, Any], redis_section: dict[str, Any]) -> str:
    return yaml.safe_dump(
        {
            "version": 1,
            "service": "security-tests",
            "kafka": kafka,
            "zookeeper": {"hosts": endpoints.zookeeper_hosts},
            "redis": redis_section,
        }
    )


def scram_kct_yaml(endpoints: Endpoints, user: str) -> str:
    """A kct.yaml for the SCRAM listener; the password comes from ``${KAFKA_PW}``."""
    return configured(
        endpoints,
        {
            "bootstrap_servers": _require_sasl_listener(endpoints),
            "security_protocol": "SASL_PLAINTEXT",
            "sasl": {"mechanism": "SCRAM-SHA-512", "username": user, "password": "${KAFKA_PW}"},
        },
        {"url": endpoints.redis_url},
    )


def test_kafka_sasl_scram_from_kct_yaml_publishes_and_reads_with_the_secret_from_the_env(
    endpoints: Endpoints, scram_user: tuple[str, str], create_topic: Callable[..., str]
) -> None:
    user, password = scram_user
    topic = create_topic("sasl")
    text = scram_kct_yaml(endpoints, user)
    config = parse_config(text, "kct.yaml", {"KAFKA_PW": password})
    assert password not in repr(config) and password not in repr(KctSettings.from_config(config))
    kct = Kct.from_config(config)
    try:
        # Authenticated writes, end offsets and committed-offset reads all go through SASL.
        published = kct.publisher.publish(topic, balance_event("acct-sasl", 1, 1))
        ends = kct.admin.end_offsets([topic])
        assert ends[published.position.topic_partition] == published.position.offset + 1
        assert kct.tracker.behind("nobody-yet", ConsistencyToken.of([published.position]))
    finally:
        kct.close()


def test_a_wrong_kafka_password_fails_clearly_without_the_password(
    endpoints: Endpoints, scram_user: tuple[str, str]
) -> None:
    user, _ = scram_user
    wrong = secrets.token_urlsafe(18)
    text = scram_kct_yaml(endpoints, user)
    settings = KctSettings.from_config(parse_config(text, "kct.yaml", {"KAFKA_PW": wrong}))
    started = time.monotonic()
    with pytest.raises(AdminError) as raised:
        KafkaAdmin(settings.kafka, timeout=3).end_offsets(["any-topic"])
    assert time.monotonic() - started < 30
    assert wrong not in str(raised.value) and wrong not in repr(raised.value.context)


@pytest.fixture
def redis_user(endpoints: Endpoints) -> Iterator[tuple[str, str]]:
    """A Redis ACL user (ACL SETUSER) with full access, removed afterwards."""
    user, password = f"kct-{uuid.uuid4().hex[:8]}", secrets.token_urlsafe(18)
    admin = redis.Redis.from_url(endpoints.redis_url)
    admin.acl_setuser(
        user,
        enabled=True,
        passwords=[f"+{password}"],
        keys=["*"],
        channels=["*"],
        categories=["+@all"],
    )
    yield user, password
    admin.acl_deluser(user)
    admin.close()


def test_redis_username_and_password_from_kct_yaml(
    endpoints: Endpoints, redis_user: tuple[str, str]
) -> None:
    user, password = redis_user
    section = {"url": endpoints.redis_url, "username": user, "password": "${REDIS_PW}"}
    kafka = {"bootstrap_servers": endpoints.kafka_bootstrap}
    good = Kct.from_config(
        parse_config(configured(endpoints, kafka, section), "kct.yaml", {"REDIS_PW": password})
    )
    try:
        assert good.store.get("security-tests", "nothing") is None
        client = good.settings.redis.client()
        assert client.acl_whoami() == user  # the store's clients are built the same way
        client.close()
    finally:
        good.close()
    wrong = secrets.token_urlsafe(18)
    bad = Kct.from_config(
        parse_config(configured(endpoints, kafka, section), "kct.yaml", {"REDIS_PW": wrong})
    )
    try:
        with pytest.raises(StoreError) as raised:
            bad.store.get("security-tests", "nothing")
        assert wrong not in str(raised.value)
        assert "redis" in str(raised.value).lower()
    finally:
        bad.close()
