"""kct's pytest plugin: fixtures for your own integration tests on real servers.

Installed with the package (entry point ``pytest11``: ``kct``), so any test
suite of a project that depends on kct can use, with no conftest code:

``kct_stack`` (session)
    The servers' endpoints. With ``KCT_KAFKA_BOOTSTRAP`` set, your own servers
    (``KCT_REDIS_URL``, ``KCT_ZOOKEEPER_HOSTS``, ``KCT_OTLP_ENDPOINT``,
    ``KCT_JAEGER_QUERY_URL``); otherwise the local stack of ``kct stack up``
    (``KCT_STACK_PORT_OFFSET`` and ``KCT_STATE_DIR`` honoured), which must be
    running unless ``--kct-start-stack`` is given. Never a skip: a stack
    that cannot be reached fails the test with what to do.
``kct_app``
    A :class:`~toolkit.runtime.app.Kct` wired to the stack (its own node id
    and ZooKeeper lock root; spans exported to the stack's OTLP endpoint when
    it has one), closed after the test. ``kct_make_app()`` makes more (one
    per simulated process).
``kct_topic``
    A fresh, uniquely named topic with its dead-letter topic;
    ``kct_make_topic(prefix, partitions=3)`` makes more.
``kct_run``
    ``kct_run(projection)`` starts a projection runner on a background
    thread (``kct_run(member)`` runs any runner or saga participant) and
    stops and closes it when the test ends.
``kct_wait_consistent``
    ``kct_wait_consistent(written, projections, timeout=10)``: waits until the
    projections applied a token, its string form, a position or what
    ``publisher.publish`` returned (one or several).
``kct_assert_one_trace``
    ``kct_assert_one_trace(*written)``: the events (or trace ids) belong to
    one trace, which reached Jaeger unbroken (one root span, no orphan);
    returns it (a :class:`connectors.telemetry.JaegerTrace`).

Example (``tests/test_orders.py`` of your service)::

    from toolkit import Envelope, Projection

    def test_an_order_is_counted(kct_app, kct_topic, kct_run, kct_wait_consistent):
        view = Projection(f"orders-view-{kct_topic}", [kct_topic])

        @view.on("kct.examples.orders.OrderCancelled")
        def cancelled(event, batch):
            batch.increment("cancelled", "orders")

        kct_run(view)
        written = kct_app.publisher.publish(kct_topic, Envelope(...))
        kct_wait_consistent(written, view.name)
        assert kct_app.store.counters(view.name, "cancelled") == {"orders": 1}
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import pytest

from connectors.kafka import KafkaSettings
from connectors.redis import RedisSettings
from connectors.telemetry import JaegerQuery, JaegerTrace, TracingSettings
from connectors.zookeeper import ZooKeeperSettings
from toolkit.dead_letter import dead_letter_topic
from toolkit.interceptors import trace_id_of
from toolkit.positions import ConsistencyToken, Position
from toolkit.projection import Projection
from toolkit.publisher import PublishedEvent
from toolkit.runtime.app import Kct, KctSettings

__all__ = ["KctStack", "Member"]


class Member(Protocol):
    """A long-lived loop: a projection runner, a saga participant."""

    def run(self, stop: threading.Event | None = None) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class KctStack:
    """Where the servers are."""

    kafka_bootstrap: str
    redis_url: str
    zookeeper_hosts: str
    otlp_http: str | None  # None: no tracing backend known
    jaeger_query_url: str | None
    local: bool  # the local stack of ``kct stack up``


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("kct", "kct (Kafka consistency toolkit) fixtures")
    group.addoption(
        "--kct-start-stack",
        action="store_true",
        default=False,
        help="Start the local stack (kct stack up) if it is not running.",
    )


def _from_environment() -> KctStack | None:
    env = os.environ
    if not env.get("KCT_KAFKA_BOOTSTRAP"):
        return None
    return KctStack(
        kafka_bootstrap=env["KCT_KAFKA_BOOTSTRAP"],
        redis_url=env.get("KCT_REDIS_URL", RedisSettings().url),
        zookeeper_hosts=env.get("KCT_ZOOKEEPER_HOSTS", ZooKeeperSettings().hosts),
        otlp_http=env.get("KCT_OTLP_ENDPOINT") or None,
        jaeger_query_url=env.get("KCT_JAEGER_QUERY_URL") or None,
        local=False,
    )


@pytest.fixture(scope="session")
def kct_stack(request: pytest.FixtureRequest) -> KctStack:
    """Your servers (``KCT_KAFKA_BOOTSTRAP`` and friends) or the local stack."""
    found = _from_environment()
    if found is not None:
        return found
    from toolkit.runtime.stack import LocalStack

    stack = LocalStack()
    if request.config.getoption("kct_start_stack"):
        stack.up()
    elif not stack.status().all_healthy:
        pytest.fail(
            "kct: no stack to attach to: run `kct stack up`, pass --kct-start-stack, "
            "or set KCT_KAFKA_BOOTSTRAP (and KCT_REDIS_URL, KCT_ZOOKEEPER_HOSTS) "
            "to your own servers",
            pytrace=False,
        )
    ends = stack.endpoints()
    return KctStack(
        kafka_bootstrap=ends.kafka_bootstrap,
        redis_url=ends.redis_url,
        zookeeper_hosts=ends.zookeeper_hosts,
        otlp_http=ends.otlp_http,
        jaeger_query_url=ends.jaeger_query_url,
        local=True,
    )


@pytest.fixture
def kct_make_app(kct_stack: KctStack) -> Iterator[Callable[[], Kct]]:
    """Makes composition roots wired to the stack (one per simulated process)."""
    made: list[Kct] = []
    lock_root = f"/kct-test/{uuid.uuid4().hex[:10]}"

    def make() -> Kct:
        node = f"test-{uuid.uuid4().hex[:6]}"
        tracing = TracingSettings(enabled=False)
        if kct_stack.otlp_http is not None:
            tracing = TracingSettings(
                service_name="kct-tests",
                traces_endpoint=f"{kct_stack.otlp_http.rstrip('/')}/v1/traces",
                query_url=kct_stack.jaeger_query_url or tracing.query_url,
            )
        app = Kct(
            KctSettings(
                kafka=KafkaSettings(bootstrap_servers=kct_stack.kafka_bootstrap),
                redis=RedisSettings(url=kct_stack.redis_url),
                zookeeper=ZooKeeperSettings(hosts=kct_stack.zookeeper_hosts, lock_root=lock_root),
                node_id=node,
                tracing=tracing,
            )
        )
        made.append(app)
        return app

    yield make
    for app in reversed(made):
        app.close()


@pytest.fixture
def kct_app(kct_make_app: Callable[[], Kct]) -> Kct:
    """A :class:`Kct` wired to the stack, closed after the test."""
    return kct_make_app()


@pytest.fixture
def kct_make_topic(kct_app: Kct) -> Callable[..., str]:
    """``make(prefix="t", partitions=3)``: a uniquely named topic and its dead-letter topic."""

    def make(prefix: str = "t", partitions: int = 3) -> str:
        name = f"test.{prefix}.{uuid.uuid4().hex[:10]}"
        kct_app.admin.create_topics([name, dead_letter_topic(name)], partitions=partitions)
        return name

    return make


@pytest.fixture
def kct_topic(kct_make_topic: Callable[..., str]) -> str:
    """A fresh, uniquely named topic (3 partitions) with its dead-letter topic."""
    return kct_make_topic()


@pytest.fixture
def kct_run(kct_app: Kct) -> Iterator[Callable[[Projection | Member], Any]]:
    """``kct_run(projection)``: a runner on a background thread until the test ends."""
    stop = threading.Event()
    started: list[tuple[Member, threading.Thread]] = []

    def run(what: Projection | Member) -> Any:
        member: Member = kct_app.runner(what) if isinstance(what, Projection) else what
        thread = threading.Thread(target=member.run, args=(stop,), daemon=True)
        thread.start()
        started.append((member, thread))
        return member

    yield run
    stop.set()
    for member, thread in started:
        thread.join(timeout=30)
        member.close()


Written = PublishedEvent | Position | ConsistencyToken | str


def _token(written: Written | Iterable[Written]) -> ConsistencyToken:
    if isinstance(written, ConsistencyToken):
        return written
    if isinstance(written, str):
        return ConsistencyToken.parse(written)
    if isinstance(written, PublishedEvent):
        return ConsistencyToken.of([written.position])
    if isinstance(written, Position):
        return ConsistencyToken.of([written])
    token = ConsistencyToken.of([])
    for one in written:
        token = token.merge(_token(one))
    return token


@pytest.fixture
def kct_wait_consistent(kct_app: Kct) -> Callable[..., None]:
    """``wait(written, projections, timeout=10)``: until the projections applied it."""

    def wait(
        written: Written | Iterable[Written],
        projections: str | Sequence[str],
        timeout: float = 10.0,
    ) -> None:
        kct_app.consistency.wait_for_consistency(_token(written), projections, timeout)

    return wait


def _trace_ids(written: Sequence[PublishedEvent | str]) -> set[str]:
    ids: set[str] = set()
    for one in written:
        if isinstance(one, str):
            ids.add(one.lower())
            continue
        found = trace_id_of(one.envelope.traceparent)
        if found is None:
            raise AssertionError(f"event {one.envelope.event_id} carries no trace context")
        ids.add(found)
    return ids


@pytest.fixture
def kct_assert_one_trace(kct_stack: KctStack, kct_app: Kct) -> Callable[..., JaegerTrace]:
    """``assert_one_trace(*written, timeout=15)``: one unbroken trace in Jaeger."""

    def check(*written: PublishedEvent | str, timeout: float = 15.0) -> JaegerTrace:
        if kct_stack.jaeger_query_url is None:
            pytest.fail("kct: no Jaeger known: set KCT_JAEGER_QUERY_URL", pytrace=False)
        ids = _trace_ids(written)
        assert len(ids) == 1, f"the events belong to {len(ids)} traces: {sorted(ids)}"
        (trace_id,) = ids
        if kct_app.tracing is not None:
            kct_app.tracing.flush()
        jaeger = JaegerQuery(kct_stack.jaeger_query_url)
        deadline = time.monotonic() + timeout
        while True:
            found = jaeger.trace(trace_id)
            problem = "not in Jaeger" if found is None else _broken(found)
            if problem is None and found is not None:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"trace {trace_id}: {problem}")
            time.sleep(0.3)

    return check


def _broken(found: JaegerTrace) -> str | None:
    ids = {s.span_id for s in found.spans}
    orphans = [s.name for s in found.spans if s.parent_id and s.parent_id not in ids]
    roots = [s.name for s in found.spans if s.parent_id is None]
    if orphans:
        return f"spans whose parent is missing: {orphans}"
    if len(roots) != 1:
        return f"{len(roots)} root spans: {roots}"
    return None
