"""Per-worker training stages of OPTICAL: plain functions on a Config that return history.

Stages (run in the order of ``cfg.train.stages``):

- ``rank``: contrastive retrieval training of the English teacher (InfoNCE over in-batch
  and hard negatives, Karpukhin et al. 2020; ColBERT scoring by default). Given a
  translated collection it is translate-train CLIR fine-tuning, unchanged.
- ``adapt``: continued masked-LM training on unlabelled text (Devlin et al. 2019's
  80/10/10 masking) of the model that becomes the student; the encoder is kept, the MLM
  head is thrown away.
- ``distill``: OPTICAL (Huang, Yu & Allan, WSDM 2023): the frozen teacher encodes the
  English side of a bitext pair, the student the foreign side, and the student's token
  states are pulled to the teacher's through an entropic OT plan
  (:func:`optical_ray.ot.ot_distillation_loss`). Baselines: token MSE after greedy
  hard alignment, sentence-embedding MSE (Reimers & Gurevych 2020), none (zero-shot).

Ray stays out: everything a loop needs from "the world" (rank, sharding, reporting,
checkpoints) goes through a :class:`TrainContext`; :class:`LocalContext` runs on one
process, and the Ray Train module subclasses it. A run resumed from any checkpoint
gives the same weights as an uninterrupted one: data order and every random draw are
functions of ``(seed, stage, step, rank)`` (fairseq re-seeds per update the same way),
and the optimizer, scheduler and history travel in the checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import shutil
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import Tensor, nn

from optical_ray.batches import Batches, RankExamples, english_rows, filter_bitext, to_device
from optical_ray.checkpoint import (CHECKPOINT_PREFIX, complete_checkpoints, load_module,
                                    read_checkpoint_state, save_checkpoint, set_rng_state)
from optical_ray.config import Config, save_config, to_dict
from optical_ray.errors import ConfigError, DataError, TrainingError
from optical_ray.losses import distill_loss, l2sp_penalty, pair_contrastive_loss, rank_loss
from optical_ray.model import RetrievalModel, resolve_layers

__all__ = [
    "TrainContext", "LocalContext", "History", "run", "train_rank", "train_adapt",
    "train_distill", "init_student", "MLMHead", "evaluate_dev", "resolve_device",
    "resolve_precision", "STAGE_HINTS",
]

#: What to turn when a stage's loss blows up (ends the TrainingError message).
STAGE_HINTS = {
    "rank": "lower rank.lr or raise model.temperature",
    "adapt": "lower adapt.lr",
    "distill": "lower rank.lr/distill.lr or raise distill.epsilon",
}

EvalFn = Callable[[RetrievalModel], dict[str, float]]


# --------------------------------------------------------------------------- context


@dataclass
class TrainContext:
    """What the stage loops need from the world they run in.

    This base runs alone and keeps nothing (no reports, no resume); :class:`LocalContext`
    keeps a run directory; the Ray Train context reports to Ray. ``run_dir`` is this
    worker's local working directory (checkpoints are written under it before
    ``report`` takes them).
    """

    rank: int = 0
    world_size: int = 1
    device: torch.device | None = None
    run_dir: Path | None = None

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """Wrap a module for data-parallel training (local: unchanged)."""
        return model

    def shard(self, n_items: int, epoch: int, seed: int) -> list[int]:
        """This rank's items for ``epoch``: one seeded permutation shared by all ranks,
        dealt round-robin (the remainder dropped, so every rank runs the same number of
        steps). Dealing, not cutting, makes the union of the ranks' k-th batches the
        k-th batch of a single worker with the same global batch: N workers train on
        exactly the examples one worker would."""
        g = torch.Generator().manual_seed(_mix(seed, epoch))
        order = torch.randperm(n_items, generator=g)
        usable = n_items - n_items % self.world_size
        return order[:usable][self.rank::self.world_size].tolist()

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        """Hand metrics (and a finished checkpoint directory) to whoever watches."""

    def latest_checkpoint(self) -> str | None:
        """The checkpoint to resume from, or None for a fresh start."""
        return None

    def checkpoint_root(self) -> Path | None:
        """Where checkpoints are written before :meth:`report` takes them; None writes
        none (nothing would ever read them back)."""
        return Path(self.run_dir) / "checkpoints" if self.run_dir is not None else None

    def all_reduce_mean(self, value: float) -> float:
        """Mean of ``value`` over workers (for logging)."""
        return value

    def barrier(self) -> None:
        """Wait for every worker."""

    def print0(self, *args: Any) -> None:
        """Print on rank 0 only."""
        if self.rank == 0:
            print(*args, flush=True)


class LocalContext(TrainContext):
    """One process, a run directory: ``progress.jsonl``, ``checkpoints/``, resume.

    ``keep``: checkpoints kept (the newest; None keeps all). Each one is written to a
    hidden temporary directory and renamed into place, so a kill mid-write leaves
    nothing :meth:`latest_checkpoint` would pick up.
    """

    def __init__(self, run_dir: str | os.PathLike, *, device: torch.device | str | None = None,
                 keep: int | None = 3) -> None:
        super().__init__(rank=0, world_size=1,
                         device=torch.device(device) if device is not None else None,
                         run_dir=Path(run_dir))
        self.keep = keep

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        assert self.run_dir is not None
        self.run_dir.mkdir(parents=True, exist_ok=True)
        line = {**metrics, "checkpoint": checkpoint_dir, "time": time.time()}
        with open(self.run_dir / "progress.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(line, sort_keys=True) + "\n")
        if checkpoint_dir is not None and self.keep is not None:
            for old in complete_checkpoints(self.checkpoint_root())[:-self.keep]:
                shutil.rmtree(old, ignore_errors=True)

    def latest_checkpoint(self) -> str | None:
        root = self.checkpoint_root()
        if root.is_dir():  # leftovers of writes killed midway: never complete, never read
            for p in root.iterdir():
                if p.name.startswith((".tmp-", ".old-")):
                    shutil.rmtree(p, ignore_errors=True)
        found = complete_checkpoints(root)
        return str(found[-1]) if found else None


# --------------------------------------------------------------------------- history


@dataclass
class History:
    """What a run did: one record per optimizer step, one per evaluation.

    ``steps``: ``{"stage", "step", "global_step", "loss", <component>: .., "lr",
    "examples_per_s"}``; ``evals``: ``{"stage", "step", "global_step", "<pair>/<metric>":
    .., "<metric>": ..}`` (bare metric names are ``cfg.pair``'s).
    """

    steps: list[dict[str, Any]] = field(default_factory=list)
    evals: list[dict[str, Any]] = field(default_factory=list)
    model_dir: str | None = None
    resumes: list[dict[str, Any]] = field(default_factory=list)  # {"stage", "step", "time"}
    # keep_best / patience, once per stage that selected on dev: {"stage", "metric",
    # "best_step", "best_value", "kept_step" (whose weights it ended with), "last_step",
    # "stopped_early"}
    selections: list[dict[str, Any]] = field(default_factory=list)

    def losses(self, stage: str | None = None, key: str = "loss") -> list[float]:
        """The ``key`` column of the step records of ``stage`` (all stages by default)."""
        return [r[key] for r in self.steps if stage in (None, r["stage"]) and key in r]

    def metric(self, name: str, stage: str | None = None) -> list[float]:
        """The ``name`` column of the evaluation records (e.g. ``"en-xc/map"``)."""
        return [r[name] for r in self.evals if stage in (None, r["stage"]) and name in r]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> History:
        return cls(steps=list(data.get("steps", [])), evals=list(data.get("evals", [])),
                   model_dir=data.get("model_dir"), resumes=list(data.get("resumes", [])),
                   selections=list(data.get("selections", [])))


# --------------------------------------------------------------------------- devices, RNG


def resolve_device(cfg: Config, ctx: TrainContext | None = None) -> torch.device:
    """``ctx.device`` if set, else ``cfg.train.device`` (auto = CUDA when present)."""
    if ctx is not None and ctx.device is not None:
        return torch.device(ctx.device)
    want = cfg.train.device
    if want == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device: got 'cuda' but no CUDA device is visible; use 'auto' or 'cpu'")
    return torch.device("cuda" if want == "cuda" or (want == "auto" and torch.cuda.is_available())
                        else "cpu")


def resolve_precision(cfg: Config, device: torch.device) -> torch.dtype | None:
    """The autocast dtype (None = fp32). auto: bf16 on GPUs that support it, else fp32."""
    p = cfg.train.precision
    cuda = device.type == "cuda"
    if p == "auto":
        return torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else None
    if p == "fp32":
        return None
    if p == "fp16" and not cuda:
        raise ConfigError("train.precision: got 'fp16' on CPU (it needs a CUDA device and a "
                          "loss scaler); use 'fp32' or 'bf16'")
    if p == "bf16" and cuda and not torch.cuda.is_bf16_supported():
        raise ConfigError("train.precision: got 'bf16' but this GPU does not support it; use 'fp16'")
    return torch.bfloat16 if p == "bf16" else torch.float16


def _mix(*parts: int) -> int:
    """A 63-bit seed from integers (splitmix-style), stable across processes."""
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h = (h ^ (int(p) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
    return h & 0x7FFFFFFFFFFFFFFF


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)


# --------------------------------------------------------------------------- MLM


class MLMHead(nn.Module):
    """BERT's MLM head (dense, GELU, LayerNorm, decoder tied to the input embeddings),
    usable on any encoder with ``get_input_embeddings``."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        c = encoder.config
        emb = encoder.get_input_embeddings()
        self.dense = nn.Linear(c.hidden_size, c.hidden_size)
        self.norm = nn.LayerNorm(c.hidden_size, eps=getattr(c, "layer_norm_eps", 1e-12))
        self.bias = nn.Parameter(torch.zeros(emb.weight.shape[0]))
        self._embedding = [emb]  # a list: tied, not registered twice as a submodule

    def forward(self, hidden: Tensor) -> Tensor:
        h = self.norm(F.gelu(self.dense(hidden)))
        return F.linear(h, self._embedding[0].weight, self.bias)  # [B, L, vocab]


class _MaskedLM(nn.Module):
    """Encoder + MLM head as one module, so a DDP wrapper syncs both."""

    def __init__(self, encoder: nn.Module, head: MLMHead) -> None:
        super().__init__()
        self.encoder, self.head = encoder, head

    def forward(self, input_ids: Tensor, attention_mask: Tensor, labels: Tensor) -> Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        rows = labels != -100  # score only masked positions: the vocab projection dominates
        logits = self.head(hidden[rows])
        return F.cross_entropy(logits.float(), labels[rows])


def _mask_tokens(input_ids: Tensor, attention_mask: Tensor, tokenizer: Any,
                 probability: float) -> tuple[Tensor, Tensor]:
    """BERT masking: of the chosen tokens 80% -> [MASK], 10% -> random, 10% kept.

    Special tokens and padding are never chosen; at least one token per batch is, so
    the loss is never a mean over nothing.
    """
    ids = input_ids.clone()
    special = torch.zeros_like(ids, dtype=torch.bool)
    for sid in tokenizer.all_special_ids:
        special |= ids == sid
    candidates = attention_mask.bool() & ~special
    chosen = (torch.rand(ids.shape) < probability) & candidates
    if not chosen.any():
        first = candidates.flatten().nonzero()
        if len(first):
            chosen.view(-1)[first[0]] = True
    labels = torch.where(chosen, ids, torch.full_like(ids, -100))
    roll = torch.rand(ids.shape)
    ids[chosen & (roll < 0.8)] = tokenizer.mask_token_id
    swap = chosen & (roll >= 0.8) & (roll < 0.9)
    ids[swap] = torch.randint(len(tokenizer), (int(swap.sum()),))
    return ids, labels


# --------------------------------------------------------------------------- the loop


@dataclass
class _Stage:
    """One stage for :func:`_run_stage`: what to optimise and how to get a loss."""

    name: str
    index: int
    module: nn.Module  # what the optimizer updates (and DDP wraps)
    model: RetrievalModel  # what is evaluated and checkpointed as model/
    lr: float
    steps: int
    epochs: float
    batches: Batches
    examples_per_batch: int
    loss: Callable[[nn.Module, list[int], int], tuple[Tensor, dict[str, Tensor]]]
    teacher: RetrievalModel | None = None
    extra: dict[str, nn.Module] = field(default_factory=dict)
    select: bool = False  # keep_best / patience on dev evaluations


def _total_steps(stage: _Stage, grad_accum: int) -> int:
    if stage.steps > 0:
        return stage.steps
    return max(1, math.ceil(stage.epochs * stage.batches.per_epoch / grad_accum))


def _param_groups(module: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    # No decay on biases and LayerNorm weights (BERT's recipe): decaying a norm's scale
    # towards 0 fights the normalisation.
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if p.requires_grad:
            (no_decay if p.dim() < 2 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def _schedule(total: int, warmup_ratio: float) -> Callable[[int], float]:
    """Linear warm-up to the peak, then linear decay to 0 at ``total``."""
    warmup = int(round(warmup_ratio * total))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (total - step) / max(1, total - warmup))

    return factor


def _raise_nonfinite(stage: str, step: int, loss: float, parts: dict[str, float]) -> None:
    detail = ", ".join(f"{k}={v:.4g}" for k, v in parts.items())
    raise TrainingError(f"{stage} loss became {loss} at step {step}"
                        f"{f' ({detail})' if detail else ''}; {STAGE_HINTS[stage]}")


class _Selection:
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

    def update(self, step: int, metrics: dict[str, float], model: nn.Module,
               ctx: TrainContext) -> bool:
        """Record an evaluation; True when ``patience`` evaluations in a row did not
        improve on the best (strictly)."""
        value = 0.0
        if ctx.rank == 0:
            if self.metric not in metrics:
                raise ConfigError(f"train.select_metric: {self.metric!r} is not among the dev "
                                  f"metrics {sorted(k for k in metrics if '/' not in k)}")
            value = float(metrics[self.metric]) * ctx.world_size
        value = ctx.all_reduce_mean(value)
        if math.isfinite(value) and value > self.best_value:
            self.best_value, self.best_step, self.best_eval = value, step, dict(metrics)
            self.since_best = 0
            if self.keep_best:
                self.weights = {k: v.detach().to("cpu", copy=True)
                                for k, v in model.state_dict().items()}
        else:
            self.since_best += 1
        return self.patience > 0 and self.since_best >= self.patience

    def finish(self, stage: _Stage, step: int, history: History, ctx: TrainContext,
               last_eval: dict[str, float], stopped: bool) -> dict[str, float]:
        """End of the stage: restore the best weights (keep_best) and return the dev
        metrics of the model the stage ends with."""
        kept = step
        if self.keep_best and self.weights is not None and self.best_step != step:
            stage.model.load_state_dict(self.weights)
            last_eval, kept = self.best_eval, self.best_step
        history.selections.append({"stage": stage.name, "metric": self.metric,
                                   "best_step": self.best_step, "best_value": self.best_value,
                                   "kept_step": kept, "last_step": step,
                                   "stopped_early": stopped})
        ctx.print0(f"[{stage.name}] dev {self.metric}: best {self.best_value:.4f} at step "
                   f"{self.best_step}; ending with the weights of step {kept}"
                   f"{' (stopped early)' if stopped else ''}")
        return last_eval

    def state(self) -> dict[str, Any]:
        return {"best_value": self.best_value, "best_step": self.best_step,
                "best_eval": self.best_eval, "since_best": self.since_best}

    def restore(self, state: dict[str, Any] | None, ckpt: Path) -> None:
        """Continue from a checkpoint's selection state (and ``best.safetensors``)."""
        if not state:
            return
        self.best_value, self.best_step = float(state["best_value"]), int(state["best_step"])
        self.best_eval, self.since_best = dict(state["best_eval"]), int(state["since_best"])
        if self.keep_best and (ckpt / "best.safetensors").is_file():
            self.weights = load_file(str(ckpt / "best.safetensors"))


def _run_stage(stage: _Stage, cfg: Config, ctx: TrainContext, history: History,
               resume: str | None, eval_fn: EvalFn | None) -> History:
    """Optimise ``stage``: AdamW, warm-up + linear decay, gradient accumulation,
    autocast, clipping; log, evaluate, checkpoint and report as ``cfg.train`` says."""
    tc = cfg.train
    device = resolve_device(cfg, ctx)
    amp_dtype = resolve_precision(cfg, device)
    total = _total_steps(stage, tc.grad_accum)
    opt = torch.optim.AdamW(_param_groups(stage.module, tc.weight_decay), lr=stage.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _schedule(total, tc.warmup_ratio))
    scaler = torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 else None
    start = 0
    if resume is not None:
        state = read_checkpoint_state(resume)
        start = int(state["step"])
        opt.load_state_dict(torch.load(Path(resume) / "optimizer.pt", map_location=device,
                                       weights_only=True))
        sched.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        set_rng_state(load_file(str(Path(resume) / "rng.safetensors")), state["rng"])
        ctx.print0(f"[{stage.name}] resuming at step {start}/{total} from {resume}")
    wrapped = ctx.prepare_model(stage.module)
    params = [p for g in opt.param_groups for p in g["params"]]
    autocast = (lambda: torch.autocast(device.type, dtype=amp_dtype)) if amp_dtype is not None \
        else contextlib.nullcontext
    last_eval: dict[str, float] = {}
    sel = _Selection(tc.select_metric, tc.keep_best, tc.patience) \
        if stage.select and eval_fn is not None else None
    if sel is not None:
        if resume is not None:
            sel.restore(read_checkpoint_state(resume).get("selection"), Path(resume))
        else:  # the starting model is a candidate too (distillation may only hurt)
            sel.update(0, _evaluate(stage, 0, history, ctx, eval_fn), stage.model, ctx)
    for step in range(start + 1, total + 1):
        t0 = time.perf_counter()
        # Every random draw of this step (dropout, masking, sampled negatives) follows
        # from (seed, stage, step, rank): a resumed run repeats it exactly.
        _seed_all(_mix(tc.seed, stage.index, step, ctx.rank))
        stage.module.train()
        opt.zero_grad(set_to_none=True)
        loss_sum, parts_sum = 0.0, {}
        epoch = pos = 0
        for micro in range(tc.grad_accum):
            indices, epoch, pos = stage.batches((step - 1) * tc.grad_accum + micro)
            sync = micro == tc.grad_accum - 1 or not hasattr(wrapped, "no_sync")
            with contextlib.nullcontext() if sync else wrapped.no_sync():
                with autocast():
                    loss, parts = stage.loss(wrapped, indices, (step - 1) * tc.grad_accum + micro)
                value = float(loss.detach())
                part_values = {k: float(v.detach()) for k, v in parts.items()}
                if not math.isfinite(value):
                    _raise_nonfinite(stage.name, step, value, part_values)
                scaled = loss / tc.grad_accum
                (scaler.scale(scaled) if scaler is not None else scaled).backward()
            loss_sum += value / tc.grad_accum
            for k, v in part_values.items():
                parts_sum[k] = parts_sum.get(k, 0.0) + v / tc.grad_accum
        if scaler is not None:
            scaler.unscale_(opt)
        if tc.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, tc.grad_clip)
        lr = opt.param_groups[0]["lr"]
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        sched.step()
        seconds = time.perf_counter() - t0
        record = {"stage": stage.name, "step": step, "global_step": len(history.steps) + 1,
                  "loss": ctx.all_reduce_mean(loss_sum), "lr": lr, "epoch": epoch,
                  "examples_per_s": stage.examples_per_batch * tc.grad_accum * ctx.world_size / seconds,
                  **{k: ctx.all_reduce_mean(v) for k, v in parts_sum.items()}}
        history.steps.append(record)
        if step % tc.log_every == 0 or step == total:
            detail = " ".join(f"{k}={v:.4f}" for k, v in parts_sum.items() if len(parts_sum) > 1)
            ctx.print0(f"[{stage.name}] step {step}/{total} loss {record['loss']:.4f} {detail}"
                       f"{' ' if detail else ''}lr {lr:.2e} {record['examples_per_s']:.1f} ex/s")
        done = step == total
        do_eval = eval_fn is not None and (done or (tc.eval_every > 0 and step % tc.eval_every == 0))
        do_ckpt = done or (tc.checkpoint_every > 0 and step % tc.checkpoint_every == 0)
        stopped = False
        if do_eval:
            last_eval = _evaluate(stage, step, history, ctx, eval_fn)
            if sel is not None and sel.update(step, last_eval, stage.model, ctx) and not done:
                stopped = done = do_ckpt = True
        if done and sel is not None:
            last_eval = sel.finish(stage, step, history, ctx, last_eval, stopped)
        if do_eval or do_ckpt:
            metrics = {k: v for k, v in record.items() if k != "epoch"}
            metrics.update(last_eval)
            ckpt = None
            if do_ckpt:
                state = {"stage": stage.name, "stage_index": stage.index, "step": step,
                         "total_steps": total, "stage_done": done, "epoch": epoch,
                         "position": pos, "global_step": record["global_step"],
                         "history": history.to_dict(), "scheduler": sched.state_dict(),
                         "scaler": scaler.state_dict() if scaler is not None else None,
                         "selection": sel.state() if sel is not None else None}
                best = {"best": sel.weights} if sel is not None and sel.weights is not None \
                    and not done else None
                ckpt = _checkpoint(stage, cfg, ctx, state, opt, best)
            ctx.report(metrics, ckpt)
        if done:
            break
    return history


def _evaluate(stage: _Stage, step: int, history: History, ctx: TrainContext,
              eval_fn: EvalFn) -> dict[str, float]:
    """Dev metrics on rank 0 (the others wait), recorded in ``history.evals``."""
    metrics: dict[str, float] = {}
    if ctx.rank == 0:
        metrics = eval_fn(stage.model)
        history.evals.append({"stage": stage.name, "step": step,
                              "global_step": len(history.steps), **metrics})
        shown = " ".join(f"{k}={v:.4f}" for k, v in metrics.items() if "/" in k)
        ctx.print0(f"[{stage.name}] eval at step {step}: {shown}")
    ctx.barrier()
    return metrics


def _checkpoint(stage: _Stage, cfg: Config, ctx: TrainContext, state: dict[str, Any],
                opt: torch.optim.Optimizer | None,
                tensors: dict[str, dict[str, Tensor]] | None = None) -> str | None:
    """Rank 0 writes the checkpoint; every rank gets its path (None off rank 0)."""
    path, root = None, ctx.checkpoint_root()
    if ctx.rank == 0 and root is not None:
        name = f"{CHECKPOINT_PREFIX}{stage.index}-{stage.name}-{state['step']:07d}"
        path = str(save_checkpoint(root, name, state=state, model=stage.model,
                                   cfg=cfg, teacher=stage.teacher, extra=stage.extra,
                                   optimizer=None if state["stage_done"] else opt,
                                   tensors=tensors))
    ctx.barrier()
    return path


def _finish_without_training(stage: _Stage, cfg: Config, ctx: TrainContext, history: History,
                             eval_fn: EvalFn | None) -> History:
    """A stage with nothing to optimise (distill.method none): evaluate, checkpoint."""
    metrics: dict[str, Any] = {"stage": stage.name, "step": 0, "global_step": len(history.steps)}
    if eval_fn is not None:
        metrics.update(_evaluate(stage, 0, history, ctx, eval_fn))
    state = {"stage": stage.name, "stage_index": stage.index, "step": 0, "total_steps": 0,
             "stage_done": True, "epoch": 0, "position": 0, "global_step": len(history.steps),
             "history": history.to_dict(), "scheduler": None, "scaler": None}
    ctx.report(metrics, _checkpoint(stage, cfg, ctx, state, None))
    return history


# --------------------------------------------------------------------------- stages


def train_rank(model: RetrievalModel, collection: Any, cfg: Config,
               ctx: TrainContext | None = None, *, history: History | None = None,
               resume: str | None = None, stage_index: int = 0,
               eval_fn: EvalFn | None = None) -> History:
    """Stage ``rank``: InfoNCE with temperature ``model.temperature`` over in-batch
    negatives plus ``rank.hard_negatives`` hard negatives per query.

    Trains ``model`` in place (the English teacher, or translate-train CLIR when
    ``collection`` is a translated one) and returns the history.
    """
    ctx = ctx or TrainContext()
    history = history if history is not None else History()
    rc = cfg.rank
    device = resolve_device(cfg, ctx)
    model.to(device)
    data = collection if isinstance(collection, RankExamples) else RankExamples(collection)
    n_docs = 1 + rc.hard_negatives

    def loss_fn(fwd: nn.Module, indices: list[int], batch_no: int) -> tuple[Tensor, dict[str, Tensor]]:
        queries, docs = data.batch(indices, rc.hard_negatives)
        q = fwd(**to_device(model.tokenize(queries, "query"), device))
        d = fwd(**to_device(model.tokenize(docs, "doc"), device))
        loss = rank_loss(model, q, d, n_docs, cfg.model.temperature)
        return loss, {"rank": loss}

    stage = _Stage("rank", stage_index, model, model, rc.lr, rc.steps, rc.epochs,
                   Batches(ctx, len(data), rc.batch_size, _mix(cfg.train.seed, stage_index), "rank"),
                   rc.batch_size, loss_fn)
    if resume is not None:
        _restore_modules(resume, model, None)
    return _run_stage(stage, cfg, ctx, history, resume, eval_fn)


def train_adapt(model: RetrievalModel, texts: Sequence[str], cfg: Config,
                ctx: TrainContext | None = None, *, history: History | None = None,
                resume: str | None = None, stage_index: int = 0,
                eval_fn: EvalFn | None = None, teacher: RetrievalModel | None = None) -> History:
    """Stage ``adapt``: masked-LM continued pre-training of ``model``'s encoder on
    ``texts`` (``adapt.mlm_probability``). A fresh MLM head, tied to the input
    embeddings, is trained alongside and dropped at the end. ``teacher`` only rides
    along in checkpoints (the frozen teacher of a later distill stage)."""
    ctx = ctx or TrainContext()
    history = history if history is not None else History()
    ac = cfg.adapt
    device = resolve_device(cfg, ctx)
    model.to(device)
    texts = list(texts)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_mix(cfg.train.seed, stage_index, 0xAD))
        head = MLMHead(model.encoder).to(device)
    mlm = _MaskedLM(model.encoder, head)

    def loss_fn(fwd: nn.Module, indices: list[int], batch_no: int) -> tuple[Tensor, dict[str, Tensor]]:
        batch = model.tokenize([texts[i] for i in indices], "doc")
        ids, labels = _mask_tokens(batch["input_ids"], batch["attention_mask"], model.tokenizer,
                                   ac.mlm_probability)
        loss = fwd(ids.to(device), batch["attention_mask"].to(device), labels.to(device))
        return loss, {"mlm": loss}

    stage = _Stage("adapt", stage_index, mlm, model, ac.lr, ac.steps, ac.epochs,
                   Batches(ctx, len(texts), ac.batch_size, _mix(cfg.train.seed, stage_index), "adapt"),
                   ac.batch_size, loss_fn, teacher=teacher, extra={"mlm_head": head})
    if resume is not None:
        _restore_modules(resume, model, None)
        load_module(Path(resume), "mlm_head", head, device)
    return _run_stage(stage, cfg, ctx, history, resume, eval_fn)


def init_student(teacher: RetrievalModel, cfg: Config) -> RetrievalModel:
    """The student a distill stage starts from: a copy of the teacher
    (``distill.init: teacher``) or a saved model directory."""
    init = cfg.distill.init
    if init == "teacher":
        return teacher.copy()
    if not Path(init).is_dir():
        raise ConfigError(f"distill.init: got {init!r}, expected 'teacher' or a saved model directory")
    return RetrievalModel.load(init)


@contextlib.contextmanager
def _frozen_unreachable(student: RetrievalModel, layers: list[int], reaches_top: bool,
                        trainable: str = "all"):
    """Freeze parameters no distillation gradient reaches (layers above the deepest
    aligned one, the ColBERT projection) unless ranking data or the contrastive term
    (``reaches_top``) trains them too; with
    ``trainable="embeddings"`` everything but the encoder's input embeddings.

    DDP without ``find_unused_parameters`` fails on parameters that get no gradient;
    AdamW skips parameters without a gradient either way, so results are unchanged.
    """
    frozen: list[nn.Parameter] = []
    if trainable == "embeddings":
        embeddings = getattr(student.encoder, "embeddings", None) or \
            student.encoder.get_input_embeddings()
        keep = {id(p) for p in embeddings.parameters()}
        frozen = [p for p in student.parameters() if p.requires_grad and id(p) not in keep]
    elif not reaches_top:
        deepest = max(resolve_layers(layers, student.depth))
        blocks = getattr(getattr(student.encoder, "encoder", None), "layer", None)
        modules: list[nn.Module] = list(blocks[deepest:]) if isinstance(blocks, nn.ModuleList) else []
        if student.projection is not None:
            modules.append(student.projection)
        frozen = [p for mod in modules for p in mod.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in frozen:
            p.requires_grad_(True)


class _SinkhornNotes:
    """Collects Sinkhorn's non-convergence warnings over a stage: the first one is
    printed, the rest are counted and summed up once at the end of the stage, instead of
    one warning per step (hundreds of lines in a sweep's log)."""

    def __init__(self, ctx: TrainContext, cfg: Config) -> None:
        self.ctx, self.cfg = ctx, cfg
        self.steps = self.unconverged = 0

    @contextlib.contextmanager
    def watch(self):
        from optical_ray.ot import SinkhornConvergenceWarning

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", SinkhornConvergenceWarning)
            yield
        self.steps += 1
        hits = [w for w in caught if issubclass(w.category, SinkhornConvergenceWarning)]
        for w in caught:
            if not issubclass(w.category, SinkhornConvergenceWarning):
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        if hits:
            self.unconverged += 1
            if self.unconverged == 1:
                self.ctx.print0(f"[distill] {hits[0].message} (further steps like this are "
                                "counted and reported at the end of the stage)")

    def summary(self) -> None:
        if self.unconverged:
            d = self.cfg.distill
            self.ctx.print0(f"[distill] Sinkhorn stopped at distill.sinkhorn_iters="
                            f"{d.sinkhorn_iters} before distill.sinkhorn_tol={d.sinkhorn_tol} "
                            f"in {self.unconverged} of {self.steps} steps (epsilon {d.epsilon}); "
                            "raise distill.sinkhorn_iters or distill.epsilon for exact plans")


def train_distill(student: RetrievalModel | None, teacher: RetrievalModel,
                  bitext: Sequence[tuple[str, str]], cfg: Config,
                  ctx: TrainContext | None = None, rank_data: Any = None, *,
                  history: History | None = None, resume: str | None = None,
                  stage_index: int = 0, eval_fn: EvalFn | None = None) -> tuple[RetrievalModel, History]:
    """Stage ``distill``: align the student's token states on the foreign side of
    ``bitext`` (``(english, foreign)`` pairs) to the frozen teacher's on the English side.

    ``student`` None starts from :func:`init_student`. With ``distill.rank_batch_size >
    0`` each step also draws that many ranking examples from ``rank_data`` (a
    collection) and the loss is ``weight * L_distill + (1 - weight) * L_rank``. Method
    ``none`` trains nothing (the zero-shot baseline). Returns the student and history.

    Regularisation: ``distill.long_pairs`` / ``distill.max_length_ratio`` filter the
    bitext (:func:`filter_bitext`); ``distill.english_fraction`` of the rows show the
    student the English side (English retention); ``distill.l2sp`` adds
    :func:`l2sp_penalty` towards the teacher's weights; ``train.keep_best`` and
    ``train.patience`` select the final weights on dev (``eval_fn``).
    """
    ctx = ctx or TrainContext()
    history = history if history is not None else History()
    dc = cfg.distill
    device = resolve_device(cfg, ctx)
    teacher.to(device).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    if student is None:
        student = init_student(teacher, cfg)
    student.to(device)
    for p in student.parameters():
        p.requires_grad_(True)
    pairs = list(bitext)
    if dc.method != "none":
        pairs, counts = filter_bitext(pairs, teacher, student, cfg)
        if counts["too_long"] or counts["bad_ratio"]:
            ctx.print0(f"[distill] bitext: kept {counts['kept']} pairs, dropped "
                       f"{counts['too_long']} longer than model.max_bitext_length="
                       f"{cfg.model.max_bitext_length} tokens and {counts['bad_ratio']} with a "
                       f"length ratio over {dc.max_length_ratio}")
        if not pairs:
            raise DataError("distill: every bitext pair was filtered out; raise "
                            "model.max_bitext_length, set distill.long_pairs=truncate or "
                            "raise distill.max_length_ratio")
    select = cfg.train.keep_best or cfg.train.patience > 0
    if select and eval_fn is None and dc.method != "none":
        raise ConfigError("train.keep_best/train.patience select weights on dev evaluations: "
                          "pass eval_fn, or turn them off")
    reference: list[tuple[Tensor, Tensor]] = []
    if dc.l2sp > 0:
        t_params = dict(teacher.named_parameters())
        for name, p in student.named_parameters():
            ref = t_params.get(name)
            if ref is None or ref.shape != p.shape:
                raise ConfigError(f"distill.l2sp: the student's {name} has no counterpart of the "
                                  "same shape in the teacher; L2-SP needs the teacher's "
                                  "architecture (distill.init) or distill.l2sp=0")
            reference.append((p, ref.detach()))
    hybrid = dc.rank_batch_size > 0 and dc.method != "none"
    ranked = None
    if hybrid:
        if rank_data is None:
            raise ConfigError("distill.rank_batch_size > 0 needs ranking data: pass rank_data "
                              "(the rank collection), or set distill.rank_batch_size=0")
        ranked = rank_data if isinstance(rank_data, RankExamples) else RankExamples(rank_data)
    rank_batches = Batches(ctx, len(ranked), dc.rank_batch_size, _mix(cfg.train.seed, stage_index, 1),
                            "distill (ranking part)") if ranked is not None else None
    n_docs = 1 + cfg.rank.hard_negatives
    method, lam = dc.method, dc.weight
    sinkhorn_notes = _SinkhornNotes(ctx, cfg)

    def loss_fn(fwd: nn.Module, indices: list[int], batch_no: int) -> tuple[Tensor, dict[str, Tensor]]:
        english = [pairs[i][0] for i in indices]
        # English retention: the first k rows (the batch is shuffled) show the student
        # the English side, so en->en stays matched to the teacher.
        k = english_rows(batch_no, len(indices), dc.english_fraction)
        foreign = english[:k] + [pairs[i][1] for i in indices[k:]]
        t_batch = to_device(teacher.tokenize(english, "bitext"), device)
        s_batch = to_device(student.tokenize(foreign, "bitext"), device)
        with torch.no_grad():
            t_enc = teacher.encode(t_batch["input_ids"], t_batch["attention_mask"], layers=dc.layers)
        s_enc = fwd(s_batch["input_ids"], s_batch["attention_mask"], layers=dc.layers)
        with sinkhorn_notes.watch():
            l_dist = distill_loss(method, t_enc.layer_states, s_enc.layer_states,
                                  t_batch["attention_mask"], s_batch["attention_mask"], cfg)
        parts = {method: l_dist}
        if dc.contrastive > 0:
            l_con = pair_contrastive_loss(student, s_enc, t_enc, cfg.model.temperature)
            parts["contrastive"] = l_con
            l_dist = l_dist + dc.contrastive * l_con
        penalty = l_dist.new_zeros(())
        if reference:
            penalty = dc.l2sp * l2sp_penalty(reference).to(l_dist.device)
            parts["l2sp"] = penalty
        if rank_batches is None:
            return l_dist + penalty, parts
        r_idx, _, _ = rank_batches(batch_no)
        queries, docs = ranked.batch(r_idx, cfg.rank.hard_negatives)
        q = fwd(**to_device(student.tokenize(queries, "query"), device))
        d = fwd(**to_device(student.tokenize(docs, "doc"), device))
        l_rank = rank_loss(student, q, d, n_docs, cfg.model.temperature)
        parts["rank"] = l_rank
        return lam * l_dist + (1.0 - lam) * l_rank + penalty, parts

    stage = _Stage("distill", stage_index, student, student, dc.lr, dc.steps, dc.epochs,
                   Batches(ctx, len(pairs), dc.batch_size, _mix(cfg.train.seed, stage_index), "distill"),
                   dc.batch_size, loss_fn, teacher=teacher, select=select)
    if method == "none":
        return student, _finish_without_training(stage, cfg, ctx, history, eval_fn)
    if resume is not None:
        _restore_modules(resume, student, None)
    with _frozen_unreachable(student, dc.layers, hybrid or dc.contrastive > 0, dc.trainable):
        _run_stage(stage, cfg, ctx, history, resume, eval_fn)
    sinkhorn_notes.summary()
    return student, history


def _restore_modules(ckpt: str, model: RetrievalModel, teacher: RetrievalModel | None) -> None:
    """Load a checkpoint's weights into existing modules (same architecture)."""
    device = model.device
    saved = RetrievalModel.load(Path(ckpt) / "model", device=device)
    model.load_state_dict(saved.state_dict())
    if teacher is not None:
        teacher.load_state_dict(RetrievalModel.load(Path(ckpt) / "teacher", device=device).state_dict())


# --------------------------------------------------------------------------- run


def evaluate_dev(model: RetrievalModel, cfg: Config, split: str | None = None) -> dict[str, float]:
    """Evaluate on ``split`` (default ``cfg.eval.split``): ``{"<pair>/<metric>": ..}``
    plus bare ``"<metric>"`` keys for ``cfg.pair``, which is always evaluated (it is
    what a sweep optimises), added to ``eval.pairs`` if they leave it out."""
    from optical_ray.evaluate import evaluate_pairs

    pairs = list(cfg.eval.pairs) + [cfg.pair] if cfg.eval.pairs else None
    results = evaluate_pairs(model, cfg, pairs=pairs, split=split or cfg.eval.split,
                             load_collection=_cached_collection)
    flat = {f"{pair}/{k}": float(v) for pair, r in results.items() for k, v in r.metrics.items()}
    if cfg.pair in results:
        flat.update({k: float(v) for k, v in results[cfg.pair].metrics.items()})
    return flat


_COLLECTIONS: dict[tuple[str, str, str], Any] = {}


def _cached_collection(cfg: Config, pair: str, split: str) -> Any:
    """Evaluation collections read once per process (evaluation runs every few steps)."""
    from optical_ray.data.sources import ensure_data_root, eval_collection

    src = cfg.data.eval.get(pair)
    key = (str(src.path) if src is not None else str(ensure_data_root(cfg)), pair, split)
    if key not in _COLLECTIONS:
        if len(_COLLECTIONS) > 16:
            _COLLECTIONS.clear()
        _COLLECTIONS[key] = eval_collection(cfg, pair, split)
    return _COLLECTIONS[key]


def _config_drift(saved: dict[str, Any], cfg: Config) -> list[str]:
    """Keys whose values differ between a checkpoint's config and ``cfg`` (training
    sections only: scaling, storage and sweep may change on a restart)."""
    now = to_dict(cfg)
    out = []
    for section in ("model", "data", "train", "rank", "adapt", "distill", "pair"):
        if saved.get(section) != now.get(section):
            a, b = saved.get(section), now.get(section)
            if isinstance(a, dict) and isinstance(b, dict):
                out += [f"{section}.{k}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
            else:
                out.append(section)
    return out


def run(cfg: Config, ctx: TrainContext | None = None) -> History:
    """Run ``cfg.train.stages`` in order; resume from ``ctx.latest_checkpoint()``.

    The teacher is the model after ``rank`` (or ``train.teacher``, or the initial model
    when there is no rank stage); ``adapt`` then ``distill`` work on a copy (the
    student). Dev metrics are reported every ``train.eval_every`` steps and at the end
    of each stage; the final model goes to ``<run_dir>/model`` with the resolved config
    beside it (``<run_dir>/config.json``). Returns the history.
    """
    from optical_ray.data import sources

    ctx = ctx or LocalContext(Path(cfg.output_dir) / cfg.name)
    if ctx.run_dir is None:
        ctx.run_dir = Path(cfg.output_dir) / cfg.name
    device = resolve_device(cfg, ctx)
    _seed_all(_mix(cfg.train.seed, ctx.rank))
    stages = [s for s in cfg.train.stages if not (s == "rank" and cfg.train.teacher)]
    history = History()
    teacher: RetrievalModel | None = None
    ckpt = ctx.latest_checkpoint()
    state = read_checkpoint_state(ckpt) if ckpt else None
    if state is not None:
        drift = _config_drift(state.get("config", {}), cfg)
        if drift:
            warnings.warn(f"resuming from {ckpt}, written with a different config "
                          f"({', '.join(drift[:8])}); start in a new run directory "
                          "(output_dir/name) to train this config from scratch", UserWarning, stacklevel=2)
        model = RetrievalModel.load(Path(ckpt) / "model", device=device)
        model.cfg = cfg.model
        if (Path(ckpt) / "teacher").is_dir():
            teacher = RetrievalModel.load(Path(ckpt) / "teacher", device=device)
        history = History.from_dict(state["history"])
        history.resumes.append({"stage": state["stage"], "step": int(state["step"]),
                                "time": time.time()})
        ctx.print0(f"resuming from {ckpt} (stage {state['stage']}, step {state['step']})")
    elif cfg.train.teacher:
        model = RetrievalModel.from_config(_with_model(cfg, cfg.train.teacher))
    else:
        model = RetrievalModel.from_config(cfg)
    eval_fn = (lambda m: evaluate_dev(m, cfg))
    for i, name in enumerate(stages):
        resume = None
        if state is not None:
            if i < state["stage_index"] or (i == state["stage_index"] and state["stage_done"]):
                continue
            if i == state["stage_index"]:
                resume = ckpt
        common = {"history": history, "resume": resume, "stage_index": i, "eval_fn": eval_fn}
        if name == "rank":
            train_rank(model, sources.rank_collection(cfg), cfg, ctx, **common)
            continue
        if teacher is None and "distill" in stages[i:]:
            teacher = model.copy()  # frozen as it stands before adapt/distill change the model
        if name == "adapt":
            langs = cfg.adapt.langs or [cfg.foreign_lang]
            texts = [t for lang in langs for t in sources.mono_texts(cfg, lang)]
            train_adapt(model, texts, cfg, ctx, teacher=teacher, **common)
        elif name == "distill":
            # init "teacher": the model as it stands (the teacher, adapted if adapt ran)
            # goes on as the student; a resumed student is the checkpoint's model.
            student = model if resume is not None or cfg.distill.init == "teacher" \
                else init_student(teacher, cfg)
            rank_data = sources.rank_collection(cfg) if cfg.distill.rank_batch_size > 0 else None
            model, _ = train_distill(student, teacher, sources.bitext_pairs(cfg, cfg.pair), cfg, ctx,
                                     rank_data, **common)
    if ctx.rank == 0:
        run_dir = Path(ctx.run_dir)
        out = _atomic_save(model, cfg, run_dir / "model")
        save_config(cfg, run_dir / "config.json")
        history.model_dir = str(out)
        (run_dir / "history.json").write_text(json.dumps(history.to_dict()) + "\n", encoding="utf-8")
    ctx.barrier()
    return history


def _with_model(cfg: Config, path: str) -> Config:
    from optical_ray.config import from_flat

    return from_flat({"model.name_or_path": path}, cfg)


def _atomic_save(model: RetrievalModel, cfg: Config, out: Path) -> Path:
    tmp = out.parent / f".tmp-{out.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save(tmp, cfg)
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out
