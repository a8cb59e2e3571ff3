"""Readiness probe for ZooKeeper: can a client open (and close) a session?

Guarantee: ``zookeeper_ready`` returns True only after a session was
established, so the server has loaded its database and serves requests.
Failure modes: never raises for an unreachable or starting server; answers
False. The probe's client is always stopped, so no background thread lingers.
"""

from __future__ import annotations

import logging

from kazoo.client import KazooClient
from kazoo.exceptions import KazooException
from kazoo.handlers.threading import KazooTimeoutError

__all__ = ["zookeeper_ready"]

_quiet = logging.getLogger(__name__ + ".client")
# Refused connections are the expected answer while the server starts: keep
# kazoo's reconnect warnings out of the caller's terminal.
_quiet.addHandler(logging.NullHandler())
_quiet.propagate = False


def zookeeper_ready(hosts: str, timeout: float) -> bool:
    """True if a session to ``hosts`` (``host:port[,...]``) opens within ``timeout`` seconds."""
    client = KazooClient(hosts=hosts, timeout=max(timeout, 1.0), logger=_quiet)
    try:
        client.start(timeout=timeout)
    except (KazooTimeoutError, KazooException, OSError):
        return False
    else:
        return True
    finally:
        client.stop()
        client.close()
