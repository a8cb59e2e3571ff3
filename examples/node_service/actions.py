"""The order saga's Python participants, as mappings for a sidecar's ``actions``."""

from __future__ import annotations

from examples.order_fulfillment.services import ACTIONS

PAYMENT = ACTIONS["payment"]
ORDER = ACTIONS["order"]
