"""Running the order fulfillment saga: topics, seed data, services, orders, checks.

Used by ``kct demo``, the integration tests and the benchmark. A
:class:`Shop` is one isolated run: its own topic prefix and read-model
namespace, so runs never see each other's data.
"""

from __future__ import annotations

import random
import threading
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

from toolkit.dead_letter import dead_letter_topic
from toolkit.ports import ReadModelChange
from toolkit.runtime.app import Kct
from toolkit.runtime.demo_shop.services import ACTIONS, PARTICIPANTS, SAGA_TYPE, definitions
from toolkit.saga.definition import SagaDefinition


class Runnable(Protocol):
    def run(self, stop: threading.Event | None = None) -> None: ...

    def close(self) -> None: ...


@dataclass
class Shop:
    """One isolated run of the example."""

    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    skus: Mapping[str, int] = field(default_factory=lambda: {"widget": 500, "gadget": 300})
    customers: Mapping[str, int] = field(
        default_factory=lambda: {f"customer-{n}": 50_000 for n in range(10)}
    )

    @property
    def topic_prefix(self) -> str:
        return f"shop.{self.run_id}"

    @property
    def namespace(self) -> str:
        return f"shop-{self.run_id}-"

    @property
    def state_projection(self) -> str:
        return f"shop-{self.run_id}-sagas"

    @property
    def definitions(self) -> dict[str, SagaDefinition]:
        return definitions(self.topic_prefix)

    def read_model(self, participant: str) -> str:
        return f"{self.namespace}{participant}"

    def prepare(self, kct: Kct, partitions: int = 3) -> None:
        """Create the saga's topics (and dead-letter topics) and seed stock and wallets."""
        topics = [t for d in self.definitions.values() for t in d.topics]
        kct.admin.create_topics(
            [*topics, *(dead_letter_topic(t) for t in topics)], partitions=partitions
        )
        seeds = {
            "inventory": [
                ReadModelChange("put", f"stock:{sku}", document={"available": n})
                for sku, n in self.skus.items()
            ],
            "payment": [
                ReadModelChange("put", f"wallet:{c}", document={"balance": n})
                for c, n in self.customers.items()
            ],
        }
        for participant, changes in seeds.items():
            kct.saga_steps.record_once(
                self.read_model(participant), "seed", changes, {"seeded": True}
            )

    def orders(
        self, count: int, decline_ratio: float, seed: int = 7
    ) -> list[tuple[str, dict[str, str], str]]:
        """(saga type, context, saga id) for ``count`` orders, some with declined cards."""
        rng = random.Random(seed)
        skus, customers = sorted(self.skus), sorted(self.customers)
        out = []
        for n in range(count):
            context = {
                "order_id": f"order-{self.run_id}-{n}",
                "sku": rng.choice(skus),
                "quantity": str(rng.randint(1, 3)),
                "customer": rng.choice(customers),
                "amount_cents": str(rng.randint(500, 5_000)),
                "card": "declined" if rng.random() < decline_ratio else "ok",
            }
            out.append((SAGA_TYPE, context, f"saga-{self.run_id}-{n}"))
        return out

    def invariants(self, kct: Kct, states: Mapping[str, Mapping[str, Any]]) -> list[str]:
        """Conservation of stock and money, and one effect per completed saga."""
        problems: list[str] = []
        store = kct.saga_steps
        inventory, payment, order = (self.read_model(p) for p in PARTICIPANTS)
        reserved = store.counters(inventory, "reserved")
        for sku, initial in self.skus.items():
            available = (store.get(inventory, f"stock:{sku}") or {"available": 0})["available"]
            if available + reserved.get(sku, 0) != initial:
                problems.append(
                    f"stock of {sku}: {available} + {reserved.get(sku, 0)} != {initial}"
                )
        captured = store.counters(payment, "captured")
        for customer, initial in self.customers.items():
            balance = (store.get(payment, f"wallet:{customer}") or {"balance": 0})["balance"]
            if balance + captured.get(customer, 0) != initial:
                problems.append(
                    f"money of {customer}: {balance} + {captured.get(customer, 0)} != {initial}"
                )
        completed = [s for s in states.values() if s["status"] == "COMPLETED"]
        want_units = sum(int(s["context"]["quantity"]) for s in completed)
        want_cents = sum(int(s["context"]["amount_cents"]) for s in completed)
        if sum(reserved.values()) != want_units:
            problems.append(f"reserved units {sum(reserved.values())} != completed {want_units}")
        if sum(captured.values()) != want_cents:
            problems.append(f"captured cents {sum(captured.values())} != completed {want_cents}")
        confirmed = store.counters(order, "orders").get("confirmed", 0)
        if confirmed != len(completed):
            problems.append(f"confirmed orders {confirmed} != completed sagas {len(completed)}")
        return problems

    @contextmanager
    def running(
        self,
        kct: Kct,
        participants: tuple[str, ...] = PARTICIPANTS,
        *,
        watchdog: bool = True,
        actions: Mapping[str, Mapping[str, Any]] | None = None,
        apps: Mapping[str, Kct] | None = None,
    ) -> Iterator[list[Runnable]]:
        """Participants, the saga-state projection and a watchdog, on threads; a
        participant named in ``apps`` runs on that composition root (e.g. its own
        service name for tracing), the others on ``kct``."""
        chosen = actions or ACTIONS
        members: list[Runnable] = [
            (apps or {})
            .get(p, kct)
            .saga_participant(p, self.definitions, chosen[p], namespace=self.namespace)
            for p in participants
        ]
        members.append(kct.saga_state_runner(self.definitions, self.state_projection))
        stop = threading.Event()
        threads = [threading.Thread(target=m.run, args=(stop,), daemon=True) for m in members]
        if watchdog:
            dog = kct.saga_watchdog(
                self.definitions, self.state_projection, namespace=self.namespace
            )

            threads.append(threading.Thread(target=dog.run, args=(stop,), daemon=True))
        for thread in threads:
            thread.start()
        try:
            yield members
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=15)
            for member in members:
                member.close()
