"""Training as plain functions, no Ray: the recipe (:func:`~optical_ray.training.recipe.run`: stages in order, resume), the stages (rank, adapt, distill), the step loop, batches, losses, checkpoints, the context a loop runs in, and the memory of one step (:func:`~optical_ray.training.memory.measure_step_memory`) with the batch sizing built on it (:func:`~optical_ray.training.sizing.largest_batch`)."""

from __future__ import annotations

from optical_ray._lazy import lazy_exports

_EXPORTS = {
    "run": "recipe",
    "evaluate_dev": "recipe",
    "TrainContext": "context",
    "LocalContext": "context",
    "History": "context",
    "read_progress": "context",
    "train_rank": "stages",
    "train_adapt": "stages",
    "train_distill": "stages",
    "run_stage": "loop",
    "Stage": "loop",
    "distill_loss": "losses",
    "rank_loss": "losses",
    "save_checkpoint": "checkpoint",
    "newest_checkpoint": "checkpoint",
    "fetch_checkpoint": "checkpoint",
    "StepMemory": "memory",
    "StepProbe": "memory",
    "measure_step_memory": "memory",
    "BatchFit": "sizing",
    "largest_batch": "sizing",
    "dry_run": "sizing",
    "largest_trial_config": "sizing",
    "warn_step_memory": "sizing",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
