"""``kct sidecar``: a service's loops and the HTTP API, in one process (composition root).

The names load on first use, so ``kct`` starts fast and ``kct sidecar``'s
command (``sidecar.cli``) imports nothing heavy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from toolkit.runtime.sidecar.host import SidecarHost
    from toolkit.runtime.sidecar.server import Sidecar, run_sidecar

__all__ = ["Sidecar", "SidecarHost", "run_sidecar"]


def __getattr__(name: str) -> Any:
    if name == "SidecarHost":
        from toolkit.runtime.sidecar.host import SidecarHost

        return SidecarHost
    if name in ("Sidecar", "run_sidecar"):
        from toolkit.runtime.sidecar import server

        return getattr(server, name)
    raise AttributeError(name)
