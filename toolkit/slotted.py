"""Positional constructors for frozen, slotted dataclasses on the per-record hot path.

Why: a frozen dataclass's ``__init__`` sets each field through
``object.__setattr__``, which costs about as much as everything else in
building a consumed event. :func:`slot_setter` generates (like the
dataclass's own ``__init__``) a function that sets the slots directly and
skips ``__post_init__``: callers use it only where their own checks already
cover what ``__post_init__`` would check. The result equals ``cls(*values)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields
from typing import Any, TypeVar

__all__ = ["slot_setter"]

T = TypeVar("T")


def slot_setter(cls: type[T]) -> Callable[..., T]:
    """A positional constructor of the frozen, slotted dataclass ``cls`` (every field,
    in order, no defaults) that sets its slots without ``__init__``/``__post_init__``."""
    names = [f.name for f in fields(cls)]  # type: ignore[arg-type]
    namespace: dict[str, Any] = {"_new": object.__new__, "_cls": cls}
    namespace.update({f"_set{i}": cls.__dict__[name].__set__ for i, name in enumerate(names)})
    body = "".join(f"    _set{i}(o, {name})\n" for i, name in enumerate(names))
    exec(f"def build({', '.join(names)}):\n    o = _new(_cls)\n{body}    return o\n", namespace)
    built: Callable[..., T] = namespace["build"]
    return built
