"""The consistency boundary on the real stack: ZooKeeper locks, Kafka transactions, fences."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable

import pytest
import yaml
from kazoo.client import KazooClient

from tests.balances import balance_event, balances
from tests.integration.conftest import Endpoints
from tests.integration.helpers import end_token, peek, running
from toolkit.boundary import OperationContext
from toolkit.config import ConsistencyConfig, parse_config
from toolkit.dead_letter import dead_letter_topic
from toolkit.errors import LockLost, LockTimeout
from toolkit.positions import ConsistencyToken
from toolkit.runtime.app import Kct

pytestmark = pytest.mark.integration


def Policy(  # noqa: N802  (reads like the configuration it builds)
    strong_ids: frozenset[str],
    projections: tuple[str, ...],
    *,
    lock_timeout: float = 15.0,
) -> ConsistencyConfig:
    """The ``consistency`` section of a kct.yaml: these account ids are strong."""
    return parse_config(
        yaml.safe_dump(
            {
                "version": 1,
                "kafka": {"bootstrap_servers": "unused:9092"},
                "consistency": {
                    "default_timeout": 15.0,
                    "lock_timeout": lock_timeout,
                    "projections": list(projections),
                    "strong": [{"type": "account", "id": i} for i in sorted(strong_ids)],
                },
            }
        )
    ).consistency


def read_balance(kct: Kct, projection: str, account: str) -> tuple[int, int]:
    doc = kct.store.get(projection, f"account:{account}") or {"balance": 0, "seq": 0}
    return int(doc["balance"]), int(doc["seq"])


def increment(kct: Kct, projection: str, think_s: float) -> Callable[[OperationContext], int]:
    """A read-modify-write: read the balance from the read model, write balance + 1."""

    def operation(ctx: OperationContext) -> int:
        balance, seq = read_balance(kct, projection, ctx.aggregate_id)
        time.sleep(think_s)  # widens the race window an unprotected writer falls into
        ctx.publish(balance_event(ctx.aggregate_id, balance + 1, seq + 1))
        return balance + 1

    return operation


def expire_session(kct: Kct, hosts: str) -> None:
    """End ``kct``'s ZooKeeper session on the server, as a long pause would."""
    session_id, password = kct.locks.client.client_id
    twin = KazooClient(hosts=hosts, client_id=(session_id, password))
    twin.start(timeout=10)
    twin.stop()
    twin.close()


def committed_values(bootstrap: str, topic: str, isolation: str) -> list[bytes]:
    return [p.value for p in peek(bootstrap, topic, isolation=isolation)]


def test_concurrent_writers_lose_no_update_on_a_strong_aggregate_but_do_on_an_eventual_one(
    make_kct: Callable[[], Kct], create_topic: Callable[..., str]
) -> None:
    topic = create_topic("accounts")
    name = f"balances-{uuid.uuid4().hex[:8]}"
    policy = Policy(frozenset({"acct-strong"}), (name,))
    reader = make_kct()
    writers, per_writer = 8, 5
    with running(reader.runner(balances(name, topic))):
        apps = [make_kct() for _ in range(writers)]
        boundaries = [app.boundary(policy, {"account": topic}) for app in apps]
        for account in ("acct-strong", "acct-eventual"):
            errors: list[BaseException] = []

            def write(
                index: int, account: str = account, errors: list[BaseException] = errors
            ) -> None:
                try:
                    for _ in range(per_writer):
                        boundaries[index].enforce(
                            account, increment(reader, name, 0.01), aggregate_type="account"
                        )
                except BaseException as exc:  # surfaced below
                    errors.append(exc)

            threads = [threading.Thread(target=write, args=(i,)) for i in range(writers)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=120)
            assert not errors, errors
        total = writers * per_writer
        strong_balance, _ = read_balance(reader, name, "acct-strong")
        assert strong_balance == total
        # Every eventual write landed too (the counter of applied events), yet
        # writers read stale balances: updates were lost without the boundary.
        reader.consistency.wait_for_consistency(end_token(reader, topic), [name], 15)
        applied = reader.store.counters(name, "applied")
        assert applied == {"acct-strong": total, "acct-eventual": total}
        eventual_balance, _ = read_balance(reader, name, "acct-eventual")
        assert eventual_balance < total


def test_strong_enforce_returns_only_once_every_projection_shows_the_write(
    kct: Kct, create_topic: Callable[..., str]
) -> None:
    topic = create_topic("accounts")
    first, second = (f"balances-{uuid.uuid4().hex[:8]}" for _ in range(2))
    policy = Policy(frozenset({"acct-1"}), (first, second))
    boundary = kct.boundary(policy, {"account": topic})
    with running(kct.runner(balances(first, topic))), running(kct.runner(balances(second, topic))):
        for expected in range(1, 11):
            result = boundary.enforce(
                "acct-1", increment(kct, first, 0.0), aggregate_type="account"
            )
            assert result.strong and result.value == expected
            assert result.fence is not None
            # No wait here: enforce has already waited for both projections.
            assert read_balance(kct, first, "acct-1") == (expected, expected)
            assert read_balance(kct, second, "acct-1") == (expected, expected)
            assert [p.envelope.fence for p in result.published] == [result.fence]


def test_eventual_enforce_returns_the_token_without_waiting_or_locking(
    kct: Kct, create_topic: Callable[..., str]
) -> None:
    topic = create_topic("accounts")
    name = f"balances-{uuid.uuid4().hex[:8]}"
    boundary = kct.boundary(Policy(frozenset(), (name,)), {"account": topic})
    # No projection runs: a strong write would time out; an eventual one returns.
    result = boundary.enforce(
        "acct-e", lambda ctx: ctx.publish(balance_event("acct-e", 1, 1)), aggregate_type="account"
    )
    assert not result.strong and result.fence is None
    assert result.token.covers(result.published[0].position)
    assert result.published[0].envelope.fence is None


def test_session_expiry_mid_operation_aborts_publishes_nothing_and_raises_lock_lost(
    make_kct: Callable[[], Kct], create_topic: Callable[..., str], endpoints: Endpoints
) -> None:
    topic = create_topic("accounts")
    name = f"balances-{uuid.uuid4().hex[:8]}"
    policy = Policy(frozenset({"acct-x"}), (name,))
    doomed, survivor = make_kct(), make_kct()

    def expire(ctx: OperationContext) -> None:
        expire_session(doomed, endpoints.zookeeper_hosts)

    with running(survivor.runner(balances(name, topic))):
        boundary = doomed.boundary(policy, {"account": topic}, before_commit=expire)
        with pytest.raises(LockLost) as raised:
            boundary.enforce("acct-x", increment(survivor, name, 0.0), aggregate_type="account")
        assert raised.value.context["aggregate"] == "account/acct-x"
        # The next holder passes the barrier (the aborted transaction is decided)
        # and its write is the only one any projection applies.
        after = survivor.boundary(policy, {"account": topic}).enforce(
            "acct-x", increment(survivor, name, 0.0), aggregate_type="account"
        )
        assert after.fence is not None and after.fence > raised.value.context["fence"]
        assert read_balance(survivor, name, "acct-x") == (1, 1)
        assert survivor.store.counters(name, "applied") == {"acct-x": 1}
    # The aborted write reached the log, and read_committed readers never see it.
    assert len(committed_values(endpoints.kafka_bootstrap, topic, "read_uncommitted")) == 2
    assert len(committed_values(endpoints.kafka_bootstrap, topic, "read_committed")) == 1


def test_a_stale_holder_resuming_after_its_session_cannot_get_its_write_applied(
    make_kct: Callable[[], Kct], create_topic: Callable[..., str], endpoints: Endpoints
) -> None:
    topic = create_topic("accounts")
    name = f"balances-{uuid.uuid4().hex[:8]}"
    policy = Policy(frozenset({"acct-s"}), (name,))
    stale, fresh = make_kct(), make_kct()
    runner = fresh.runner(balances(name, topic))
    with running(runner):
        lease = stale.locks.acquire("account/acct-s", timeout=5)
        expire_session(stale, endpoints.zookeeper_hosts)  # a pause longer than the session
        newer = fresh.boundary(policy, {"account": topic}).enforce(
            "acct-s",
            lambda ctx: ctx.publish(balance_event("acct-s", 100, 1, "fresh")),
            aggregate_type="account",
        )
        assert newer.fence is not None and newer.fence > lease.fence
        # The stale holder resumes and writes with its old fence, as one whose
        # pause fell between its lock check and its write would.
        with stale.transactions.begin() as transaction:
            published = stale.publisher.publish_in(
                transaction, topic, [balance_event("acct-s", 1, 1, "stale")], fence=lease.fence
            )
            transaction.commit()
        fresh.consistency.wait_for_consistency(
            ConsistencyToken.of([published[0].position]), [name], 15
        )
        assert runner.stats.fence_rejected == 1
        assert read_balance(fresh, name, "acct-s") == (100, 1)
        assert fresh.store.counters(name, "applied") == {"acct-s": 1}
    dead = committed_values(endpoints.kafka_bootstrap, dead_letter_topic(topic), "read_committed")
    assert len(dead) == 1
    lease.release()  # a lost lease releases quietly


def test_lock_timeout_when_another_holder_keeps_the_lock_and_nothing_is_written(
    make_kct: Callable[[], Kct], create_topic: Callable[..., str], endpoints: Endpoints
) -> None:
    topic = create_topic("accounts")
    name = f"balances-{uuid.uuid4().hex[:8]}"
    holder, waiter = make_kct(), make_kct()
    lease = holder.locks.acquire("account/acct-t", timeout=5)
    try:
        boundary = waiter.boundary(
            Policy(frozenset({"acct-t"}), (name,), lock_timeout=0.5), {"account": topic}
        )
        started = time.monotonic()
        with pytest.raises(LockTimeout):
            boundary.enforce("acct-t", increment(waiter, name, 0.0), aggregate_type="account")
        assert time.monotonic() - started < 5
    finally:
        lease.release()
    assert committed_values(endpoints.kafka_bootstrap, topic, "read_uncommitted") == []
