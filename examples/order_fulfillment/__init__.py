"""Order fulfillment: ReserveInventory -> ProcessPayment -> ConfirmOrder as a
choreographed saga across an inventory, a payment and an order service."""
