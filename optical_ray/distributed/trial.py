"""The trial side of a sweep: the Tune trial function and its training context.

Kept apart from :mod:`optical_ray.distributed.pair` so that the pair's Tune driver (one process
per pair) and the sweep's coordinator never import the training code and torch; only
trial processes do.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import ray
from ray import tune

from optical_ray.training.checkpoint import fetch_checkpoint, fetch_usable_checkpoint
from optical_ray.config import Config, to_flat
from optical_ray.training.context import TrainContext, fill_metric, resolve_device
from optical_ray.distributed.devreports import DevReports
from optical_ray.errors import TrainingError
from optical_ray.retries import OUTAGE_ATTEMPTS, call_transient, with_retries
from optical_ray.sweeps.plan import PairPlan, resolve_trial_config
from optical_ray.sweeps.protocol import CHECKPOINT_PATH_KEY, CONFIG_KEY, FINISHED_KEY
from optical_ray.training.recipe import run as run_training
from optical_ray.distributed.callbacks import best_kept_checkpoint

__all__ = ["TuneContext", "run_trial"]


class TuneContext(TrainContext):
    """:class:`~optical_ray.training.recipe.TrainContext` for a single-worker trial: reports go to
    Ray Tune (checkpoints persisted to the experiment's storage), resume comes from
    ``tune.get_checkpoint()``."""

    def __init__(self, cfg: Config) -> None:
        super().__init__(
            rank=0,
            world_size=1,
            device=None,
            run_dir=Path(tempfile.mkdtemp(prefix="optical-ray-trial-")),
        )
        self.cfg = cfg
        self.metric, self.mode = cfg.sweep.metric, cfg.sweep.mode
        self.config_json = json.dumps(to_flat(cfg), sort_keys=True)
        self.last: dict[str, Any] = {}
        self._restored: str | None = None
        self._config_sent = False
        self.pair = cfg.pair
        # Filled by each dev evaluation (optical_ray.training.recipe.evaluate_dev): the
        # objective's per-query values go with every evaluation's report (promotion),
        # the whole evaluation whenever the metric improves (the catalog keeps the best).
        self.dev_per_query: dict[str, Any] = {}
        self.dev_reports = DevReports(cfg, self.dev_per_query)

    def placement(self) -> list[dict[str, Any]]:
        """This trial process's node, the GPU ids Ray assigned it and its device."""
        rc = ray.get_runtime_context()
        gpus = rc.get_accelerator_ids().get("GPU", [])
        device = self.device if self.device is not None else resolve_device(self.cfg)
        return [
            {
                "rank": 0,
                "node": rc.get_node_id(),
                "gpu_ids": [str(i) for i in gpus],
                "device": str(device),
            }
        ]

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        out = fill_metric(metrics, self.last, self.metric, self.mode)
        if self.metric in metrics:
            self.last = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
        self._attach_per_query(metrics, out)
        if not self._config_sent:
            out[CONFIG_KEY] = self.config_json
            self._config_sent = True
        checkpoint = tune.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        # Reporting uploads the checkpoint: a storage outage is waited out (a failed
        # upload raises before the result is queued, so the report can be repeated).
        with_retries(
            lambda: call_transient(tune.report, out, checkpoint=checkpoint),
            attempts=OUTAGE_ATTEMPTS,
            base_delay=1.0,
            max_delay=15.0,
            what="reporting a checkpoint to storage",
        )
        if checkpoint_dir:
            shutil.rmtree(checkpoint_dir, ignore_errors=True)

    def _attach_per_query(self, metrics: dict[str, Any], out: dict[str, Any]) -> None:
        """Per-query values of the evaluation behind ``metrics`` (:class:`DevReports`)."""
        self.dev_reports.attach(metrics, out)

    def latest_checkpoint(self) -> str | None:
        """The newest complete checkpoint in the trial's storage directory, else None.

        Tune hands a restored trial the checkpoint its last experiment snapshot named.
        A driver killed between a trial's newer checkpoints and the next snapshot
        leaves that name stale: older than the trial's progress, or already deleted by
        ``num_to_keep``. Our checkpoints describe themselves (stage, step, file
        manifest), so the trial directory is the ground truth, as for Ray Train runs.
        """
        if self._restored is None:
            ckpt = tune.get_checkpoint()
            if ckpt is None:
                return None
            found = fetch_usable_checkpoint(
                ckpt.filesystem, ckpt.path.rstrip("/").rsplit("/", 1)[0], self.run_dir / "restored"
            )
            if found is None:
                raise TrainingError(
                    f"the trial's checkpoint {ckpt.path} is missing, incomplete or damaged "
                    "and its directory holds no other complete checkpoint"
                )
            self._restored = str(found)
        return self._restored


def run_trial(
    sampled: dict[str, Any],
    *,
    plan: PairPlan,
    after: Callable[[Config, Path], None] | None = None,
) -> None:
    """The Tune trial function: resolve the trial's config once, train, report.

    ``after(cfg, model_dir)`` runs on the trial's final model (a local saved-model
    directory) before the end-of-trial report: a study evaluates it on its test tasks
    there, once, never to select."""
    trial_id = tune.get_context().get_trial_id()
    cfg = resolve_trial_config(plan, sampled, trial_id)
    start = time.perf_counter()
    if cfg.scaling.workers == 1:
        ctx = TuneContext(cfg)
        try:
            history = run_training(cfg, ctx)
            trained = time.perf_counter() - start
            if after is not None:
                after(cfg, Path(str(history.model_dir)))
        finally:
            shutil.rmtree(ctx.run_dir, ignore_errors=True)
        # A trial restored at its final checkpoint trains nothing and reports nothing
        # in this process: its metrics are the last evaluation in its history.
        last = ctx.last or {
            k: v
            for k, v in (history.evals[-1] if history.evals else {}).items()
            if isinstance(v, (int, float))
        }
    else:
        from ray.tune.integration.ray_train import TuneReportCallback

        from optical_ray.distributed.train import build_trainer

        trainer = build_trainer(
            cfg, callbacks=[TuneReportCallback()], name=f"trainruns/{plan.experiment}/{trial_id}"
        )
        result = trainer.fit()
        if result.error is not None:
            raise result.error
        last = {k: v for k, v in (result.metrics or {}).items() if isinstance(v, (int, float))}
        best = best_kept_checkpoint(result, cfg.sweep.mode)  # the record names the best
        if best is not None:
            last[CHECKPOINT_PATH_KEY] = best.path
        trained = time.perf_counter() - start
        if after is not None and result.checkpoint is not None:
            # the run's final model: its last checkpoint (the end of its last stage)
            final = Path(tempfile.mkdtemp(prefix="optical-ray-final-"))
            try:
                ckpt = result.checkpoint
                after(cfg, fetch_checkpoint((ckpt.path, ckpt.filesystem), final) / "model")
            finally:
                shutil.rmtree(final, ignore_errors=True)
    # train_s: the trial's own work (data, model, steps, evaluations, checkpoints); for
    # a TorchTrainer, as timed on its rank-0 worker (without the worker-group start-up).
    train_s = last.get("run_s", trained)
    tune.report(
        {
            **last,
            FINISHED_KEY: 1,
            "train_s": train_s,
            CONFIG_KEY: json.dumps(to_flat(cfg), sort_keys=True),
        }
    )
