"""In-memory port implementations (kept for older imports: use :mod:`tests.fakes`)."""

from tests.fakes import (
    InMemoryConsumer,
    InMemoryLog,
    InMemoryOffsets,
    InMemoryPositions,
    InMemoryReadModelStore,
)

__all__ = [
    "InMemoryConsumer",
    "InMemoryLog",
    "InMemoryOffsets",
    "InMemoryPositions",
    "InMemoryReadModelStore",
]
