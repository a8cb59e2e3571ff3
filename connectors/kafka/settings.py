"""Connection settings for Kafka clients.

Typed and frozen; built from kct.yaml's ``kafka`` section by
:meth:`KafkaSettings.from_config`, or from the environment by :meth:`from_env`
(at the edge). Defaults come from :mod:`toolkit.config`, the one place for
them. Raw librdkafka options pass through ``extra`` unchanged (they win over
the toolkit's defaults, except the ones a guarantee depends on, which each
client pins and documents); options whose name marks a secret
(:func:`~toolkit.config.is_secret_name`) live in ``secrets``, masked.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from toolkit.config import DEFAULT_CLIENT_ID, DEFAULT_KAFKA_BOOTSTRAP, KafkaConfig, is_secret_name

__all__ = ["DEFAULT_BOOTSTRAP", "KafkaSettings"]

# The local stack's broker (`kct stack up`).
DEFAULT_BOOTSTRAP = DEFAULT_KAFKA_BOOTSTRAP

_LIBRDKAFKA_LOG = logging.getLogger("kct.kafka")


class KafkaSettings(BaseModel):
    """Where Kafka is and how to talk to it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    bootstrap_servers: str = DEFAULT_BOOTSTRAP
    client_id: str = DEFAULT_CLIENT_ID
    extra: Mapping[str, str | int | float | bool] = Field(default_factory=dict)
    # librdkafka options holding secrets (sasl.password, ssl.key.password):
    # masked in repr and errors, unmasked only in client_config().
    secrets: Mapping[str, SecretStr] = Field(default_factory=dict)
    # Topics the toolkit creates (kct.yaml's kafka.topics); None: fit the cluster,
    # min(3, brokers) replicas and min.insync.replicas min(2, replicas).
    replication_factor: int | None = Field(default=None, gt=0)
    min_insync_replicas: int | None = Field(default=None, gt=0)

    @classmethod
    def from_config(cls, config: KafkaConfig) -> KafkaSettings:
        """Settings from kct.yaml's ``kafka`` section, credentials included.

        Every option whose name marks a secret (``sasl.password``,
        ``ssl.key.password``, an ``extra`` such as ``ssl.key.pem``) goes to
        ``secrets``, so ``repr`` and errors never show it.
        """
        options = config.librdkafka_config()
        bootstrap, client_id = options.pop("bootstrap.servers"), options.pop("client.id")
        return cls(
            bootstrap_servers=str(bootstrap),
            client_id=str(client_id),
            extra={k: v for k, v in options.items() if not is_secret_name(k)},
            secrets={k: SecretStr(str(v)) for k, v in options.items() if is_secret_name(k)},
            replication_factor=config.topics.replication_factor,
            min_insync_replicas=config.topics.min_insync_replicas,
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> KafkaSettings:
        """Settings from ``KCT_KAFKA_BOOTSTRAP`` (default: the local stack)."""
        env = os.environ if environ is None else environ
        return cls(bootstrap_servers=env.get("KCT_KAFKA_BOOTSTRAP", DEFAULT_BOOTSTRAP))

    def client_config(self, **defaults: object) -> dict[str, object]:
        """librdkafka configuration: connection, then ``defaults``, then ``extra``.

        librdkafka's own log lines go to the ``kct.kafka`` Python logger
        instead of stderr, so applications decide what to show.
        """
        config: dict[str, object] = {
            "bootstrap.servers": self.bootstrap_servers,
            "client.id": self.client_id,
            "logger": _LIBRDKAFKA_LOG,
        }
        config.update(defaults)
        config.update(self.extra)
        config.update({k: v.get_secret_value() for k, v in self.secrets.items()})
        return config
