"""The configuration file ``kct.yaml``: one typed, frozen model and its loader.

:func:`load_config` reads a file, :func:`parse_config` a string. Both substitute
``${NAME}`` and ``${NAME:-default}`` in string values from the environment
(``$${`` is a literal ``${``), then validate everything with pydantic.

Guarantees:

* a :class:`KctConfig` is complete and consistent: every section but
  ``version`` and ``kafka`` has defaults, unknown keys are errors, cross-field
  rules (SASL needs ``sasl``, ``merge`` needs a merge function, ...) hold;
* secrets (every ``password`` and ``key_password``) are ``SecretStr``: they
  never appear in ``repr``, :meth:`KctConfig.describe` or an error message;
  :meth:`KafkaConfig.librdkafka_config` is the one place that reveals them.
  ``kafka.extra`` options whose name marks a secret (``ssl.key.pem``,
  ``sasl.oauthbearer.config``, ... see :func:`is_secret_name`) show as ``***``
  too; credentials in ``bootstrap_servers`` or ``hosts`` are refused;
* the file is at most :data:`MAX_FILE_BYTES` of UTF-8; nesting, alias
  expansion and the number of problems listed are bounded too.

Failure modes: every problem raises :class:`~toolkit.errors.ConfigurationError`
whose message lists all problems, one per line, as ``file:line: field.path:
what was expected``; its context holds ``file``, ``line`` and ``field`` of the
first. YAML syntax errors, tabs, duplicate keys, unset variables, an empty
file, a top level that is not a mapping and an unsupported ``version`` are
reported the same way. Only ``yaml.SafeLoader`` is used.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from fnmatch import fnmatchcase
from itertools import pairwise
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from toolkit.errors import ConfigurationError
from toolkit.yaml_source import (
    Problem,
    config_error,
    is_secret_name,
    read_yaml,
    validation_problems,
)

__all__ = [
    "DEFAULT_CLIENT_ID",
    "DEFAULT_DEPLOYMENT",
    "DEFAULT_JAEGER_QUERY_URL",
    "DEFAULT_KAFKA_BOOTSTRAP",
    "DEFAULT_LOCK_ROOT",
    "DEFAULT_OTLP_ENDPOINT",
    "DEFAULT_REDIS_URL",
    "DEFAULT_ZOOKEEPER_HOSTS",
    "DEFAULT_ZOOKEEPER_SESSION_TIMEOUT",
    "LOCAL_PORTS",
    "MAX_FILE_BYTES",
    "ConflictPolicy",
    "ConsistencyConfig",
    "KafkaConfig",
    "KafkaTlsConfig",
    "KctConfig",
    "LockAcl",
    "MonitorConfig",
    "MonitorTargetConfig",
    "RedisConfig",
    "RedisDurabilityConfig",
    "SaslConfig",
    "ServiceEndpointConfig",
    "SidecarConfig",
    "SidecarParticipantConfig",
    "SidecarProjectionConfig",
    "StrongRule",
    "TelemetryConfig",
    "TlsConfig",
    "TopicsConfig",
    "ZnodePath",
    "ZooKeeperAuth",
    "ZooKeeperConfig",
    "is_secret_name",
    "load_config",
    "parse_config",
    "resolve_lock_acl",
]

Strategy = Literal[
    "last_write_wins", "first_write_wins", "deduplicate", "reorder", "merge", "reject"
]
WINNERS: tuple[Strategy, ...] = ("last_write_wins", "first_write_wins", "merge", "reject")
MAX_FILE_BYTES = 1024 * 1024  # kct.yaml is a few kB; a bigger file is a mistake or an attack
DEFAULT_DEPLOYMENT = "default"
# The local stack's ports (`kct stack up`, port offset 0), and from them the one
# default of each connection setting (kct.yaml, connectors' settings, the stack).
LOCAL_PORTS = {"kafka": 19092, "zookeeper": 12181, "redis": 16379}
DEFAULT_KAFKA_BOOTSTRAP = f"127.0.0.1:{LOCAL_PORTS['kafka']}"
DEFAULT_ZOOKEEPER_HOSTS = f"127.0.0.1:{LOCAL_PORTS['zookeeper']}"
DEFAULT_REDIS_URL = f"redis://127.0.0.1:{LOCAL_PORTS['redis']}/0"
DEFAULT_LOCK_ROOT = "/kct/locks"
# The local stack's Jaeger: OTLP/HTTP receiver and query API (they keep Jaeger's ports).
DEFAULT_OTLP_ENDPOINT = "http://127.0.0.1:4318"
DEFAULT_JAEGER_QUERY_URL = "http://127.0.0.1:16686"
DEFAULT_CLIENT_ID = "kct"
DEFAULT_ZOOKEEPER_SESSION_TIMEOUT = 10.0
_SASL_PROTOCOLS = ("SASL_PLAINTEXT", "SASL_SSL")
_TLS_PROTOCOLS = ("SSL", "SASL_SSL")
# librdkafka keys the typed fields own: `extra` may not set them (one source of truth).
# fmt: off
_OWNED_KAFKA_KEYS = frozenset({
    "bootstrap.servers", "client.id", "security.protocol", "sasl.mechanism", "sasl.mechanisms",
    "sasl.username", "ssl.ca.location", "ssl.certificate.location", "ssl.key.location",
    "ssl.endpoint.identification.algorithm",
})  # and any key naming a password or secret
# fmt: on


def _invalid(message: str) -> PydanticCustomError:
    return PydanticCustomError("kct_invalid", message)


def _host_ports(value: str) -> str:
    if "@" in value:  # never echo it: user:password@host
        raise _invalid("must not contain credentials (user:password@); use the auth/sasl fields")
    for entry in value.split(","):
        host, sep, port = entry.strip().rpartition(":")
        if not (host and sep and port.isascii() and port.isdigit() and 0 < int(port) < 65536):
            raise _invalid(f"expected 'host:port[,host:port...]', got {value!r}")
    return value


def _glob(value: str) -> str:
    """A glob ``fnmatch`` reads as written: every ``[`` closed, no reversed range."""
    at = 0
    while at < len(value):
        if value[at] != "[":
            at += 1
            continue
        end = at + 1
        end += value.startswith("!", end)
        end += value.startswith("]", end)  # a leading ] is a member, not the end
        end = value.find("]", end)
        if end < 0:
            raise _invalid(
                f"invalid glob {value!r}: '[' at character {at + 1} is never closed "
                "(write [[] for a literal '[')"
            )
        empty = _reversed_range(value[at + 1 : end].removeprefix("!"))
        if empty is not None:
            low, high = empty
            raise _invalid(
                f"invalid glob {value!r}: the range {low}-{high} is empty "
                f"(did you mean {high}-{low}?)"
            )
        at = end + 1
    return value


def _reversed_range(members: str) -> tuple[str, str] | None:
    """The first range ``a-b`` with ``a > b`` in a ``[...]`` set, read as fnmatch reads it."""
    chunks, start, dash = [], 0, members.find("-", 1)
    while dash >= 0:
        chunks.append(members[start:dash])
        start, dash = dash + 1, members.find("-", dash + 3)
    chunks.append(members[start:])  # empty: a trailing '-' is a member
    for left, right in pairwise(chunks):
        if right and left[-1] > right[0]:
            return left[-1], right[0]
    return None


def _deployment(value: str) -> str:
    if value in (".", "..") or not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", value):
        raise _invalid(
            f"expected 1-64 characters of a-z, A-Z, 0-9, '.', '_', '-' (not '.' or '..'), "
            f"got {value!r}"
        )
    return value


def _znode_path(value: str) -> str:
    if not re.fullmatch(r"(/[^/\s]+)+", value):
        raise _invalid(
            f"expected an absolute znode path like '/kct/locks' (no trailing /), got {value!r}"
        )
    return value


def _merge_path(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*", value):
        raise _invalid(f"expected 'module.path:function', got {value!r}")
    return value


def _redis_url(value: str) -> str:
    parts = urlsplit(value)  # never echo the URL: it may hold a password
    if parts.password is not None:
        raise _invalid("must not contain a password; set redis.password (e.g. ${REDIS_PASSWORD})")
    if parts.scheme not in ("redis", "rediss"):
        raise _invalid(f"expected a redis:// or rediss:// URL, got scheme {parts.scheme!r}")
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise _invalid("expected redis://host:port/db, the port is not a number 1-65535") from None
    if not parts.hostname or not re.fullmatch(r"(/\d*)?", parts.path):
        raise _invalid("expected redis://host:port/db (db: a number)")
    return value


Seconds = Annotated[float, Field(gt=0, allow_inf_nan=False)]
NonEmpty = Annotated[str, Field(min_length=1)]
Secret = Annotated[SecretStr, Field(min_length=1)]
ServiceName = Annotated[str, Field(pattern=r"^[a-z0-9\-_.]+$")]
HostPorts = Annotated[str, Field(min_length=1), AfterValidator(_host_ports)]
ZnodePath = Annotated[str, AfterValidator(_znode_path)]
MergePath = Annotated[str, AfterValidator(_merge_path)]
Glob = Annotated[str, Field(min_length=1), AfterValidator(_glob)]
DeploymentName = Annotated[str, AfterValidator(_deployment)]
RedisUrl = Annotated[str, AfterValidator(_redis_url)]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)


class TlsConfig(_Model):
    """TLS towards ZooKeeper or Redis: CA bundle, optional client certificate (mTLS)."""

    ca_file: NonEmpty | None = None
    cert_file: NonEmpty | None = None
    key_file: NonEmpty | None = None
    verify_hostname: bool = True

    @model_validator(mode="after")
    def _cert_and_key_together(self) -> TlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise _invalid("expected cert_file and key_file together (a client certificate)")
        return self


class KafkaTlsConfig(TlsConfig):
    """TLS towards Kafka; the private key may be encrypted."""

    key_password: Secret | None = None

    @model_validator(mode="after")
    def _password_needs_key(self) -> KafkaTlsConfig:
        if self.key_password is not None and self.key_file is None:
            raise _invalid("key_password is set but key_file is not")
        return self


class SaslConfig(_Model):
    """SASL credentials for ``SASL_PLAINTEXT`` / ``SASL_SSL``."""

    mechanism: Literal["SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN"] = "SCRAM-SHA-512"
    username: NonEmpty
    password: Secret


class TopicsConfig(_Model):
    """Replication of the topics the toolkit creates (events, dead-letter, saga topics).

    Unset: ``replication_factor`` is min(3, brokers of the cluster) and
    ``min_insync_replicas`` min(2, replication factor), which fits a single
    development node and a production cluster alike.
    """

    replication_factor: Annotated[int, Field(gt=0, le=32)] | None = None
    min_insync_replicas: Annotated[int, Field(gt=0, le=32)] | None = None

    @model_validator(mode="after")
    def _isr_within_replicas(self) -> TopicsConfig:
        rf, isr = self.replication_factor, self.min_insync_replicas
        if rf is not None and isr is not None and isr > rf:
            raise _invalid(
                f"min_insync_replicas {isr} exceeds replication_factor {rf}: "
                "no write could ever be acknowledged"
            )
        return self


class KafkaConfig(_Model):
    """Where Kafka is and how to authenticate; ``extra`` passes raw librdkafka options."""

    bootstrap_servers: HostPorts
    client_id: NonEmpty = DEFAULT_CLIENT_ID
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl: SaslConfig | None = Field(default=None, validate_default=True)
    tls: KafkaTlsConfig | None = None
    extra: dict[str, str | int | float | bool] = Field(default_factory=dict)
    topics: TopicsConfig = Field(default_factory=TopicsConfig)

    @field_validator("sasl")
    @classmethod
    def _sasl_matches_protocol(cls, sasl: SaslConfig | None, info: ValidationInfo) -> Any:
        protocol = info.data.get("security_protocol")
        if protocol in _SASL_PROTOCOLS and sasl is None:
            raise _invalid(f"required when security_protocol is {protocol}")
        if protocol is not None and protocol not in _SASL_PROTOCOLS and sasl is not None:
            raise _invalid(
                f"only allowed with security_protocol SASL_PLAINTEXT or SASL_SSL (it is {protocol})"
            )
        return sasl

    @field_validator("tls")
    @classmethod
    def _tls_matches_protocol(cls, tls: KafkaTlsConfig | None, info: ValidationInfo) -> Any:
        protocol = info.data.get("security_protocol")
        if tls is not None and protocol is not None and protocol not in _TLS_PROTOCOLS:
            raise _invalid(
                f"only allowed with security_protocol SSL or SASL_SSL (it is {protocol})"
            )
        return tls

    @field_validator("extra", mode="before")
    @classmethod
    def _extra_values_are_scalars(cls, extra: Any) -> Any:
        if not isinstance(extra, Mapping):
            raise _invalid("expected a mapping of librdkafka options")
        for key, value in extra.items():
            if isinstance(value, Mapping | list) or value is None:
                raise _invalid(f"{key!r}: expected a string, number or boolean")
            lowered = str(key).lower()
            if key in _OWNED_KAFKA_KEYS or "password" in lowered or "secret" in lowered:
                raise _invalid(
                    f"{key!r} may not be set in extra; use the typed fields "
                    "(secrets belong in sasl.password or tls.key_password)"
                )
        return extra

    def librdkafka_config(self) -> dict[str, str | int | float | bool]:
        """librdkafka options: connection, security, then ``extra``. Holds secrets: never log it."""
        config: dict[str, str | int | float | bool] = {
            "bootstrap.servers": self.bootstrap_servers,
            "client.id": self.client_id,
            "security.protocol": self.security_protocol,
        }
        if self.sasl is not None:
            config["sasl.mechanism"] = self.sasl.mechanism
            config["sasl.username"] = self.sasl.username
            config["sasl.password"] = self.sasl.password.get_secret_value()
        if self.tls is not None:
            files = {
                "ssl.ca.location": self.tls.ca_file,
                "ssl.certificate.location": self.tls.cert_file,
                "ssl.key.location": self.tls.key_file,
            }
            config.update({key: value for key, value in files.items() if value is not None})
            if self.tls.key_password is not None:
                config["ssl.key.password"] = self.tls.key_password.get_secret_value()
            verify = "https" if self.tls.verify_hostname else "none"
            config["ssl.endpoint.identification.algorithm"] = verify
        config.update(self.extra)
        return config


class ZooKeeperAuth(_Model):
    """Digest credentials; the lock znodes then get the ``creator_all`` ACL."""

    scheme: Literal["digest"] = "digest"
    username: NonEmpty
    password: Secret


LockAcl = Literal["creator_all", "open"]


def resolve_lock_acl(acl: LockAcl | None, has_auth: bool) -> LockAcl:
    """The ACL of lock znodes, one rule for ``kct.yaml`` and ``ZooKeeperSettings``.

    The default is the safe one: ``creator_all`` (only this identity may read or
    delete the nodes) whenever there is an identity, i.e. digest auth; ``open``
    only without auth, where ZooKeeper has no identity to restrict them to.
    An explicit ``creator_all`` without auth is refused, never silently open.
    """
    if acl is None:
        return "creator_all" if has_auth else "open"
    if acl == "creator_all" and not has_auth:
        raise _invalid("creator_all needs zookeeper.auth (or set lock_acl: open)")
    return acl


class ZooKeeperConfig(_Model):
    """The lock service. ``lock_acl`` defaults to ``creator_all`` with ``auth``, else
    ``open`` (:func:`resolve_lock_acl`)."""

    hosts: HostPorts = DEFAULT_ZOOKEEPER_HOSTS
    lock_root: ZnodePath = DEFAULT_LOCK_ROOT
    session_timeout: Seconds = DEFAULT_ZOOKEEPER_SESSION_TIMEOUT
    auth: ZooKeeperAuth | None = None
    lock_acl: LockAcl = "open"
    tls: TlsConfig | None = None

    @model_validator(mode="before")
    @classmethod
    def _default_acl(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and "lock_acl" not in data:
            return {**data, "lock_acl": resolve_lock_acl(None, data.get("auth") is not None)}
        return data

    @field_validator("lock_acl")
    @classmethod
    def _creator_needs_auth(cls, acl: LockAcl, info: ValidationInfo) -> LockAcl:
        if "auth" not in info.data:  # auth itself is invalid: reported there
            return acl
        return resolve_lock_acl(acl, info.data["auth"] is not None)


class RedisDurabilityConfig(_Model):
    """How durable saga step records (once-only outcomes) must be: they cannot be
    rebuilt from Kafka. ``fsync`` is what the Redis holding them must run
    (checked with ``CONFIG GET`` at first use; ``any`` checks nothing);
    ``wait_replicas`` > 0 makes every step record wait (``WAIT``) until that
    many replicas hold it, up to ``wait_timeout`` seconds, or fail."""

    fsync: Literal["any", "everysec", "always"] = "any"
    wait_replicas: Annotated[int, Field(ge=0, le=16)] = 0
    wait_timeout: Seconds = 1.0


class RedisConfig(_Model):
    """Where Redis is. Credentials live in ``username``/``password``, never in the URL."""

    url: RedisUrl = DEFAULT_REDIS_URL
    username: NonEmpty | None = None
    password: Secret | None = None
    tls: TlsConfig | None = None
    durability: RedisDurabilityConfig = Field(default_factory=RedisDurabilityConfig)

    def redis_url(self) -> str:
        """The URL without secrets; ``rediss://`` when ``tls`` is set."""
        parts = urlsplit(self.url)
        if self.tls is not None and parts.scheme == "redis":
            return urlunsplit(parts._replace(scheme="rediss"))
        return self.url


class StrongRule(_Model):
    """Which aggregates are strong: ``type``, ``id`` or ``pattern`` (glob on the id), or a mix."""

    type: NonEmpty | None = None
    id: NonEmpty | None = None
    pattern: Glob | None = None
    timeout: Seconds | None = None
    lock_timeout: Seconds | None = None
    projections: tuple[NonEmpty, ...] | None = None

    @model_validator(mode="after")
    def _one_way_to_match(self) -> StrongRule:
        if self.type is None and self.id is None and self.pattern is None:
            raise _invalid("expected at least one of type, id, pattern")
        if self.id is not None and self.pattern is not None:
            raise _invalid("expected id or pattern, not both")
        return self

    @property
    def kind(self) -> str:
        """``type``, ``id``, ``pattern``, ``type+id`` or ``type+pattern``."""
        names = [n for n in ("type", "id", "pattern") if getattr(self, n) is not None]
        return "+".join(names)

    def matches(self, aggregate_type: str, aggregate_id: str) -> bool:
        """True if every condition given in the rule holds."""
        return (
            (self.type is None or self.type == aggregate_type)
            and (self.id is None or self.id == aggregate_id)
            and (self.pattern is None or fnmatchcase(aggregate_id, self.pattern))
        )


class ConsistencyConfig(_Model):
    """Which aggregates are strong and how long strong operations wait."""

    default_timeout: Seconds = 5.0
    lock_timeout: Seconds = 5.0
    projections: tuple[NonEmpty, ...] = ()
    strong: tuple[StrongRule, ...] = ()

    def rule_for(self, aggregate_type: str, aggregate_id: str) -> StrongRule | None:
        """The first rule that matches, or ``None`` (the aggregate is eventual)."""
        return next((r for r in self.strong if r.matches(aggregate_type, aggregate_id)), None)

    def is_strong(self, aggregate_type: str, aggregate_id: str) -> bool:
        """True if any rule matches."""
        return self.rule_for(aggregate_type, aggregate_id) is not None

    def timeout_for(self, aggregate_type: str, aggregate_id: str) -> float:
        """Seconds to wait for projections: the rule's override, else ``default_timeout``."""
        rule = self.rule_for(aggregate_type, aggregate_id)
        return rule.timeout if rule and rule.timeout is not None else self.default_timeout

    def lock_timeout_for(self, aggregate_type: str, aggregate_id: str) -> float:
        """Seconds to wait for the lock: the rule's override, else ``lock_timeout``."""
        rule = self.rule_for(aggregate_type, aggregate_id)
        return rule.lock_timeout if rule and rule.lock_timeout is not None else self.lock_timeout

    def projections_for(self, aggregate_type: str, aggregate_id: str) -> tuple[str, ...]:
        """Projections to wait for: the rule's list, else ``projections``."""
        rule = self.rule_for(aggregate_type, aggregate_id)
        return rule.projections if rule and rule.projections is not None else self.projections


def _http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise _invalid("expected an http:// or https:// URL with a host")
    if parts.username is not None or parts.password is not None:
        raise _invalid("credentials do not belong in the URL")
    return value.rstrip("/")


HttpUrl = Annotated[str, AfterValidator(_http_url)]


class TelemetryConfig(_Model):
    """Tracing: OpenTelemetry spans exported over OTLP/HTTP (see docs/configuration.md).

    Unset fields are filled from the standard ``OTEL_*`` variables, then from
    the defaults (the local stack's Jaeger); ``OTEL_SDK_DISABLED=true`` turns
    tracing off whatever the file says.
    """

    enabled: bool = True
    service_name: ServiceName | None = None  # default: OTEL_SERVICE_NAME, else ``service``
    endpoint: HttpUrl | None = None  # OTLP/HTTP base URL; spans go to <endpoint>/v1/traces
    sampling_ratio: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)] | None = None
    query_url: HttpUrl | None = None  # Jaeger's query API, for `kct trace`


def _refuse_lossy(strategies: tuple[Strategy, ...]) -> None:
    """Refuse the pipelines that lose or double-apply events (docs/configuration.md)."""
    if "reorder" in strategies and ("merge" in strategies or "reject" in strategies):
        winner = "merge" if "merge" in strategies else "reject"
        raise _invalid(
            f"reorder drops a concurrent writer's event claiming a sequence already applied "
            f"(already_applied_sequence), so {winner!r} never sees it; "
            f"for concurrent writers use [deduplicate, {winner}]"
        )
    if "merge" in strategies and "deduplicate" not in strategies:
        raise _invalid(
            "merge without deduplicate merges a redelivered event again; use [deduplicate, merge]"
        )


class ConflictPolicy(_Model):
    """How concurrent events of one aggregate type are resolved, strategies in order.

    Safe pipelines (the lossy ones are refused: :func:`_refuse_lossy`): one writer
    per aggregate, events possibly duplicated or out of order:
    ``[deduplicate, reorder]`` (``last_write_wins`` after ``reorder`` changes
    nothing: the highest sequence is the last write); concurrent writers:
    ``[deduplicate, last_write_wins]``, ``first_write_wins``,
    ``[deduplicate, merge]``, ``[deduplicate, reject]``.
    """

    strategies: tuple[Strategy, ...]
    merge: MergePath | None = Field(default=None, validate_default=True)
    dedup_window: Annotated[int, Field(gt=0)] = 10_000
    reorder_max_wait: Seconds = 2.0
    on_gap: Literal["skip", "dead_letter"] = "skip"

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        if isinstance(data, str):
            return {"strategies": [data]}
        return {"strategies": data} if isinstance(data, list) else data

    @field_validator("strategies")
    @classmethod
    def _in_order(cls, strategies: tuple[Strategy, ...]) -> tuple[Strategy, ...]:
        if not strategies:
            raise _invalid("expected at least one strategy")
        for name in strategies:
            if strategies.count(name) > 1:
                raise _invalid(f"strategy {name!r} is listed twice")
        winners = [s for s in strategies if s in WINNERS]
        if len(winners) > 1:
            raise _invalid(f"expected at most one of {', '.join(WINNERS)}, got {winners}")
        if winners and strategies[-1] != winners[0]:
            raise _invalid(
                f"expected deduplicate/reorder first and {winners[0]!r} last, "
                f"got [{', '.join(strategies)}]"
            )
        _refuse_lossy(strategies)
        return strategies

    @field_validator("merge")
    @classmethod
    def _merge_iff_strategy(cls, merge: str | None, info: ValidationInfo) -> str | None:
        strategies = info.data.get("strategies")
        if strategies is not None and "merge" in strategies and merge is None:
            raise _invalid("strategy 'merge' needs merge: 'module.path:function' (mapping form)")
        if strategies is not None and "merge" not in strategies and merge is not None:
            raise _invalid("only allowed when strategies include 'merge'")
        return merge


BreachStatus = Literal["WARN", "ERR"]
PositiveInt = Annotated[int, Field(gt=0)]


class MonitorTargetConfig(_Model):
    """One consumer group the monitor watches (see docs/monitoring.md)."""

    topics: Annotated[tuple[NonEmpty, ...], Field(min_length=1)]
    group: NonEmpty | None = None  # default: the entry's name (a projection's group)
    kind: Literal["projection", "saga-state", "participant", "group"] = "projection"
    read_model: bool | None = None  # default: true for projection and saga-state
    definition: MergePath | None = None  # 'module:attr', the Projection, for `verify`
    max_lag_events: PositiveInt | None = None  # default: monitor.max_lag_events
    max_lag_seconds: Seconds | None = None  # default: monitor.max_lag_seconds
    on_breach: BreachStatus | None = None  # default: monitor.on_breach

    @property
    def has_read_model(self) -> bool:
        if self.read_model is not None:
            return self.read_model
        return self.kind in ("projection", "saga-state")


class MonitorConfig(_Model):
    """The consistency monitor: what it watches, its window, thresholds and exports."""

    window: Annotated[int, Field(ge=2, le=1000)] = 10  # checks per partition in the window
    interval: Seconds = 5.0  # seconds between checks (`kct monitor serve`, `kct lag --watch`)
    max_lag_events: PositiveInt | None = None
    max_lag_seconds: Seconds | None = 300.0
    on_breach: BreachStatus = "WARN"
    timestamp_timeout: Seconds = 2.0
    listen: HostPorts = "127.0.0.1:9464"  # the Prometheus endpoint of `kct monitor serve`
    otlp: bool = False  # also push metrics over OTLP/HTTP (OTEL_EXPORTER_OTLP_* variables)
    projections: dict[NonEmpty, MonitorTargetConfig] = Field(default_factory=dict)


def _url_path(value: str) -> str:
    if not value.startswith("/") or "//" in value or any(c.isspace() for c in value):
        raise _invalid(f"expected a URL path starting with '/', got {value!r}")
    return value


def _listen(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not (host and sep and port.isascii() and port.isdigit() and int(port) < 65536):
        raise _invalid(f"expected one 'host:port' (port 0: any free port), got {value!r}")
    return value


UrlPath = Annotated[str, AfterValidator(_url_path)]
EnvName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")]
Listen = Annotated[str, Field(min_length=1), AfterValidator(_listen)]


class ServiceEndpointConfig(_Model):
    """How the sidecar calls the service's HTTP handlers (see docs/sidecar.md)."""

    url: HttpUrl  # the service's base URL; handlers are POSTed at url + path
    timeout: Seconds = 5.0  # per request
    retries: Annotated[int, Field(ge=0, le=100)] = 3  # then the loop pauses and backs off
    backoff: Seconds = 0.1  # first wait between retries, doubling
    max_backoff: Seconds = 5.0  # cap of the retries' and the paused loop's waits
    token_env: EnvName | None = None  # a bearer token for the service, from this variable


class SidecarProjectionConfig(_Model):
    """A projection the sidecar runs: Python handlers by import path, or the service's."""

    topics: tuple[NonEmpty, ...] = ()  # HTTP: required; Python: the Projection's own
    handler: MergePath | None = None  # 'module:attr', a toolkit Projection named like the entry
    path: UrlPath | None = None  # HTTP handler: POST <service.url><path>
    event_types: tuple[NonEmpty, ...] = ()  # HTTP: the types delivered (empty: all)
    max_batch: Annotated[int, Field(ge=1, le=10_000)] = 500

    @model_validator(mode="after")
    def _one_handler(self) -> SidecarProjectionConfig:
        if (self.handler is None) == (self.path is None):
            raise _invalid("give exactly one of 'handler' (Python) and 'path' (HTTP)")
        if self.path is not None and not self.topics:
            raise _invalid("an HTTP projection needs 'topics'")
        if self.handler is not None and (self.topics or self.event_types):
            raise _invalid("a Python projection names its topics and event types itself")
        return self


class SidecarParticipantConfig(_Model):
    """A saga participant the sidecar runs: Python actions by import path, or the service's."""

    actions: MergePath | None = None  # 'module:attr', a mapping of action name to callable
    path: UrlPath | None = None  # HTTP: every command and compensation POSTed here
    namespace: Annotated[str, Field(pattern=r"^[a-z0-9\-_.]*$")] = ""

    @model_validator(mode="after")
    def _one_handler(self) -> SidecarParticipantConfig:
        if (self.actions is None) == (self.path is None):
            raise _invalid("give exactly one of 'actions' (Python) and 'path' (HTTP)")
        return self


class SidecarConfig(_Model):
    """``kct sidecar``: what it runs for the service and its HTTP API (docs/sidecar.md)."""

    listen: Listen = "127.0.0.1:8787"
    auth_token_env: EnvName | None = None  # bearer token required on the API, from this variable
    max_body_bytes: Annotated[int, Field(ge=1024, le=64 * 1024 * 1024)] = 1024 * 1024
    drain_timeout: Seconds = 10.0  # SIGTERM: finish, commit and leave the groups within this
    threads: Annotated[int, Field(ge=4, le=1024)] = 64  # for blocking calls (waits included)
    access_log: bool = False
    schemas: tuple[NonEmpty, ...] = ()  # Avro schema directories, relative to this file
    publish_topics: tuple[NonEmpty, ...] = ()  # topics the API may publish to
    aggregates: dict[NonEmpty, NonEmpty] = Field(default_factory=dict)  # type -> topic (leases)
    lease_ttl: Seconds = 30.0  # a lease not renewed for this long is released
    max_wait: Seconds = 60.0  # the longest wait a request may ask for
    service: ServiceEndpointConfig | None = None
    projections: dict[NonEmpty, SidecarProjectionConfig] = Field(default_factory=dict)
    sagas: NonEmpty | None = None  # sagas.yaml, relative to this file
    saga_topic_prefix: NonEmpty | None = None  # overrides the definitions' topic prefix
    participants: dict[NonEmpty, SidecarParticipantConfig] = Field(default_factory=dict)
    saga_state: bool = False  # run the saga-state projection (status over the API)
    saga_state_projection: NonEmpty = "kct-saga-state"  # its name (= consumer group)
    watchdog: bool = False  # run a saga watchdog (step timeouts)

    @model_validator(mode="after")
    def _coherent(self) -> SidecarConfig:
        http = [n for n, p in self.projections.items() if p.path is not None]
        http += [n for n, p in self.participants.items() if p.path is not None]
        if http and self.service is None:
            raise _invalid(f"HTTP handlers ({', '.join(sorted(http))}) need 'service.url'")
        if (self.participants or self.saga_state or self.watchdog) and self.sagas is None:
            raise _invalid("participants, saga_state and watchdog need 'sagas' (a sagas.yaml)")
        return self


class KctConfig(_Model):
    """The whole ``kct.yaml`` (version 1)."""

    version: Literal[1]
    service: ServiceName = "kct"
    deployment: DeploymentName = DEFAULT_DEPLOYMENT
    kafka: KafkaConfig
    zookeeper: ZooKeeperConfig = Field(default_factory=ZooKeeperConfig)
    redis: RedisConfig = Field(default_factory=RedisConfig)
    consistency: ConsistencyConfig = Field(default_factory=ConsistencyConfig)
    conflicts: dict[NonEmpty, ConflictPolicy] = Field(default_factory=dict)
    monitor: MonitorConfig = Field(default_factory=MonitorConfig)
    telemetry: TelemetryConfig | None = None  # absent: no tracing
    sidecar: SidecarConfig | None = None  # absent: `kct sidecar` serves the API only
    _source: str = PrivateAttr(default="<string>")

    @field_validator("version", mode="before")
    @classmethod
    def _supported(cls, version: Any) -> Any:
        if type(version) is not int or version != 1:
            raise _invalid(f"unsupported version {version!r}; this kct reads version 1")
        return version

    @property
    def source(self) -> str:
        """The file this configuration was read from (``<string>`` for text)."""
        return self._source

    def describe(self) -> dict[str, Any]:
        """A JSON-ready view with every secret shown as ``***`` and rules resolved."""
        view: dict[str, Any] = _redact(self.model_dump())
        view["source"] = self.source
        view["redis"]["url"] = self.redis.redis_url()
        view["kafka"]["extra"] = {
            key: "***" if is_secret_name(key) else value for key, value in self.kafka.extra.items()
        }
        defaults = self.consistency
        view["consistency"]["strong"] = [
            {
                "match": rule.kind,
                "type": rule.type,
                "id": rule.id,
                "pattern": rule.pattern,
                "timeout": defaults.default_timeout if rule.timeout is None else rule.timeout,
                "lock_timeout": defaults.lock_timeout
                if rule.lock_timeout is None
                else rule.lock_timeout,
                "projections": list(
                    defaults.projections if rule.projections is None else rule.projections
                ),
            }
            for rule in defaults.strong
        ]
        return view


def _redact(value: Any) -> Any:
    if isinstance(value, SecretStr):
        return "***"
    if isinstance(value, Mapping):
        return {key: _redact(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_redact(item) for item in value]
    return value


def _too_large(source: str) -> ConfigurationError:
    limit = f"{MAX_FILE_BYTES // 1024 // 1024} MiB"
    return ConfigurationError(
        f"{source}: the file is larger than {limit}, the limit for a kct.yaml", file=source
    )


def load_config(path: str | Path, environ: Mapping[str, str] | None = None) -> KctConfig:
    """Read and validate ``path``; ``environ`` (default ``os.environ``) fills ``${NAME}``.

    The file must be UTF-8 and at most :data:`MAX_FILE_BYTES` long.
    """
    file = str(path)
    try:
        with Path(path).open("rb") as stream:  # bounded: also for /dev/zero or a pipe
            raw = stream.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise ConfigurationError(f"{file}: configuration file not found", file=file) from None
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        raise ConfigurationError(f"{file}: cannot read the file: {reason}", file=file) from None
    if len(raw) > MAX_FILE_BYTES:
        raise _too_large(file)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ConfigurationError(
            f"{file}:{line}: the file must be UTF-8; byte 0x{raw[exc.start]:02x} at offset "
            f"{exc.start} is not",
            file=file,
            line=line,
        ) from None
    return parse_config(text, source=file, environ=environ)


def parse_config(
    text: str, source: str = "<string>", environ: Mapping[str, str] | None = None
) -> KctConfig:
    """Validate YAML ``text`` (at most :data:`MAX_FILE_BYTES` characters); ``source`` names it."""
    if len(text) > MAX_FILE_BYTES:
        raise _too_large(source)
    root, data = read_yaml(text, source, os.environ if environ is None else environ)
    if root is None:
        empty = Problem(
            None, None, "the file is empty; expected a mapping with 'version: 1' and 'kafka:'"
        )
        raise config_error(source, [empty])
    if not isinstance(data, dict):
        kind = "a list" if isinstance(data, list) else f"a {type(data).__name__}"
        top = Problem(
            root.start_mark.line + 1, None, f"expected a mapping at the top level, got {kind}"
        )
        raise config_error(source, [top])
    try:
        config = KctConfig.model_validate(data)
    except ValidationError as exc:  # never chained: its text may hold the input
        raise config_error(source, validation_problems(exc, root, KctConfig)) from None
    config._source = source
    return config
