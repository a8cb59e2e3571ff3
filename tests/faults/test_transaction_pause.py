"""A transaction paused past its timeout (GC, VM pause, SIGSTOP), on the real stack.

The broker aborts a transaction that outlives ``transaction.timeout.ms`` and
bumps the producer's epoch, which Kafka 4 reports as fencing although no
other producer exists. The paused operation must fail with a clear error and
nothing of it visible; the same process's next strong write must succeed,
and a paused saga participant must carry on so that every saga ends.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import Any

import pytest

from connectors.kafka import KafkaRecordConsumer
from connectors.kafka.transactions import KafkaTransaction, KafkaTransactionalProducer
from examples.order_fulfillment.services import ACTIONS, PARTICIPANTS
from examples.order_fulfillment.shop import Shop
from tests.balances import balance_event, balances
from tests.integration.helpers import end_token, running
from toolkit.boundary import ConsistencyBoundary, OperationContext
from toolkit.config import ConsistencyConfig, StrongRule
from toolkit.dead_letter import DeadLetterQueue
from toolkit.errors import TransactionAborted
from toolkit.ports import OutgoingRecord
from toolkit.positions import Position, TopicPartition
from toolkit.runtime.app import Kct, saga_group
from toolkit.saga.participant import SagaParticipant
from toolkit.saga.state import SagaStatus

TIMEOUT_MS = 2000
# Past the timeout plus the broker's abort check (1 s on the local stack).
PAUSE_S = 4.0


def test_a_strong_write_paused_past_its_timeout_fails_clearly_and_the_next_one_succeeds(
    kct: Kct, create_topic: Callable[..., str]
) -> None:
    topic = create_topic("pause")
    name = f"pause-{uuid.uuid4().hex[:8]}"
    policy = ConsistencyConfig(
        default_timeout=20.0,
        lock_timeout=5.0,
        projections=(name,),
        strong=(StrongRule(type="account", id="acct-p"),),
    )
    producer = KafkaTransactionalProducer(
        kct.settings.kafka, f"pause-{uuid.uuid4().hex[:8]}", transaction_timeout_ms=TIMEOUT_MS
    )
    pauses = [PAUSE_S]

    def pause_once(_ctx: OperationContext) -> None:
        if pauses:
            time.sleep(pauses.pop())

    boundary = ConsistencyBoundary(
        policy,
        kct.publisher,
        {"account": topic},
        locks=kct.locks,
        transactions=producer,
        consistency=kct.consistency,
        offsets=kct.admin,
        before_commit=pause_once,
    )

    def write(balance: int) -> Callable[[OperationContext], None]:
        return lambda ctx: ctx.publish(balance_event("acct-p", balance, balance))

    try:
        with running(kct.runner(balances(name, topic))):
            with pytest.raises(TransactionAborted) as failed:
                boundary.enforce("acct-p", write(1), aggregate_type="account")
            assert failed.value.context["cause"] == "transaction_timeout"
            assert "past transaction.timeout.ms" in str(failed.value)
            boundary.enforce("acct-p", write(2), aggregate_type="account")  # same producer
            kct.consistency.wait_for_consistency(end_token(kct, topic), [name], 30)
    finally:
        producer.close()
    assert kct.store.get(name, "account:acct-p") == {"balance": 2, "seq": 2}
    assert kct.store.counters(name, "applied") == {"acct-p": 1}  # the paused write: invisible


class PausingTransactions:
    """The participant's real transactional producer; its first commit comes late."""

    def __init__(self, real: KafkaTransactionalProducer) -> None:
        self.real = real
        self.paused = False

    def begin(self) -> PausedCommit:
        return PausedCommit(self, self.real.begin())

    def close(self) -> None:
        self.real.close()


class PausedCommit:
    def __init__(self, owner: PausingTransactions, transaction: KafkaTransaction) -> None:
        self._owner = owner
        self._transaction = transaction

    def produce(self, records: Sequence[OutgoingRecord]) -> list[Position]:
        return self._transaction.produce(records)

    def send_offsets(self, offsets: Mapping[TopicPartition, int], group_metadata: Any) -> None:
        self._transaction.send_offsets(offsets, group_metadata)

    def commit(self) -> None:
        if not self._owner.paused:
            self._owner.paused = True
            time.sleep(PAUSE_S)
        self._transaction.commit()

    def abort(self) -> None:
        self._transaction.abort()

    def __enter__(self) -> PausedCommit:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._transaction.__exit__(exc_type, exc, tb)


def test_a_participant_paused_past_its_transaction_timeout_carries_on_and_every_saga_ends(
    kct: Kct,
) -> None:
    shop = Shop(customers={f"customer-{n}": 1_000_000 for n in range(5)})
    shop.prepare(kct)
    client = kct.saga_client(shop.definitions, shop.state_projection)
    name = "payment"
    saga_types = [t for t, d in shop.definitions.items() if name in d.participants]
    group = saga_group(kct.settings.deployment, name, saga_types, shop.namespace)
    consumer = KafkaRecordConsumer(kct.settings.kafka, group)
    transactions = PausingTransactions(
        KafkaTransactionalProducer(
            kct.settings.kafka, f"pause-{uuid.uuid4().hex[:8]}", transaction_timeout_ms=TIMEOUT_MS
        )
    )
    paused = SagaParticipant(
        name,
        shop.definitions,
        ACTIONS[name],
        consumer=consumer,
        transactions=transactions,
        publisher=kct.publisher,
        codec=kct.codec,
        store=kct.saga_steps,
        dead_letters=DeadLetterQueue(kct.producer, group),
        group_metadata=consumer.group_metadata,
        clock=kct.clock,
        namespace=shop.namespace,
    )
    others = tuple(p for p in PARTICIPANTS if p != name)
    with shop.running(kct, others), running(paused):
        ids = client.start_many(shop.orders(40, decline_ratio=0.2, seed=3))
        states = client.wait(ids, 120)
    assert transactions.paused, "the participant never committed: nothing was tested"
    assert paused.stats["rewinds"] >= 1
    statuses = Counter(s["status"] for s in states.values())
    assert set(statuses) <= {SagaStatus.COMPLETED, SagaStatus.COMPENSATED}, statuses
    assert shop.invariants(kct, states) == []
