"""ConflictResolver: each strategy's reasons, and the properties that make it safe to use.

The properties (hypothesis): a deduplicate+reorder+last_write_wins pipeline
turns any redelivery and reordering into exactly-once, in-order application;
reorder reports gaps exactly; last_write_wins lets the highest HLC win;
a crash (state rolled back to the last commit, a fresh resolver) changes
nothing; envelopes survive their JSON form; the dedup window stays bounded.
"""

from __future__ import annotations

import json
import math
from collections import deque
from collections.abc import Iterable, Mapping
from decimal import Decimal
from itertools import pairwise
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.memory import InMemoryReadModelStore
from toolkit.conflicts import (
    STATE_PREFIX,
    ConflictResolver,
    ConflictState,
    Reason,
    Resolution,
    ResolverPolicy,
    envelope_from_document,
    envelope_to_document,
)
from toolkit.envelope import Envelope
from toolkit.errors import ConfigurationError, SerializationError
from toolkit.hlc import HLCTimestamp
from toolkit.read_model import ReadModelBatch

FAST = settings(max_examples=200, deadline=None)
PIPELINE = ResolverPolicy(("deduplicate", "reorder", "last_write_wins"))
FAR_FUTURE = 10**12


class JsonState:
    """A ConflictState in a dict that stores JSON text: proves documents are JSON and unshared.

    ``commit``/``rollback`` model the atomic batch a projection runner stores.
    """

    def __init__(self) -> None:
        self.documents: dict[str, str] = {}
        self._committed: dict[str, str] = {}
        self.gets = 0

    def get(self, key: str) -> dict[str, Any] | None:
        self.gets += 1
        found = self.documents.get(key)
        return None if found is None else json.loads(found)

    def put(self, key: str, document: Mapping[str, Any]) -> None:
        self.documents[key] = json.dumps(document, allow_nan=False)

    def delete(self, key: str) -> None:
        self.documents.pop(key, None)

    def commit(self) -> None:
        self._committed = dict(self.documents)

    def rollback(self) -> None:
        self.documents = dict(self._committed)

    def doc(self, key: str) -> dict[str, Any] | None:
        found = self.documents.get(key)
        return None if found is None else json.loads(found)


def event(
    seq: int,
    aggregate_id: str = "o1",
    *,
    event_id: str | None = None,
    hlc: HLCTimestamp | None = None,
    payload: Mapping[str, Any] | None = None,
    aggregate_type: str = "order",
) -> Envelope:
    return Envelope(
        "kct.test.Changed",
        aggregate_type,
        aggregate_id,
        seq,
        dict(payload) if payload is not None else {"v": f"{aggregate_id}-{seq}"},
        event_id=event_id or f"{aggregate_type}-{aggregate_id}-{seq}",
        hlc=hlc or HLCTimestamp(1_000 + seq * 10, 0, f"n{seq % 3}"),
    )


def resolver(*strategies: str, **options: Any) -> ConflictResolver:
    return ConflictResolver({"order": ResolverPolicy(strategies, **options)})


def seqs(events: Iterable[Envelope]) -> list[int]:
    return [e.sequence for e in events]


def rejected(resolution: Resolution) -> list[tuple[int, str]]:
    return [(e.sequence, why) for e, why in resolution.rejected]


# -- a projection over the resolver, its read model in the same state ------------------


def apply(state: ConflictState, events: Iterable[Envelope], log: list[Envelope]) -> None:
    for e in events:
        key = f"model/{e.aggregate_type}/{e.aggregate_id}"
        doc = state.get(key) or {"value": None, "count": 0}
        state.put(key, {"value": dict(e.payload), "count": doc["count"] + 1})
        log.append(e)


def model(state: JsonState) -> dict[str, Any]:
    return {k: json.loads(v) for k, v in state.documents.items() if k.startswith("model/")}


def expected_model(events: list[Envelope]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for e in sorted(events, key=lambda e: e.sequence):
        key = f"model/{e.aggregate_type}/{e.aggregate_id}"
        out[key] = {"value": dict(e.payload), "count": out.get(key, {"count": 0})["count"] + 1}
    return out


@st.composite
def histories(draw: st.DrawFn, max_aggregates: int = 4, max_length: int = 8) -> list[Envelope]:
    """Events of several aggregates (two types), sequences 1..n, HLCs rising with sequence."""
    events = []
    for a in range(draw(st.integers(1, max_aggregates))):
        aggregate_type = ("order", "cart")[a % 2]
        for seq in range(1, draw(st.integers(1, max_length)) + 1):
            events.append(event(seq, f"a{a}", aggregate_type=aggregate_type))
    return events


@st.composite
def deliveries(draw: st.DrawFn, events: list[Envelope], most: int = 3) -> list[Envelope]:
    """Every event 1..most times, in any order."""
    copies = [e for e in events for _ in range(draw(st.integers(1, most)))]
    return draw(st.permutations(copies))


# -- property 1: exactly once, in order --------------------------------------------------


@FAST
@given(st.data())
def test_pipeline_converges_to_applying_each_event_once_in_order(data: st.DataObject) -> None:
    events = data.draw(histories())
    delivered = data.draw(deliveries(events))
    res = ConflictResolver({}, default=PIPELINE)
    state, log = JsonState(), list[Envelope]()
    for now, e in enumerate(delivered):
        resolution = res.resolve(e, state, now_ms=now)
        assert len(resolution.accepted) + len(resolution.rejected) <= len(events)
        apply(state, resolution.accepted, log)
        if now % 7 == 0:
            assert res.expire(state, now_ms=now) == []  # nothing waited 2 s yet
    for resolution in res.expire(state, now_ms=FAR_FUTURE):
        apply(state, resolution.accepted, log)

    assert model(state) == expected_model(events)
    assert sorted(e.event_id for e in log) == sorted(e.event_id for e in events)  # once each
    for aggregate in {(e.aggregate_type, e.aggregate_id) for e in events}:
        of_it = [e.sequence for e in log if (e.aggregate_type, e.aggregate_id) == aggregate]
        assert of_it == list(range(1, len(of_it) + 1))
    assert not any(k.startswith(STATE_PREFIX) and k.endswith("/buffer") for k in state.documents)


# -- property 2: reorder ------------------------------------------------------------------


@FAST
@given(st.data())
def test_reorder_without_gaps_releases_in_sequence_order(data: st.DataObject) -> None:
    events = data.draw(histories())
    delivered = data.draw(deliveries(events))
    res = ConflictResolver({}, default=ResolverPolicy(("reorder",)))
    state, log = JsonState(), list[Envelope]()
    for now, e in enumerate(delivered):
        apply(state, res.resolve(e, state, now_ms=now).accepted, log)
    for aggregate in {(e.aggregate_type, e.aggregate_id) for e in events}:
        of_it = [e for e in log if (e.aggregate_type, e.aggregate_id) == aggregate]
        assert seqs(of_it) == list(range(1, len(of_it) + 1))
    assert sorted(e.event_id for e in log) == sorted(e.event_id for e in events)
    assert res.expire(state, now_ms=FAR_FUTURE) == []


def _missing_runs(present: set[int]) -> list[tuple[int, int]]:
    runs: list[tuple[int, int]] = []
    for s in range(1, max(present) + 1):
        if s in present:
            continue
        if runs and runs[-1][1] == s - 1:
            runs[-1] = (runs[-1][0], s)
        else:
            runs.append((s, s))
    return runs


@FAST
@given(st.data(), st.sampled_from(["skip", "dead_letter"]))
def test_reorder_reports_each_gap_exactly_once_expired(data: st.DataObject, on_gap: str) -> None:
    events = data.draw(histories())
    kept = [e for e in events if data.draw(st.booleans())] or events[:1]
    delivered = data.draw(deliveries(kept, most=2))
    policy = ResolverPolicy(("reorder",), on_gap=on_gap)  # type: ignore[arg-type]
    res, state, log = ConflictResolver({}, default=policy), JsonState(), list[Envelope]()
    for now, e in enumerate(delivered):
        apply(state, res.resolve(e, state, now_ms=now).accepted, log)
    gaps: dict[tuple[str, str], list[tuple[int, int]]] = {}
    dead: list[Envelope] = []
    for resolution in res.expire(state, now_ms=FAR_FUTURE):
        assert resolution.event is None and resolution.gap is not None
        assert resolution.reason == f"gap_{'skipped' if on_gap == 'skip' else 'dead_lettered'}"
        gaps.setdefault(resolution.aggregate, []).append(resolution.gap)
        apply(state, resolution.accepted, log)
        dead += [e for e, _ in resolution.rejected]

    for aggregate in {(e.aggregate_type, e.aggregate_id) for e in kept}:
        present = {e.sequence for e in kept if (e.aggregate_type, e.aggregate_id) == aggregate}
        runs = _missing_runs(present)
        of_it = [e.sequence for e in log if (e.aggregate_type, e.aggregate_id) == aggregate]
        if on_gap == "skip":  # everything else applied, in order
            assert of_it == sorted(present)
        else:  # what is behind the first gap is dead-lettered, in order
            before = runs[0][0] if runs else max(present) + 1
            assert of_it == [s for s in sorted(present) if s < before]
            lost = [e.sequence for e in dead if (e.aggregate_type, e.aggregate_id) == aggregate]
            assert lost == [s for s in sorted(present) if s >= before]
        assert gaps.get(aggregate, []) == runs
    assert state.doc(f"{STATE_PREFIX}reorder-index") is None


# -- property 3: last write wins -----------------------------------------------------------


@FAST
@given(st.data())
def test_last_write_wins_keeps_the_highest_hlc_whatever_the_delivery_order(
    data: st.DataObject,
) -> None:
    clocks = data.draw(
        st.lists(st.tuples(st.integers(0, 50), st.integers(0, 3)), min_size=2, max_size=6)
    )
    # Concurrent updates: one sequence, one event per node, distinct HLCs (node breaks ties).
    concurrent = [
        event(
            5, event_id=f"w{i}", hlc=HLCTimestamp(wall, logical, f"n{i}"), payload={"by": f"n{i}"}
        )
        for i, (wall, logical) in enumerate(clocks)
    ]
    delivered = data.draw(deliveries(concurrent, most=2))
    res, state = resolver("last_write_wins"), JsonState()
    applied: list[Envelope] = []
    rejected_ids: set[str] = set()
    highest: HLCTimestamp | None = None
    for e in delivered:
        resolution = res.resolve(e, state)
        rejected_ids.update(r.event_id for r, _ in resolution.rejected)
        assert e.hlc is not None
        # Accepted exactly when it is above everything delivered before it.
        if highest is None or e.hlc > highest:
            assert resolution.accepted == (e,) and resolution.reason == Reason.APPLIED
            applied.append(e)
        else:
            assert resolution.accepted == ()
            why = Reason.DUPLICATE if e.hlc == highest else Reason.STALE_HLC
            assert rejected(resolution) == [(5, why)] == [(5, resolution.reason)]
        highest = e.hlc if highest is None else max(highest, e.hlc)
    winner = max(concurrent, key=lambda e: e.hlc or HLCTimestamp(0, 0, ""))
    assert applied[-1] is winner  # the final value is the max-HLC event's payload
    stamps = [e.hlc for e in applied if e.hlc is not None]
    assert all(a < b for a, b in pairwise(stamps))
    # Every other event was rejected on some delivery, or applied and then overwritten.
    losers = {e.event_id for e in concurrent} - {winner.event_id}
    assert losers <= rejected_ids | {e.event_id for e in applied[:-1]}


# -- property 4: crash safety -------------------------------------------------------------


@FAST
@given(st.data())
def test_a_crash_and_a_fresh_resolver_change_nothing(data: st.DataObject) -> None:
    events = data.draw(histories(max_aggregates=3, max_length=6))
    delivered = data.draw(deliveries(events))
    batch = data.draw(st.integers(1, 6))
    crashes = set(data.draw(st.lists(st.integers(0, len(delivered) - 1), max_size=4)))

    def run(crash_at: set[int]) -> JsonState:
        state, log = JsonState(), list[Envelope]()
        res = ConflictResolver({}, default=PIPELINE)
        position = committed = 0
        while position < len(delivered):
            if position in crash_at:
                crash_at.discard(position)
                state.rollback()  # the batch in flight is lost with the process
                position = committed  # and redelivered from the stored offsets
                res = ConflictResolver({}, default=PIPELINE)
                continue
            resolution = res.resolve(delivered[position], state, now_ms=position)
            apply(state, resolution.accepted, log)
            position += 1
            if position % batch == 0:
                state.commit()
                committed = position
                res = ConflictResolver({}, default=PIPELINE)  # a restart after a commit
        for resolution in ConflictResolver({}, default=PIPELINE).expire(state, FAR_FUTURE):
            apply(state, resolution.accepted, log)
        return state

    crashed, clean = run(set(crashes)), run(set())
    assert model(crashed) == expected_model(events)
    assert crashed.documents == clean.documents  # resolver state included


# -- property 5: envelope documents ----------------------------------------------------------

_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=8)
    | st.binary(max_size=8)
)
_keys = st.text(max_size=6) | st.sampled_from(["$bytes", "$dict", "$float", "$", "$x"])
_payloads = st.dictionaries(
    _keys,
    st.recursive(
        _scalars,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_keys, inner, max_size=3),
        max_leaves=12,
    ),
    max_size=5,
)
_optional_text = st.none() | st.text(min_size=1, max_size=10)


@FAST
@given(
    payload=_payloads,
    sequence=st.integers(0, 2**63),
    hlc=st.none()
    | st.builds(HLCTimestamp, st.integers(0, 2**50), st.integers(0, 99), st.just("n")),
    fence=st.none() | st.integers(0, 2**40),
    texts=st.tuples(*[_optional_text] * 5),
    ids=st.tuples(st.text(max_size=10), st.text(min_size=1, max_size=10)),
)
def test_envelope_documents_round_trip_through_json(
    payload: dict[str, Any],
    sequence: int,
    hlc: HLCTimestamp | None,
    fence: int | None,
    texts: tuple[str | None, ...],
    ids: tuple[str, str],
) -> None:
    original = Envelope(
        "kct.test.Changed",
        ids[0],
        ids[1],
        sequence,
        payload,
        event_id=ids[1] + "-e",
        hlc=hlc,
        fence=fence,
        schema_ref=texts[0],
        correlation_id=texts[1],
        causation_id=texts[2],
        traceparent=texts[3],
        tracestate=texts[4],
    )
    text = json.dumps(envelope_to_document(original), allow_nan=False)
    assert envelope_from_document(json.loads(text)) == original


def test_non_finite_floats_and_bytes_round_trip() -> None:
    original = event(1, payload={"nan": math.nan, "inf": -math.inf, "raw": b"\x00\xff"})
    back = envelope_from_document(json.loads(json.dumps(envelope_to_document(original))))
    assert math.isnan(back.payload["nan"]) and back.payload["inf"] == -math.inf
    assert back.payload["raw"] == b"\x00\xff"


@pytest.mark.parametrize(
    ("payload", "path", "kind"),
    [
        ({"total": Decimal("1.10")}, "payload.total", "Decimal"),
        ({"lines": [{"at": {1, 2}}]}, "payload.lines[0].at", "set"),
        ({"by_id": {1: "x"}}, "payload.by_id", "int"),
    ],
)
def test_values_json_cannot_hold_raise_a_clear_serialization_error(
    payload: dict[str, Any], path: str, kind: str
) -> None:
    with pytest.raises(SerializationError) as caught:
        envelope_to_document(event(1, payload=payload))
    assert caught.value.context["path"] == path
    assert caught.value.context["type"] == kind


@pytest.mark.parametrize(
    "document",
    [
        {},
        {**envelope_to_document(event(1)), "sequence": "1"},
        {**envelope_to_document(event(1)), "payload": [1]},
        {**envelope_to_document(event(1)), "hlc": "nonsense"},
        {**envelope_to_document(event(1)), "aggregate_id": ""},
        {**envelope_to_document(event(1)), "payload": {"b": {"$bytes": "!!"}}},
    ],
)
def test_a_malformed_document_raises_serialization_error(document: dict[str, Any]) -> None:
    with pytest.raises(SerializationError):
        envelope_from_document(document)


# -- property 6: the dedup window stays bounded -----------------------------------------------


@FAST
@given(
    window=st.integers(1, 6),
    ids=st.lists(st.sampled_from([f"e{i}" for i in range(10)] + ["a\nb", "a\\nb"]), max_size=40),
)
def test_dedup_window_is_bounded_and_remembers_the_last_ids(window: int, ids: list[str]) -> None:
    res, state = resolver("deduplicate", dedup_window=window), JsonState()
    remembered: deque[str] = deque()
    for eid in ids:
        resolution = res.resolve(event(1, event_id=eid), state)
        if eid in remembered:
            assert resolution.reason == Reason.DUPLICATE
        else:
            assert resolution.reason == Reason.APPLIED
            remembered.append(eid)
            if len(remembered) > window:
                remembered.popleft()
        head = state.doc(f"{STATE_PREFIX}order/o1")
        assert head is not None
        assert len(head["seen"].split("\n")) - 2 == len(remembered) <= window


# -- each strategy's reasons -------------------------------------------------------------------


def test_an_aggregate_type_without_a_policy_passes_everything() -> None:
    res, state = resolver("reorder"), JsonState()
    e = event(9, aggregate_type="invoice")
    resolution = res.resolve(e, state)
    assert resolution.accepted == (e,) and resolution.reason == Reason.NO_POLICY
    assert resolution.strategy == "none" and state.documents == {}
    assert res.counts[("none", Reason.NO_POLICY)] == 1


def test_the_default_policy_covers_unlisted_types() -> None:
    res = ConflictResolver({"order": ResolverPolicy(())}, default=ResolverPolicy(("reorder",)))
    state = JsonState()
    assert res.resolve(event(2, aggregate_type="cart"), state).reason == Reason.BUFFERED
    assert res.resolve(event(2), state).reason == Reason.NO_POLICY  # empty = pass-through


def test_deduplicate_rejects_an_event_id_seen_before() -> None:
    res, state = resolver("deduplicate"), JsonState()
    assert res.resolve(event(1), state).reason == Reason.APPLIED
    again = res.resolve(event(1), state)
    assert (again.strategy, again.reason) == ("deduplicate", Reason.DUPLICATE)
    assert again.accepted == () and rejected(again) == [(1, Reason.DUPLICATE)]


def test_reorder_holds_early_events_and_releases_them_in_order() -> None:
    res, state = resolver("reorder"), JsonState()
    assert res.resolve(event(3), state, now_ms=0).reason == Reason.BUFFERED
    assert res.resolve(event(2), state, now_ms=1).reason == Reason.BUFFERED
    assert rejected(res.resolve(event(3), state)) == [(3, Reason.DUPLICATE)]
    other = res.resolve(event(3, event_id="other-writer"), state)
    assert rejected(other) == [(3, Reason.DUPLICATE_SEQUENCE)]
    first = res.resolve(event(1), state, now_ms=2)
    assert (first.reason, seqs(first.accepted)) == (Reason.APPLIED, [1, 2, 3])
    late = res.resolve(event(2), state)
    assert (late.reason, late.accepted) == (Reason.ALREADY_APPLIED_SEQUENCE, ())
    assert state.doc(f"{STATE_PREFIX}reorder-index") is None
    assert res.counts[("reorder", Reason.RELEASED)] == 2


def test_expire_skips_an_overdue_gap_and_waits_for_the_next() -> None:
    res = resolver("reorder", reorder_max_wait_ms=100)
    state = JsonState()
    for s, now in ((3, 0), (4, 10), (7, 50)):
        res.resolve(event(s), state, now_ms=now)
    assert res.expire(state, now_ms=99) == []
    (skipped,) = res.expire(state, now_ms=100)
    assert (skipped.reason, skipped.gap, seqs(skipped.accepted)) == (
        Reason.GAP_SKIPPED,
        (1, 2),
        [3, 4],
    )
    assert skipped.event is None and skipped.to_audit()["gap"] == [1, 2]
    # 7 arrived at 50: its own wait counts from there.
    assert res.expire(state, now_ms=149) == []
    (second,) = res.expire(state, now_ms=150)
    assert (second.gap, seqs(second.accepted)) == ((5, 6), [7])
    assert res.resolve(event(2), state).reason == Reason.ALREADY_APPLIED_SEQUENCE
    assert res.resolve(event(8), state).reason == Reason.APPLIED


def test_expire_closes_every_overdue_gap_of_an_aggregate_at_once() -> None:
    res, state = resolver("reorder", reorder_max_wait_ms=10), JsonState()
    for s in (2, 4, 6):
        res.resolve(event(s), state, now_ms=0)
    gaps = [r.gap for r in res.expire(state, now_ms=10)]
    assert gaps == [(1, 1), (3, 3), (5, 5)]


def test_on_gap_dead_letter_rejects_the_run_behind_the_gap() -> None:
    res = resolver("reorder", reorder_max_wait_ms=10, on_gap="dead_letter")
    state = JsonState()
    for s in (3, 4, 6):
        res.resolve(event(s), state, now_ms=0)
    first, second = res.expire(state, now_ms=10)
    assert (first.reason, first.gap, first.accepted) == (Reason.GAP_DEAD_LETTERED, (1, 2), ())
    assert rejected(first) == [(3, Reason.GAP_DEAD_LETTERED), (4, Reason.GAP_DEAD_LETTERED)]
    assert (second.gap, rejected(second)) == ((5, 5), [(6, Reason.GAP_DEAD_LETTERED)])
    assert res.resolve(event(7), state).reason == Reason.APPLIED


def test_a_full_buffer_expires_its_oldest_gap_at_once() -> None:
    res, state = resolver("reorder", reorder_max_buffer=3), JsonState()
    for s in (3, 4, 6):
        assert res.resolve(event(s), state, now_ms=0).reason == Reason.BUFFERED
    overflow = res.resolve(event(8), state, now_ms=0)
    assert (overflow.reason, overflow.gap) == (Reason.GAP_SKIPPED, (1, 2))
    assert seqs(overflow.accepted) == [3, 4]
    buffer = state.doc(f"{STATE_PREFIX}order/o1/buffer")
    assert buffer is not None and [e["sequence"] for e in buffer["events"]] == [6, 8]
    # The event that overflowed can be the one released.
    res2, state2 = resolver("reorder", reorder_max_buffer=1), JsonState()
    res2.resolve(event(2), state2, now_ms=0)
    own = res2.resolve(event(5), state2, now_ms=0)
    assert (own.reason, own.gap, seqs(own.accepted)) == (Reason.GAP_SKIPPED, (1, 1), [2])
    third = res2.resolve(event(3), state2, now_ms=0)
    assert (third.reason, seqs(third.accepted)) == (Reason.APPLIED, [3])


def test_expire_reads_only_aggregates_with_buffered_events() -> None:
    res, state = resolver("reorder"), JsonState()
    for a in range(50):
        res.resolve(event(1, f"a{a}"), state)
    res.resolve(event(3, "late"), state, now_ms=0)
    state.gets = 0
    assert res.expire(state, now_ms=1) == []
    assert state.gets == 2  # the clock (no next expiry stored yet), then the index
    state.gets = 0
    assert res.expire(state, now_ms=1) == []
    assert state.gets == 1  # the clock only: it says when the next gap can expire
    state.gets = 0
    (gap,) = res.expire(state, now_ms=5_000)
    assert gap.aggregate == ("order", "late") and state.gets == 4  # clock, index, head, buffer


def test_a_buffer_left_by_a_policy_without_reorder_is_released() -> None:
    state = JsonState()
    resolver("reorder").resolve(event(3), state, now_ms=0)
    (released,) = resolver("deduplicate").expire(state, now_ms=0)
    assert (released.gap, seqs(released.accepted)) == ((1, 2), [3])


def test_last_write_wins_reasons() -> None:
    res, state = resolver("last_write_wins"), JsonState()
    newer = event(2, hlc=HLCTimestamp(20, 0, "b"))
    assert res.resolve(newer, state).reason == Reason.APPLIED
    assert res.resolve(newer, state).reason == Reason.DUPLICATE
    older = res.resolve(event(3, hlc=HLCTimestamp(20, 0, "a")), state)
    assert (older.strategy, older.reason) == ("last_write_wins", Reason.STALE_HLC)
    unstamped = Envelope("t", "order", "o1", 4, {}, event_id="x")
    assert res.resolve(unstamped, state).reason == Reason.MISSING_HLC


def test_first_write_wins_rejects_a_later_claim_on_a_written_sequence() -> None:
    res2, state = resolver("first_write_wins"), JsonState()
    assert res2.resolve(event(2, event_id="w1"), state).reason == Reason.APPLIED
    assert res2.resolve(event(2, event_id="w1"), state).reason == Reason.DUPLICATE
    lost = res2.resolve(event(2, event_id="w2"), state)
    assert (lost.strategy, lost.reason, lost.accepted) == (
        "first_write_wins",
        Reason.ALREADY_WRITTEN,
        (),
    )
    assert res2.resolve(event(1, event_id="old"), state).reason == Reason.ALREADY_WRITTEN
    assert res2.resolve(event(3), state).reason == Reason.APPLIED


def test_reject_turns_concurrent_updates_into_conflicts() -> None:
    res, state = resolver("deduplicate", "reject"), JsonState()
    assert res.resolve(event(1, event_id="w1"), state).reason == Reason.APPLIED
    conflict = res.resolve(event(1, event_id="w2"), state)
    assert (conflict.strategy, rejected(conflict)) == (
        "reject",
        [(1, Reason.REJECTED_CONFLICT)],
    )
    assert res.resolve(event(2), state).reason == Reason.APPLIED


# -- merge ---------------------------------------------------------------------------------------


def union_tags(current: dict[str, Any] | None, incoming: Envelope) -> Envelope:
    """A merge function for the tests: the union of both tag lists."""
    tags = sorted({*(current or {}).get("tags", []), *incoming.payload["tags"]})
    return incoming.with_changes(payload={"tags": tags})


def tagged(seq: int, event_id: str, *tags: str) -> Envelope:
    return event(seq, event_id=event_id, payload={"tags": list(tags)})


@pytest.mark.parametrize(
    "policy",
    [
        ResolverPolicy(("merge",), merge=union_tags),
        ResolverPolicy(("merge",), merge_path="tests.unit.test_conflicts:union_tags"),
    ],
    ids=["function", "import path"],
)
def test_merge_applies_in_order_events_and_merges_concurrent_ones(policy: ResolverPolicy) -> None:
    res, state = ConflictResolver({"order": policy}), JsonState()
    assert res.resolve(tagged(1, "a", "x"), state).reason == Reason.APPLIED
    assert res.resolve(tagged(2, "b", "x", "y"), state).reason == Reason.APPLIED
    merged = res.resolve(tagged(2, "c", "x", "z"), state)
    assert (merged.strategy, merged.reason) == ("merge", Reason.MERGED)
    assert merged.event == tagged(2, "c", "x", "z")
    assert [e.payload for e in merged.accepted] == [{"tags": ["x", "y", "z"]}]
    assert res.resolve(tagged(2, "c", "x", "z"), state).reason == Reason.DUPLICATE
    assert res.resolve(tagged(3, "d", "q"), state).accepted[0].payload == {"tags": ["q"]}


class Unserializable:
    pass


def _raises(current: dict[str, Any] | None, incoming: Envelope) -> Envelope:
    raise RuntimeError("cannot merge")


BAD_MERGES: dict[str, Any] = {
    "raises": _raises,
    "returns a str": lambda current, incoming: "not an envelope",
    "returns None": lambda current, incoming: None,
    "returns another aggregate": lambda current, incoming: incoming.with_changes(
        aggregate_id="elsewhere"
    ),
    "returns an unserializable payload": lambda current, incoming: incoming.with_changes(
        payload={"x": Unserializable()}
    ),
}


@pytest.mark.parametrize("kind", sorted(BAD_MERGES))
def test_a_bad_merge_rejects_its_event_with_the_error_and_the_aggregate_goes_on(kind: str) -> None:
    res = ConflictResolver(
        {"order": ResolverPolicy(("deduplicate", "merge"), merge=BAD_MERGES[kind])}
    )
    state = JsonState()
    res.resolve(tagged(1, "a", "x"), state)
    conflict = tagged(1, "b", "y")
    decided = res.resolve(conflict, state)
    assert (decided.reason, decided.accepted) == (Reason.MERGE_ERROR, ())
    assert rejected(decided) == [(1, Reason.MERGE_ERROR)]
    error = decided.error_of(conflict)
    assert error is not None and error.split(":")[0] in (
        "RuntimeError",
        "ConfigurationError",
        "SerializationError",
    )
    # The merge wrote nothing; the next in-order event applies as usual.
    assert res.resolve(tagged(2, "c", "z"), state).reason == Reason.APPLIED
    assert res.resolve(conflict, state).reason == Reason.DUPLICATE


def test_a_failing_merge_on_a_released_event_rejects_that_event() -> None:
    def picky(current: dict[str, Any] | None, incoming: Envelope) -> Envelope:
        if incoming.event_id == "bad":
            raise ValueError("cannot merge")
        return incoming

    res = ConflictResolver({"order": ResolverPolicy(("reorder", "merge"), merge=picky)})
    state = JsonState()
    res.resolve(tagged(1, "a", "x"), state)
    res.resolve(tagged(3, "bad", "y"), state, now_ms=0)
    # As if a concurrent sequence 5 had been merged already (e.g. before the policy
    # gained reorder): every event released now is a conflict for merge.
    state.put(f"{STATE_PREFIX}order/o1", {**(state.doc(f"{STATE_PREFIX}order/o1") or {}), "seq": 5})
    released = res.resolve(tagged(2, "fine", "z"), state)
    assert released.reason == Reason.MERGED and seqs(released.accepted) == [2]
    assert rejected(released) == [(3, Reason.MERGE_ERROR)]


@pytest.mark.parametrize(
    "path",
    [
        "tests.unit.test_conflicts.union_tags",
        "tests.unit.no_such_module:union_tags",
        "tests.unit.test_conflicts:no_such_function",
        "tests.unit.test_conflicts:FAST.max_examples",
        ":union_tags",
    ],
)
def test_a_bad_merge_path_is_a_configuration_error(path: str) -> None:
    with pytest.raises(ConfigurationError):
        ResolverPolicy(("merge",), merge_path=path)


@pytest.mark.parametrize(
    "options",
    [
        {"strategies": "reorder"},
        {"strategies": ("reorder", "sort")},
        {"strategies": ("reorder", "reorder")},
        {"strategies": ("last_write_wins", "reject")},
        {"strategies": ("merge",)},
        {"strategies": ("merge",), "merge": union_tags, "merge_path": "a:b"},
        {"strategies": ("reorder",), "merge": union_tags},
        {"strategies": ("deduplicate",), "dedup_window": 0},
        {"strategies": ("reorder",), "reorder_max_wait_ms": -1},
        {"strategies": ("reorder",), "reorder_max_buffer": 0},
        {"strategies": ("reorder",), "on_gap": "drop"},
    ],
)
def test_invalid_policies_are_configuration_errors(options: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        ResolverPolicy(**options)


# -- state, audit, metrics -------------------------------------------------------------------------


def test_unstorable_payloads_raise_when_buffered_and_write_nothing() -> None:
    res, state = resolver("reorder"), JsonState()
    assert res.resolve(event(1, payload={"total": Decimal("1.5")}), state).accepted  # not stored
    before = dict(state.documents)
    with pytest.raises(SerializationError):
        res.resolve(event(3, payload={"total": Decimal("1.5")}), state)
    assert state.documents == before


def test_state_keys_are_reserved_and_distinct_per_aggregate() -> None:
    res, state = ConflictResolver({}, default=ResolverPolicy(("reorder",))), JsonState()
    res.resolve(event(2, "a/b"), state, now_ms=0)
    res.resolve(event(2, "b", aggregate_type="order/a"), state, now_ms=0)
    assert all(k.startswith(STATE_PREFIX) for k in state.documents)
    assert len([k for k in state.documents if k.endswith("/buffer")]) == 2
    assert {r.aggregate for r in res.expire(state, now_ms=FAR_FUTURE)} == {
        ("order", "a/b"),
        ("order/a", "b"),
    }


def test_a_read_model_batch_is_a_conflict_state() -> None:
    store = InMemoryReadModelStore()
    res = ConflictResolver({"order": PIPELINE})
    applied: list[int] = []
    for sequences in ([2, 3], [1, 2], [5, 4]):
        batch = ReadModelBatch(store, "orders")
        for s in sequences:
            applied += seqs(res.resolve(event(s), batch, now_ms=0).accepted)
        assert store.apply("orders", batch.net_changes(), {}, {})
    assert applied == [1, 2, 3, 4, 5]


def test_the_clock_stamps_arrivals_when_now_is_not_given() -> None:
    now = [1_000]
    res = ConflictResolver(
        {"order": ResolverPolicy(("reorder",), reorder_max_wait_ms=50)}, clock=lambda: now[0]
    )
    state = JsonState()
    res.resolve(event(2), state)
    now[0] = 1_049
    assert res.expire(state) == []
    now[0] = 1_050
    assert [r.gap for r in res.expire(state)] == [(1, 1)]


def test_audit_records_are_json_without_payloads() -> None:
    res, state = resolver("deduplicate", "reorder", "last_write_wins"), JsonState()
    res.resolve(event(2, payload={"secret": "s"}), state, now_ms=0)
    resolution = res.resolve(event(1, payload={"secret": "s"}), state, now_ms=0)
    audit = json.loads(json.dumps(resolution.to_audit()))
    assert "secret" not in json.dumps(audit)
    assert audit["reason"] == Reason.APPLIED and audit["gap"] is None
    assert [a["sequence"] for a in audit["accepted"]] == [1, 2]
    assert audit["event"]["hlc"] == str(event(1).hlc)
    dup = res.resolve(event(1), state).to_audit()
    assert dup["rejected"] == [{**_audit_of(event(1)), "reason": Reason.DUPLICATE}]


def _audit_of(e: Envelope) -> dict[str, Any]:
    return {
        "event_id": e.event_id,
        "event_type": e.event_type,
        "sequence": e.sequence,
        "hlc": str(e.hlc),
    }


def test_counts_record_each_decision() -> None:
    res, state = resolver("deduplicate", "reorder", "last_write_wins"), JsonState()
    for s in (2, 1, 1):
        res.resolve(event(s), state, now_ms=0)
    assert res.counts == {
        ("reorder", Reason.BUFFERED): 1,
        ("last_write_wins", Reason.APPLIED): 2,
        ("deduplicate", Reason.DUPLICATE): 1,
    }


def test_a_fresh_resolver_continues_from_the_state() -> None:
    state = JsonState()
    resolver("deduplicate", "reorder").resolve(event(2), state, now_ms=0)
    fresh = resolver("deduplicate", "reorder")
    assert seqs(fresh.resolve(event(1), state).accepted) == [1, 2]
    assert fresh.resolve(event(2), state).reason == Reason.DUPLICATE
