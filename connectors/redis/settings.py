"""Connection settings for Redis.

Typed and frozen; built from kct.yaml's ``redis`` section by
:meth:`RedisSettings.from_config`, or from the environment by
:meth:`RedisSettings.from_env` (at the edge). The default URL is
:data:`toolkit.config.DEFAULT_REDIS_URL`.
The URL may hold a password (``redis://:secret@host:port/0``): it is never
shown in errors or logs (see :meth:`RedisSettings.safe_url`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

import redis
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from toolkit.config import DEFAULT_REDIS_URL, RedisConfig

__all__ = ["DEFAULT_REDIS_URL", "RedisSettings"]


class RedisSettings(BaseModel):
    """Where Redis is."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    url: str = DEFAULT_REDIS_URL
    socket_timeout: float = 5.0
    username: str | None = None
    password: SecretStr | None = None
    # TLS (with a rediss:// URL): CA bundle and optional client certificate.
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    verify_hostname: bool = True
    # Saga step records (kct.yaml's redis.durability): the server's appendfsync
    # the store checks at first use ("any": no check), and replicas to WAIT for.
    durability_fsync: Literal["any", "everysec", "always"] = "any"
    wait_replicas: int = Field(default=0, ge=0)
    wait_timeout: float = Field(default=1.0, gt=0)

    @classmethod
    def from_config(cls, config: RedisConfig) -> RedisSettings:
        """Settings from kct.yaml's ``redis`` section (``rediss://`` when it has ``tls``)."""
        tls = config.tls
        return cls(
            url=config.redis_url(),
            username=config.username,
            password=config.password,
            ca_file=tls.ca_file if tls else None,
            cert_file=tls.cert_file if tls else None,
            key_file=tls.key_file if tls else None,
            verify_hostname=tls.verify_hostname if tls else True,
            durability_fsync=config.durability.fsync,
            wait_replicas=config.durability.wait_replicas,
            wait_timeout=config.durability.wait_timeout,
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> RedisSettings:
        """Settings from ``KCT_REDIS_URL`` (default: the local stack)."""
        env = os.environ if environ is None else environ
        return cls(url=env.get("KCT_REDIS_URL", DEFAULT_REDIS_URL))

    def safe_url(self) -> str:
        """The URL with any credentials masked, for messages."""
        parts = urlsplit(self.url)
        if parts.password is None and parts.username is None:
            return self.url
        host = parts.hostname or ""
        netloc = f"***@{host}" + (f":{parts.port}" if parts.port else "")
        return urlunsplit(parts._replace(netloc=netloc))

    def client(self) -> redis.Redis:
        """A client with string responses."""
        tls: dict[str, object] = {}
        if self.url.startswith("rediss://"):
            tls = {
                "ssl_ca_certs": self.ca_file,
                "ssl_certfile": self.cert_file,
                "ssl_keyfile": self.key_file,
                "ssl_check_hostname": self.verify_hostname,
            }
        credentials: dict[str, object] = {}
        if self.username is not None:
            credentials["username"] = self.username
        if self.password is not None:
            credentials["password"] = self.password.get_secret_value()
        return redis.Redis.from_url(
            self.url,
            **credentials,
            **tls,
            decode_responses=True,
            socket_timeout=self.socket_timeout,
            socket_connect_timeout=self.socket_timeout,
            health_check_interval=30,
        )
