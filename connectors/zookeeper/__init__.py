"""ZooKeeper adapters: distributed lock with a fencing token."""

__all__: list[str] = []
