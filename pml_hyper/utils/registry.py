"""Name registries: the one place where an unknown name is reported, with the choices."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

T = TypeVar("T")


def lookup(registry: Mapping[str, T], name: str, what: str) -> T:
    """``registry[name]``.

    Raises:
        ValueError: ``name`` is not a key of ``registry``:
            ``unknown <what> 'name'; choose from a, b, c``.
    """
    if isinstance(name, str) and name in registry:
        return registry[name]
    raise ValueError(f"unknown {what} {name!r}; choose from {', '.join(registry)}")
