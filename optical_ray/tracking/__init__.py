"""Views onto the catalog: persistent Optuna studies, MLflow runs, TensorBoard events and W&B runs."""

from __future__ import annotations

from optical_ray._lazy import lazy_exports

_EXPORTS = {
    "Tracker": "trackers",
    "make_trackers": "trackers",
    "track_run": "trackers",
    "TrackedContext": "trackers",
    "optuna_storage_url": "trackers",
    "open_study_storage": "trackers",
    "prepare_study": "trackers",
    "study_importances": "trackers",
    "MlflowBackend": "backends",
    "TensorBoardBackend": "backends",
    "WandbBackend": "backends",
}
__all__ = list(_EXPORTS)
# What the flat layout's optical_ray.tracking module held, for saved experiments.
_LEGACY = ("trackers", "backends")
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, _LEGACY)
