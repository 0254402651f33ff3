"""The module paths of the flat layout (before 0.2), still importable.

Ray Tune pickles class and function paths into a saved experiment (``tuner.pkl``,
``searcher-state-*.pkl``, ``callback-states-*.pkl``, the trials in
``experiment_state-*.json``), so ``sweep --resume`` of an experiment saved before the
package moved into subpackages unpickles ``optical_ray.raytune.SharedLimiter``,
``optical_ray.sweep.PairPlan``, ``optical_ray.schema.Config`` and so on. A finder on
``sys.meta_path`` serves each old path as an alias of the module that holds its names
now; user code importing an old path keeps working too, with a DeprecationWarning.
No file sits at the old paths, so the folders still show the architecture, and no
import of Ray appears outside :mod:`optical_ray.distributed`.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
import warnings
from typing import Any, Sequence

#: Old module (under ``optical_ray.``) -> the new modules its names now live in, in
#: the order a name is looked up.
MOVED: dict[str, tuple[str, ...]] = {
    "schema": ("config.schema",),
    "text": ("models.text",),
    "tiny": ("models.tiny",),
    "model": ("models.encoder", "models.scoring"),
    "batches": ("training.batches",),
    "checkpoint": ("training.checkpoint",),
    "context": ("training.context",),
    "loop": ("training.loop",),
    "losses": ("training.losses",),
    "stages": ("training.stages",),
    "train": ("training.recipe",),
    "evaluate": ("evaluation.ranking", "evaluation.trec"),
    "trec": ("evaluation.trec",),
    "compare": ("evaluation.compare",),
    "perquery": ("evaluation.perquery",),
    "evaluations": ("evaluation.best", "report.sections"),
    "sweep": ("sweeps.plan", "sweeps.protocol", "distributed.driver"),
    "space": ("sweeps.space",),
    "templates": ("sweeps.templates",),
    "warmstart": ("sweeps.warmstart", "config.rules"),
    "warmsampler": ("sweeps.warmsampler",),
    "langsim": ("sweeps.langsim",),
    "launch": ("distributed.driver",),
    "raytune": ("distributed.pair", "distributed.searchers", "distributed.slots"),
    "tune_trial": ("distributed.trial",),
    "tune_callbacks": ("distributed.callbacks",),
    "slots": ("distributed.slots",),
    "driverwatch": ("distributed.driverwatch",),
    "trust": ("distributed.trust",),
    "tracking_tune": ("distributed.tracking",),
    "tracking_backends": ("tracking.backends",),
    "report_plots": ("report.plots", "report.summary"),
    "report_pareto": ("report.pareto",),
    "cluster_nodes": ("cluster.nodes",),
    "commands": ("cli.commands",),
    "demo": ("cli.demo",),
}


class _Alias(types.ModuleType):
    """An old module path: each attribute comes from the first new module that has it
    (imported on first use)."""

    def __init__(self, name: str, targets: Sequence[str]) -> None:
        super().__init__(name, f"Moved: see {', '.join(targets)}.")
        self.__targets = tuple(targets)

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__"):
            raise AttributeError(attr)
        for target in self.__targets:
            module = importlib.import_module(target)
            if hasattr(module, attr):
                return getattr(module, attr)
        raise AttributeError(f"module {self.__name__!r} has no attribute {attr!r}")


class _MovedFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        prefix, _, old = fullname.partition(".")
        if prefix != "optical_ray" or old not in MOVED:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        old = spec.name.partition(".")[2]
        return _Alias(spec.name, [f"optical_ray.{t}" for t in MOVED[old]])

    def exec_module(self, module: types.ModuleType) -> None:
        warnings.warn(
            f"{module.__name__} moved ({module.__doc__}); the old path is kept for saved "
            "experiments and will go in a later release",
            DeprecationWarning,
            stacklevel=2,
        )


def install() -> None:
    """Put the finder on ``sys.meta_path`` once (``optical_ray/__init__`` calls it)."""
    if not any(isinstance(f, _MovedFinder) for f in sys.meta_path):
        sys.meta_path.append(_MovedFinder())
