"""The step loop every stage runs: optimise a :class:`Stage` and evaluate, select,
stop early, checkpoint and report as ``cfg.train`` says.

:func:`run_stage` is the loop; each of its decisions is a small function here:
:class:`Selection` (``train.keep_best``, ``train.patience``), :func:`checkpoint_state`
(the one ``state.json`` a checkpoint carries, read back by resume) and
:func:`finish_without_training` (a stage with nothing to optimise). AdamW, warm-up then
linear decay, gradient accumulation, autocast and clipping; every random draw of step
``k`` is seeded from ``(seed, stage, k, rank)``, so a resumed stage repeats an
uninterrupted one.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from optical_ray.training.batches import Batches
from optical_ray.training.checkpoint import (
    CHECKPOINT_PREFIX,
    read_checkpoint_state,
    read_optimizer_state,
    save_checkpoint,
    set_rng_state,
)
from optical_ray.config import Config, TrainConfig
from optical_ray.training.context import (
    History,
    TrainContext,
    mix_seed,
    resolve_device,
    resolve_precision,
    seed_all,
)
from optical_ray.errors import ConfigError, TrainingError
from optical_ray.models.encoder import RetrievalModel

__all__ = [
    "STAGE_HINTS",
    "EvalFn",
    "Stage",
    "Selection",
    "run_stage",
    "checkpoint_state",
    "finish_without_training",
    "restore_model",
]

#: What to turn when a stage's loss blows up (ends the TrainingError message).
STAGE_HINTS = {
    "rank": "lower rank.lr or raise model.temperature",
    "adapt": "lower adapt.lr",
    "distill": "lower rank.lr/distill.lr or raise distill.epsilon",
}

EvalFn = Callable[[RetrievalModel], dict[str, float]]
LossFn = Callable[[nn.Module, list[int], int], tuple[Tensor, dict[str, Tensor]]]


@dataclass
class Stage:
    """One stage for :func:`run_stage`: what to optimise and how to get a loss.

    ``loss(module, indices, batch_no)`` returns the loss and its named parts; ``module``
    is the (possibly DDP-wrapped) ``Stage.module``.
    """

    name: str
    index: int
    module: nn.Module  # what the optimizer updates (and DDP wraps)
    model: RetrievalModel  # what is evaluated and checkpointed as model/
    lr: float
    steps: int
    epochs: float
    batches: Batches
    examples_per_batch: int
    loss: LossFn
    teacher: RetrievalModel | None = None
    extra: dict[str, nn.Module] = field(default_factory=dict)
    select: bool = False  # keep_best / patience on dev evaluations
    # figures of the stage so far, added to every report (e.g. Sinkhorn convergence)
    summary: Callable[[History], dict[str, float]] | None = None


def _total_steps(stage: Stage, grad_accum: int) -> int:
    if stage.steps > 0:
        return stage.steps
    return max(1, math.ceil(stage.epochs * stage.batches.per_epoch / grad_accum))


def _param_groups(module: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    # No decay on biases and LayerNorm weights (BERT's recipe): decaying a norm's scale
    # towards 0 fights the normalisation.
    decay, no_decay = [], []
    for _, p in module.named_parameters():
        if p.requires_grad:
            (no_decay if p.dim() < 2 else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def _schedule(total: int, warmup_ratio: float) -> Callable[[int], float]:
    """Linear warm-up to the peak, then linear decay to 0 at ``total``."""
    warmup = int(round(warmup_ratio * total))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (total - step) / max(1, total - warmup))

    return factor


def _raise_nonfinite(
    stage: str, step: int, loss: float, parts: dict[str, float], fp16: bool = False
) -> None:
    """One line for a loss that is inf or NaN; under fp16 autocast it names the likely
    cause: hidden states or the OT cost beyond fp16's range (65504)."""
    # Sinkhorn's diagnostics only when they say something (a plan that did not converge).
    detail = ", ".join(
        f"{k}={v:.4g}" for k, v in parts.items() if not (k.startswith("sinkhorn_") and v == 0)
    )
    hint = (
        "under train.precision=fp16 the hidden states or the OT cost overflowed fp16's "
        "range (65504); use train.precision=bf16 (fp32's range) or fp32"
        if fp16
        else STAGE_HINTS[stage]
    )
    raise TrainingError(
        f"{stage} loss became {loss} at step {step}{f' ({detail})' if detail else ''}; {hint}"
    )


# --------------------------------------------------------------------------- selection


class Selection:
    """Dev-based selection of a stage's final weights (``train.keep_best``) and early
    stopping (``train.patience``).

    The starting model is evaluated too, so a stage that only makes things worse ends
    with the weights it started from. The metric is read on rank 0 and broadcast, so
    every rank takes the same decisions; each rank keeps its own (identical) copy of
    the best weights, on the CPU.
    """

    def __init__(self, metric: str, keep_best: bool, patience: int) -> None:
        self.metric, self.keep_best, self.patience = metric, keep_best, patience
        self.best_value, self.best_step = -math.inf, -1
        self.best_eval: dict[str, float] = {}
        self.since_best = 0
        self.weights: dict[str, Tensor] | None = None

    def update(
        self, step: int, metrics: dict[str, float], model: nn.Module, ctx: TrainContext
    ) -> bool:
        """Record an evaluation; True when ``patience`` evaluations in a row did not
        improve on the best (strictly)."""
        value = 0.0
        if ctx.rank == 0:
            if self.metric not in metrics:
                raise ConfigError(
                    f"train.select_metric: {self.metric!r} is not among the dev "
                    f"metrics {sorted(k for k in metrics if '/' not in k)}"
                )
            value = float(metrics[self.metric]) * ctx.world_size
        value = ctx.all_reduce_mean(value)
        if math.isfinite(value) and value > self.best_value:
            self.best_value, self.best_step, self.best_eval = value, step, dict(metrics)
            self.since_best = 0
            if self.keep_best:
                self.weights = {
                    k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()
                }
        else:
            self.since_best += 1
        return self.patience > 0 and self.since_best >= self.patience

    def finish(
        self,
        stage: Stage,
        step: int,
        history: History,
        ctx: TrainContext,
        last_eval: dict[str, float],
        stopped: bool,
    ) -> dict[str, float]:
        """End of the stage: restore the best weights (keep_best) and return the dev
        metrics of the model the stage ends with."""
        kept = step
        if self.keep_best and self.weights is not None and self.best_step != step:
            stage.model.load_state_dict(self.weights)
            last_eval, kept = self.best_eval, self.best_step
        history.selections.append(
            {
                "stage": stage.name,
                "metric": self.metric,
                "best_step": self.best_step,
                "best_value": self.best_value,
                "kept_step": kept,
                "last_step": step,
                "stopped_early": stopped,
            }
        )
        ctx.print0(
            f"[{stage.name}] dev {self.metric}: best {self.best_value:.4f} at step "
            f"{self.best_step}; ending with the weights of step {kept}"
            f"{' (stopped early)' if stopped else ''}"
        )
        return last_eval

    def state(self) -> dict[str, Any]:
        return {
            "best_value": self.best_value,
            "best_step": self.best_step,
            "best_eval": self.best_eval,
            "since_best": self.since_best,
        }

    def restore(self, state: dict[str, Any] | None, ckpt: Path) -> None:
        """Continue from a checkpoint's selection state (and ``best.safetensors``)."""
        if not state:
            return
        self.best_value, self.best_step = float(state["best_value"]), int(state["best_step"])
        self.best_eval, self.since_best = dict(state["best_eval"]), int(state["since_best"])
        if self.keep_best and (ckpt / "best.safetensors").is_file():
            self.weights = load_file(str(ckpt / "best.safetensors"))


def _start_selection(
    stage: Stage,
    tc: TrainConfig,
    resume: str | None,
    history: History,
    ctx: TrainContext,
    eval_fn: EvalFn | None,
) -> Selection | None:
    """The stage's :class:`Selection`, continued from ``resume``, or seeded with an
    evaluation of the starting model (a candidate too: distillation may only hurt)."""
    if not stage.select or eval_fn is None:
        return None
    sel = Selection(tc.select_metric, tc.keep_best, tc.patience)
    if resume is not None:
        sel.restore(read_checkpoint_state(resume).get("selection"), Path(resume))
    else:
        sel.update(0, _evaluate(stage, 0, history, ctx, eval_fn), stage.model, ctx)
    return sel


# --------------------------------------------------------------------------- checkpoints


def checkpoint_state(
    stage: Stage,
    history: History,
    *,
    step: int,
    total_steps: int,
    done: bool,
    epoch: int = 0,
    position: int = 0,
    scheduler: Any = None,
    scaler: Any = None,
    selection: Selection | None = None,
) -> dict[str, Any]:
    """The ``state.json`` of a checkpoint of ``stage`` at ``step`` (the one place it is
    written): where the run stands (``stage``, ``stage_index``, ``step``,
    ``stage_done``, ``global_step``), the history so far, and the scheduler, loss
    scaler and selection states a resumed stage continues from. :func:`run_stage`
    and the recipe's resume read it back."""
    return {
        "stage": stage.name,
        "stage_index": stage.index,
        "step": step,
        "total_steps": total_steps,
        "stage_done": done,
        "epoch": epoch,
        "position": position,
        "global_step": len(history.steps),
        "history": history.to_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "selection": selection.state() if selection is not None else None,
    }


def _checkpoint(
    stage: Stage,
    cfg: Config,
    ctx: TrainContext,
    state: dict[str, Any],
    opt: torch.optim.Optimizer | None,
    tensors: dict[str, dict[str, Tensor]] | None = None,
) -> str | None:
    """Rank 0 writes the checkpoint; every rank gets its path (None off rank 0)."""
    path, root = None, ctx.checkpoint_root()
    state = {**state, "placement": ctx.placement()}  # gathered from every rank
    if ctx.rank == 0 and root is not None:
        name = f"{CHECKPOINT_PREFIX}{stage.index}-{stage.name}-{state['step']:07d}"
        path = str(
            save_checkpoint(
                root,
                name,
                state=state,
                model=stage.model,
                cfg=cfg,
                teacher=stage.teacher,
                extra=stage.extra,
                optimizer=None if state["stage_done"] else opt,
                tensors=tensors,
            )
        )
    ctx.barrier()
    return path


def restore_model(ckpt: str, model: RetrievalModel) -> None:
    """Load a checkpoint's ``model/`` weights into ``model`` (same architecture)."""
    saved = RetrievalModel.load(Path(ckpt) / "model", device=model.device)
    model.load_state_dict(saved.state_dict())


# --------------------------------------------------------------------------- the loop


@dataclass
class _Optimisation:
    """AdamW, its schedule, the fp16 loss scaler (None otherwise) and autocast."""

    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler | None
    autocast: Callable[[], Any]

    @classmethod
    def build(
        cls,
        stage: Stage,
        tc: TrainConfig,
        device: torch.device,
        amp_dtype: torch.dtype | None,
        total: int,
    ) -> _Optimisation:
        opt = torch.optim.AdamW(_param_groups(stage.module, tc.weight_decay), lr=stage.lr)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, _schedule(total, tc.warmup_ratio))
        scaler = torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 else None
        autocast = (
            (lambda: torch.autocast(device.type, dtype=amp_dtype))
            if amp_dtype is not None
            else contextlib.nullcontext
        )
        return cls(opt, sched, scaler, autocast)

    def restore(self, resume: str, device: torch.device) -> int:
        """Continue from checkpoint ``resume`` (optimizer, schedule, scaler, RNG);
        returns the step it was written at."""
        state = read_checkpoint_state(resume)
        self.opt.load_state_dict(read_optimizer_state(resume, device))
        self.sched.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        set_rng_state(load_file(str(Path(resume) / "rng.safetensors")), state["rng"])
        return int(state["step"])


def _train_step(
    stage: Stage,
    step: int,
    wrapped: nn.Module,
    o: _Optimisation,
    tc: TrainConfig,
    ctx: TrainContext,
    history: History,
) -> tuple[dict[str, Any], int, dict[str, float]]:
    """One optimizer step (``train.grad_accum`` micro-batches); returns its history
    record, the position of its last batch in the epoch, and this worker's loss parts."""
    t0 = time.perf_counter()
    # Every random draw of this step (dropout, masking, sampled negatives) follows
    # from (seed, stage, step, rank): a resumed run repeats it exactly.
    seed_all(mix_seed(tc.seed, stage.index, step, ctx.rank))
    stage.module.train()
    o.opt.zero_grad(set_to_none=True)
    loss_sum, parts_sum = 0.0, {}
    epoch = pos = 0
    for micro in range(tc.grad_accum):
        batch_no = (step - 1) * tc.grad_accum + micro
        indices, epoch, pos = stage.batches(batch_no)
        sync = micro == tc.grad_accum - 1 or not hasattr(wrapped, "no_sync")
        with contextlib.nullcontext() if sync else wrapped.no_sync():
            with o.autocast():
                loss, parts = stage.loss(wrapped, indices, batch_no)
            value = float(loss.detach())
            part_values = {k: float(v.detach()) for k, v in parts.items()}
            if not math.isfinite(value):
                _raise_nonfinite(stage.name, step, value, part_values, o.scaler is not None)
            scaled = loss / tc.grad_accum
            (o.scaler.scale(scaled) if o.scaler is not None else scaled).backward()
        loss_sum += value / tc.grad_accum
        for k, v in part_values.items():
            parts_sum[k] = parts_sum.get(k, 0.0) + v / tc.grad_accum
    if o.scaler is not None:
        o.scaler.unscale_(o.opt)
    if tc.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(
            [p for g in o.opt.param_groups for p in g["params"]], tc.grad_clip
        )
    lr = o.opt.param_groups[0]["lr"]
    if o.scaler is not None:
        o.scaler.step(o.opt)
        o.scaler.update()
    else:
        o.opt.step()
    o.sched.step()
    seconds = time.perf_counter() - t0
    record = {
        "stage": stage.name,
        "step": step,
        "global_step": len(history.steps) + 1,
        "loss": ctx.all_reduce_mean(loss_sum),
        "lr": lr,
        "epoch": epoch,
        "examples_per_s": stage.examples_per_batch * tc.grad_accum * ctx.world_size / seconds,
        **{k: ctx.all_reduce_mean(v) for k, v in parts_sum.items()},
    }
    return record, pos, parts_sum


def _log_step(
    stage: Stage, record: dict[str, Any], parts: dict[str, float], total: int, ctx: TrainContext
) -> None:
    # loss terms only: the Sinkhorn convergence figures are summed up per stage
    terms = {k: v for k, v in parts.items() if not k.startswith("sinkhorn_")}
    detail = " ".join(f"{k}={v:.4f}" for k, v in terms.items() if len(terms) > 1)
    ctx.print0(
        f"[{stage.name}] step {record['step']}/{total} loss {record['loss']:.4f} {detail}"
        f"{' ' if detail else ''}lr {record['lr']:.2e} {record['examples_per_s']:.1f} ex/s"
    )


def _every(interval: int, step: int) -> bool:
    return interval > 0 and step % interval == 0


def run_stage(
    stage: Stage,
    cfg: Config,
    ctx: TrainContext,
    history: History,
    resume: str | None,
    eval_fn: EvalFn | None,
) -> History:
    """Optimise ``stage`` from step 1 (or from checkpoint ``resume``); log every
    ``train.log_every`` steps, evaluate every ``train.eval_every`` steps and at the end,
    select and stop early (:class:`Selection`), checkpoint every
    ``train.checkpoint_every`` steps and at the end, and report each evaluation and
    checkpoint through ``ctx``. Returns ``history``, extended."""
    tc = cfg.train
    device = resolve_device(cfg, ctx)
    total = _total_steps(stage, tc.grad_accum)
    o = _Optimisation.build(stage, tc, device, resolve_precision(cfg, device), total)
    start = 0
    if resume is not None:
        start = o.restore(resume, device)
        ctx.print0(f"[{stage.name}] resuming at step {start}/{total} from {resume}")
    wrapped = ctx.prepare_model(stage.module)
    last_eval: dict[str, float] = {}
    sel = _start_selection(stage, tc, resume, history, ctx, eval_fn)
    for step in range(start + 1, total + 1):
        record, pos, parts = _train_step(stage, step, wrapped, o, tc, ctx, history)
        history.steps.append(record)
        if step % tc.log_every == 0 or step == total:
            _log_step(stage, record, parts, total, ctx)
        done = step == total
        do_eval = eval_fn is not None and (done or _every(tc.eval_every, step))
        do_ckpt = done or _every(tc.checkpoint_every, step)
        stopped = False
        if do_eval:
            last_eval = _evaluate(stage, step, history, ctx, eval_fn)
            if sel is not None and sel.update(step, last_eval, stage.model, ctx) and not done:
                stopped = done = do_ckpt = True
        if done and sel is not None:
            last_eval = sel.finish(stage, step, history, ctx, last_eval, stopped)
        if do_eval or do_ckpt:
            ckpt = None
            if do_ckpt:
                state = checkpoint_state(
                    stage,
                    history,
                    step=step,
                    total_steps=total,
                    done=done,
                    epoch=record["epoch"],
                    position=pos,
                    scheduler=o.sched,
                    scaler=o.scaler,
                    selection=sel,
                )
                # the best weights so far travel with a mid-stage checkpoint (keep_best)
                best = (
                    {"best": sel.weights}
                    if sel is not None and sel.weights is not None and not done
                    else None
                )
                ckpt = _checkpoint(stage, cfg, ctx, state, o.opt, best)
            metrics = {k: v for k, v in record.items() if k != "epoch"}
            summary = stage.summary(history) if stage.summary is not None else {}
            ctx.report({**metrics, **last_eval, **summary}, ckpt)
        if done:
            break
    return history


def _evaluate(
    stage: Stage, step: int, history: History, ctx: TrainContext, eval_fn: EvalFn
) -> dict[str, float]:
    """Dev metrics on rank 0 (the others wait), recorded in ``history.evals``."""
    metrics: dict[str, float] = {}
    if ctx.rank == 0:
        metrics = eval_fn(stage.model)
        history.evals.append(
            {"stage": stage.name, "step": step, "global_step": len(history.steps), **metrics}
        )
        shown = " ".join(f"{k}={v:.4f}" for k, v in metrics.items() if "/" in k)
        ctx.print0(f"[{stage.name}] eval at step {step}: {shown}")
    ctx.barrier()
    return metrics


def finish_without_training(
    stage: Stage, cfg: Config, ctx: TrainContext, history: History, eval_fn: EvalFn | None
) -> History:
    """A stage with nothing to optimise (distill.method none): evaluate, checkpoint."""
    metrics: dict[str, Any] = {"stage": stage.name, "step": 0, "global_step": len(history.steps)}
    if eval_fn is not None:
        metrics.update(_evaluate(stage, 0, history, ctx, eval_fn))
    state = checkpoint_state(stage, history, step=0, total_steps=0, done=True)
    ctx.report(metrics, _checkpoint(stage, cfg, ctx, state, None))
    return history
