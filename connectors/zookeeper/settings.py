"""Connection settings for ZooKeeper, the lock service of strong aggregates.

Typed and frozen; the environment is read only by
:meth:`ZooKeeperSettings.from_env`. The digest password is a ``SecretStr``:
it never shows in ``repr``, in validation errors (inputs are hidden) or in
the toolkit's errors, which name only ``hosts``.

``lock_acl="creator_all"`` takes effect only with digest auth: every node the
lock service creates (the per-aggregate lock node, its contenders and any
missing ancestor of ``lock_root``) is then readable and deletable by this
identity only. Create shared ancestors of ``lock_root`` beforehand if other
identities need them. Without auth, nodes get ZooKeeper's open ACL.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

__all__ = ["DEFAULT_ZOOKEEPER_HOSTS", "ZooKeeperSettings"]

# The local stack's ZooKeeper (`kct stack up`).
DEFAULT_ZOOKEEPER_HOSTS = "127.0.0.1:12181"


class ZooKeeperSettings(BaseModel):
    """Where ZooKeeper is, how to authenticate, and where locks live."""

    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    hosts: str = DEFAULT_ZOOKEEPER_HOSTS
    lock_root: str = "/kct/locks"
    session_timeout: float = Field(default=10.0, gt=0)
    connect_timeout: float = Field(default=5.0, gt=0)
    auth_username: str | None = None
    auth_password: SecretStr | None = None
    lock_acl: Literal["creator_all", "open"] = "creator_all"
    use_tls: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None

    @model_validator(mode="after")
    def _check(self) -> ZooKeeperSettings:
        if (self.auth_username is None) != (self.auth_password is None):
            raise ValueError("auth_username and auth_password go together")
        if self.auth_username is not None and ":" in self.auth_username:
            raise ValueError("auth_username must not contain ':'")
        if not self.use_tls and any((self.ca_file, self.cert_file, self.key_file)):
            raise ValueError("ca_file, cert_file and key_file need use_tls=True")
        root = self.lock_root
        if not root.startswith("/") or root.endswith("/") or "//" in root:
            raise ValueError("lock_root must be an absolute znode path like /kct/locks")
        return self

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
