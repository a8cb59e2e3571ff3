"""Redis adapters: read-model store, dedup keys, position pub/sub."""

__all__: list[str] = []
