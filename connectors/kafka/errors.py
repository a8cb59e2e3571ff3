"""Kafka client errors become the toolkit's errors here, in one place for the package.

An adapter wraps a librdkafka call in :func:`map_exceptions` instead of
catching ``KafkaException`` per method (httpx's ``map_exceptions`` idea): a
``KafkaException`` raised inside becomes the given ``ConnectorError``
subclass, ``"<what> failed: <reason>"`` with librdkafka's error name as
``code`` and the adapter's context (group, topic, partition); the original is
chained. Nothing else is caught. Calls whose error classes need different
handling (a transaction's abortable, retriable and fencing errors) keep
their own logic in ``transactions.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from confluent_kafka import KafkaError, KafkaException

from toolkit.errors import ConnectorError

__all__ = ["delivery_failure", "kafka_error", "map_exceptions"]

# Why an acks=all write can time out, for the error message: the idempotent
# producer retries NOT_ENOUGH_REPLICAS until its delivery timeout, so the
# broker's answer reaches the caller only as a timeout.
_UNACKNOWLEDGED = (
    "not acknowledged by the in-sync replicas in time: the partition's leader is "
    "unreachable, or it has fewer in-sync replicas than min.insync.replicas "
    "(NOT_ENOUGH_REPLICAS, retried until the delivery timeout)"
)


def kafka_error(exc: KafkaException) -> KafkaError:
    """The ``KafkaError`` a ``KafkaException`` carries (librdkafka sometimes gives text)."""
    error = exc.args[0] if exc.args else None
    if isinstance(error, KafkaError):
        return error
    return KafkaError(KafkaError._FAIL, str(error))


def delivery_failure(error: KafkaError | None) -> str:
    """What a failed delivery report (None: no report in time) means, in words a
    caller can act on."""
    if error is None:
        return f"{_UNACKNOWLEDGED}; they may or may not be written"
    if error.code() in (KafkaError._MSG_TIMED_OUT, KafkaError.NOT_ENOUGH_REPLICAS):
        return f"{_UNACKNOWLEDGED} [{error.name()}]"
    if error.code() == KafkaError.NOT_ENOUGH_REPLICAS_AFTER_APPEND:
        return (
            "written by the leader but not by min.insync.replicas replicas "
            f"(NOT_ENOUGH_REPLICAS_AFTER_APPEND) [{error.name()}]"
        )
    return error.str()


@contextmanager
def map_exceptions(
    error_class: type[ConnectorError], what: str, **context: object
) -> Iterator[None]:
    """Translate a ``KafkaException`` raised in the block into ``error_class``."""
    try:
        yield
    except KafkaException as exc:
        error = kafka_error(exc)
        raise error_class(f"{what} failed: {error.str()}", **context, code=error.name()) from exc
