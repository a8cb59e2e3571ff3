"""Saga messages and their envelopes.

Commands (``kct.saga.SagaCommand``) tell a participant to EXECUTE or
COMPENSATE one step; replies (``kct.saga.SagaReply``) say how it went;
``kct.saga.SagaStarted`` opens a saga's reply stream. All travel as ordinary
envelopes (Avro payload, headers), keyed by saga id, so one saga's messages
stay in order on each topic, bad records are dead-lettered like any event,
and the saga id is the correlation id of every message of the saga.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from toolkit.envelope import Envelope

__all__ = [
    "COMMAND",
    "COMPENSATION_FAILED",
    "REPLY",
    "STARTED",
    "Action",
    "Outcome",
    "SagaCommand",
    "SagaCompensationFailed",
    "SagaReply",
    "SagaStarted",
]

COMMAND = "kct.saga.SagaCommand"
REPLY = "kct.saga.SagaReply"
STARTED = "kct.saga.SagaStarted"
COMPENSATION_FAILED = "kct.saga.SagaCompensationFailed"
AGGREGATE_TYPE = "saga"


class Action(StrEnum):
    EXECUTE = "EXECUTE"
    COMPENSATE = "COMPENSATE"


class Outcome(StrEnum):
    SUCCESS = "SUCCESS"
    FAILURE = "FAILURE"


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _envelope(event_type: str, saga_id: str, payload: Mapping[str, Any]) -> Envelope:
    return Envelope(event_type, AGGREGATE_TYPE, saga_id, 0, payload, correlation_id=saga_id)


@dataclass(frozen=True)
class SagaCommand:
    saga_id: str
    saga_type: str
    step: str
    action: Action
    context: Mapping[str, str] = field(default_factory=dict)
    attempt: int = 1
    issued_at_ms: int = field(default_factory=_now_ms)

    def to_envelope(self) -> Envelope:
        return _envelope(
            COMMAND,
            self.saga_id,
            {
                "saga_id": self.saga_id,
                "saga_type": self.saga_type,
                "step": self.step,
                "action": self.action.value,
                "context": dict(self.context),
                "attempt": self.attempt,
                "issued_at_ms": self.issued_at_ms,
            },
        )

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> SagaCommand:
        return cls(
            saga_id=payload["saga_id"],
            saga_type=payload["saga_type"],
            step=payload["step"],
            action=Action(payload["action"]),
            context=dict(payload.get("context") or {}),
            attempt=int(payload.get("attempt", 1)),
            issued_at_ms=int(payload["issued_at_ms"]),
        )


@dataclass(frozen=True)
class SagaReply:
    saga_id: str
    saga_type: str
    step: str
    action: Action
    outcome: Outcome
    context_delta: Mapping[str, str] = field(default_factory=dict)
    error: str | None = None
    replied_at_ms: int = field(default_factory=_now_ms)
    attempt: int = 1  # the command's attempt: above 1 for an operator's retry
    tries: int = 1  # how often the action ran for this reply (0: decided without running)

    def to_envelope(self) -> Envelope:
        return _envelope(
            REPLY,
            self.saga_id,
            {
                "saga_id": self.saga_id,
                "saga_type": self.saga_type,
                "step": self.step,
                "action": self.action.value,
                "outcome": self.outcome.value,
                "context_delta": dict(self.context_delta),
                "error": self.error,
                "replied_at_ms": self.replied_at_ms,
                "attempt": self.attempt,
                "tries": self.tries,
            },
        )

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> SagaReply:
        return cls(
            saga_id=payload["saga_id"],
            saga_type=payload["saga_type"],
            step=payload["step"],
            action=Action(payload["action"]),
            outcome=Outcome(payload["outcome"]),
            context_delta=dict(payload.get("context_delta") or {}),
            error=payload.get("error"),
            replied_at_ms=int(payload["replied_at_ms"]),
            attempt=int(payload.get("attempt", 1)),
            tries=int(payload.get("tries", 1)),
        )


@dataclass(frozen=True)
class SagaStarted:
    saga_id: str
    saga_type: str
    context: Mapping[str, str] = field(default_factory=dict)
    started_at_ms: int = field(default_factory=_now_ms)

    def to_envelope(self) -> Envelope:
        return _envelope(
            STARTED,
            self.saga_id,
            {
                "saga_id": self.saga_id,
                "saga_type": self.saga_type,
                "context": dict(self.context),
                "started_at_ms": self.started_at_ms,
            },
        )

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> SagaStarted:
        return cls(
            saga_id=payload["saga_id"],
            saga_type=payload["saga_type"],
            context=dict(payload.get("context") or {}),
            started_at_ms=int(payload["started_at_ms"]),
        )


@dataclass(frozen=True)
class SagaCompensationFailed:
    saga_id: str
    saga_type: str
    step: str
    participant: str
    compensation: str
    context: Mapping[str, str]
    attempts: int
    error: str
    failed_at_ms: int = field(default_factory=_now_ms)

    def to_envelope(self) -> Envelope:
        return _envelope(
            COMPENSATION_FAILED,
            self.saga_id,
            {
                "saga_id": self.saga_id,
                "saga_type": self.saga_type,
                "step": self.step,
                "participant": self.participant,
                "compensation": self.compensation,
                "context": dict(self.context),
                "attempts": self.attempts,
                "error": self.error,
                "failed_at_ms": self.failed_at_ms,
            },
        )
