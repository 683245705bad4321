"""Lazy package attributes (PEP 562): a package's names load their submodule on first use.

``python -m rlflat.evaluate --help`` imports ``rlflat/evaluate/__init__.py`` before the command runs; with eager
imports there, the answer waited for torch. A package lists where each public name lives and gets
``__getattr__`` from :func:`attributes`; type checkers see the names through ``if TYPE_CHECKING`` imports.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def attributes(package: str, homes: Mapping[str, str]) -> Callable[[str], Any]:
    """``__getattr__`` for ``package``: ``homes[name]`` is the submodule defining ``name``; a submodule's own
    name imports it (as an eager ``__init__`` would have made it available)."""

    def __getattr__(name: str) -> Any:
        module = homes.get(name)
        if module is not None:
            value = getattr(importlib.import_module(f"{package}.{module}"), name)
        else:
            try:
                value = importlib.import_module(f"{package}.{name}")
            except ModuleNotFoundError as exc:
                if exc.name != f"{package}.{name}":
                    raise
                raise AttributeError(f"module {package!r} has no attribute {name!r}") from None
        setattr(importlib.import_module(package), name, value)
        return value

    return __getattr__
