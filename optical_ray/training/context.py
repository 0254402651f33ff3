"""The world a training loop runs in, and what it leaves behind.

:class:`TrainContext` is everything a stage loop needs from outside (rank, sharding,
reporting, checkpoints, devices); :class:`LocalContext` runs in one process with a run
directory (``progress.jsonl``, ``checkpoints/``, resume); the Ray contexts subclass it.
:class:`History` is what a run did. :func:`fill_metric` is the one reporting rule both
Ray contexts follow (a metric in every report, and a finite ``score``).
Seeds: every random draw of a run is a function of ``(seed, stage, step, rank)`` through
:func:`mix_seed`, so a resumed run repeats an uninterrupted one exactly.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from optical_ray.training.checkpoint import checkpoint_problem, complete_checkpoints, warn_damaged
from optical_ray.config import Config
from optical_ray.errors import ConfigError

__all__ = [
    "TrainContext",
    "LocalContext",
    "History",
    "PROGRESS_FILE",
    "read_progress",
    "UNSCORED",
    "worst_score",
    "fill_metric",
    "resolve_device",
    "resolve_precision",
    "check_local_gpus",
    "mix_seed",
    "seed_all",
]

#: The rows :class:`LocalContext` reports, one JSON object a line, in its run directory.
PROGRESS_FILE = "progress.jsonl"


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
        g = torch.Generator().manual_seed(mix_seed(seed, epoch))
        order = torch.randperm(n_items, generator=g)
        usable = n_items - n_items % self.world_size
        return order[:usable][self.rank :: self.world_size].tolist()

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

    def placement(self) -> list[dict[str, Any]]:
        """Where each rank trains: its node, the GPU ids it holds and its device, as
        written into every checkpoint's ``state.json`` (here: this one process)."""
        return [{"rank": 0, "node": "local", "gpu_ids": [], "device": str(self.device or "cpu")}]

    def barrier(self) -> None:
        """Wait for every worker."""

    def print0(self, *args: Any) -> None:
        """Print on rank 0 only."""
        if self.rank == 0:
            print(*args, flush=True)


class LocalContext(TrainContext):
    """One process, a run directory: ``progress.jsonl`` (read it with
    :func:`read_progress`), ``checkpoints/``, resume.

    ``keep``: checkpoints kept (the newest; None keeps all). Each one is written to a
    hidden temporary directory and renamed into place, so a kill mid-write leaves
    nothing :meth:`latest_checkpoint` would pick up.
    """

    def __init__(
        self,
        run_dir: str | os.PathLike,
        *,
        device: torch.device | str | None = None,
        keep: int | None = 3,
    ) -> None:
        super().__init__(
            rank=0,
            world_size=1,
            device=torch.device(device) if device is not None else None,
            run_dir=Path(run_dir),
        )
        self.keep = keep

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        assert self.run_dir is not None
        self.run_dir.mkdir(parents=True, exist_ok=True)
        # Every row names its (stage, step): a resumed run repeats the steps after its
        # last checkpoint, and :func:`read_progress` keeps the newest row of each.
        line = {**metrics, "checkpoint": checkpoint_dir, "time": time.time()}
        path = self.run_dir / PROGRESS_FILE
        # A kill mid-write leaves a torn last line: start on a fresh one, or the next
        # row would be glued to it and lost with it.
        torn = path.is_file() and path.stat().st_size > 0 and _last_byte(path) != b"\n"
        with open(path, "a", encoding="utf-8") as f:
            f.write(("\n" if torn else "") + json.dumps(line, sort_keys=True) + "\n")
        if checkpoint_dir is not None and self.keep is not None:
            for old in complete_checkpoints(self.checkpoint_root())[: -self.keep]:
                shutil.rmtree(old, ignore_errors=True)

    def latest_checkpoint(self) -> str | None:
        root = self.checkpoint_root()
        if root.is_dir():  # leftovers of writes killed midway: never complete, never read
            for p in root.iterdir():
                if p.name.startswith((".tmp-", ".old-")):
                    shutil.rmtree(p, ignore_errors=True)
        # Newest first; a damaged one (a file cut short, an optimizer state that is not
        # plain tensors) is skipped with a warning, as an unreadable state.json is.
        for path in reversed(complete_checkpoints(root)):
            problem = checkpoint_problem(path)
            if problem is None:
                return str(path)
            warn_damaged(path, problem)
        return None


def _last_byte(path: Path) -> bytes:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1)


def read_progress(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of ``<run_dir>/progress.jsonl``, one per reported ``(stage, step)``.

    A resumed run reports again the steps between its last checkpoint and the kill, so
    the file can hold a ``(stage, step)`` twice: the newest row wins, and rows come in
    the order they were last written. A torn line (a kill mid-write) is skipped.
    """
    path = Path(run_dir) / PROGRESS_FILE
    if not path.is_file():
        return []
    rows: dict[tuple[Any, ...], dict[str, Any]] = {}
    for i, text in enumerate(path.read_text(encoding="utf-8").splitlines()):
        try:
            row = json.loads(text)
        except ValueError:
            continue
        if not isinstance(row, dict):
            continue
        # a row without its (stage, step) (reported by other code) is kept as it is
        key = (row["stage"], row["step"]) if "stage" in row and "step" in row else (None, i)
        rows.pop(key, None)  # re-insert: dict order is then the order of the newest rows
        rows[key] = row
    return list(rows.values())


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
        return cls(
            steps=list(data.get("steps", [])),
            evals=list(data.get("evals", [])),
            model_dir=data.get("model_dir"),
            resumes=list(data.get("resumes", [])),
            selections=list(data.get("selections", [])),
        )


# --------------------------------------------------------------------------- reporting

# The score of a report before any evaluation: the worst finite value. Not -inf: Ray
# Train saves its checkpoint-manager snapshot as JSON (pydantic), where -inf and NaN
# become null, and a run resumed from that snapshot then fails to rank its checkpoints
# ("unsupported operand type(s) for *: 'float' and 'NoneType'").
UNSCORED = 1e300


def worst_score(mode: str) -> float:
    """The worst finite score for ``mode`` (``max``: -1e300, ``min``: +1e300)."""
    if mode not in ("max", "min"):
        raise ValueError(f"mode: got {mode!r}, allowed: max, min")
    return -UNSCORED if mode == "max" else UNSCORED


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def fill_metric(
    metrics: dict[str, Any], last: dict[str, Any], metric: str, mode: str
) -> dict[str, Any]:
    """The metrics a Ray context reports: a copy of ``metrics`` in which ``metric`` is
    always present and ``"score"`` is always finite.

    ``metric`` is the current value when ``metrics`` has it, else ``last[metric]`` (the
    last evaluated value: pass the last report that carried it) when finite, else
    :func:`worst_score` for ``mode``. Schedulers and searchers (ASHA, Optuna) read the
    metric from every result, and Ray Train ranks checkpoints by ``score``, which it
    saves as JSON (so never -inf or NaN: a non-finite metric scores as the worst).
    """
    out = dict(metrics)
    if metric not in out:
        previous = last.get(metric)
        out[metric] = float(previous) if _finite(previous) else worst_score(mode)
    value = out[metric]
    out["score"] = float(value) if _finite(value) else worst_score(mode)
    return out


# --------------------------------------------------------------------------- devices, RNG


def resolve_device(cfg: Config, ctx: TrainContext | None = None) -> torch.device:
    """``ctx.device`` if set, else ``cfg.train.device`` (auto = CUDA when present)."""
    if ctx is not None and ctx.device is not None:
        return torch.device(ctx.device)
    want = cfg.train.device
    if want == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "train.device: got 'cuda' but no CUDA device is visible; use 'auto' or 'cpu'"
        )
    return torch.device(
        "cuda" if want == "cuda" or (want == "auto" and torch.cuda.is_available()) else "cpu"
    )


def check_local_gpus(cfg: Config) -> None:
    """A run in this process (one worker, no cluster) that asks for GPUs needs CUDA
    here: one line otherwise, as a sweep refuses GPUs its cluster lacks (it used to
    train on CPU without a word)."""
    if cfg.scaling.gpus_per_worker > 0 and not torch.cuda.is_available():
        raise ConfigError(
            f"scaling.gpus_per_worker: got {cfg.scaling.gpus_per_worker:g} but torch sees no "
            "CUDA device on this machine (one worker, no --address: it trains in this "
            "process); drop --gpus-per-worker, or pass --address of a cluster with GPUs"
        )


def resolve_precision(cfg: Config, device: torch.device) -> torch.dtype | None:
    """The autocast dtype (None = fp32). auto: bf16 on GPUs that support it, else fp32."""
    p = cfg.train.precision
    cuda = device.type == "cuda"
    if p == "auto":
        return torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else None
    if p == "fp32":
        return None
    if p == "fp16" and not cuda:
        raise ConfigError(
            "train.precision: got 'fp16' on CPU (it needs a CUDA device and a "
            "loss scaler); use 'fp32' or 'bf16'"
        )
    if p == "bf16" and cuda and not torch.cuda.is_bf16_supported():
        raise ConfigError(
            "train.precision: got 'bf16' but this GPU does not support it; use 'fp16'"
        )
    return torch.bfloat16 if p == "bf16" else torch.float16


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from integers (splitmix-style), stable across processes."""
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h = (h ^ (int(p) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
    return h & 0x7FFFFFFFFFFFFFFF


def seed_all(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global RNGs."""
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)
