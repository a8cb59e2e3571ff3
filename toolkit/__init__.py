"""kct, the Kafka consistency toolkit: its public surface, importable from one place.

``from toolkit import Kct, Envelope, Projection`` works for every name in
``__all__``. Names are imported on first use (PEP 562), so ``import
toolkit.errors`` stays light and the drivers load only with :class:`Kct`;
type checkers see the real classes (this package ships ``py.typed``).
Everything else stays where it is (``toolkit.ports``, ``connectors.*``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from toolkit.boundary import ConsistencyBoundary, OperationContext
    from toolkit.config import KctConfig, load_config
    from toolkit.conflicts import ConflictResolver, Resolution
    from toolkit.consistency import EventualConsistencyManager, ReadAfterWrite
    from toolkit.dead_letter import DeadLetter, DeadLetterQueue, dead_letter_topic
    from toolkit.dead_letter_replay import DeadLetterReplayer
    from toolkit.envelope import ConsumedEvent, Envelope
    from toolkit.errors import (
        ConfigurationError,
        ConnectorError,
        ConsistencyError,
        ConsistencyTimeout,
        LockLost,
        LockTimeout,
        PublishError,
        SagaError,
        SerializationError,
        StepFailed,
        ToolkitError,
        TransactionAborted,
    )
    from toolkit.hlc import HybridLogicalClock
    from toolkit.positions import ConsistencyToken, Position, TopicPartition
    from toolkit.projection import Projection, ProjectionRunner
    from toolkit.publisher import EventPublisher, PublishedEvent
    from toolkit.read_model import ReadModelBatch
    from toolkit.reader import EventReader
    from toolkit.runtime.app import Kct, KctSettings
    from toolkit.saga.client import SagaClient
    from toolkit.saga.definition import SagaDefinition, SagaStep, load_saga_definitions
    from toolkit.saga.operations import SagaOperator
    from toolkit.saga.participant import SagaParticipant, StepContext
    from toolkit.saga.state import SagaStatus
    from toolkit.saga.watchdog import SagaWatchdog

_SOURCES = {
    "ConsistencyBoundary": "toolkit.boundary",
    "OperationContext": "toolkit.boundary",
    "KctConfig": "toolkit.config",
    "load_config": "toolkit.config",
    "ConflictResolver": "toolkit.conflicts",
    "Resolution": "toolkit.conflicts",
    "EventualConsistencyManager": "toolkit.consistency",
    "ReadAfterWrite": "toolkit.consistency",
    "DeadLetter": "toolkit.dead_letter",
    "DeadLetterQueue": "toolkit.dead_letter",
    "dead_letter_topic": "toolkit.dead_letter",
    "DeadLetterReplayer": "toolkit.dead_letter_replay",
    "ConsumedEvent": "toolkit.envelope",
    "Envelope": "toolkit.envelope",
    "ConfigurationError": "toolkit.errors",
    "ConnectorError": "toolkit.errors",
    "ConsistencyError": "toolkit.errors",
    "ConsistencyTimeout": "toolkit.errors",
    "LockLost": "toolkit.errors",
    "LockTimeout": "toolkit.errors",
    "PublishError": "toolkit.errors",
    "SagaError": "toolkit.errors",
    "SerializationError": "toolkit.errors",
    "StepFailed": "toolkit.errors",
    "ToolkitError": "toolkit.errors",
    "TransactionAborted": "toolkit.errors",
    "HybridLogicalClock": "toolkit.hlc",
    "ConsistencyToken": "toolkit.positions",
    "Position": "toolkit.positions",
    "TopicPartition": "toolkit.positions",
    "Projection": "toolkit.projection",
    "ProjectionRunner": "toolkit.projection",
    "EventPublisher": "toolkit.publisher",
    "PublishedEvent": "toolkit.publisher",
    "ReadModelBatch": "toolkit.read_model",
    "EventReader": "toolkit.reader",
    "Kct": "toolkit.runtime.app",
    "KctSettings": "toolkit.runtime.app",
    "SagaClient": "toolkit.saga.client",
    "SagaDefinition": "toolkit.saga.definition",
    "SagaStep": "toolkit.saga.definition",
    "load_saga_definitions": "toolkit.saga.definition",
    "SagaOperator": "toolkit.saga.operations",
    "SagaParticipant": "toolkit.saga.participant",
    "StepContext": "toolkit.saga.participant",
    "SagaStatus": "toolkit.saga.state",
    "SagaWatchdog": "toolkit.saga.watchdog",
}

__all__ = [
    "ConfigurationError",
    "ConflictResolver",
    "ConnectorError",
    "ConsistencyBoundary",
    "ConsistencyError",
    "ConsistencyTimeout",
    "ConsistencyToken",
    "ConsumedEvent",
    "DeadLetter",
    "DeadLetterQueue",
    "DeadLetterReplayer",
    "Envelope",
    "EventPublisher",
    "EventReader",
    "EventualConsistencyManager",
    "HybridLogicalClock",
    "Kct",
    "KctConfig",
    "KctSettings",
    "LockLost",
    "LockTimeout",
    "OperationContext",
    "Position",
    "Projection",
    "ProjectionRunner",
    "PublishError",
    "PublishedEvent",
    "ReadAfterWrite",
    "ReadModelBatch",
    "Resolution",
    "SagaClient",
    "SagaDefinition",
    "SagaError",
    "SagaOperator",
    "SagaParticipant",
    "SagaStatus",
    "SagaStep",
    "SagaWatchdog",
    "SerializationError",
    "StepContext",
    "StepFailed",
    "ToolkitError",
    "TopicPartition",
    "TransactionAborted",
    "dead_letter_topic",
    "load_config",
    "load_saga_definitions",
]


def __getattr__(name: str) -> Any:
    source = _SOURCES.get(name)
    if source is None:
        raise AttributeError(f"module 'toolkit' has no attribute {name!r}")
    value = getattr(importlib.import_module(source), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
