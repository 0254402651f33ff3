"""optical-ray: OPTICAL cross-lingual retrieval distillation at cluster scale."""

from __future__ import annotations

from optical_ray import _moved

__version__ = "0.1.0"

__all__ = ["__version__"]

_moved.install()  # the flat layout's module paths, for experiments saved before 0.2
