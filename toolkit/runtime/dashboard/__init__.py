"""The live dashboard: served by the sidecar (``/dashboard``) and by ``kct dashboard``.

The names load on first use, so ``kct`` starts fast and the command
(``dashboard.cli``) imports nothing heavy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from toolkit.runtime.dashboard.state import DashboardSources, DashboardState
    from toolkit.runtime.dashboard.web import Dashboard

__all__ = ["Dashboard", "DashboardSources", "DashboardState"]


def __getattr__(name: str) -> Any:
    if name in ("DashboardSources", "DashboardState"):
        from toolkit.runtime.dashboard import state

        return getattr(state, name)
    if name == "Dashboard":
        from toolkit.runtime.dashboard.web import Dashboard

        return Dashboard
    raise AttributeError(name)
