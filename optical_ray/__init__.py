"""optical-ray: OPTICAL cross-lingual retrieval distillation at cluster scale."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
