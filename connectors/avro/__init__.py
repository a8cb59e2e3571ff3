"""Avro payloads with fastavro: a local schema registry and the codec."""

from connectors.avro.codec import AvroCodec
from connectors.avro.registry import AvroSchemaRegistry, bundled_schema_dir

__all__ = ["AvroCodec", "AvroSchemaRegistry", "bundled_schema_dir"]
