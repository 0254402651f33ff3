"""All of Ray: the sweep driver, studies (a design's runs on the sweep machinery), each pair's Tune experiments (its search and its finalists), the trial function, noise-aware ASHA, Tune callbacks, the shared trial budget, driver watching, signed Tune state restored from verified bytes, one driver per experiment (leases), and Ray Train across workers."""

from __future__ import annotations

from optical_ray._lazy import lazy_exports

_EXPORTS = {
    "run_sweep": "driver",
    "run_study": "study",
    "StudyResult": "study",
    "FixedSearcher": "searchers",
    "fit": "train",
    "build_trainer": "train",
    "init_ray": "train",
    "FitResult": "train",
    "fit_pair": "pair",
    "run_trial": "trial",
    "TuneContext": "trial",
    "PruningAwareOptunaSearch": "searchers",
    "ObjectivesOptunaSearch": "searchers",
    "PairedASHA": "promotion",
    "SharedLimiter": "slots",
    "CatalogCallback": "callbacks",
    "ProgressCallback": "callbacks",
    "TrackingCallback": "tracking",
    "StateSigner": "trust",
    "UntrustedStateError": "trust",
    "StateKeyError": "trust",
    "state_key": "trust",
    "verify_state": "trust",
    "state_filesystem": "statefs",
    "SweepLeases": "lease",
    "LeaseHeldError": "lease",
    "watch_driver": "driverwatch",
}
__all__ = list(_EXPORTS)
# What the flat layout's optical_ray.distributed module held, for saved experiments.
_LEGACY = ("train",)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, _LEGACY)
