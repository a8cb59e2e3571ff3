"""The order fulfillment shop of ``kct demo``: ReserveInventory -> ProcessPayment ->
ConfirmOrder as a choreographed saga across an inventory, a payment and an order service.

Part of the package so ``kct demo`` runs from an installed wheel; ``examples/order_fulfillment``
re-exports it (and keeps ``sagas.yaml``, which the wheel carries here)."""
