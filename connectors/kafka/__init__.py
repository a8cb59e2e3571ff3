"""Kafka adapters (confluent-kafka): producer, consumer, admin and settings."""

from connectors.kafka.admin import KafkaAdmin
from connectors.kafka.consumer import KafkaRecordConsumer
from connectors.kafka.producer import KafkaRecordProducer
from connectors.kafka.settings import KafkaSettings

__all__ = ["KafkaAdmin", "KafkaRecordConsumer", "KafkaRecordProducer", "KafkaSettings"]
