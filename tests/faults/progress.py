"""Prints a consumer group's committed offsets (summed) every 0.2 s: ``<count>`` per line.

``python -m tests.faults.progress --bootstrap B --group G --topic T``

Run as a child process of a fault test, because librdkafka 2.16 can abort
the whole process (``rd_kafka_enq_once_del_source_return: Assertion
eonce->refcnt > 0``) when an admin request's coordinator is killed; a
sampler that dies that way is simply started again.
"""

from __future__ import annotations

import argparse
import time

from connectors.kafka import KafkaAdmin, KafkaSettings
from toolkit.errors import ToolkitError


def main() -> None:
    parser = argparse.ArgumentParser()
    for name in ("bootstrap", "group", "topic"):
        parser.add_argument(f"--{name}", required=True)
    args = parser.parse_args()
    admin = KafkaAdmin(KafkaSettings(bootstrap_servers=args.bootstrap), timeout=5)
    while True:
        try:
            count = sum(admin.committed_offsets(args.group, [args.topic]).values())
        except ToolkitError as exc:
            print(f"error {type(exc).__name__}: {exc}", flush=True)
        else:
            print(count, flush=True)
        time.sleep(0.2)


if __name__ == "__main__":
    main()
