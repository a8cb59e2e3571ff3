"""Avro binary payloads (fastavro), implementing the ``EventCodec`` port.

Encoding validates the payload against the current schema of its event type
and raises ``SerializationError`` naming the type when it does not fit, before
anything is written. Decoding resolves the writer schema (from the event's
``schema`` header) against the current reader schema, so consumers with a
newer schema read older events. Bytes that are truncated, carry trailing
garbage or do not match the writer schema raise ``SerializationError``; an
unregistered writer schema raises ``UnknownSchema``.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

from fastavro import schemaless_reader, schemaless_writer
from fastavro.validation import ValidationError, validate

from connectors.avro.registry import AvroSchemaRegistry
from toolkit.errors import SerializationError
from toolkit.ports import EncodedPayload

__all__ = ["AvroCodec"]


class AvroCodec:
    """Serialises event payloads with the registry's schemas."""

    def __init__(self, registry: AvroSchemaRegistry) -> None:
        self.registry = registry

    def encode(self, event_type: str, payload: Mapping[str, Any]) -> EncodedPayload:
        schema = self.registry.current(event_type)
        try:
            validate(dict(payload), schema.parsed, raise_errors=True)
        except ValidationError as exc:
            raise SerializationError(
                f"payload does not match its schema: {exc}", event_type=event_type
            ) from exc
        buffer = io.BytesIO()
        try:
            schemaless_writer(buffer, schema.parsed, dict(payload))
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise SerializationError(
                f"payload cannot be serialised: {exc}", event_type=event_type
            ) from exc
        return EncodedPayload(buffer.getvalue(), schema.ref)

    def decode(self, data: bytes, schema_ref: str) -> dict[str, Any]:
        writer = self.registry.resolve(schema_ref)
        reader = self.registry.reader_for(writer)
        buffer = io.BytesIO(data)
        # Same schema on both sides (the common case): skip schema resolution.
        reader_schema = None if reader.fingerprint == writer.fingerprint else reader.parsed
        try:
            value = schemaless_reader(buffer, writer.parsed, reader_schema)
        except Exception as exc:
            # fastavro signals bad bytes with many exception types (EOFError,
            # UnicodeDecodeError, IndexError, ValueError, SchemaResolutionError…).
            raise SerializationError(
                f"payload does not decode: {type(exc).__name__}: {exc}", schema=schema_ref
            ) from exc
        if buffer.tell() != len(data):
            raise SerializationError(
                "payload has trailing bytes after the record",
                schema=schema_ref,
                trailing=len(data) - buffer.tell(),
            )
        if not isinstance(value, dict):
            raise SerializationError("payload is not a record", schema=schema_ref)
        return value
