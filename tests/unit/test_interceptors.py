"""The interceptor seam: defaults proceed unchanged, chains nest first-outermost."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import pytest

from toolkit.envelope import ConsumedEvent, Envelope
from toolkit.interceptors import Interceptor, Outgoing, SagaInfo, chain, trace_id_of
from toolkit.positions import Position

T = TypeVar("T")


class Recording(Interceptor):
    def __init__(self, name: str, calls: list[str]) -> None:
        self.name = name
        self.calls = calls

    def saga_start(self, saga: SagaInfo, proceed: Callable[[], T]) -> T:
        self.calls.append(f"{self.name}>")
        try:
            return proceed()
        finally:
            self.calls.append(f"<{self.name}")

    def publish(
        self,
        messages: Sequence[Outgoing],
        transactional: bool,
        proceed: Callable[[Sequence[Outgoing]], list[Position]],
    ) -> list[Position]:
        tagged = [
            (t, e.with_changes(tracestate=f"{e.tracestate or ''}{self.name}")) for t, e in messages
        ]
        return proceed(tagged)

    def propagate(self, envelope: Envelope) -> Envelope:
        return envelope.with_changes(causation_id=f"{envelope.causation_id or ''}{self.name}")


def _event() -> Envelope:
    return Envelope("t", "order", "o-1", 1, {})


def test_chain_of_nothing_is_none_and_of_one_is_itself() -> None:
    assert chain() is None
    assert chain(None, None) is None
    one = Interceptor()
    assert chain(None, one) is one


def test_chain_nests_first_outermost_and_lets_errors_through() -> None:
    calls: list[str] = []
    combined = chain(Recording("a", calls), Recording("b", calls))
    assert combined is not None
    info = SagaInfo("s-1", "Order", "Reserve")

    def run() -> int:
        calls.append("run")
        return 7

    assert combined.saga_start(info, run) == 7
    assert calls == ["a>", "b>", "run", "<b", "<a"]

    def boom() -> int:
        raise RuntimeError("x")

    with pytest.raises(RuntimeError):
        combined.saga_start(info, boom)


def test_chain_passes_rewritten_messages_inward_and_propagates_through_all() -> None:
    combined = chain(Recording("a", []), Recording("b", []))
    assert combined is not None
    seen: list[Sequence[Outgoing]] = []

    def write(messages: Sequence[Outgoing]) -> list[Position]:
        seen.append(messages)
        return [Position(t, 0, i) for i, (t, _) in enumerate(messages)]

    positions = combined.publish([("orders", _event())], False, write)
    assert positions == [Position("orders", 0, 0)]
    assert seen[0][0][1].tracestate == "ab"
    assert combined.propagate(_event()).causation_id == "ab"


class Declining(Interceptor):
    def observes(self, event: ConsumedEvent) -> bool:
        return False


def test_a_chain_observes_an_event_when_any_of_its_interceptors_does() -> None:
    event = ConsumedEvent(_event(), Position("orders", 0, 0))
    declining = chain(Declining(), Declining())
    assert declining is not None and not declining.observes(event)
    mixed = chain(Declining(), Interceptor())
    assert mixed is not None and mixed.observes(event)


def test_base_interceptor_proceeds_unchanged() -> None:
    base = Interceptor()
    assert base.observes(ConsumedEvent(_event(), Position("orders", 0, 0)))
    event = _event()
    assert base.propagate(event) is event
    assert base.saga_start(SagaInfo("s", "T", "A"), lambda: "done") == "done"
    base.note("nothing", {"k": 1})
    base.close()


@pytest.mark.parametrize(
    ("traceparent", "expected"),
    [
        (
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "4bf92f3577b34da6a3ce929d0e0e4736",
        ),
        (
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-00",
            "4bf92f3577b34da6a3ce929d0e0e4736",
        ),
        ("00-00000000000000000000000000000000-00f067aa0ba902b7-01", None),
        ("00-zz-00f067aa0ba902b7-01", None),
        ("garbage", None),
        (None, None),
    ],
)
def test_trace_id_of(traceparent: str | None, expected: str | None) -> None:
    assert trace_id_of(traceparent) == expected
