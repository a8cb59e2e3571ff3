"""ZooKeeper adapters: distributed lock with a fencing token."""

from connectors.zookeeper.lock import ZooKeeperLease, ZooKeeperLockService
from connectors.zookeeper.probe import zookeeper_ready
from connectors.zookeeper.settings import DEFAULT_ZOOKEEPER_HOSTS, ZooKeeperSettings

__all__ = [
    "DEFAULT_ZOOKEEPER_HOSTS",
    "ZooKeeperLease",
    "ZooKeeperLockService",
    "ZooKeeperSettings",
    "zookeeper_ready",
]
