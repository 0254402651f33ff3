"""Lazy package faces (PEP 562): a subpackage's ``__init__`` names its public API and
the module each name lives in; the module is imported on first use, so ``import
optical_ray.training`` does not import torch and ``import optical_ray.distributed``
does not import Ray until something from them is used."""

from __future__ import annotations

import importlib
import sys
from typing import Any, Callable, Mapping, Sequence


def lazy_exports(
    package: str, exports: Mapping[str, str], legacy: Sequence[str] = ()
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package``: ``exports`` maps each public name
    to the submodule (relative to ``package``) that defines it. ``legacy`` lists the
    submodules that hold what the flat layout's module of the package's name held
    (``optical_ray.tracking`` was one module): names a saved experiment may have
    pickled under the old path resolve there, without being part of the face."""

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is not None:
            value = getattr(importlib.import_module(f"{package}.{module}"), name)
            vars(sys.modules[package])[name] = value  # the next access skips this
            return value
        if not name.startswith("__"):
            for old in legacy:
                found = importlib.import_module(f"{package}.{old}")
                if hasattr(found, name):
                    return getattr(found, name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted({*vars(sys.modules[package]), *exports})

    return __getattr__, __dir__
