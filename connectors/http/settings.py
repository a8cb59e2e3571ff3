"""Where the service's HTTP handlers are and how patiently to call them.

Typed and frozen; built from ``kct.yaml``'s ``sidecar.service`` section by
:meth:`ServiceSettings.from_config` (the bearer token, if any, is read from
its environment variable there, at the edge). The token is a ``SecretStr``:
never in ``repr``, errors or logs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from pydantic import SecretStr

from toolkit.config import ServiceEndpointConfig
from toolkit.errors import ConfigurationError

__all__ = ["ServiceSettings"]


@dataclass(frozen=True)
class ServiceSettings:
    """The service's base URL, per-request timeout, retries and back-off."""

    url: str
    timeout: float = 5.0
    retries: int = 3
    backoff: float = 0.1
    max_backoff: float = 5.0
    token: SecretStr | None = field(default=None, repr=False)

    @classmethod
    def from_config(
        cls, config: ServiceEndpointConfig, environ: Mapping[str, str] | None = None
    ) -> ServiceSettings:
        env = os.environ if environ is None else environ
        token: SecretStr | None = None
        if config.token_env is not None:
            value = env.get(config.token_env)
            if not value:
                raise ConfigurationError(
                    f"sidecar.service.token_env: variable {config.token_env} is not set",
                    variable=config.token_env,
                )
            token = SecretStr(value)
        return cls(
            url=config.url,
            timeout=config.timeout,
            retries=config.retries,
            backoff=config.backoff,
            max_backoff=config.max_backoff,
            token=token,
        )
