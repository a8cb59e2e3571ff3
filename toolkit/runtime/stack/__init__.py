"""``kct stack``: the local Kafka, ZooKeeper, Redis and Jaeger, one package.

:mod:`~toolkit.runtime.stack.local` (:class:`LocalStack`: up, down, status),
:mod:`~toolkit.runtime.stack.services` (each server's ports, configs, command
lines and probes), :mod:`~toolkit.runtime.stack.provision` (downloads and
installs), :mod:`~toolkit.runtime.stack.process` (pid records, ports, logs) and
:mod:`~toolkit.runtime.stack.cli` (the ``kct stack`` commands).
"""

from toolkit.runtime.stack.local import (
    LocalStack,
    ServiceStatus,
    StackEndpoints,
    StackStatus,
    default_port_offset,
    default_state_dir,
)

__all__ = [
    "LocalStack",
    "ServiceStatus",
    "StackEndpoints",
    "StackStatus",
    "default_port_offset",
    "default_state_dir",
]
