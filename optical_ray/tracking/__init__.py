"""Views onto the catalog: persistent Optuna studies, MLflow runs, TensorBoard events and W&B runs."""

from __future__ import annotations

from optical_ray._lazy import lazy_exports

_EXPORTS = {
    "mlflow_tracking_uri": "backends",
    "metric_key": "backends",
    "MlflowBackend": "backends",
    "TensorBoardBackend": "backends",
    "WandbBackend": "backends",
    "TRACKERS": "trackers",
    "TrackingTarget": "trackers",
    "parse_tracking": "trackers",
    "tracking_problems": "trackers",
    "optuna_storage_problems": "trackers",
    "study_name": "trackers",
    "optuna_storage_url": "trackers",
    "open_study_storage": "trackers",
    "prepare_study": "trackers",
    "study_importances": "trackers",
    "Tracker": "trackers",
    "make_trackers": "trackers",
    "TrackedContext": "trackers",
    "track_run": "trackers",
    "safe_params": "trackers",
    "param_value": "trackers",
    "step_metrics": "trackers",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
