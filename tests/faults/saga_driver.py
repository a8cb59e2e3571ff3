"""Starts a fault run's sagas at a steady pace and runs their saga-state projection
and watchdog, in a process of its own (so a client library crash under broker
kills cannot take the test process with it).

``python -m tests.faults.saga_driver --run-id ID --sagas N --rate R [--first K]``

Connections from ``KCT_KAFKA_BOOTSTRAP`` and ``KCT_REDIS_URL``. Prints
``started <n>`` as it goes and runs until it is killed; SIGUSR1 prints every
thread's stack. The shop is
:func:`tests.faults.saga_shop.big_shop` with the given run id, so the test
process knows the saga ids (``Shop.orders`` is deterministic).
"""

from __future__ import annotations

import argparse
import faulthandler
import logging
import signal
import threading
import time

from tests.faults.saga_shop import DECLINE_RATIO, SEED, big_shop
from toolkit.errors import ToolkitError
from toolkit.runtime.app import Kct


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run-id", required=True)
    parser.add_argument("--sagas", type=int, required=True)
    parser.add_argument("--rate", type=float, required=True)
    parser.add_argument("--first", type=int, default=0, help="skip sagas already started")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    shop = big_shop(args.run_id)
    kct = Kct()
    client = kct.saga_client(shop.definitions, shop.state_projection)
    orders = shop.orders(args.sagas, decline_ratio=DECLINE_RATIO, seed=SEED)
    with shop.running(kct, participants=()):
        started, chunk = time.monotonic(), 10
        for start in range(args.first, len(orders), chunk):
            while True:
                try:
                    client.start_many(orders[start : start + chunk])
                    break
                except ToolkitError as exc:  # a broker down: the same sagas again
                    print(f"start failed: {exc}", flush=True)
                    time.sleep(0.5)
            print(f"started {start + chunk}", flush=True)
            ahead = (start + chunk - args.first) / args.rate - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)
        threading.Event().wait()


if __name__ == "__main__":
    main()
