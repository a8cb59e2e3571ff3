"""Running the order fulfillment saga: :class:`Shop` lives in
:mod:`toolkit.runtime.demo_shop.shop` (shipped with the package, for ``kct demo``)."""

from toolkit.runtime.demo_shop.shop import Runnable, Shop

__all__ = ["Runnable", "Shop"]
