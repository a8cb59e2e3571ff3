"""A transactional copier process: consume → transform → produce, exactly once.

``python -m tests.faults.copier --bootstrap B --source S --target T --group G --slot N``

Built from kct's Kafka connectors as a service would: a ``read_committed``
:class:`KafkaRecordConsumer` (static member ``copier-N`` of group G) and a
:class:`KafkaTransactionalProducer` (transactional id ``<G>-copier-N``, so a
restarted copier fences and aborts its killed predecessor's transaction at
once). Each poll becomes one transaction holding the copies and the group's
next offsets. Any failed transaction (aborted, or an unknown outcome the
producer resolved by re-initialising) drops the consumer and rejoins, so
reading resumes from the group's committed offsets: what the transaction
decided, never what this process assumed. ``--rate`` paces the copy (events
per second) so that faults land in the middle of it.
"""

from __future__ import annotations

import argparse
import sys
import time

from connectors.kafka import KafkaRecordConsumer, KafkaSettings
from connectors.kafka.transactions import KafkaTransactionalProducer
from toolkit.errors import ConnectorError
from toolkit.ports import ConsumedRecord, OutgoingRecord
from toolkit.positions import TopicPartition

_BATCH = 200


def _transform(record: ConsumedRecord, target: str) -> OutgoingRecord:
    # The "transform": the copy carries where it was copied from.
    source = f"{record.topic}:{record.partition}:{record.offset}".encode()
    return OutgoingRecord(target, record.key, record.value, (*record.headers, ("copied", source)))


def _consumer(settings: KafkaSettings, group: str, source: str) -> KafkaRecordConsumer:
    consumer = KafkaRecordConsumer(settings, group, session_timeout_ms=10_000)
    consumer.subscribe([source])
    return consumer


def run(args: argparse.Namespace) -> None:
    member = f"copier-{args.slot}"
    settings = KafkaSettings(bootstrap_servers=args.bootstrap, client_id=member)
    static = settings.model_copy(update={"extra": {"group.instance.id": member}})
    producer = KafkaTransactionalProducer(settings, f"{args.group}-{member}")
    consumer = _consumer(static, args.group, args.source)
    started, copied = time.monotonic(), 0
    while True:
        try:
            records = consumer.poll(_BATCH, 0.5)
            if not records:
                continue
            with producer.begin() as txn:
                txn.produce([_transform(r, args.target) for r in records])
                ends: dict[TopicPartition, int] = {}
                for r in records:
                    ends[TopicPartition(r.topic, r.partition)] = r.offset + 1
                txn.send_offsets(ends, consumer.group_metadata())
                txn.commit()
        except ConnectorError as exc:
            # Aborted, unknown outcome (producer re-initialised), or the group
            # moved on: start again from what the group has committed.
            print(f"{member}: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
            if exc.context.get("cause") == "fenced":
                sys.exit(3)  # another live copier took this slot: never race it
            consumer.close()
            time.sleep(0.2)
            consumer = _consumer(static, args.group, args.source)
            continue
        copied += len(records)
        ahead = copied / args.rate - (time.monotonic() - started)
        if ahead > 0:
            time.sleep(ahead)


def main() -> None:
    parser = argparse.ArgumentParser()
    for name in ("bootstrap", "source", "target", "group"):
        parser.add_argument(f"--{name}", required=True)
    parser.add_argument("--slot", type=int, required=True)
    parser.add_argument("--rate", type=float, default=1e9)
    run(parser.parse_args())


if __name__ == "__main__":
    main()
