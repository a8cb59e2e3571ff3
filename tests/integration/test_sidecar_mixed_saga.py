"""The order saga across languages: a Node.js inventory service (participant and
projection) and Python payment and order participants, each behind its own
``kct sidecar`` process, talking only HTTP to their sidecars."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from examples.order_fulfillment.shop import Shop
from tests.integration.conftest import Endpoints
from tests.integration.sidecars import ROOT, SidecarProcess, connections, free_port
from toolkit.ports import ReadModelChange
from toolkit.runtime.app import Kct

pytestmark = [pytest.mark.timeout(240), pytest.mark.slow]
SAGAS = ROOT / "examples/order_fulfillment/sagas.yaml"
NODE = shutil.which("node")


def _node(
    port_file: Path, sidecar_port: int, read_model: str
) -> tuple[subprocess.Popen[bytes], int]:
    assert NODE is not None, "node is not installed"
    log = port_file.open("wb")
    process = subprocess.Popen(
        [NODE, str(ROOT / "examples/node_service/service.js")],
        stdout=log,
        stderr=log,
        env={
            "PORT": "0",
            "KCT_SIDECAR_URL": f"http://127.0.0.1:{sidecar_port}",
            "KCT_READ_MODEL": read_model,
            "PATH": "/usr/bin:/bin",
        },
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        found = re.search(rb"listening on (\d+)", port_file.read_bytes())
        if found:
            return process, int(found.group(1))
        time.sleep(0.05)
    process.kill()
    raise AssertionError(port_file.read_text())


def _seed(kct: Kct, shop: Shop) -> None:
    """Stock and wallets in the participants' read models, as the demo seeds them."""
    for participant, key, seeds in (
        ("inventory", "stock", shop.skus),
        ("payment", "wallet", shop.customers),
    ):
        field = "available" if key == "stock" else "balance"
        changes = [
            ReadModelChange("put", f"{key}:{k}", document={field: n}) for k, n in seeds.items()
        ]
        kct.saga_steps.record_once(shop.read_model(participant), "seed", changes, {"s": True})


def test_the_order_saga_completes_and_compensates_across_node_and_python(
    endpoints: Endpoints, tmp_path: Path, make_kct: Callable[[], Kct]
) -> None:
    run = uuid.uuid4().hex[:8]
    shop = Shop(run_id=run)
    base = connections(endpoints, f"/kct-test/{run}", deployment=f"m{run}")
    saga_part = f"  sagas: {SAGAS}\n  saga_topic_prefix: mx{run}\n"
    namespace = shop.namespace
    kct = make_kct()
    _seed(kct, shop)
    node_sidecar_port = free_port()
    node, node_port = _node(tmp_path / "node.log", node_sidecar_port, shop.read_model("inventory"))
    board = f"board_{run}"
    sidecars = [
        SidecarProcess(
            tmp_path,
            base + "service: inventory-node\nsidecar:\n"
            f"  service: {{url: 'http://127.0.0.1:{node_port}', retries: 2}}\n"
            + saga_part
            + f"  participants:\n    inventory: {{path: /kct/saga/inventory,"
            f" namespace: '{namespace}'}}\n"
            f"  projections:\n    {board}: {{topics: [mx{run}.OrderFulfillment.replies],"
            " path: /kct/projections/board}\n",
            name="node-sidecar",
            port=node_sidecar_port,
        ),
        SidecarProcess(
            tmp_path,
            base
            + "service: payment\nsidecar:\n"
            + saga_part
            + "  participants:\n    payment: {actions: "
            f"'tests.integration.sidecar_handlers:PAYMENT', namespace: '{namespace}'}}\n",
            name="payment-sidecar",
        ),
        SidecarProcess(
            tmp_path,
            base
            + "service: order\nsidecar:\n"
            + saga_part
            + "  participants:\n    order: {actions: "
            f"'tests.integration.sidecar_handlers:ORDER', namespace: '{namespace}'}}\n"
            f"  saga_state: true\n  saga_state_projection: {shop.state_projection}\n"
            "  watchdog: true\n",
            name="order-sidecar",
        ),
    ]
    try:
        for sidecar in sidecars:
            sidecar.start()
        for sidecar in sidecars:
            sidecar.wait_ready(60)
        front = sidecars[2]
        orders = shop.orders(12, decline_ratio=0.3)
        for saga_type, context, saga_id in orders:
            started = front.call(
                "POST", f"/v1/sagas/{saga_type}", {"context": context, "saga_id": saga_id}
            )
            assert started.status == 202, started.raw
        states: dict[str, dict[str, Any]] = {}
        deadline = time.monotonic() + 90
        while len(states) < len(orders) and time.monotonic() < deadline:
            for _, _, saga_id in orders:
                if saga_id in states:
                    continue
                answer = front.call("GET", f"/v1/sagas/{saga_id}")
                if answer.status == 200 and answer.json["status"] != "RUNNING":
                    states[saga_id] = answer.json
            time.sleep(0.2)
        assert len(states) == len(orders), [s.log_text() for s in sidecars]
        by_status = {s["status"] for s in states.values()}
        assert by_status == {"COMPLETED", "COMPENSATED"}, by_status
        completed = [s for s in states.values() if s["status"] == "COMPLETED"]
        assert all(s["context"].get("reserved_by") == "node" for s in completed)
        assert shop.invariants(kct, states) == []
        # The Node projection saw every reply exactly once.
        node_board = sidecars[0]
        replies: dict[str, int] = {}
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            replies = node_board.call("GET", f"/v1/read-models/{board}/counters/replies").json[
                "counters"
            ]
            if replies.get("ConfirmOrder.EXECUTE.SUCCESS", 0) == len(completed):
                break
            time.sleep(0.2)
        assert replies.get("ConfirmOrder.EXECUTE.SUCCESS", 0) == len(completed), replies
        declined = [s for s in states.values() if s["status"] == "COMPENSATED"]
        assert replies.get("ProcessPayment.EXECUTE.FAILURE", 0) == len(declined), replies
        assert replies.get("ReserveInventory.COMPENSATE.SUCCESS", 0) == len(declined), replies
    finally:
        for sidecar in sidecars:
            sidecar.stop()
        node.terminate()
        node.wait(10)
