"""``optical-ray demo``: the whole product on the embedded default, in minutes on a CPU.

1. generate the synthetic multilingual world (seeded; reused when present);
2. train the English teacher (stage ``rank``; resumable);
3. sweep OPTICAL distillation (Ray Tune + Optuna TPE + ASHA) for a high-resource pair
   (``en-xa``, 20k bitext pairs) and a low-resource one (``en-xc``, 1k pairs, a hard
   language), results and checkpoints into local storage;
4. print the best config per pair and the gap report on the *test* split: the
   teacher zero-shot vs the best distilled student, per language, with paired
   significance tests (:func:`optical_ray.evaluation.best.evaluate_best`, the code of
   ``optical-ray evaluate --best``; per-query values kept in storage).

Running it again with the same ``--out`` resumes: nothing finished is redone.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from optical_ray.config import Config, from_flat
from optical_ray.errors import ConfigError

__all__ = ["run_demo", "demo_config", "DemoResult", "shipped_space"]

PAIRS = ("en-xa", "en-xc")


def shipped_space(name: str = "default.yaml") -> Path:
    """A search space shipped in the repository's ``search_spaces/``."""
    path = Path(__file__).resolve().parents[2] / "search_spaces" / name
    if not path.is_file():
        raise ConfigError(
            f"search space {name!r} not found at {path}; run the demo from a "
            "checkout of the optical-ray repository, or pass --space"
        )
    return path


def demo_config(out_dir: str | Path, *, seed: int = 0) -> Config:
    """The demo's base config: tiny model, synthetic world, local storage under
    ``out_dir``; budgets sized for two CPU cores."""
    out = Path(out_dir).expanduser().resolve()
    return from_flat(
        {
            "name": "demo",
            "output_dir": str(out),
            "storage.uri": str(out / "storage"),
            "data.synthetic_seed": seed,
            "data.synthetic_scale": "default",
            "train.seed": seed,
            "train.log_every": 100,
            "train.device": "cpu",
            "rank.steps": 200,
            "rank.batch_size": 32,
            "rank.lr": 2e-3,
            "rank.hard_negatives": 1,
            "distill.steps": 240,
            "distill.batch_size": 32,
            "train.eval_every": 60,
            "eval.metrics": ["map", "ndcg@10", "mrr@10", "recall@100"],
            "eval.batch_size": 128,
            "sweep.max_concurrent": 2,
            "sweep.seed": seed,
            "sweep.grace_period": 1,
            "sweep.reduction_factor": 2.0,
        }
    )


@dataclass
class DemoResult:
    """Where the demo left its outputs, and what it found."""

    out_dir: Path
    teacher: Path
    storage: str
    sweep: object
    gap: object


def _teacher(cfg: Config, out: Path) -> Path:
    """Train (or reuse, or resume) the English teacher under ``out/teacher``."""
    from optical_ray.training.recipe import LocalContext, run

    run_dir = out / "teacher"
    model = run_dir / "model"
    if (model / "optical_ray.json").is_file():
        print(f"[2/4] English teacher already trained: {model}", flush=True)
        return model
    print("[2/4] training the English teacher (stage rank) ...", flush=True)
    tcfg = from_flat(
        {
            "train.stages": ["rank"],
            "name": "teacher",
            "train.eval_every": 0,
            "train.log_every": 50,
            "eval.pairs": ["en-en", *PAIRS],
            "pair": "en-xa",
        },
        cfg,
    )
    history = run(tcfg, LocalContext(run_dir))
    last = history.evals[-1] if history.evals else {}
    shown = ", ".join(f"{k} {v:.3f}" for k, v in last.items() if k.endswith("/map"))
    print(f"      teacher dev MAP: {shown}", flush=True)
    return model


def _gap(storage: str, sweep: object, pairs: Sequence[str]) -> list:
    """Teacher zero-shot vs the best student per pair, on the test split: the same code
    path as ``optical-ray evaluate --best`` (per-query values written to storage)."""
    from optical_ray.evaluation.best import evaluate_best

    done = [p for p in pairs if (r := sweep.pairs.get(p)) is not None and r.best_checkpoint]
    return evaluate_best(storage, pairs=done, split="test") if done else []


def run_demo(
    out_dir: str | Path = "optical_runs/demo",
    *,
    trials: int = 6,
    seed: int = 0,
    pairs: Sequence[str] = PAIRS,
    space: str | Path | None = None,
) -> DemoResult:
    """Run the demo end to end (see the module docstring); returns where things are."""
    from optical_ray.data.sources import ensure_data_root
    from optical_ray.distributed import run_sweep

    start = time.time()
    if trials < 1:
        raise ConfigError(f"--trials: got {trials}, expected at least 1")
    cfg = demo_config(out_dir, seed=seed)
    out = Path(cfg.output_dir)
    print(f"optical-ray demo: outputs in {out}", flush=True)
    print("[1/4] synthetic world ...", flush=True)
    root = ensure_data_root(cfg)
    print(f"      {root}", flush=True)
    teacher = _teacher(cfg, out)
    print(
        f"[3/4] sweep: {trials} trials per pair for {', '.join(pairs)} "
        "(Optuna TPE + ASHA on dev MAP) ...",
        flush=True,
    )
    scfg = from_flat({"train.teacher": str(teacher), "data.root": str(root)}, cfg)
    result = run_sweep(
        scfg, space or shipped_space(), pairs=list(pairs), samples=trials, resume=True, name="demo"
    )
    print(result.summary(), flush=True)
    print(
        "[4/4] gap report on the test split (MAP etc.; p from a paired randomisation "
        "test vs the zero-shot teacher):",
        flush=True,
    )
    gap = _gap(cfg.storage.uri, result, pairs)
    for evaluation in gap:
        print(evaluation.to_text() + "\n", flush=True)
    minutes = (time.time() - start) / 60
    storage = cfg.storage.uri
    print(
        f"\ndone in {minutes:.1f} min. Results, checkpoints and the catalog are in {storage}",
        flush=True,
    )
    print("next:")
    print(f"  optical-ray best --pair en-xc --storage {storage}")
    print(f"  optical-ray best --all --storage {storage} --format json")
    print(
        f"  optical-ray best --pair en-xc --storage {storage} --format yaml > best.yaml "
        "&& optical-ray train --config best.yaml"
    )
    print(f"  optical-ray evaluate --best --storage {storage} --split test")
    print(f"  optical-ray report --storage {storage} --out {out / 'report'}")
    return DemoResult(out, teacher, storage, result, gap)
