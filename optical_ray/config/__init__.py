"""Typed configs: the schema (:mod:`~optical_ray.config.schema`, one dataclass per
concern), building, validation and I/O (:mod:`~optical_ray.config.build`), and the
grammar of values several layers read (:mod:`~optical_ray.config.rules`: objectives,
constraints, tracking targets, study storage, warm starts, record origins), and the
sweep's weighted dev objective (:mod:`~optical_ray.config.objective`)."""

from __future__ import annotations

from optical_ray.config.build import *  # noqa: F403
from optical_ray.config.build import __all__ as _build
from optical_ray.config.objective import *  # noqa: F403
from optical_ray.config.objective import __all__ as _objective
from optical_ray.config.rules import *  # noqa: F403
from optical_ray.config.rules import __all__ as _rules
from optical_ray.config.schema import *  # noqa: F403
from optical_ray.config.schema import __all__ as _schema

__all__ = list(dict.fromkeys([*_schema, *_build, *_rules, *_objective]))
