"""verify: rebuild a read model from the in-memory log and compare it key by key."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from tests.balances import balance_event
from tests.fakes import InMemoryLog, InMemoryReadModelStore
from tests.unit.test_conflict_runner import CODEC, NAME, TOPIC, World, applied_order
from toolkit.conflicts import ConflictResolver, ResolverPolicy
from toolkit.monitor_verify import ReadModelVerifier
from toolkit.positions import TopicPartition


def verifier(log: InMemoryLog, store: InMemoryReadModelStore) -> ReadModelVerifier:
    def partitions(topics: Sequence[str]) -> list[TopicPartition]:
        return [TopicPartition(t, 0) for t in topics]

    return ReadModelVerifier(
        store,
        CODEC,
        log.consumer,
        partitions,
        lambda: ConflictResolver({"account": ResolverPolicy(("deduplicate", "reorder"))}),
        timeout=5.0,
    )


@pytest.fixture
def world() -> World:
    made = World()
    for account in ("a1", "a2", "a3"):
        for sequence in (1, 3, 2, 2):  # out of order and a duplicate: the resolver decides
            made.publish(balance_event(account, sequence, sequence))
    resolver = ConflictResolver({"account": ResolverPolicy(("deduplicate", "reorder"))})
    made.drain(made.runner(resolver, max_batch=2))
    return made


def test_an_untouched_model_passes(world: World) -> None:
    seen: list[tuple[int, int]] = []
    report = verifier(world.log, world.store).verify(
        applied_order(), progress=lambda done, total: seen.append((done, total))
    )
    assert report.ok and report.compared == 3
    assert seen[-1] == (12, 12)
    assert not [k for k in world.store.dump(NAME) if "verify" in k]


def test_a_key_edited_by_hand_is_caught(world: World) -> None:
    world.store.documents[(NAME, "applied:a2")] = {"sequences": [1, 2, 3, 4]}
    report = verifier(world.log, world.store).verify(applied_order())
    assert [(d.key, d.rebuilt) for d in report.differences] == [
        ("d:applied:a2", {"sequences": [1, 2, 3]})
    ]


def test_a_deleted_key_and_a_sample(world: World) -> None:
    del world.store.documents[(NAME, "applied:a1")]
    full = verifier(world.log, world.store).verify(applied_order())
    assert [(d.key, d.live) for d in full.differences] == [("d:applied:a1", None)]
    sampled = verifier(world.log, world.store).verify(applied_order(), sample=1, seed=3)
    assert sampled.sample is not None and len(sampled.sample) == 1
    assert sampled.compared == 1 and sampled.skipped == ("counters",)
    assert sampled.ok == (sampled.sample != ("a1",))


def test_offsets_are_the_models() -> None:
    world = World()
    world.publish(balance_event("a1", 1, 1))
    assert TOPIC in world.log.topics
    report = verifier(world.log, world.store).verify(applied_order())
    assert report.ok and report.offsets == {} and report.compared == 0
