"""Strong writes while the ZooKeeper ensemble loses its leader and a follower freezes.

Several processes (:mod:`tests.faults.strong_writer`) increment one strong
account concurrently through the consistency boundary (ZooKeeper lock and
fence, Kafka transaction, wait for the projection) while, in cycles, the
ensemble's leader is killed with kill -9 and a follower is frozen (SIGSTOP:
the ensemble loses its quorum until it thaws), then both come back, and
writers themselves are frozen past their session timeout (the next holder
gets the lock while a frozen one may still hold a transaction). The
history of every attempt must be linearizable (:mod:`tests.faults.history`),
and the account's committed events must be exactly balances 1..N with fences
that never go back: no write with a stale fence was committed, let alone
applied.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from connectors.kafka import KafkaRecordConsumer
from tests.balances import balances
from tests.integration.helpers import running
from toolkit.envelope import Envelope, decode_record
from toolkit.runtime.app import Kct
from toolkit.runtime.stack import LocalStack

from .cluster import Chaos, FaultRun, Progress, guarded, report, size
from .history import Op, check_log, violations

WRITERS = 4
ACCOUNT = "acct-strong"
REPO = Path(__file__).resolve().parents[2]


def zookeeper_mode(cluster: LocalStack, name: str) -> str:
    """'leader', 'follower', or '' when the node does not answer (4lw ``srvr``)."""
    port = cluster.bound_ports(name)["zookeeper"]
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            sock.sendall(b"srvr")
            reply = sock.makefile("rb").read().decode(errors="replace")
    except OSError:
        return ""
    for line in reply.splitlines():
        if line.startswith("Mode:"):
            return line.split(":", 1)[1].strip()
    return ""


def _inject(chaos: Chaos, cluster: LocalStack, writers: list[subprocess.Popen[bytes]]) -> None:
    """Two ZooKeeper leader kills with a follower freeze, then a writer frozen past its
    session, and again."""
    if sum(chaos.faults.values()) % 5 < 4:  # each ZooKeeper round notes two faults
        _leader_kill_and_follower_freeze(chaos, cluster)
        return
    live = [w for w in writers if w.poll() is None]
    if not live:
        return
    writer = chaos.rng.choice(live)
    chaos.note("writer SIGSTOP past its session")
    writer.send_signal(signal.SIGSTOP)  # it may hold the lock: its session expires
    time.sleep(chaos.rng.uniform(7.0, 9.0))
    writer.send_signal(signal.SIGCONT)


def _leader_kill_and_follower_freeze(chaos: Chaos, cluster: LocalStack) -> None:
    """kill -9 the ensemble's leader, then SIGSTOP a follower (no quorum) for 1-4 s."""
    zookeepers = [n for n in cluster.node_names if n.startswith("zookeeper-")]
    leader = next((n for n in zookeepers if zookeeper_mode(cluster, n) == "leader"), None)
    if leader is None:
        return  # an election is under way
    chaos.note("zookeeper leader kill -9")
    cluster.kill(leader)
    time.sleep(chaos.rng.uniform(1.0, 3.0))
    follower = chaos.rng.choice([n for n in zookeepers if n != leader])
    chaos.note("zookeeper follower SIGSTOP")
    cluster.freeze(follower)
    time.sleep(chaos.rng.uniform(1.0, 4.0))
    cluster.thaw(follower)
    time.sleep(chaos.rng.uniform(0.0, 2.0))
    cluster.start(leader)


def _history(paths: list[Path]) -> list[Op]:
    ops = []
    for path in paths:
        for line in path.read_text().splitlines():
            entry = json.loads(line)
            ops.append(Op(entry["start"], entry["end"], entry.get("value")))
    return ops


def _committed_events(kct: Kct, topic: str) -> list[Envelope]:
    consumer = KafkaRecordConsumer(kct.settings.kafka, f"verify-{uuid.uuid4().hex[:8]}")
    consumer.subscribe([topic])
    ends = sum(kct.admin.end_offsets([topic]).values())
    events: list[Envelope] = []
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            events += [decode_record(r, kct.codec).envelope for r in consumer.poll(1000, 0.5)]
            positions = consumer.positions(consumer.assignment())
            if positions and sum(positions.values()) >= ends:
                break
    finally:
        consumer.close()
    return [e for e in events if e.aggregate_id == ACCOUNT]


@pytest.mark.timeout(600)
def test_strong_increments_stay_linearizable_under_zookeeper_leader_kills_and_freezes(
    cluster: LocalStack, make_cluster_kct: Callable[[], Kct], tmp_path: Path
) -> None:
    kct = make_cluster_kct()
    run = uuid.uuid4().hex[:8]
    topic, name = f"faults.accounts.{run}", f"faults-balances-{run}"
    kct.admin.create_topics([topic], partitions=1)
    found = cluster.endpoints()
    per_writer = size().increments // WRITERS
    outs = [tmp_path / f"writer-{n}.jsonl" for n in range(WRITERS)]
    chaos = Chaos(cluster, run)

    def writers_done() -> bool:
        return all(p.poll() is not None for p in procs)

    procs: list[subprocess.Popen[bytes]] = []
    log = cluster.layout.logs / f"strong-{run}.log"
    started = time.monotonic()
    runner = kct.runner(balances(name, topic))
    try:
        with running(runner), Progress(lambda: lambda: _applied(kct, name)) as progress:
            args = (found.kafka_bootstrap, found.redis_url, found.zookeeper_hosts, topic, name)
            procs += _start_writers(*args, kct.settings.zookeeper.lock_root, outs, log)
            chaos.run(
                done=writers_done,
                inject=lambda: _inject(chaos, cluster, procs),
                timeout=min(540, 120 + per_writer * WRITERS * 0.3),  # < the pytest timeout
                status=lambda: f"{progress.latest} applied",
            )
            applied = _applied(kct, name)
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(10)
        chaos.heal()
    assert all(p.returncode == 0 for p in procs), f"a writer crashed; see {log}"
    ops = _history(outs)
    events = _committed_events(kct, topic)
    balances_in_log = [int(e.payload["balance"]) for e in events]
    fences = [e.fence or 0 for e in events]
    final = len(events)
    errors = Counter(op.value is None for op in ops)
    report(
        FaultRun(
            "strong writes",
            events=len(ops),
            faults=dict(chaos.faults),
            lost=0,
            duplicated=len(balances_in_log) - len(set(balances_in_log)),
            pauses=progress.pauses(final),
            seconds=time.monotonic() - started,
            extra=f"{errors[False]} increments succeeded, {errors[True]} failed "
            f"(indeterminate), {final} committed",
        )
    )
    assert chaos.faults["zookeeper leader kill -9"] >= 2
    assert errors[False] > 0
    assert violations(ops, final) == []
    assert check_log(balances_in_log, fences) == []
    assert applied == final, "the read model applied a different number of writes"
    doc = kct.store.get(name, f"account:{ACCOUNT}") or {}
    assert int(doc.get("balance", 0)) == final


def _start_writers(
    bootstrap: str,
    redis_url: str,
    zookeeper: str,
    topic: str,
    projection: str,
    lock_root: str,
    outs: list[Path],
    log: Path,
) -> list[subprocess.Popen[bytes]]:
    procs = []
    per_writer = size().increments // WRITERS
    with log.open("ab") as out:
        for path in outs:
            argv = guarded(
                "tests.faults.strong_writer",
                *("--bootstrap", bootstrap, "--redis", redis_url, "--zookeeper", zookeeper),
                *("--topic", topic, "--projection", projection, "--lock-root", lock_root),
                *("--account", ACCOUNT, "--count", str(per_writer), "--out", str(path)),
            )
            procs.append(subprocess.Popen(argv, cwd=REPO, stdout=out, stderr=out))
    return procs


def _applied(kct: Kct, name: str) -> int:
    return int(kct.store.counters(name, "applied").get(ACCOUNT, 0))
