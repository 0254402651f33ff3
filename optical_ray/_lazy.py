"""Lazy package faces (PEP 562): a subpackage's ``__init__`` names its public API and
the module each name lives in; the module is imported on first use, so ``import
optical_ray.training`` does not import torch and ``import optical_ray.distributed``
does not import Ray until something from them is used."""

from __future__ import annotations

import importlib
from typing import Any, Callable, Mapping


def lazy_exports(
    package: str, exports: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package``: ``exports`` maps each public name
    to the submodule (relative to ``package``) that defines it."""

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{module}"), name)
        globals_of(package)[name] = value  # the next access skips __getattr__
        return value

    def __dir__() -> list[str]:
        return sorted({*globals_of(package), *exports})

    return __getattr__, __dir__


def globals_of(package: str) -> dict[str, Any]:
    """The namespace of the (already imported) ``package``."""
    import sys

    return vars(sys.modules[package])
