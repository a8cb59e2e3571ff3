"""``python -m examples.order_fulfillment.service --run-id ID --participant NAME``

Runs participant services of one :class:`~examples.order_fulfillment.shop.Shop`
run in this process until it is stopped (SIGTERM / SIGINT) or killed.
SIGUSR1 prints every thread's stack to stderr (how a stuck service is read).
Connections come from ``KCT_KAFKA_BOOTSTRAP`` and ``KCT_REDIS_URL``. Used by
the crash tests, which ``kill -9`` it at random points.
"""

from __future__ import annotations

import argparse
import faulthandler
import logging
import signal
import threading
from types import FrameType

from examples.order_fulfillment.services import ACTIONS, PARTICIPANTS
from examples.order_fulfillment.shop import Shop
from toolkit.runtime.app import Kct


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--run-id", required=True)
    parser.add_argument("--participant", action="append", choices=PARTICIPANTS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    shop = Shop(run_id=args.run_id)
    kct = Kct()
    stop = threading.Event()

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    members = [
        kct.saga_participant(name, shop.definitions, ACTIONS[name], namespace=shop.namespace)
        for name in args.participant or PARTICIPANTS
    ]
    threads = [threading.Thread(target=m.run, args=(stop,), daemon=True) for m in members]
    for thread in threads:
        thread.start()
    print("ready", flush=True)
    stop.wait()
    for thread in threads:
        thread.join(timeout=10)
    for member in members:
        member.close()
    kct.close()


if __name__ == "__main__":
    main()
