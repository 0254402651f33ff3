"""Sweep planning, no Ray: search spaces and their pair templates, per-pair plans and trial configs (with each pair's objective), the trial result protocol, warm starts from related pairs, and each pair's finalists."""

from __future__ import annotations

from optical_ray._lazy import lazy_exports

_EXPORTS = {
    "SearchSpace": "space",
    "Param": "space",
    "load_space": "space",
    "parse_space": "space",
    "validate_space": "space",
    "PairPlan": "plan",
    "PairResult": "plan",
    "SweepResult": "plan",
    "plan_sweep": "plan",
    "resolve_trial_config": "plan",
    "pair_base": "plan",
    "FinalistRun": "plan",
    "finalist_plan": "finalists",
    "experiment_name": "plan",
    "FINISHED_KEY": "protocol",
    "CONFIG_KEY": "protocol",
    "CHECKPOINT_PATH_KEY": "protocol",
    "PER_QUERY_KEY": "protocol",
    "ORIGIN_KEY": "protocol",
    "UNITS_KEY": "protocol",
    "RUN_KEY": "protocol",
    "WarmStart": "warmstart",
    "plan_warm_starts": "warmstart",
    "similarity": "langsim",
    "TransferSampler": "warmsampler",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
