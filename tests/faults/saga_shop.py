"""The shop of the saga fault runs: stock and money enough for every order."""

from __future__ import annotations

from examples.order_fulfillment.shop import Shop

DECLINE_RATIO = 0.2  # 20 % of payments fail: those sagas compensate
SEED = 5


def big_shop(run_id: str) -> Shop:
    return Shop(
        run_id=run_id,
        skus={"widget": 10_000, "gadget": 10_000},
        customers={f"customer-{n}": 10_000_000 for n in range(10)},
    )
