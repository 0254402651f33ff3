"""The trial result protocol: the keys a trial's Tune results carry besides metrics,
written by the trial (:mod:`optical_ray.distributed.trial`) and read by the Tune
callbacks, the catalog and the trackers. Plain names, no Ray."""

from __future__ import annotations

__all__ = [
    "FINISHED_KEY",
    "CONFIG_KEY",
    "CHECKPOINT_PATH_KEY",
    "PER_QUERY_KEY",
    "UNITS_KEY",
    "ORIGIN_KEY",
    "RUN_KEY",
]

#: The end-of-trial report (its presence means the trial ran to the end).
FINISHED_KEY = "trial_finished"
#: The trial's resolved flat config as JSON (in its first report and its last): the
#: config it trained on, which its catalog record stores.
CONFIG_KEY = "resolved_config"
#: A multi-worker trial's best Train checkpoint (its record names it).
CHECKPOINT_PATH_KEY = "checkpoint_path"
#: The per-query values of a trial's best dev evaluation so far
#: (:func:`optical_ray.evaluation.perquery.encode_per_query`; every task of the
#: objective), sent when the metric improves.
PER_QUERY_KEY = "dev_per_query"
#: The objective's per-query values of this evaluation
#: (:func:`optical_ray.evaluation.perquery.encode_units`), sent with every evaluation:
#: what noise-aware promotion tests a trial on at an ASHA rung.
UNITS_KEY = "dev_units"
#: The key a trial's sampled config carries its origin under (see :mod:`optical_ray.sweeps.warmstart`):
#: ``warm_start:<pair>/<trial>``, ``sampler`` or ``random``. Not a config key: the
#: trial's config ignores it, the catalog records it.
ORIGIN_KEY = "trial_origin"
#: The key a finalist run's sampled config carries the flat config it trains under
#: (JSON; :class:`optical_ray.sweeps.plan.FinalistRun`).
RUN_KEY = "finalist_run"
