"""Which records ran the same config, and which experiment holds a sweep's finalists:
the names the answers (:mod:`~optical_ray.catalog.answers`, :mod:`~optical_ray.catalog.robust`)
and the finalists' planner (:mod:`optical_ray.sweeps.finalists`) share."""

from __future__ import annotations

import json
from typing import Any, Mapping

__all__ = ["FINAL_SUFFIX", "final_experiment", "search_experiment", "config_identity"]

#: A pair's finalists experiment is its search experiment's name with this suffix.
FINAL_SUFFIX = "-final"
#: Keys that name where and how a run went, not what it trained: two runs that differ
#: only in them ran the same config.
_RUN_KEYS = ("name", "output_dir", "train.seed", "train.tracking", "train.device")
_RUN_PREFIXES = ("storage.", "sweep.", "scaling.")
_PAIR_KEYS = ("pair", "eval.pairs", "eval.reference")


def final_experiment(experiment: str) -> str:
    """The finalists experiment of search experiment ``experiment``."""
    return f"{experiment}{FINAL_SUFFIX}"


def search_experiment(experiment: str) -> str:
    """The search experiment of ``experiment`` (itself, or the one it holds the
    finalists of)."""
    return experiment[: -len(FINAL_SUFFIX)] if experiment.endswith(FINAL_SUFFIX) else experiment


def config_identity(flat: Mapping[str, Any], drop_pair: bool = False) -> str:
    """A key naming what a run trained: its flat config without the keys of where and
    how it ran (name, seed, storage, sweep and scaling settings). With ``drop_pair``
    also without what names the pair (``pair``, ``data.*``, ``eval.pairs``,
    ``eval.reference``), so that runs of different pairs with the same hyperparameters
    share it (``best --across-pairs``)."""
    keep = {}
    for k, v in flat.items():
        if k in _RUN_KEYS or k.startswith(_RUN_PREFIXES):
            continue
        if drop_pair and (k in _PAIR_KEYS or k.startswith("data.")):
            continue
        keep[k] = v
    return json.dumps(keep, sort_keys=True, default=str)
