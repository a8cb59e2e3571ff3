"""Adapters from the toolkit's ports to real systems: Kafka, Avro, Redis, ZooKeeper."""

__all__: list[str] = []
