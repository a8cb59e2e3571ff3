"""One error tree for the whole toolkit.

Every error the toolkit raises derives from :class:`ToolkitError`. Errors carry
structured context (topic, partition, offset, projection, aggregate, ...) as
attributes so callers can react without parsing messages. Messages never
contain secrets: adapters translate backend errors at their edge and pass only
what is safe to show (names, coordinates, reasons).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class ToolkitError(Exception):
    """Root of every error raised by the toolkit."""

    def __init__(self, message: str, **context: Any) -> None:
        super().__init__(message)
        self.message = message
        self.context: Mapping[str, Any] = dict(context)

    def __str__(self) -> str:
        shown = {k: v for k, v in self.context.items() if v is not None}
        if not shown:
            return self.message
        details = ", ".join(f"{k}={v!r}" for k, v in shown.items())
        return f"{self.message} ({details})"


class ConfigurationError(ToolkitError, ValueError):
    """A setting, file or argument is invalid; the message says which and why."""


class InvalidToken(ConfigurationError):
    """A consistency token string could not be parsed."""


class ConnectorError(ToolkitError):
    """A backend (Kafka, Redis, ZooKeeper, ...) failed or could not be reached."""


class PublishError(ConnectorError):
    """An event was not acknowledged by Kafka; it may not have been written."""


class ConsumeError(ConnectorError):
    """Reading or committing offsets failed."""


class AdminError(ConnectorError):
    """A Kafka admin request (topics, offsets, groups) failed."""


class StoreError(ConnectorError):
    """A read-model, dedup or index store (Redis) failed or could not be reached."""


class SerializationError(ToolkitError):
    """Bytes could not be encoded or decoded with the expected schema."""


class InvalidEvent(ToolkitError, ValueError):
    """An event built in code is malformed (empty aggregate id, negative sequence, unstamped)."""


class UnknownSchema(SerializationError):
    """The schema named by a record is not known to this process."""


class ConsistencyError(ToolkitError):
    """A consistency guarantee could not be given."""


class ConsistencyTimeout(ConsistencyError, TimeoutError):
    """Projections did not apply the awaited writes in time.

    ``behind`` maps each lagging projection to ``{"topic[partition]": offsets
    still to apply}``.
    """


class LockError(ConsistencyError):
    """A strong aggregate's lock could not be taken or kept."""


class LockTimeout(LockError, TimeoutError):
    """The lock of an aggregate was not acquired in time (another holder kept it)."""


class LockLost(LockError):
    """The lock was lost (session expired or suspended too long) before the
    operation committed; nothing of the operation was published."""


class CoordinationError(ConnectorError):
    """The lock service (ZooKeeper) failed or could not be reached."""


class ServiceUnavailable(ConnectorError):
    """A service's HTTP handler did not answer (refused, timed out, 5xx) after its
    retries: the loop pauses and retries, it never skips the event or command."""


class ServiceRejected(ToolkitError):
    """A service's HTTP handler refused an event or command (4xx) or answered
    something that is not a valid outcome: a handler error for that one."""


class TransactionAborted(PublishError):
    """A Kafka transaction was aborted: none of its records will be read by
    ``read_committed`` consumers."""


class SagaError(ToolkitError):
    """A saga step or compensation could not be done."""


class StepFailed(SagaError):
    """A step cannot be done for a business reason (out of stock, card declined);
    raised by a step action, it fails the step without a retry."""


class SagaOperationRefused(SagaError):
    """An operator's retry or compensation does not fit the saga's state (it is
    not stuck, already ended, or ran past the step); nothing was published."""


class ProjectionError(ToolkitError):
    """A projection runner cannot continue (its store or consumer keeps failing)."""


class StackError(ToolkitError):
    """The local stack (``kct stack``) could not be provisioned, started or stopped."""


__all__ = [
    "AdminError",
    "ConfigurationError",
    "ConnectorError",
    "ConsistencyError",
    "ConsistencyTimeout",
    "ConsumeError",
    "CoordinationError",
    "InvalidEvent",
    "InvalidToken",
    "LockError",
    "LockLost",
    "LockTimeout",
    "ProjectionError",
    "PublishError",
    "SagaError",
    "SagaOperationRefused",
    "SerializationError",
    "ServiceRejected",
    "ServiceUnavailable",
    "StackError",
    "StepFailed",
    "StoreError",
    "ToolkitError",
    "TransactionAborted",
    "UnknownSchema",
]
