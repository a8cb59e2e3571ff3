"""Redis durability for what cannot be rebuilt: saga step records.

kct.yaml's ``redis.durability`` makes the step store refuse a Redis weaker
than asked (``fsync``) and wait for replicas (``wait_replicas``), and the
cluster's Redis runs ``appendfsync always``. Redis is killed with kill -9 in
the middle of sagas run with that setting: every saga must end COMPLETED or
COMPENSATED with stock and money conserved and each effect applied once.
(A kill -9 of the process alone loses nothing even with ``everysec``, whose
last second is still in the page cache: the window it leaves is a host crash
or power loss, which ``test_redis_loss.py`` simulates by restoring an older
append-only file; the README states it.)
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from connectors.redis import RedisSagaStepStore, RedisSettings
from tests.faults.test_cluster_sagas import effects, effects_by_fold
from toolkit.errors import ConfigurationError, StoreError
from toolkit.ports import ReadModelChange
from toolkit.runtime.app import Kct
from toolkit.runtime.stack import LocalStack
from toolkit.saga.participant import SagaParticipant
from toolkit.saga.state import SagaStatus

from .cluster import FaultRun, Progress, report, size
from .saga_shop import DECLINE_RATIO, SEED, big_shop

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def replica(cluster: LocalStack, tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A Redis replica of the cluster's Redis (appendfsync everysec), killed at the end."""
    port, primary = _free_port(), cluster.bound_ports("redis")["redis"]
    proc = subprocess.Popen(
        [
            *(REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp_path)),
            *("--replicaof", "127.0.0.1", str(primary), "--save", ""),
            *("--appendonly", "yes", "--appendfsync", "everysec"),
        ],
        stdout=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + 30
    while True:
        try:
            if client.info("replication").get("master_link_status") == "up":
                break
        except redis.RedisError:
            pass
        assert time.monotonic() < deadline, "the replica never synchronised"
        time.sleep(0.1)
    client.close()
    yield url, proc
    proc.kill()
    proc.wait(10)


def _record(store: RedisSagaStepStore, key: str) -> None:
    store.record_once(
        "faults-durability", key, [ReadModelChange("increment", "n", field="n", amount=1)], {}
    )


def test_step_records_refuse_a_weaker_redis_and_wait_for_replicas(
    cluster: LocalStack, replica: tuple[str, subprocess.Popen[bytes]]
) -> None:
    primary = cluster.endpoints().redis_url
    replica_url, replica_proc = replica
    always = RedisSagaStepStore(RedisSettings(url=primary, durability_fsync="always"))
    _record(always, f"a-{uuid.uuid4().hex}")  # the cluster's Redis fsyncs every write
    weak = RedisSagaStepStore(RedisSettings(url=replica_url, durability_fsync="always"))
    with pytest.raises(ConfigurationError, match="appendfsync everysec"):
        _record(weak, "b")
    waiting = RedisSagaStepStore(RedisSettings(url=primary, wait_replicas=1, wait_timeout=2.0))
    _record(waiting, f"c-{uuid.uuid4().hex}")
    replica_proc.kill()
    replica_proc.wait(10)
    time.sleep(0.5)
    with pytest.raises(StoreError, match="held by 0 of 1 replicas"):
        _record(waiting, f"d-{uuid.uuid4().hex}")
    for store in (always, weak, waiting):
        store.close()


@pytest.mark.timeout(400)
def test_redis_kill_9_during_sagas_with_fsync_always_conserves_stock_and_money(
    cluster: LocalStack, make_cluster_kct: Callable[[], Kct]
) -> None:
    kct = make_cluster_kct()
    assert kct.settings.redis.durability_fsync == "always"
    shop = big_shop(uuid.uuid4().hex[:8])
    shop.prepare(kct)
    client = kct.saga_client(shop.definitions, shop.state_projection)
    total = size().sagas
    started = time.monotonic()
    with (
        shop.running(kct) as members,
        Progress(lambda: lambda: sum(effects(kct, shop).values())) as progress,
    ):
        ids = client.start_many(shop.orders(total, decline_ratio=DECLINE_RATIO, seed=SEED))
        time.sleep(0.5)
        cluster.kill("redis")
        time.sleep(3)  # an outage several back-off periods long
        loops = [m for m in members if isinstance(m, SagaParticipant)]
        unhealthy = sum(1 for m in loops if not m.health.healthy)
        cluster.start("redis")
        states = client.wait(ids, 240)
    statuses = Counter(s["status"] for s in states.values())
    seen, want = effects(kct, shop), effects_by_fold(states)
    report(
        FaultRun(
            "sagas, Redis kill -9 (appendfsync always)",
            events=total,
            faults={"redis kill -9": 1},
            lost=sum(max(0, want[k] - seen[k]) for k in want),
            duplicated=sum(max(0, seen[k] - want[k]) for k in want),
            pauses=progress.pauses(sum(want.values())),
            seconds=time.monotonic() - started,
            extra=", ".join(f"{n} {s}" for s, n in sorted(statuses.items())),
        )
    )
    assert unhealthy, "no participant noticed the outage: nothing was tested"
    assert set(statuses) <= {SagaStatus.COMPLETED, SagaStatus.COMPENSATED}, statuses
    assert shop.invariants(kct, states) == []
    assert seen == want
