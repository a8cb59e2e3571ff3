"""The three services' local actions, each against its own read model.

* inventory: ``stock:<sku>`` documents ``{"available": n}``, and counters
  ``reserved`` (per sku) and ``moves`` (reservations / releases made);
* payment: ``wallet:<customer>`` documents ``{"balance": cents}``, counters
  ``captured`` (cents per customer) and ``moves``;
* order: ``order:<id>`` documents, counter ``orders`` by status.

Every action is a read-modify-write of its service's read model through the
``ReadModelBatch`` the participant hands it; the participant stores the batch
and the step's outcome atomically, so each action's effect happens once.

Invariants that hold whatever fails (checked by the demo and the tests):
stock is conserved (``available + reserved == initial`` per sku), money is
conserved (``balance + captured == initial`` per customer), and every
COMPLETED saga holds exactly one reservation and one capture.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from toolkit.read_model import ReadModelBatch
from toolkit.saga.definition import SagaDefinition, load_saga_definitions
from toolkit.saga.participant import StepAction, StepContext, StepFailed


def _sagas_file() -> Path:
    """``sagas.yaml``: next to this module in the wheel, in ``examples/`` in a checkout."""
    installed = Path(__file__).with_name("sagas.yaml")
    if installed.is_file():
        return installed
    return Path(__file__).resolve().parents[3] / "examples" / "order_fulfillment" / "sagas.yaml"


SAGAS_FILE = _sagas_file()
SAGA_TYPE = "OrderFulfillment"
PARTICIPANTS = ("inventory", "payment", "order")


def definitions(topic_prefix: str | None = None) -> dict[str, SagaDefinition]:
    """The saga definitions of ``sagas.yaml`` (optionally on other topics)."""
    loaded = load_saga_definitions(SAGAS_FILE)
    if topic_prefix is None:
        return loaded
    return {t: d.model_copy(update={"topic_prefix": topic_prefix}) for t, d in loaded.items()}


# -- inventory --------------------------------------------------------------


def reserve_inventory(ctx: StepContext, view: ReadModelBatch) -> Mapping[str, str]:
    sku, quantity = ctx.context["sku"], int(ctx.context["quantity"])
    stock = view.get(f"stock:{sku}") or {"available": 0}
    if stock["available"] < quantity:
        raise StepFailed(f"out of stock: {sku} has {stock['available']}, {quantity} wanted")
    view.put(f"stock:{sku}", {"available": stock["available"] - quantity})
    view.increment("reserved", sku, quantity)
    view.increment("moves", "reservations")
    return {"reservation": f"{ctx.saga_id}:{sku}:{quantity}"}


def release_inventory(ctx: StepContext, view: ReadModelBatch) -> None:
    sku, quantity = ctx.context["sku"], int(ctx.context["quantity"])
    stock = view.get(f"stock:{sku}") or {"available": 0}
    view.put(f"stock:{sku}", {"available": stock["available"] + quantity})
    view.increment("reserved", sku, -quantity)
    view.increment("moves", "releases")


# -- payment ----------------------------------------------------------------


def charge_payment(ctx: StepContext, view: ReadModelBatch) -> Mapping[str, str]:
    customer, amount = ctx.context["customer"], int(ctx.context["amount_cents"])
    if ctx.context.get("card") == "declined":
        raise StepFailed("card declined")
    wallet = view.get(f"wallet:{customer}") or {"balance": 0}
    if wallet["balance"] < amount:
        raise StepFailed(f"insufficient funds: {wallet['balance']} < {amount}")
    view.put(f"wallet:{customer}", {"balance": wallet["balance"] - amount})
    view.increment("captured", customer, amount)
    view.increment("moves", "charges")
    return {"payment": f"{ctx.saga_id}:{amount}"}


def refund_payment(ctx: StepContext, view: ReadModelBatch) -> None:
    customer, amount = ctx.context["customer"], int(ctx.context["amount_cents"])
    wallet = view.get(f"wallet:{customer}") or {"balance": 0}
    view.put(f"wallet:{customer}", {"balance": wallet["balance"] + amount})
    view.increment("captured", customer, -amount)
    view.increment("moves", "refunds")


# -- order ------------------------------------------------------------------


def confirm_order(ctx: StepContext, view: ReadModelBatch) -> Mapping[str, str]:
    if ctx.context.get("confirm") == "fail":
        raise StepFailed("order can no longer be confirmed")
    view.put(f"order:{ctx.context['order_id']}", {"status": "confirmed", "saga": ctx.saga_id})
    view.increment("orders", "confirmed")
    return {"confirmed": "yes"}


ACTIONS: dict[str, dict[str, StepAction]] = {
    "inventory": {"reserve_inventory": reserve_inventory, "release_inventory": release_inventory},
    "payment": {"charge_payment": charge_payment, "refund_payment": refund_payment},
    "order": {"confirm_order": confirm_order},
}
