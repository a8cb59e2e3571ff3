"""The composition root: the sidecar, the ``kct`` CLI and the local stack manager.

The only part of ``toolkit/`` allowed to import ``connectors/``.
"""
