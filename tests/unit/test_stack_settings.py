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
