"""All of Ray: the sweep driver, each pair's Tune experiment, the trial function, Tune callbacks, the shared trial budget, driver watching, signed Tune state, and Ray Train across workers."""

from __future__ import annotations

from optical_ray._lazy import lazy_exports

_EXPORTS = {
    "BestCheckpoints": "callbacks",
    "best_kept_checkpoint": "callbacks",
    "CatalogCallback": "callbacks",
    "ProgressCallback": "callbacks",
    "checkpoint_uri": "callbacks",
    "coordinator_handle": "callbacks",
    "is_metric": "callbacks",
    "NAMESPACE": "callbacks",
    "run": "driver",
    "DriverRef": "driverwatch",
    "end_task": "driverwatch",
    "this_driver": "driverwatch",
    "local_driver": "driverwatch",
    "process_alive": "driverwatch",
    "watch_driver": "driverwatch",
    "fit_pair": "pair",
    "PruningAwareOptunaSearch": "pair",
    "ObjectivesOptunaSearch": "pair",
    "make_sampler": "pair",
    "SharedLimiter": "pair",
    "SlotPool": "slots",
    "TrackingCallback": "tracking",
    "tracking_callbacks": "tracking",
    "RayTrainContext": "train",
    "FitResult": "train",
    "UNSCORED": "train",
    "build_trainer": "train",
    "checkpoint_score": "train",
    "fit": "train",
    "init_ray": "train",
    "prepare_config": "train",
    "worker_loop": "train",
    "TuneContext": "trial",
    "run_trial": "trial",
    "KEY_ENV": "trust",
    "MANIFEST_NAME": "trust",
    "UntrustedStateError": "trust",
    "StateManifest": "trust",
    "StateSigner": "trust",
    "state_key": "trust",
    "is_state_file": "trust",
    "verify_state": "trust",
    "sign_tuner_file": "trust",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
