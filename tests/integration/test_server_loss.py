"""Server loss on the real stack: ZooKeeper and Kafka frozen (SIGSTOP) mid-flight.

A frozen server is the harshest loss a client can meet: connections stay
open, nothing answers, then everything resumes at once. Each test checks
that what the toolkit reported matches what happened, and that nothing was
lost or applied twice.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from examples.order_fulfillment.shop import Shop
from tests.balances import balance_event, balances
from tests.integration.conftest import Endpoints
from tests.integration.helpers import end_token, running
from toolkit.boundary import OperationContext
from toolkit.config import ConsistencyConfig, StrongRule
from toolkit.errors import ConsistencyTimeout, ToolkitError
from toolkit.runtime.app import Kct
from toolkit.runtime.stack import LocalStack
from toolkit.saga.state import SagaStatus

pytestmark = [pytest.mark.integration, pytest.mark.faults]


def server_pid(name: str) -> int:
    if os.environ.get("KCT_KAFKA_BOOTSTRAP"):
        raise AssertionError("server-loss tests freeze the local stack's servers: run them on it")
    status = LocalStack().status().services[name]
    assert status.pid is not None and status.running, f"{name} is not running"
    return status.pid


@contextmanager
def frozen(name: str) -> Iterator[None]:
    """SIGSTOP the server for the block, SIGCONT after (also on failure)."""
    pid = server_pid(name)
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def read_balance(kct: Kct, projection: str, account: str) -> int:
    doc = kct.store.get(projection, f"account:{account}") or {"balance": 0}
    return int(doc["balance"])


def test_zookeeper_frozen_mid_writes_every_enforce_either_applies_or_raises(
    make_kct: Callable[[], Kct], create_topic: Callable[..., str]
) -> None:
    topic = create_topic("accounts")
    name = f"balances-{uuid.uuid4().hex[:8]}"
    policy = ConsistencyConfig(
        default_timeout=10.0,
        lock_timeout=2.0,
        projections=(name,),
        strong=(StrongRule(type="account", id="acct-z"),),
    )
    reader, writer = make_kct(), make_kct()  # writer: 6 s ZooKeeper sessions
    boundary = writer.boundary(policy, {"account": topic})
    outcomes: Counter[str] = Counter()
    applied_after_resume = threading.Event()
    resumed = threading.Event()
    stop = threading.Event()

    def increment(ctx: OperationContext) -> None:
        balance = read_balance(reader, name, "acct-z")
        ctx.publish(balance_event("acct-z", balance + 1, balance + 1))

    longest = [0.0]

    def write() -> None:
        while not stop.is_set():
            started = time.monotonic()
            try:
                boundary.enforce("acct-z", increment, aggregate_type="account")
            except ConsistencyTimeout as exc:
                outcomes["committed, late" if exc.context.get("committed") else "raised"] += 1
            except ToolkitError as exc:
                outcomes[type(exc).__name__] += 1
                time.sleep(0.1)
            else:
                outcomes["applied"] += 1
                if resumed.is_set():
                    applied_after_resume.set()
            finally:
                longest[0] = max(longest[0], time.monotonic() - started)

    with running(reader.runner(balances(name, topic))):
        thread = threading.Thread(target=write, daemon=True)
        thread.start()
        time.sleep(1.5)
        with frozen("zookeeper"):
            time.sleep(8)  # longer than the lock timeout and the 6 s session
        resumed.set()
        assert applied_after_resume.wait(60), f"no write succeeded after the resume: {outcomes}"
        stop.set()
        thread.join(timeout=60)
        reader.consistency.wait_for_consistency(end_token(reader, topic), [name], 20)
        balance = read_balance(reader, name, "acct-z")
    failures = sum(n for k, n in outcomes.items() if k not in {"applied", "committed, late"})
    # The freeze hit operations: they failed or waited it out (a frozen server
    # expires no session while frozen, so a lock may survive it intact).
    assert failures > 0 or longest[0] > 3, (outcomes, longest)
    # Exactly the writes reported as committed are in the read model: no lost
    # update among them, and no write that raised left anything behind.
    assert balance == outcomes["applied"] + outcomes["committed, late"], outcomes


def test_kafka_frozen_during_sagas_every_saga_finishes_and_every_effect_happens_once(
    kct: Kct, endpoints: Endpoints
) -> None:
    shop = Shop(customers={f"customer-{n}": 1_000_000 for n in range(10)})
    shop.prepare(kct)
    client = kct.saga_client(shop.definitions, shop.state_projection)
    with shop.running(kct):
        # Enough sagas that many are still running when the freeze starts: the
        # participants got faster (a few hundred finish in well under a second).
        ids = client.start_many(shop.orders(1000, decline_ratio=0.2, seed=5))
        in_flight = [i for i in ids if (client.status(i) or {}).get("status") in (None, "RUNNING")]
        with frozen("kafka"):
            time.sleep(5)
        states = client.wait(ids, 180)
    assert in_flight, "every saga finished before the freeze: nothing was tested"
    statuses = Counter(s["status"] for s in states.values())
    assert set(statuses) <= {SagaStatus.COMPLETED, SagaStatus.COMPENSATED}, statuses
    assert shop.invariants(kct, states) == []
    inventory = kct.saga_steps.counters(shop.read_model("inventory"), "moves")
    ran = sum(1 for s in states.values() if s["steps"][0]["execute"] == "SUCCESS")
    assert inventory.get("reservations", 0) == ran
