from pathlib import Path

import pytest

from toolkit.errors import StackError
from toolkit.runtime.stack import LocalStack, default_port_offset


def test_port_offset_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KCT_STACK_PORT_OFFSET", "2000")
    assert default_port_offset() == 2000
    assert LocalStack().endpoints().kafka_bootstrap == "127.0.0.1:21092"
    monkeypatch.delenv("KCT_STACK_PORT_OFFSET")
    assert LocalStack().endpoints().kafka_bootstrap == "127.0.0.1:19092"


@pytest.mark.parametrize("value", ["ten", "-1", "99999"])
def test_bad_port_offset_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("KCT_STACK_PORT_OFFSET", value)
    with pytest.raises(StackError, match="KCT_STACK_PORT_OFFSET"):
        default_port_offset()


def test_the_cluster_runs_every_node_on_ports_of_its_own(tmp_path: Path) -> None:
    cluster = LocalStack(state_dir=tmp_path / "c", port_offset=2500, cluster=True)
    assert cluster.node_names == [
        *("kafka-1", "kafka-2", "kafka-3"),
        *("zookeeper-1", "zookeeper-2", "zookeeper-3"),
        "redis",
    ]
    found = cluster.endpoints()
    assert found.kafka_bootstrap == "127.0.0.1:21592,127.0.0.1:21602,127.0.0.1:21612"
    assert found.zookeeper_hosts == "127.0.0.1:14681,127.0.0.1:14691,127.0.0.1:14701"
    ports = [p for n in cluster.node_names for p in cluster.bound_ports(n).values()]
    assert len(ports) == len(set(ports)), "two nodes share a port"
    # Nor does it collide with single-node stacks at the offsets CI uses (0, 1000, 2000).
    for offset in (0, 1000, 2000):
        single = LocalStack(state_dir=tmp_path / str(offset), port_offset=offset)
        taken = {p for n in single.node_names for p in single.bound_ports(n).values()}
        assert not taken & set(ports), offset


def test_the_topology_is_recorded_so_later_commands_need_no_flag(tmp_path: Path) -> None:
    (tmp_path / "stack.json").write_text('{"port_offset": 2500, "cluster": true}')
    assert LocalStack(state_dir=tmp_path, port_offset=2500).node_names[0] == "kafka-1"
    with pytest.raises(StackError, match="no server named 'kafka'"):
        LocalStack(state_dir=tmp_path, port_offset=2500).kill("kafka")
