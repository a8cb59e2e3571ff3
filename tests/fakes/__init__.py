"""In-memory implementations of the ports, one module per port family.

Each passes its port's contract suite (``tests/contracts/``), run in
``tests/unit/test_contracts.py``; the real adapters pass the same suites in
``tests/integration/test_contracts.py``.
"""

from tests.fakes.locks import InMemoryLease, InMemoryLockService
from tests.fakes.log import InMemoryConsumer, InMemoryLog
from tests.fakes.monitor import InMemoryLogInspector
from tests.fakes.offsets import InMemoryOffsets
from tests.fakes.positions import InMemoryEventPositionIndex, InMemoryPositions
from tests.fakes.replay import InMemoryReplayMarkers, InMemoryTopicBrowser
from tests.fakes.stores import (
    FlakyReadModelStore,
    InMemoryReadModelStore,
    InMemorySagaStepStore,
)
from tests.fakes.transactions import InMemoryTransaction, InMemoryTransactionalProducer

__all__ = [
    "FlakyReadModelStore",
    "InMemoryConsumer",
    "InMemoryEventPositionIndex",
    "InMemoryLease",
    "InMemoryLockService",
    "InMemoryLog",
    "InMemoryLogInspector",
    "InMemoryOffsets",
    "InMemoryPositions",
    "InMemoryReadModelStore",
    "InMemoryReplayMarkers",
    "InMemorySagaStepStore",
    "InMemoryTopicBrowser",
    "InMemoryTransaction",
    "InMemoryTransactionalProducer",
]
