"""kct's pytest plugin (``toolkit/runtime/pytest_plugin.py``) on the real stack: this module
uses its fixtures as a user's tests would, and runs user test files through pytester."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.integration.conftest import Endpoints
from toolkit.envelope import Envelope
from toolkit.positions import TopicPartition
from toolkit.projection import Projection
from toolkit.read_model import ReadModelBatch
from toolkit.runtime.app import Kct
from toolkit.runtime.stack import default_state_dir

pytestmark = pytest.mark.integration
pytest_plugins = ["pytester"]

CANCELLED = "kct.examples.orders.OrderCancelled"


@pytest.fixture(autouse=True)
def _stack_up(endpoints: Endpoints) -> None:
    """The project's own conftest brings the local stack up; the plugin attaches to it."""


def cancelled(order: str) -> Envelope:
    return Envelope(CANCELLED, "order", order, 1, {"order_id": order, "reason": "r"})


def test_the_fixtures_publish_project_and_wait(
    kct_app: Kct,
    kct_topic: str,
    kct_run: Callable[..., object],
    kct_wait_consistent: Callable[..., None],
    kct_assert_one_trace: Callable[..., object],
) -> None:
    view = Projection(f"plugin-view-{kct_topic}", [kct_topic])

    @view.on(CANCELLED)
    def count(event: Envelope, batch: ReadModelBatch) -> None:
        batch.increment("cancelled", "orders")

    kct_run(view)
    written = [kct_app.publisher.publish(kct_topic, cancelled(f"o-{n}")) for n in range(3)]
    kct_wait_consistent(written, view.name)
    assert kct_app.store.counters(view.name, "cancelled") == {"orders": 3}
    kct_wait_consistent(kct_app.publisher.token_of(written).to_string(), [view.name])
    trace = kct_assert_one_trace(written[0])  # the publish and the projection's apply
    with pytest.raises(AssertionError, match="belong to 2 traces"):
        kct_assert_one_trace(written[0], written[1])
    assert trace is not None


USER_TEST = """
from toolkit import Envelope, Projection

def test_user_flow(kct_app, kct_topic, kct_run, kct_wait_consistent, kct_assert_one_trace):
    view = Projection("user-view-" + kct_topic, [kct_topic])

    @view.on("kct.examples.orders.OrderCancelled")
    def count(event, batch):
        batch.increment("cancelled", event.aggregate_id)

    kct_run(view)
    event = Envelope("kct.examples.orders.OrderCancelled", "order", "o-9", 1,
                     {"order_id": "o-9", "reason": "r"})
    written = kct_app.publisher.publish(kct_topic, event)
    kct_wait_consistent(written, view.name)
    assert kct_app.store.counters(view.name, "cancelled") == {"o-9": 1}
    kct_assert_one_trace(written)

def test_a_wait_that_times_out_fails(kct_app, kct_topic, kct_wait_consistent):
    written = kct_app.publisher.publish(kct_topic, Envelope(
        "kct.examples.orders.OrderCancelled", "order", "o-1", 1,
        {"order_id": "o-1", "reason": "r"}))
    kct_wait_consistent(written, "nobody-applies-this", timeout=0.5)
"""


# Pytester points HOME at a temporary directory: name the stack's state directory
# as resolved before that, so the user's test attaches to the running stack.
_STATE_DIR = default_state_dir()


def test_a_users_test_file_runs_with_the_plugin(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KCT_STATE_DIR", str(_STATE_DIR))
    pytester.makepyfile(test_user=USER_TEST)
    result = pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*ConsistencyTimeout*nobody-applies-this*"])


def test_the_readme_example_reads_back_what_it_published(kct_app: Kct, kct_topic: str) -> None:
    written = kct_app.publisher.publish(kct_topic, cancelled("order-42"))
    token = kct_app.publisher.token_of([written])
    reader = kct_app.reader(f"readme-{kct_topic}", [kct_topic])
    seen: list[str] = []
    committed: dict[TopicPartition, int] = {}
    for _ in range(100):
        if token.is_applied_by(committed):
            break
        seen += [e.envelope.event_id for e in reader.poll(timeout=0.3)]
        committed.update(reader.commit())
    reader.close()
    assert seen == [written.envelope.event_id]
