"""A local, file-based Avro schema registry.

Schemas are ``.avsc`` files. Each is identified by its full name and its
fingerprint (CRC-64-AVRO of the Parsing Canonical Form, 16 hex digits); the
reference written in an event's ``schema`` header is ``full.name@fingerprint``.
For every full name one schema is *current*: it is used to write, and as the
reader schema when decoding (Avro schema resolution fills added fields from
their defaults). Older versions stay registered as writer-only schemas so
events written with them remain readable: keep them in a ``history/`` folder
next to the current files.

Failure modes: a file that is not a valid Avro schema, or two current files
with the same full name, raise ``ConfigurationError`` naming the file; a
reference that is not registered raises ``UnknownSchema``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastavro import parse_schema
from fastavro.schema import SchemaParseException, fingerprint, to_parsing_canonical_form

from toolkit.errors import ConfigurationError, UnknownSchema

__all__ = ["AvroSchemaRegistry", "RegisteredSchema", "bundled_schema_dir"]

HISTORY_FOLDER = "history"


def bundled_schema_dir() -> Path:
    """The schemas shipped with kct (example domain and saga messages)."""
    import toolkit

    installed = Path(toolkit.__file__).parent / "_schemas"
    if installed.is_dir():
        return installed
    return Path(__file__).resolve().parents[2] / "schemas"


@dataclass(frozen=True, slots=True)
class RegisteredSchema:
    """A parsed schema and its identity."""

    name: str
    fingerprint: str
    parsed: Any
    source: str

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.fingerprint}"


class AvroSchemaRegistry:
    """Current and historical Avro schemas by full name and fingerprint."""

    def __init__(self) -> None:
        self._by_ref: dict[str, RegisteredSchema] = {}
        self._current: dict[str, RegisteredSchema] = {}

    @classmethod
    def from_directories(cls, *directories: Path | str) -> AvroSchemaRegistry:
        """Register every ``*.avsc`` below the directories (``history/`` ones as old versions)."""
        registry = cls()
        for directory in directories:
            root = Path(directory)
            if not root.is_dir():
                raise ConfigurationError("schema directory does not exist", path=str(root))
            for path in sorted(root.rglob("*.avsc")):
                old = HISTORY_FOLDER in path.relative_to(root).parts[:-1]
                registry.register_file(path, current=not old)
        return registry

    def register_file(self, path: Path, *, current: bool = True) -> RegisteredSchema:
        try:
            schema = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigurationError(f"cannot read Avro schema: {exc}", path=str(path)) from exc
        return self.register(schema, current=current, source=str(path))

    def register(
        self, schema: Mapping[str, Any], *, current: bool = True, source: str = "<inline>"
    ) -> RegisteredSchema:
        """Add a schema; with ``current`` it becomes the one used to write its name."""
        try:
            parsed = parse_schema(dict(schema), named_schemas={})
            canonical = to_parsing_canonical_form(parsed)
        except (SchemaParseException, ValueError, TypeError, KeyError) as exc:
            raise ConfigurationError(f"invalid Avro schema: {exc}", path=source) from exc
        name = parsed["name"] if isinstance(parsed, dict) and "name" in parsed else None
        if not isinstance(name, str):
            raise ConfigurationError("an event schema must be a named record", path=source)
        entry = RegisteredSchema(name, fingerprint(canonical, "CRC-64-AVRO"), parsed, source)
        if current:
            existing = self._current.get(name)
            if existing is not None and existing.fingerprint != entry.fingerprint:
                raise ConfigurationError(
                    "two current schemas share a name; move the older one to history/",
                    schema=name,
                    path=source,
                    other=existing.source,
                )
            self._current[name] = entry
        self._by_ref.setdefault(entry.ref, entry)
        return entry

    def current(self, name: str) -> RegisteredSchema:
        """The schema used to write ``name``."""
        try:
            return self._current[name]
        except KeyError:
            raise UnknownSchema("no current schema for event type", event_type=name) from None

    def resolve(self, ref: str) -> RegisteredSchema:
        """The writer schema a reference names."""
        try:
            return self._by_ref[ref]
        except KeyError:
            raise UnknownSchema("unknown writer schema", schema=ref[:200]) from None

    def reader_for(self, writer: RegisteredSchema) -> RegisteredSchema:
        """The reader schema for data written with ``writer``: current one of the same name."""
        return self._current.get(writer.name, writer)

    @property
    def names(self) -> Iterable[str]:
        return sorted(self._current)
