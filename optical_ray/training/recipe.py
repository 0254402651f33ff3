"""The training recipe: :func:`run` takes a Config through ``cfg.train.stages`` (rank,
adapt, distill) and resumes a run from its newest checkpoint; :func:`evaluate_dev` is
the dev evaluation it selects and reports on.

The pieces live in one module per concern, re-exported here for the Python API:
:mod:`optical_ray.training.context` (TrainContext, LocalContext, History, devices, seeds, the
reporting rule), :mod:`optical_ray.training.loop` (the step loop: selection, early stopping,
checkpoints) and :mod:`optical_ray.training.stages` (train_rank, train_adapt, train_distill).
A run resumed from any checkpoint gives the same weights as an uninterrupted one: data
order and every random draw are functions of ``(seed, stage, step, rank)`` (fairseq
re-seeds per update the same way), and the optimizer, scheduler and history travel in
the checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

from optical_ray.training.checkpoint import read_checkpoint_state
from optical_ray.config import Config, StorageConfig, save_config, to_dict
from optical_ray.training.context import (
    History,
    LocalContext,
    TrainContext,
    mix_seed,
    read_progress,
    resolve_device,
    resolve_precision,
    seed_all,
)
from optical_ray.training.loop import STAGE_HINTS
from optical_ray.models.encoder import RetrievalModel, check_distill_layers
from optical_ray.training.stages import (
    MLMHead,
    init_student,
    train_adapt,
    train_distill,
    train_rank,
)

__all__ = [
    "TrainContext",
    "LocalContext",
    "History",
    "run",
    "train_rank",
    "train_adapt",
    "train_distill",
    "init_student",
    "MLMHead",
    "evaluate_dev",
    "resolve_device",
    "resolve_precision",
    "STAGE_HINTS",
    "local_run_dir",
    "read_progress",
    "stages_to_run",
    "initial_model",
]


def local_run_dir(cfg: Config) -> Path:
    """Where a run in this process keeps its run directory: ``<storage.uri>/<name>``
    when ``storage.uri`` is set to a local path (``--storage DIR``), else
    ``<output_dir>/<name>``. An ``s3://`` storage is Ray Train's to write to
    (:func:`optical_ray.distributed.train.fit`); here it leaves ``<output_dir>/<name>``."""
    uri = cfg.storage.uri
    if uri == StorageConfig().uri or uri.startswith("s3://"):
        return Path(cfg.output_dir) / cfg.name
    from optical_ray.storage import resolve_storage

    return Path(resolve_storage(uri).path) / cfg.name


def evaluate_dev(
    model: RetrievalModel,
    cfg: Config,
    split: str | None = None,
    *,
    keep: dict[str, Any] | None = None,
) -> dict[str, float]:
    """Evaluate on ``split`` (default ``cfg.eval.split``): ``{"<pair>/<metric>": ..}``
    plus bare ``"<metric>"`` keys for ``cfg.pair``, which is always evaluated (it is
    what a sweep optimises), added to ``eval.pairs`` if they leave it out; with
    ``sweep.objective`` also ``"objective"``, its weighted mean over the tasks, when
    every task was evaluated. ``keep`` collects ``(metrics, {pair: per-query values})``
    in ``keep["evals"]``, for a context that records them (a sweep trial's catalog
    record and the paired tests of promotion and finalists)."""
    from optical_ray.config.objective import OBJECTIVE_KEY, parse_objective
    from optical_ray.evaluation.ranking import evaluate_pairs

    pairs = _dev_pairs(cfg, split or cfg.eval.split)
    results = evaluate_pairs(
        model, cfg, pairs=pairs, split=split or cfg.eval.split, load_collection=_cached_collection
    )
    flat = {f"{pair}/{k}": float(v) for pair, r in results.items() for k, v in r.metrics.items()}
    if cfg.pair in results:
        flat.update({k: float(v) for k, v in results[cfg.pair].metrics.items()})
    if cfg.sweep.objective.strip():
        value = parse_objective(cfg.sweep.objective, cfg.pair).value(flat)
        if value is not None:
            flat[OBJECTIVE_KEY] = value
    if cfg.pair in results and keep is not None:
        keep.setdefault("evals", []).append(
            (flat, {pair: r.per_query for pair, r in results.items()})
        )
    return flat


def _dev_pairs(cfg: Config, split: str) -> list[str]:
    """``eval.pairs`` (default: the teacher's pair) plus ``cfg.pair``; with
    ``eval.retention`` also the reference pair when it has an evaluation set (what
    retention is measured on), and without it the teacher's pair only if listed."""
    from optical_ray.catalog.pareto import reference_pair

    ref = reference_pair(cfg)
    teacher = f"{cfg.data.teacher_lang}-{cfg.data.teacher_lang}"
    pairs = list(cfg.eval.pairs) or ([teacher] if cfg.eval.retention else [])
    if cfg.eval.retention and ref not in pairs and _has_eval_set(cfg, ref, split):
        pairs.insert(0, ref)
    return list(dict.fromkeys([*pairs, cfg.pair]))


def _has_eval_set(cfg: Config, pair: str, split: str) -> bool:
    """Whether ``pair`` has an evaluation collection: configured, or in the data root
    (the synthetic world's only when the evaluation data are synthetic: real sources
    without a root never make one appear)."""
    if pair in cfg.data.eval:
        return True
    if cfg.data.root is None and cfg.data.eval:
        return False
    from optical_ray.data.sources import ensure_data_root

    return (ensure_data_root(cfg) / "eval" / pair / split).is_dir()


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
    beside it (``<run_dir>/config.json``); the run directory defaults to
    :func:`local_run_dir`. ``distill.layers`` is checked against the model's depth
    before any stage starts. Returns the history.
    """
    from optical_ray.data import sources

    ctx = ctx or LocalContext(local_run_dir(cfg))
    if ctx.run_dir is None:
        ctx.run_dir = local_run_dir(cfg)
    if isinstance(ctx, LocalContext):
        from optical_ray.storage import resolve_storage

        # A run directory that takes no writes fails now, not when the first stage
        # has trained and its checkpoint cannot be saved.
        resolve_storage(str(ctx.run_dir)).check_writable("give a writable output_dir or --storage")
    check_distill_layers(cfg)
    device = resolve_device(cfg, ctx)
    seed_all(mix_seed(cfg.train.seed, ctx.rank))
    stages = stages_to_run(cfg)
    history = History()
    teacher: RetrievalModel | None = None
    ckpt = ctx.latest_checkpoint()
    state = read_checkpoint_state(ckpt) if ckpt else None
    if state is not None:
        drift = _config_drift(state.get("config", {}), cfg)
        if drift:
            warnings.warn(
                f"resuming from {ckpt}, written with a different config "
                f"({', '.join(drift[:8])}); start in a new run directory "
                "(output_dir/name) to train this config from scratch",
                UserWarning,
                stacklevel=2,
            )
        model = RetrievalModel.load(Path(ckpt) / "model", device=device)
        model.cfg = cfg.model
        if (Path(ckpt) / "teacher").is_dir():
            teacher = RetrievalModel.load(Path(ckpt) / "teacher", device=device)
        history = History.from_dict(state["history"])
        history.resumes.append(
            {"stage": state["stage"], "step": int(state["step"]), "time": time.time()}
        )
        ctx.print0(f"resuming from {ckpt} (stage {state['stage']}, step {state['step']})")
    else:
        model = initial_model(cfg)

    keep = getattr(ctx, "dev_per_query", None)  # a context that records them
    # eval_s: seconds spent evaluating in this run so far (a trial's evaluation cost),
    # carried on from the checkpoint's history on resume
    eval_seconds = [max((e.get("eval_s", 0.0) for e in history.evals), default=0.0)]

    def eval_fn(m: RetrievalModel) -> dict[str, float]:
        start = time.perf_counter()
        metrics = evaluate_dev(m, cfg, keep=keep)
        eval_seconds[0] += time.perf_counter() - start
        return {**metrics, "eval_s": eval_seconds[0]}

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
            student = (
                model
                if resume is not None or cfg.distill.init == "teacher"
                else init_student(teacher, cfg)
            )
            rank_data = sources.rank_collection(cfg) if cfg.distill.rank_batch_size > 0 else None
            model, _ = train_distill(
                student, teacher, sources.bitext_pairs(cfg, cfg.pair), cfg, ctx, rank_data, **common
            )
    if ctx.rank == 0:
        run_dir = Path(ctx.run_dir)
        out = _atomic_save(model, cfg, run_dir / "model")
        save_config(cfg, run_dir / "config.json")
        history.model_dir = str(out)
        (run_dir / "history.json").write_text(
            json.dumps(history.to_dict()) + "\n", encoding="utf-8"
        )
    ctx.barrier()
    return history


def stages_to_run(cfg: Config) -> list[str]:
    """``train.stages`` in order, less ``rank`` when ``train.teacher`` gives the trained
    teacher."""
    return [s for s in cfg.train.stages if not (s == "rank" and cfg.train.teacher)]


def initial_model(cfg: Config) -> RetrievalModel:
    """The model a fresh run starts from: ``train.teacher`` when set, else the one
    ``model.name_or_path`` names (for ``tiny``, the data root that holds its tokenizer
    is generated first when missing)."""
    from optical_ray.data import sources

    if cfg.train.teacher:
        return RetrievalModel.from_config(_with_model(cfg, cfg.train.teacher))
    if cfg.model.name_or_path == "tiny" and not cfg.model.tokenizer:
        # the tiny model's tokenizer is the data root's: the recipe makes sure the
        # data exist (the model builder never generates them)
        sources.ensure_data_root(cfg)
    return RetrievalModel.from_config(cfg)


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
