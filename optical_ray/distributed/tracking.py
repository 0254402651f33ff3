"""Ray Tune callbacks that drive :mod:`optical_ray.tracking.trackers`'s trackers: a run per
trial, a step per result, closed with the catalog record's id and checkpoint URI.

On Ray Train V2 they go on the Tuner's ``RunConfig(callbacks=...)``, not on the
TorchTrainer: every trial's results reach the Tuner, whether the trial trained in its
own process or through a TorchTrainer of its own.
"""

from __future__ import annotations

from typing import Any, Sequence

from ray.tune import Callback

from optical_ray.config import to_flat
from optical_ray.errors import OpticalRayError
from optical_ray.distributed.callbacks import BestCheckpoints
from optical_ray.sweeps.plan import PairPlan, resolve_trial_config
from optical_ray.sweeps.protocol import FINISHED_KEY
from optical_ray.tracking.trackers import Tracker, make_trackers, safe_params, step_metrics

__all__ = ["TrackingCallback", "tracking_callbacks"]


class TrackingCallback(Callback):
    """One tracker (MLflow, TensorBoard or W&B) of one pair's experiment."""

    def __init__(self, tracker: Tracker, *, plan: PairPlan, store: Any) -> None:
        self.tracker, self.plan, self.store = tracker, plan, store
        self.experiment, self.pair = plan.experiment, plan.pair
        self.checkpoints = BestCheckpoints(plan.base.sweep.mode, store)

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its run config with the experiment: a tracker's thread stays here
        # (a restored Tuner gets fresh callbacks).
        return {**self.__dict__, "tracker": None}

    def get_state(self) -> dict[str, Any]:
        """Each running trial's best checkpoint so far: a resumed experiment (driver
        restart) still tags the trial's run with its best checkpoint, as the catalog
        record names it."""
        return {"tracking_checkpoints": dict(self.checkpoints.best)}

    def set_state(self, state: dict[str, Any]) -> None:
        # Tune restores callback states by position: take only a tracker's own
        self.checkpoints.best.update(state.get("tracking_checkpoints") or {})

    def setup(self, **info: Any) -> None:
        self.tracker.begin()

    def on_trial_start(self, iteration, trials, trial, **info):  # noqa: ANN001
        tid = trial.trial_id
        try:  # the config the trial runs: the same one resolution (the catalog stores it)
            flat = to_flat(resolve_trial_config(self.plan, dict(trial.config), tid))
        except OpticalRayError:
            flat = dict(trial.config)  # a sampled combination that cannot work
        self.tracker.start(
            tid,
            safe_params(flat),
            {
                "optical_ray.trial_id": tid,
                # The catalog's record of this trial (optical_ray.sweeps.plan.CatalogCallback).
                "optical_ray.catalog_record_id": f"{self.experiment}--{tid}",
            },
        )

    def on_trial_result(self, iteration, trials, trial, result, **info):  # noqa: ANN001
        if result.get(FINISHED_KEY):  # the end-of-trial summary repeats the last evaluation
            train_s = result.get("train_s")
            if isinstance(train_s, (int, float)):
                self.tracker.log(trial.trial_id, {"train_s": float(train_s)}, 0)
            return
        metrics, step = step_metrics(result)
        self.tracker.log(trial.trial_id, metrics, step)

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):  # noqa: ANN001
        self.checkpoints.update(trial, checkpoint)

    def on_trial_complete(self, iteration, trials, trial, **info):  # noqa: ANN001
        finished = (trial.last_result or {}).get(FINISHED_KEY)
        self._finish(trial, "finished" if finished else "stopped")

    def on_trial_error(self, iteration, trials, trial, **info):  # noqa: ANN001
        self._finish(trial, "failed")

    def _finish(self, trial: Any, status: str) -> None:
        tags = {"optical_ray.status": status}
        uri = self.checkpoints.uri(trial, trial.last_result or {})
        if uri:
            tags["optical_ray.checkpoint_uri"] = uri
        self.tracker.finish(trial.trial_id, status, tags)
        self.checkpoints.best.pop(trial.trial_id, None)

    def on_experiment_end(self, trials, **info):  # noqa: ANN001
        self.tracker.close()


def tracking_callbacks(targets: Sequence[str], *, plan: PairPlan, store: Any) -> list[Callback]:
    """The Tune callbacks for ``sweep.tracking`` (``["mlflow", "tensorboard", ...]``) of
    one pair's experiment, for the Tuner's ``RunConfig(callbacks=...)``."""
    tags = {
        "optical_ray.sweep": plan.base.name,
        "optical_ray.pair": plan.pair,
        "optical_ray.experiment": plan.experiment,
    }
    if plan.space_file and not plan.space_file.startswith("<"):  # a file, not a dict
        tags["optical_ray.space"] = plan.space_file
    trackers = make_trackers(
        targets,
        store=store,
        experiment=plan.base.name,
        group=plan.experiment,
        tags=tags,
        output_dir=plan.base.output_dir,
    )
    return [TrackingCallback(t, plan=plan, store=store) for t in trackers]
