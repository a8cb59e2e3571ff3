"""Masking secrets in text shown to people: CLI errors and the sidecar's answers.

:func:`redact` replaces a URL's ``user:password@`` and the values of
``key=value`` pairs whose key names a secret (connection strings,
``sasl.oauthbearer.config``) with ``***``. Field paths (``password: ...``)
are not values and stay.
"""

from __future__ import annotations

import re

__all__ = ["redact"]

_URL_CREDENTIALS = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s@]*@")
_SECRET_PAIR = re.compile(
    r"(?i)((?:password|passwd|secret|token|credentials?)\w*=['\"]?)[^\s,;&)'\"]+"
)


def redact(text: str) -> str:
    """``text`` with URL credentials and secret-looking ``key=value`` values as ``***``."""
    return _SECRET_PAIR.sub(r"\1***", _URL_CREDENTIALS.sub(r"\1***@", text))
