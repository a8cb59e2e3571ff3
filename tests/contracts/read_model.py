"""Contracts of ``ReadModelStore``, ``CheckpointedReadModelStore`` and ``SagaStepStore``."""

from __future__ import annotations

from abc import ABC, abstractmethod

import pytest

from tests.contracts import unique
from toolkit.ports import (
    CheckpointedReadModelStore,
    ReadModelChange,
    ReadModelStore,
    SagaStepStore,
    StepRecord,
)
from toolkit.positions import TopicPartition

__all__ = [
    "CheckpointedReadModelStoreContract",
    "ReadModelStoreContract",
    "SagaStepStoreContract",
]

TP0, TP1 = TopicPartition("contract.orders", 0), TopicPartition("contract.orders", 1)
DOCUMENT = {"status": "placed", "lines": [{"sku": "é-1", "n": 2}], "total": 12.5, "ok": True}


def put(key: str, document: dict[str, object]) -> ReadModelChange:
    return ReadModelChange("put", key, document=document)


def increment(key: str, field: str, amount: int) -> ReadModelChange:
    return ReadModelChange("increment", key, field=field, amount=amount)


class ReadModelStoreContract(ABC):
    """What every read-model store answers for data nobody wrote."""

    @abstractmethod
    def make_store(self) -> ReadModelStore: ...

    def test_an_unknown_key_has_no_document_and_no_counters(self) -> None:
        store = self.make_store()
        assert store.get(unique("p"), "order:1") is None
        assert store.counters(unique("p"), "order:1") == {}


class CheckpointedReadModelStoreContract(ReadModelStoreContract):
    """Changes and offsets applied in one step, guarded by the expected offsets."""

    @abstractmethod
    def make_store(self) -> CheckpointedReadModelStore: ...

    def test_a_batch_writes_documents_counters_and_offsets_together(self) -> None:
        store, name = self.make_store(), unique("p")
        changes = [put("order:1", DOCUMENT), increment("stats", "placed", 2)]
        assert store.apply(name, changes, {TP0: None}, {TP0: 5})
        assert store.get(name, "order:1") == DOCUMENT
        assert store.counters(name, "stats") == {"placed": 2}
        assert store.applied_offsets(name, [TP0, TP1]) == {TP0: 5}

    def test_changes_apply_in_order(self) -> None:
        store, name = self.make_store(), unique("p")
        changes = [
            put("a", {"v": 1}),
            ReadModelChange("delete", "a"),
            ReadModelChange("delete", "b"),
            put("b", {"v": 2}),
            put("b", {"v": 3}),
        ]
        assert store.apply(name, changes, {}, {TP0: 1})
        assert store.get(name, "a") is None
        assert store.get(name, "b") == {"v": 3}

    def test_increments_add_up_across_batches(self) -> None:
        store, name = self.make_store(), unique("p")
        assert store.apply(name, [increment("k", "n", 3), increment("k", "m", 1)], {}, {TP0: 1})
        assert store.apply(name, [increment("k", "n", -5)], {TP0: 1}, {TP0: 2})
        assert store.counters(name, "k") == {"n": -2, "m": 1}

    def test_a_batch_is_refused_when_the_stored_offsets_are_not_the_expected_ones(self) -> None:
        store, name = self.make_store(), unique("p")
        assert store.apply(name, [put("k", {"v": 1})], {TP0: None}, {TP0: 3})
        for expected in ({TP0: None}, {TP0: 2}, {TP0: 3, TP1: 7}):
            refused = [put("k", {"v": 2}), increment("c", "n", 1)]
            assert not store.apply(name, refused, expected, {TP0: 9})
        assert store.get(name, "k") == {"v": 1}
        assert store.counters(name, "c") == {}
        assert store.applied_offsets(name, [TP0, TP1]) == {TP0: 3}
        assert store.apply(name, [put("k", {"v": 3})], {TP0: 3, TP1: None}, {TP0: 4, TP1: 1})
        assert store.applied_offsets(name, [TP0, TP1]) == {TP0: 4, TP1: 1}

    def test_applied_offsets_name_only_the_partitions_asked_for(self) -> None:
        store, name = self.make_store(), unique("p")
        assert store.applied_offsets(name, [TP0]) == {}
        assert store.apply(name, [], {}, {TP0: 1, TP1: 2})
        assert store.applied_offsets(name, [TP1]) == {TP1: 2}
        assert store.applied_offsets(name, []) == {}

    def test_a_returned_document_is_a_copy(self) -> None:
        store, name = self.make_store(), unique("p")
        assert store.apply(name, [put("k", {"items": [1]})], {}, {TP0: 1})
        found = store.get(name, "k")
        assert found is not None
        found["items"].append(2)
        assert store.get(name, "k") == {"items": [1]}

    def test_apply_later_is_apply_answered_when_asked(self) -> None:
        store, name = self.make_store(), unique("p")
        pending = store.apply_later(
            name, [put("k", {"n": 1}), increment("t", "n", 2)], {}, {TP0: 5}
        )
        assert pending.result() is True
        assert store.get(name, "k") == {"n": 1} and store.counters(name, "t") == {"n": 2}
        assert store.applied_offsets(name, [TP0]) == {TP0: 5}
        with pytest.raises(RuntimeError):
            pending.result()
        # Expected offsets no longer stored: refused, nothing written.
        stale = store.apply_later(name, [put("k", {"n": 2})], {TP0: None}, {TP0: 9})
        assert stale.result() is False
        assert store.get(name, "k") == {"n": 1}
        assert store.applied_offsets(name, [TP0]) == {TP0: 5}
        # Given up on: whether it ran is for the stored offsets to say.
        gone = store.apply_later(name, [put("k", {"n": 3})], {TP0: 5}, {TP0: 7})
        gone.abandon()
        after = store.applied_offsets(name, [TP0])[TP0]
        assert (after, store.get(name, "k")) in [(5, {"n": 1}), (7, {"n": 3})]

    def test_get_many_reads_several_documents_and_leaves_out_the_absent(self) -> None:
        store, name = self.make_store(), unique("p")
        changes = [put("a", {"n": 1}), put("b", {"items": [1]}), put("c", {"n": 3})]
        assert store.apply(name, changes, {}, {TP0: 1})
        found = store.get_many(name, ["b", "missing", "a", "b"])
        assert found == {"a": {"n": 1}, "b": {"items": [1]}}
        found["b"]["items"].append(2)  # a copy, like get()
        assert store.get(name, "b") == {"items": [1]}
        assert store.get_many(name, []) == {}
        assert store.get_many(unique("p"), ["a"]) == {}

    def test_projections_are_separate(self) -> None:
        store, one, two = self.make_store(), unique("p"), unique("p")
        assert store.apply(one, [put("k", {"v": 1}), increment("c", "n", 1)], {}, {TP0: 1})
        assert store.get(two, "k") is None
        assert store.counters(two, "c") == {}
        assert store.applied_offsets(two, [TP0]) == {}

    def test_dump_holds_every_document_and_counter(self) -> None:
        store, name = self.make_store(), unique("p")
        changes = [put("a", {"v": 1}), put("b", DOCUMENT), increment("c", "n", 4)]
        assert store.apply(name, changes, {}, {TP0: 3})
        assert store.dump(name) == {"d:a": {"v": 1}, "d:b": DOCUMENT, "c:c": {"n": 4}}

    def test_reset_deletes_the_projection_and_only_it(self) -> None:
        store, name, other = self.make_store(), unique("p"), unique("p")
        for projection in (name, other):
            assert store.apply(
                projection, [put("a", {"v": 1}), increment("c", "n", 1)], {}, {TP0: 2}
            )
        store.reset(name)
        assert store.dump(name) == {}
        assert store.applied_offsets(name, [TP0]) == {}
        assert store.apply(name, [put("a", {"v": 2})], {TP0: None}, {TP0: 1})
        assert store.get(other, "a") == {"v": 1}
        assert store.applied_offsets(other, [TP0]) == {TP0: 2}


class SagaStepStoreContract(ReadModelStoreContract):
    """A participant's read model and its once-only step outcomes."""

    @abstractmethod
    def make_store(self) -> SagaStepStore: ...

    def test_a_step_is_recorded_once_with_its_changes(self) -> None:
        store, participant = self.make_store(), unique("inventory")
        changes = [put("stock:w", {"available": 8}), increment("totals", "reserved", 2)]
        outcome = {"reply": {"status": "SUCCESS"}, "n": 1}
        assert store.outcome(participant, "s1:Reserve") is None
        assert store.record_once(participant, "s1:Reserve", changes, outcome) == (True, outcome)
        assert store.outcome(participant, "s1:Reserve") == outcome
        assert store.get(participant, "stock:w") == {"available": 8}
        assert store.counters(participant, "totals") == {"reserved": 2}

    def test_a_recorded_step_changes_nothing_again_and_answers_what_was_stored(self) -> None:
        store, participant = self.make_store(), unique("inventory")
        first = {"reply": "first"}
        store.record_once(participant, "s1:Reserve", [increment("t", "n", 1)], first)
        again = store.record_once(
            participant, "s1:Reserve", [increment("t", "n", 1), put("x", {"v": 1})], {"r": 2}
        )
        assert again == (False, first)
        assert store.counters(participant, "t") == {"n": 1}
        assert store.get(participant, "x") is None

    @pytest.mark.parametrize("key", ["s1:Reserve:EXECUTE", "s1:Reserve:COMPENSATE"])
    def test_keys_and_participants_are_separate(self, key: str) -> None:
        store, one, two = self.make_store(), unique("inventory"), unique("payment")
        assert store.record_once(one, key, [], {"by": "one"})[0]
        assert store.record_once(two, key, [], {"by": "two"})[0]
        assert store.outcome(one, key) == {"by": "one"}
        assert store.outcome(two, key) == {"by": "two"}
        assert store.outcome(one, key + "x") is None

    def test_outcomes_reads_many_keys_and_leaves_out_the_unrecorded(self) -> None:
        store, one, two = self.make_store(), unique("inventory"), unique("payment")
        store.record_once(one, "s1/Reserve/EXECUTE", [], {"n": 1})
        store.record_once(one, "s2/Reserve/EXECUTE", [], {"n": 2, "doc": DOCUMENT})
        store.record_once(two, "s3/Reserve/EXECUTE", [], {"n": 3})
        keys = [
            "s1/Reserve/EXECUTE",
            "s9/Reserve/EXECUTE",
            "s2/Reserve/EXECUTE",
            "s3/Reserve/EXECUTE",
        ]
        assert store.outcomes(one, keys) == {
            "s1/Reserve/EXECUTE": {"n": 1},
            "s2/Reserve/EXECUTE": {"n": 2, "doc": DOCUMENT},
        }
        assert store.outcomes(one, []) == {}

    def test_record_each_records_in_order_each_once(self) -> None:
        store, participant = self.make_store(), unique("inventory")
        store.record_once(participant, "old", [increment("t", "n", 1)], {"r": "old"})
        results = store.record_each(
            participant,
            [
                StepRecord(
                    "a", [put("stock:w", {"available": 9}), increment("t", "n", 1)], {"r": "a"}
                ),
                StepRecord("old", [put("stock:w", {"available": 0})], {"r": "again"}),
                StepRecord("b", [put("stock:w", {"available": 7})], {"r": "b"}),
            ],
        )
        assert [tuple(r) for r in results] == [
            ("recorded", {"r": "a"}),
            ("decided", {"r": "old"}),
            ("recorded", {"r": "b"}),
        ]
        assert store.get(participant, "stock:w") == {"available": 7}
        assert store.counters(participant, "t") == {"n": 2}
        assert store.outcomes(participant, ["a", "b"]) == {"a": {"r": "a"}, "b": {"r": "b"}}
        assert store.record_each(participant, []) == []

    def test_record_each_holds_only_while_the_documents_read_are_unchanged(self) -> None:
        store, participant = self.make_store(), unique("inventory")
        store.record_once(
            participant, "seed", [put("stock:w", {"available": 10, "doc": DOCUMENT})], {}
        )
        seen = {"available": 10, "doc": DOCUMENT}
        results = store.record_each(
            participant,
            [
                # read stock:w as seeded and the absent stock:x: holds
                StepRecord(
                    "a",
                    [put("stock:w", {"available": 8, "doc": DOCUMENT}), increment("t", "n", 1)],
                    {"r": "a"},
                    {"stock:w": seen, "stock:x": None},
                ),
                # read a's change: holds, since a was recorded first
                StepRecord(
                    "b",
                    [put("stock:w", {"available": 5})],
                    {"r": "b"},
                    {"stock:w": {"available": 8, "doc": DOCUMENT}},
                ),
                # read the seeded value, now stale: nothing changes
                StepRecord(
                    "c",
                    [put("stock:w", {"available": 1}), increment("t", "n", 1)],
                    {"r": "c"},
                    {"stock:w": seen},
                ),
                # expected stock:w absent: stale
                StepRecord("d", [increment("t", "n", 1)], {"r": "d"}, {"stock:w": None}),
            ],
        )
        assert [r.status for r in results] == ["recorded", "recorded", "stale", "stale"]
        assert results[2].outcome == {}
        assert store.get(participant, "stock:w") == {"available": 5}
        assert store.counters(participant, "t") == {"n": 1}
        assert store.outcomes(participant, ["a", "b", "c", "d"]).keys() == {"a", "b"}

    def test_record_each_checks_the_key_before_the_documents(self) -> None:
        store, participant = self.make_store(), unique("inventory")
        store.record_once(participant, "k", [], {"r": "first"})
        [result] = store.record_each(
            participant, [StepRecord("k", [], {"r": "second"}, {"stock:w": {"available": 1}})]
        )
        assert tuple(result) == ("decided", {"r": "first"})

    def test_record_each_after_a_decided_record_refuses_what_read_its_changes(self) -> None:
        """A decision that read an earlier record's change is stale when that record
        was decided elsewhere (its change never happened)."""
        store, participant = self.make_store(), unique("inventory")
        store.record_once(participant, "timed-out", [], {"outcome": "FAILURE"})
        results = store.record_each(
            participant,
            [
                StepRecord(
                    "timed-out", [put("stock:w", {"available": 4})], {"r": 1}, {"stock:w": None}
                ),
                StepRecord(
                    "next",
                    [put("stock:w", {"available": 3})],
                    {"r": 2},
                    {"stock:w": {"available": 4}},
                ),
            ],
        )
        assert [r.status for r in results] == ["decided", "stale"]
        assert store.get(participant, "stock:w") is None
