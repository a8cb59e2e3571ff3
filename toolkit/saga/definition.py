"""Saga definitions: ordered steps, each owned by a participant service.

A :class:`SagaDefinition` names its steps in order; each :class:`SagaStep`
has a participant (the service that performs it), a command (the action's
name) and optionally a compensation (the action that undoes it) and a timeout.
Definitions are Python objects or loaded from YAML
(:func:`load_saga_definitions`), with the same precise errors as ``kct.yaml``.

Topics follow from the definition: commands for a participant go to
``<prefix>.<participant>.commands``, replies (the saga's state is their fold)
to ``<prefix>.replies``, and compensations that keep failing to
``<prefix>.compensation-failed``; ``prefix`` defaults to ``saga.<type>``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import PydanticCustomError

from toolkit.errors import ConfigurationError
from toolkit.yaml_source import Problem, config_error, read_yaml, validation_problems

__all__ = ["SagaDefinition", "SagaStep", "load_saga_definitions", "parse_saga_definitions"]

Name = Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")]


class SagaStep(BaseModel):
    """One step: who performs it, how, how to undo it, how long it may take."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: Name
    participant: Name
    command: Name
    compensation: Name | None = None
    timeout: Annotated[float, Field(gt=0)] = 30.0


def _check_unique(steps: Sequence[SagaStep]) -> None:
    names = [step.name for step in steps]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise PydanticCustomError(
            "unique_steps",
            "step names must be unique; repeated: {names}",
            {"names": ", ".join(twice)},
        )


class SagaBody(BaseModel):
    """A saga's steps and options, as the YAML file gives them under its type."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    steps: tuple[SagaStep, ...] = Field(min_length=1)
    topic_prefix: Name | None = None
    compensation_retries: Annotated[int, Field(ge=0)] = 3

    @field_validator("steps")
    @classmethod
    def _unique_step_names(cls, steps: tuple[SagaStep, ...]) -> tuple[SagaStep, ...]:
        _check_unique(steps)
        return steps


class SagaDefinition(SagaBody):
    """A saga type: its steps in execution order."""

    saga_type: Name

    @property
    def prefix(self) -> str:
        return self.topic_prefix or f"saga.{self.saga_type}"

    @property
    def reply_topic(self) -> str:
        return f"{self.prefix}.replies"

    @property
    def failure_topic(self) -> str:
        return f"{self.prefix}.compensation-failed"

    def command_topic(self, participant: str) -> str:
        return f"{self.prefix}.{participant}.commands"

    @property
    def participants(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(step.participant for step in self.steps))

    @property
    def topics(self) -> tuple[str, ...]:
        """Every topic the saga uses (create them before running it)."""
        commands = tuple(self.command_topic(p) for p in self.participants)
        return (*commands, self.reply_topic, self.failure_topic)

    def index(self, step: str) -> int:
        for i, candidate in enumerate(self.steps):
            if candidate.name == step:
                return i
        raise ConfigurationError("unknown saga step", saga_type=self.saga_type, step=step)

    def step(self, name: str) -> SagaStep:
        return self.steps[self.index(name)]

    def after(self, step: str) -> SagaStep | None:
        """The step that runs after ``step`` succeeds (None: the saga is complete)."""
        i = self.index(step)
        return self.steps[i + 1] if i + 1 < len(self.steps) else None

    def before(self, step: str) -> SagaStep | None:
        """The step compensated after ``step`` failed or was compensated."""
        i = self.index(step)
        return self.steps[i - 1] if i > 0 else None


class _SagaFile(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    sagas: dict[Name, SagaBody]


def parse_saga_definitions(
    text: str, source: str = "<string>", environ: Mapping[str, str] | None = None
) -> dict[str, SagaDefinition]:
    """Definitions from YAML ``sagas: {<type>: {steps: [...]}}``, by saga type."""
    root, data = read_yaml(text, source, os.environ if environ is None else environ)
    if root is None or not isinstance(data, dict):
        line = None if root is None else root.start_mark.line + 1
        raise config_error(source, [Problem(line, None, "expected a mapping with 'sagas:'")])
    try:
        parsed = _SagaFile.model_validate(data)
    except ValidationError as exc:
        raise config_error(source, validation_problems(exc, root, _SagaFile)) from None
    definitions: dict[str, SagaDefinition] = {}
    for saga_type, body in parsed.sagas.items():
        try:
            definitions[saga_type] = SagaDefinition(saga_type=saga_type, **body.model_dump())
        except ValidationError as exc:
            shifted = [
                Problem(p.line, f"sagas.{saga_type}.{p.field}" if p.field else None, p.text)
                for p in validation_problems(exc, root, SagaDefinition)
            ]
            raise config_error(source, shifted) from None
    return definitions


def load_saga_definitions(
    path: str | Path, environ: Mapping[str, str] | None = None
) -> dict[str, SagaDefinition]:
    file = Path(path)
    try:
        text = file.read_text()
    except OSError as exc:
        raise ConfigurationError(
            f"cannot read saga definitions: {exc.strerror}", file=str(file)
        ) from None
    return parse_saga_definitions(text, str(file), environ)


def steps(*specs: Sequence[Any]) -> tuple[SagaStep, ...]:
    """Shorthand: ``steps(("ReserveInventory", "inventory", "reserve", "release"), ...)``."""
    return tuple(
        SagaStep(
            name=s[0], participant=s[1], command=s[2], compensation=s[3] if len(s) > 3 else None
        )
        for s in specs
    )
