"""Sagas on the cluster while brokers and participant processes are kill -9'd.

The order fulfillment shop's three participants run as their own processes
(``examples.order_fulfillment.service``); a driver process
(:mod:`tests.faults.saga_driver`) starts the sagas at a steady pace and runs
the saga-state projection and the watchdog. Meanwhile brokers are killed and
restarted one at a time and participants are killed and restarted at random,
until every saga has ended. Each must end COMPLETED or COMPENSATED, stock and
money must be conserved, and every effect must have happened exactly once
(the participants' counters equal what the sagas' folds say ran).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from examples.order_fulfillment.shop import Shop
from toolkit.runtime.app import Kct
from toolkit.runtime.stack import LocalStack
from toolkit.saga.state import SagaStatus

from .cluster import Chaos, FaultRun, Progress, guarded, report, size
from .saga_shop import DECLINE_RATIO, SEED, big_shop

REPO = Path(__file__).resolve().parents[2]
PARTICIPANTS = ("inventory", "payment", "order")
TERMINAL = {SagaStatus.COMPLETED, SagaStatus.COMPENSATED, SagaStatus.FAILED_COMPENSATION}


class Services:
    """One process per participant and the saga driver; kill -9 one and start it again."""

    def __init__(self, cluster: LocalStack, shop: Shop, sagas: int, rate: float) -> None:
        found = cluster.endpoints()
        self.env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "KCT_KAFKA_BOOTSTRAP": found.kafka_bootstrap,
            "KCT_REDIS_URL": found.redis_url,
        }
        self.shop = shop
        self.sagas, self.rate = sagas, rate
        self.log = cluster.layout.logs / f"shop-{shop.run_id}.log"
        self.driver_log = cluster.layout.logs / f"shop-{shop.run_id}-driver.log"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def _spawn(self, name: str, argv: list[str], log: Path) -> None:
        with log.open("ab") as out:
            self.procs[name] = subprocess.Popen(
                argv, cwd=REPO, env=self.env, stdout=out, stderr=subprocess.STDOUT
            )

    def start(self, participant: str) -> None:
        with self.log.open("a") as out:
            out.write(f"-- test: start {participant}\n")
        argv = guarded(
            "examples.order_fulfillment.service",
            *("--run-id", self.shop.run_id, "--participant", participant),
        )
        self._spawn(participant, argv, self.log)

    def start_driver(self) -> None:
        """The saga driver, going on from the last sagas it reported started."""
        text = self.driver_log.read_text() if self.driver_log.exists() else ""
        first = max(map(int, re.findall(r"^started (\d+)$", text, re.MULTILINE)), default=0)
        argv = guarded(
            "tests.faults.saga_driver",
            *("--run-id", self.shop.run_id, "--sagas", str(self.sagas)),
            *("--rate", str(self.rate), "--first", str(first)),
        )
        self._spawn("driver", argv, self.driver_log)

    def revive(self) -> None:
        """Start again whatever exited by itself (the driver too: a client crash)."""
        for name, proc in list(self.procs.items()):
            if proc.poll() is not None:
                self.start_driver() if name == "driver" else self.start(name)

    def kill_9(self, participant: str) -> None:
        with self.log.open("a") as out:
            out.write(f"-- test: kill -9 {participant} (pid {self.procs[participant].pid})\n")
        self.procs[participant].kill()
        self.procs[participant].wait(10)

    def dump_stacks(self) -> None:
        """Every live process prints its threads' stacks into its log (SIGUSR1)."""
        for name, proc in self.procs.items():
            if proc.poll() is None:
                with (self.driver_log if name == "driver" else self.log).open("a") as out:
                    out.write(f"-- test: stacks of {name} (pid {proc.pid})\n")
                proc.send_signal(signal.SIGUSR1)
        time.sleep(1.0)

    @contextmanager
    def running(self) -> Iterator[Services]:
        for participant in PARTICIPANTS:
            self.start(participant)
        self.start_driver()
        try:
            yield self
        finally:
            for proc in self.procs.values():
                proc.kill()
                proc.wait(10)


def effects(kct: Kct, shop: Shop) -> dict[str, int]:
    inventory = kct.saga_steps.counters(shop.read_model("inventory"), "moves")
    payment = kct.saga_steps.counters(shop.read_model("payment"), "moves")
    orders = kct.saga_steps.counters(shop.read_model("order"), "orders")
    return {
        "reservations": inventory.get("reservations", 0),
        "releases": inventory.get("releases", 0),
        "charges": payment.get("charges", 0),
        "refunds": payment.get("refunds", 0),
        "confirmed": orders.get("confirmed", 0),
    }


def effects_by_fold(states: Mapping[str, Mapping[str, Any]]) -> dict[str, int]:
    def ran(step: int, field: str) -> int:
        return sum(1 for s in states.values() if s["steps"][step][field] == "SUCCESS")

    return {
        "reservations": ran(0, "execute"),
        "releases": ran(0, "compensate"),
        "charges": ran(1, "execute"),
        "refunds": ran(1, "compensate"),
        "confirmed": ran(2, "execute"),
    }


@pytest.mark.timeout(600)
def test_sagas_under_broker_and_participant_kills_end_once_and_conserve(
    cluster: LocalStack, make_cluster_kct: Callable[[], Kct]
) -> None:
    kct = make_cluster_kct()
    shop = big_shop(uuid.uuid4().hex[:8])
    shop.prepare(kct)
    client = kct.saga_client(shop.definitions, shop.state_projection)
    total = size().sagas
    chaos = Chaos(cluster, shop.run_id)
    services = Services(cluster, shop, total, rate=max(10.0, total / 30))
    ids = [saga_id for _, _, saga_id in shop.orders(total, DECLINE_RATIO, seed=SEED)]
    finished: dict[str, dict[str, Any]] = {}

    def done() -> bool:
        for saga_id in [i for i in ids if i not in finished]:
            state = client.status(saga_id)
            if state is not None and state["status"] in TERMINAL:
                finished[saga_id] = state
        return len(finished) == len(ids)

    def inject() -> None:
        services.revive()
        if chaos.broker_due():
            chaos.bounce_broker()
        else:
            victim = chaos.rng.choice(PARTICIPANTS)
            chaos.note("participant kill -9")
            services.kill_9(victim)
            time.sleep(chaos.rng.uniform(0.0, 1.0))
            services.start(victim)

    started = time.monotonic()
    try:
        with (
            services.running(),
            Progress(lambda: lambda: sum(effects(kct, shop).values())) as progress,
        ):
            try:
                chaos.run(
                    done=done,
                    inject=inject,
                    timeout=min(540, 180 + total * 0.3),  # < the pytest timeout
                    status=lambda: f"{len(finished)}/{total} sagas ended",
                    max_faults=size().broker_kills * 3,
                )
            except AssertionError:
                services.dump_stacks()  # where a stuck process waits, in its log
                print(f"logs: {services.log} {services.driver_log}", flush=True)
                raise
    finally:
        chaos.heal()
    statuses = Counter(s["status"] for s in finished.values())
    seen, want = effects(kct, shop), effects_by_fold(finished)
    report(
        FaultRun(
            "sagas",
            events=total,
            faults=dict(chaos.faults),
            lost=sum(max(0, want[k] - seen[k]) for k in want),
            duplicated=sum(max(0, seen[k] - want[k]) for k in want),
            pauses=progress.pauses(sum(want.values())),
            seconds=time.monotonic() - started,
            extra=", ".join(f"{n} {s}" for s, n in sorted(statuses.items())),
        )
    )
    assert chaos.faults["broker kill -9"] >= 2 and chaos.faults["participant kill -9"] >= 2
    assert set(statuses) <= {SagaStatus.COMPLETED, SagaStatus.COMPENSATED}, statuses
    assert statuses[SagaStatus.COMPENSATED] > 0
    assert shop.invariants(kct, finished) == []
    assert seen == want, f"effects {seen} != what the sagas' folds say ran {want}"
