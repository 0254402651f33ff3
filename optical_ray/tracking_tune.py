"""Ray Tune callbacks that drive :mod:`optical_ray.tracking`'s trackers: a run per
trial, a step per result, closed with the catalog record's id and checkpoint URI.

On Ray Train V2 they go on the Tuner's ``RunConfig(callbacks=...)``, not on the
TorchTrainer: every trial's results reach the Tuner, whether the trial trained in its
own process or through a TorchTrainer of its own.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from ray.tune import Callback

from optical_ray.tracking import (CHECKPOINT_PATH_KEY, FINISHED_KEY, Tracker, make_trackers,
                                  safe_params, step_metrics, trial_flat_config)

__all__ = ["TrackingCallback", "tracking_callbacks"]


class TrackingCallback(Callback):
    """One tracker (MLflow, TensorBoard or W&B) of one pair's experiment."""

    def __init__(self, tracker: Tracker, *, experiment: str, pair: str,
                 base: Mapping[str, Any], space: Mapping[str, Any], store: Any) -> None:
        self.tracker, self.experiment, self.pair = tracker, experiment, pair
        self.base, self.space, self.store = dict(base), dict(space), store

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its run config with the experiment: a tracker's thread stays here
        # (a restored Tuner gets fresh callbacks).
        return {**self.__dict__, "tracker": None}

    def setup(self, **info: Any) -> None:
        self.tracker.begin()

    def on_trial_start(self, iteration, trials, trial, **info):  # noqa: ANN001
        tid = trial.trial_id
        flat = trial_flat_config(trial.config, space=self.space, pair=self.pair, base=self.base)
        self.tracker.start(tid, safe_params(flat), {
            "optical_ray.trial_id": tid,
            # The catalog's record of this trial (optical_ray.sweep.CatalogCallback).
            "optical_ray.catalog_record_id": f"{self.experiment}--{tid}"})

    def on_trial_result(self, iteration, trials, trial, result, **info):  # noqa: ANN001
        if result.get(FINISHED_KEY):  # the end-of-trial summary repeats the last evaluation
            train_s = result.get("train_s")
            if isinstance(train_s, (int, float)):
                self.tracker.log(trial.trial_id, {"train_s": float(train_s)}, 0)
            return
        metrics, step = step_metrics(result)
        self.tracker.log(trial.trial_id, metrics, step)

    def on_trial_complete(self, iteration, trials, trial, **info):  # noqa: ANN001
        finished = (trial.last_result or {}).get(FINISHED_KEY)
        self._finish(trial, "finished" if finished else "stopped")

    def on_trial_error(self, iteration, trials, trial, **info):  # noqa: ANN001
        self._finish(trial, "failed")

    def _finish(self, trial: Any, status: str) -> None:
        tags = {"optical_ray.status": status}
        uri = _checkpoint_uri(trial, self.store)
        if uri:
            tags["optical_ray.checkpoint_uri"] = uri
        self.tracker.finish(trial.trial_id, status, tags)

    def on_experiment_end(self, trials, **info):  # noqa: ANN001
        self.tracker.close()


def _checkpoint_uri(trial: Any, store: Any) -> str | None:
    """The URI of a trial's latest checkpoint, as the catalog records it: Tune's, or its
    Train run's for a multi-worker trial."""
    ckpt = trial.checkpoint
    if ckpt is not None:
        kind = getattr(ckpt.filesystem, "type_name", "local")
        return f"s3://{ckpt.path}" if kind == "s3" else ckpt.path
    path = (trial.last_result or {}).get(CHECKPOINT_PATH_KEY)
    return store.uri_of(store.rel(path)) if isinstance(path, str) and path else None


def tracking_callbacks(targets: Sequence[str], *, sweep: str, experiment: str, pair: str,
                       base: Mapping[str, Any], space: Mapping[str, Any], store: Any,
                       space_file: str | None = None,
                       output_dir: str | None = None) -> list[Callback]:
    """The Tune callbacks for ``sweep.tracking`` (``["mlflow", "tensorboard", ...]``) of
    one pair's experiment, for the Tuner's ``RunConfig(callbacks=...)``."""
    tags = {"optical_ray.sweep": sweep, "optical_ray.pair": pair,
            "optical_ray.experiment": experiment}
    if space_file and not space_file.startswith("<"):  # a file, not "<space>" (a dict)
        tags["optical_ray.space"] = space_file
    trackers = make_trackers(targets, store=store, experiment=sweep, group=experiment,
                             tags=tags, output_dir=output_dir)
    return [TrackingCallback(t, experiment=experiment, pair=pair, base=base, space=space,
                             store=store) for t in trackers]
