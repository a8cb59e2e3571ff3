"""Connection settings for ZooKeeper, the lock service of strong aggregates.

Typed and frozen; built from kct.yaml's ``zookeeper`` section by
:meth:`ZooKeeperSettings.from_config`, or from the environment by
:meth:`ZooKeeperSettings.from_env` (at the edge). Defaults and the rules for
``lock_root`` and ``lock_acl`` are :mod:`toolkit.config`'s, the one place for
them. The digest password is a ``SecretStr``: it never shows in ``repr``, in
validation errors (inputs are hidden) or in the toolkit's errors, which name
only ``hosts``.

``lock_acl`` defaults to ``creator_all`` with digest auth, else ``open``
(:func:`~toolkit.config.resolve_lock_acl`; ``creator_all`` without auth is
refused). With ``creator_all`` every node the lock service creates (the
per-aggregate lock node, its contenders and any missing ancestor of
``lock_root``) is readable and deletable by this identity only. Create shared
ancestors of ``lock_root`` beforehand if other identities need them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from toolkit.config import (
    DEFAULT_LOCK_ROOT,
    DEFAULT_ZOOKEEPER_HOSTS,
    DEFAULT_ZOOKEEPER_SESSION_TIMEOUT,
    LockAcl,
    ZnodePath,
    ZooKeeperConfig,
    resolve_lock_acl,
)

__all__ = ["DEFAULT_ZOOKEEPER_HOSTS", "ZooKeeperSettings"]


class ZooKeeperSettings(BaseModel):
    """Where ZooKeeper is, how to authenticate, and where locks live."""

    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    hosts: str = DEFAULT_ZOOKEEPER_HOSTS
    lock_root: ZnodePath = DEFAULT_LOCK_ROOT
    session_timeout: float = Field(default=DEFAULT_ZOOKEEPER_SESSION_TIMEOUT, gt=0)
    connect_timeout: float = Field(default=5.0, gt=0)
    auth_username: str | None = None
    auth_password: SecretStr | None = None
    lock_acl: LockAcl = "open"  # without auth; see _default_acl
    use_tls: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _default_acl(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and data.get("lock_acl") is None:
            has_auth = data.get("auth_username") is not None
            return {**data, "lock_acl": resolve_lock_acl(None, has_auth)}
        return data

    @model_validator(mode="after")
    def _check(self) -> ZooKeeperSettings:
        if (self.auth_username is None) != (self.auth_password is None):
            raise ValueError("auth_username and auth_password go together")
        if self.auth_username is not None and ":" in self.auth_username:
            raise ValueError("auth_username must not contain ':'")
        if not self.use_tls and any((self.ca_file, self.cert_file, self.key_file)):
            raise ValueError("ca_file, cert_file and key_file need use_tls=True")
        resolve_lock_acl(self.lock_acl, self.auth_username is not None)
        return self

    @classmethod
    def from_config(cls, config: ZooKeeperConfig) -> ZooKeeperSettings:
        """Settings from kct.yaml's ``zookeeper`` section, credentials included."""
        auth, tls = config.auth, config.tls
        return cls(
            hosts=config.hosts,
            lock_root=config.lock_root,
            session_timeout=config.session_timeout,
            auth_username=auth.username if auth else None,
            auth_password=auth.password if auth else None,
            lock_acl=config.lock_acl,
            use_tls=tls is not None,
            ca_file=tls.ca_file if tls else None,
            cert_file=tls.cert_file if tls else None,
            key_file=tls.key_file if tls else None,
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ZooKeeperSettings:
        """Settings from ``KCT_ZOOKEEPER_HOSTS`` (default: the local stack)."""
        env = os.environ if environ is None else environ
        return cls(hosts=env.get("KCT_ZOOKEEPER_HOSTS", DEFAULT_ZOOKEEPER_HOSTS))

    @property
    def has_auth(self) -> bool:
        """True when digest credentials are configured."""
        return self.auth_username is not None and self.auth_password is not None

    def client_options(self) -> dict[str, Any]:
        """Connection keyword arguments for ``KazooClient`` (auth and TLS included)."""
        options: dict[str, Any] = {"hosts": self.hosts, "timeout": self.session_timeout}
        if self.auth_username is not None and self.auth_password is not None:
            credential = f"{self.auth_username}:{self.auth_password.get_secret_value()}"
            options["auth_data"] = [("digest", credential)]
        if self.use_tls:
            options.update(
                use_ssl=True, ca=self.ca_file, certfile=self.cert_file, keyfile=self.key_file
            )
        return options
