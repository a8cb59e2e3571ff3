"""The three services' actions: they live in :mod:`toolkit.runtime.demo_shop.services`
(shipped with the package, for ``kct demo``); ``sagas.yaml`` is next to this file."""

from toolkit.runtime.demo_shop.services import (
    ACTIONS,
    PARTICIPANTS,
    SAGA_TYPE,
    SAGAS_FILE,
    charge_payment,
    confirm_order,
    definitions,
    refund_payment,
    release_inventory,
    reserve_inventory,
)

__all__ = [
    "ACTIONS",
    "PARTICIPANTS",
    "SAGAS_FILE",
    "SAGA_TYPE",
    "charge_payment",
    "confirm_order",
    "definitions",
    "refund_payment",
    "release_inventory",
    "reserve_inventory",
]
