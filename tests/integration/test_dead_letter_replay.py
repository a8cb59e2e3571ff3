"""``kct dlq list | show | replay`` on the real stack: a handler that failed, fixed,
its dead letters replayed twice from two projections' copies: applied once."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from functools import partial

import pytest

from tests.integration.conftest import Endpoints
from tests.integration.helpers import running
from toolkit.envelope import Envelope
from toolkit.projection import Projection
from toolkit.read_model import ReadModelBatch
from toolkit.runtime.app import Kct
from toolkit.runtime.cli import main

pytestmark = pytest.mark.integration

CANCELLED = "kct.examples.orders.OrderCancelled"


def _kctl(
    endpoints: Endpoints, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Callable[..., tuple[int, str]]:
    monkeypatch.setenv("KCT_KAFKA_BOOTSTRAP", endpoints.kafka_bootstrap)
    monkeypatch.setenv("KCT_REDIS_URL", endpoints.redis_url)
    monkeypatch.setenv("COLUMNS", "200")

    def run(*args: str) -> tuple[int, str]:
        capsys.readouterr()
        with pytest.raises(SystemExit) as info:
            main(["dlq", *args])
            sys.exit(0)
        out = capsys.readouterr()
        return int(info.value.code or 0), out.out + out.err

    return run


def test_a_fixed_handler_gets_its_dead_letters_replayed_once(
    kct: Kct,
    create_topic: Callable[..., str],
    endpoints: Endpoints,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    topic = create_topic("dlq-replay")
    dlq_topic = f"{topic}.dlq"
    broken = {"yes": True}

    def view(name: str) -> Projection:
        projection = Projection(f"{name}-{topic}", [topic])

        @projection.on(CANCELLED)
        def cancelled(event: Envelope, batch: ReadModelBatch) -> None:
            if broken["yes"]:
                raise RuntimeError("bug in the handler")
            batch.increment("cancelled", event.aggregate_id)

        return projection

    views = [view("a"), view("b")]
    event = Envelope(CANCELLED, "order", "o-1", 1, {"order_id": "o-1", "reason": "r"})
    written = kct.publisher.publish(topic, event)
    with running(kct.runner(views[0])), running(kct.runner(views[1])):
        _eventually(lambda: len(kct.browser.read(dlq_topic, None, 10)) == 2)
    kctl = _kctl(endpoints, monkeypatch, capsys)
    code, out = kctl("list", dlq_topic, "--json")
    assert code == 0, out
    letters = json.loads(out)
    assert {(e["reason"], e["source"], e["event_id"]) for e in letters} == {
        (
            "handler_error",
            f"{topic}:{written.position.partition}:{written.position.offset}",
            written.envelope.event_id,
        )
    }
    assert {e["consumer_group"] for e in letters} == {v.name for v in views}
    code, out = kctl("show", dlq_topic, "--reason", "handler_error", "--since", "10m")
    assert code == 0 and "bug in the handler" in out, out
    code, out = kctl("list", dlq_topic, "--reason", "stale_fence", "--json")
    assert (code, json.loads(out)) == (0, [])

    broken["yes"] = False
    code, out = kctl("replay", dlq_topic)
    assert code == 0, out
    assert "1 already_replayed, 1 replayed" in out
    code, out = kctl("replay", dlq_topic, "--json")  # again: nothing new
    assert code == 0 and {r["outcome"] for r in json.loads(out)} == {"already_replayed"}

    copies = [
        r
        for r in kct.browser.read(topic, None, 10)
        if r.header("event_id") == written.envelope.event_id.encode()
    ]
    assert len(copies) == 2  # the original and one replayed copy
    with running(kct.runner(views[0])), running(kct.runner(views[1])):
        for name in (v.name for v in views):
            _eventually(partial(_applied_once, kct, name))
        time.sleep(1)  # nothing more arrives
    assert [kct.store.counters(v.name, "cancelled") for v in views] == [{"o-1": 1}] * 2


def _applied_once(kct: Kct, projection: str) -> bool:
    return kct.store.counters(projection, "cancelled") == {"o-1": 1}


def _eventually(check: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition did not hold in time"
        time.sleep(0.1)
