"""Python handlers the sidecar tests load by import path (``module:attr``).

``tests.integration.sidecar_handlers:stats_<id>`` is the order-stats
projection named ``stats_<id>`` over the topic in ``KCT_TEST_TOPIC`` (each
test passes its own topic to its sidecar processes through the environment).
"""

from __future__ import annotations

import os

from examples.order_fulfillment.services import ACTIONS
from tests.order_stats import order_stats
from toolkit.projection import Projection

# The example's saga participants, one mapping of action name to callable each.
INVENTORY = ACTIONS["inventory"]
PAYMENT = ACTIONS["payment"]
ORDER = ACTIONS["order"]


def __getattr__(name: str) -> Projection:
    topic = os.environ.get("KCT_TEST_TOPIC")
    if not name.startswith("stats_") or topic is None:
        raise AttributeError(name)
    return order_stats(name, [topic])
