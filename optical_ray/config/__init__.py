"""Typed configs: the schema (:mod:`~optical_ray.config.schema`, one dataclass per
concern) and building, validation and I/O (:mod:`~optical_ray.config.build`)."""

from __future__ import annotations

from optical_ray.config.build import *  # noqa: F403
from optical_ray.config.build import __all__ as _build_all

__all__ = list(_build_all)
