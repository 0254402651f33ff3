"""Sweep overhead and search efficiency, on the tiny synthetic world and local Ray.

Two parts, one JSON line per figure:

* **overhead** — per-trial overhead = trial wall time minus the trial's own work
  (``train_s``: data, model, steps, evaluations and checkpoint writes, as timed inside
  the trial — for a TorchTrainer on its rank-0 worker). Trials run one at a time, so a
  trial's wall time is the time between two consecutive trial completions as the
  driver sees them: it includes the search suggestion, actor start, scheduling,
  checkpoint persistence, result handling and tear-down. The median is over trials 2..N
  (the first also pays the experiment set-up). Done for 1-worker trials (run in the
  trial process) and 2-worker trials (a TorchTrainer each).
* **efficiency** — per seed, random search (Optuna ``RandomSampler``, no early
  stopping) and TPE + ASHA run the same number of trials on the same space; a
  trial-epoch is one evaluation interval of one trial (``train.eval_every`` = one
  epoch of the pair's bitext). The figure is the fraction of random search's
  trial-epochs that TPE + ASHA spends, trials taken in the order they finished, until its
  best dev metric reaches random search's best.

    python benchmarks/bench_sweep.py [--part all|overhead|efficiency] [--trials 32]
                                     [--seeds 0,1,2] [--smoke-test]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

PAIR = "en-xc"
BATCH = 16

# Learning rate over three orders of magnitude and epsilon over four: a space where
# the choice matters, as it does for a real pair.
SPACE = {
    "base": {
        "train.stages": ["distill"],
        "distill.method": "ot",
        "train.log_every": 10_000,
        "train.warmup_ratio": 0.0,
        "distill.batch_size": BATCH,
    },
    "params": {
        "distill.epsilon": {"type": "loguniform", "low": 1e-3, "high": 1.0},
        "distill.lr": {"type": "loguniform", "low": 1e-5, "high": 3e-2},
        "distill.layers": {"type": "layers", "strategies": ["last", "one"], "max_k": 2},
    },
}


def _emit(**fields: Any) -> None:
    print(json.dumps({"bench": "sweep", **fields}), flush=True)


def _setup(root: Path, teacher_steps: int) -> dict[str, Any]:
    """A tiny world and an English teacher trained on it; the sweeps' base config."""
    from optical_ray.config import from_flat
    from optical_ray.data.synthetic import synthesize_world
    from optical_ray.training.recipe import LocalContext, run

    world = synthesize_world(root / "world", seed=0, scale="tiny")
    base = {
        "data.root": str(world.root),
        "output_dir": str(root / "runs"),
        "model.tiny.dropout": 0.0,
        "eval.metrics": ["map"],
        "eval.pairs": [PAIR],
        "train.log_every": 10_000,
        "train.device": "cpu",
    }
    cfg = from_flat(
        {
            **base,
            "name": "teacher",
            "pair": PAIR,
            "train.stages": ["rank"],
            "rank.steps": teacher_steps,
            "rank.batch_size": 16,
            "rank.lr": 2e-3,
            "train.warmup_ratio": 0.1,
            "eval.pairs": ["en-en", PAIR],
        }
    )
    history = run(cfg, LocalContext(root / "teacher"))
    _emit(
        figure="teacher_dev_map",
        value=round(history.evals[-1]["en-en/map"], 4),
        zero_shot_en_xc=round(history.evals[-1][f"{PAIR}/map"], 4),
    )
    with open(world.root / "bitext" / PAIR / "train.tsv", encoding="utf-8") as f:
        bitext = sum(1 for _ in f)
    return {
        **base,
        "train.teacher": str(root / "teacher" / "model"),
        "steps_per_epoch": max(1, bitext // BATCH),
    }


def _sweep(
    base: dict[str, Any],
    storage: Path,
    name: str,
    *,
    samples: int,
    epochs: int,
    workers: int = 1,
    search: str = "tpe",
    scheduler: str = "asha",
    seed: int = 0,
    fixed_lr: bool = False,
) -> tuple[Any, float]:
    """Run one sweep (trials one at a time); its catalog records and fit wall time."""
    from optical_ray.catalog import Catalog
    from optical_ray.config import from_flat
    from optical_ray.sweeps.space import parse_space
    from optical_ray.distributed import run_sweep

    spe = base["steps_per_epoch"]
    flat = {k: v for k, v in base.items() if k != "steps_per_epoch"}
    cfg = from_flat(
        {
            **flat,
            "storage.uri": str(storage),
            "sweep.seed": seed,
            "scaling.cpus_per_worker": 1.0,
            "sweep.grace_period": 1,
            "sweep.reduction_factor": 2.0,
        }
    )
    space = {
        **SPACE,
        "base": {**SPACE["base"], "distill.steps": spe * epochs, "train.eval_every": spe},
    }
    if fixed_lr:  # overhead runs: every trial trains the same amount, sensibly
        space = {
            **space,
            "base": {**space["base"], "distill.lr": 1e-3},
            "params": {k: v for k, v in space["params"].items() if k != "distill.lr"},
        }
    start = time.perf_counter()
    run_sweep(
        cfg,
        parse_space(space),
        pairs=[PAIR],
        samples=samples,
        name=name,
        workers_per_trial=workers,
        max_concurrent=1,
        scheduler=scheduler,
        search=search,
        verbose=0,
    )
    wall = time.perf_counter() - start
    return Catalog(str(storage)).records(), wall


def _seconds(t: Any) -> float:
    """A catalog timestamp as epoch seconds."""
    return t.timestamp() if hasattr(t, "timestamp") else float(t)


def _overhead(base: dict[str, Any], root: Path, workers: int, trials: int) -> None:
    records, wall = _sweep(
        base,
        root / f"store-overhead-{workers}",
        f"oh{workers}",
        samples=trials,
        epochs=1,
        workers=workers,
        scheduler="none",
        fixed_lr=True,
    )
    done = records[records["status"] == "finished"].sort_values("finished_at")
    ends = [_seconds(t) for t in done["finished_at"]]
    work = list(done["training_s"])
    per_trial = [(ends[i] - ends[i - 1]) - work[i] for i in range(1, len(ends))]
    median = statistics.median(per_trial)
    target = 5.0 if workers == 1 else None
    _emit(
        figure=f"trial_overhead_s_{workers}_worker",
        value=round(median, 2),
        unit="s",
        target=target,
        within_target=(median <= target) if target else None,
        statistic="median over trials 2..N of (completion gap - train_s)",
        per_trial=[round(x, 2) for x in per_trial],
        median_train_s=round(statistics.median(work), 2),
        overhead_fraction=round(median / (median + statistics.median(work)), 3),
        sweep_wall_s=round(wall, 1),
        trials=len(done),
    )


def _efficiency(
    base: dict[str, Any], root: Path, trials: int, epochs: int, seeds: list[int]
) -> None:
    from optical_ray.catalog import trial_epochs

    ratios = []
    for seed in seeds:
        # Another seed for random search: with the same seed, TPE's random start-up
        # trials would repeat random search's first trials and share its luck.
        rand, _ = _sweep(
            base,
            root / f"store-rand-{seed}",
            f"rand{seed}",
            samples=trials,
            epochs=epochs,
            search="random",
            scheduler="none",
            seed=seed + 1000,
        )
        tpe, _ = _sweep(
            base,
            root / f"store-tpe-{seed}",
            f"tpe{seed}",
            samples=trials,
            epochs=epochs,
            search="tpe",
            scheduler="asha",
            seed=seed,
        )
        rand_ok = rand[rand["status"] != "failed"]
        target = float(rand_ok["best_value"].max())
        rand_epochs = sum(trial_epochs(r["status"], r["iterations"]) for _, r in rand_ok.iterrows())
        spent, reached, best = 0, None, float("-inf")
        for _, r in tpe[tpe["status"] != "failed"].sort_values("finished_at").iterrows():
            spent += trial_epochs(r["status"], r["iterations"])
            best = max(best, float(r["best_value"]))
            if reached is None and best >= target:
                reached = spent
        tpe_epochs = spent
        ratio = reached / rand_epochs if reached is not None else None
        ratios.append(ratio)
        _emit(
            figure="tpe_asha_epochs_to_random_best",
            seed=seed,
            value=round(ratio, 3) if ratio is not None else None,
            target=0.6,
            within_target=ratio is not None and ratio <= 0.6,
            random_best_map=round(target, 4),
            tpe_asha_best_map=round(best, 4),
            random_trial_epochs=rand_epochs,
            tpe_asha_trial_epochs=tpe_epochs,
            tpe_asha_epochs_to_reach=reached,
            trials=trials,
            stopped_early=int((tpe["status"] == "stopped").sum()),
        )
    reached = [r for r in ratios if r is not None]
    summary = statistics.median([r if r is not None else float("inf") for r in ratios])
    _emit(
        figure="tpe_asha_epochs_to_random_best_median",
        value=round(summary, 3) if summary != float("inf") else None,
        target=0.6,
        within_target=summary <= 0.6,
        seeds=seeds,
        reached_in=f"{len(reached)}/{len(ratios)} seeds",
        statistic="median over seeds of (TPE+ASHA trial-epochs until its best >= random "
        "search's best) / (random search's trial-epochs)",
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--part", choices=["all", "overhead", "efficiency"], default="all")
    # 32, not 16: TPE's first 5 trials are random, and with 16 it has too few left to
    # exploit what it learned (at 16 it reached random search's best in 1 seed of 3).
    ap.add_argument("--trials", type=int, default=32, help="trials per sweep (efficiency)")
    ap.add_argument("--epochs", type=int, default=4, help="epochs per full trial")
    ap.add_argument("--overhead-trials", type=int, default=6)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--teacher-steps", type=int, default=150)
    ap.add_argument("--smoke-test", action="store_true", help="tiny sizes, checks it runs")
    args = ap.parse_args()
    if args.smoke_test:
        args.trials, args.epochs, args.overhead_trials, args.seeds = 3, 2, 3, "0"
        args.teacher_steps = 10
    import ray
    import torch

    torch.set_num_threads(1)
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        object_store_memory=200 * 2**20,
    )
    try:
        with tempfile.TemporaryDirectory(prefix="bench-sweep-") as tmp:
            root = Path(tmp)
            base = _setup(root, args.teacher_steps)
            if args.part in ("all", "overhead"):
                _overhead(base, root, 1, args.overhead_trials)
                _overhead(base, root, 2, max(3, args.overhead_trials // 2))
            if args.part in ("all", "efficiency"):
                _efficiency(
                    base, root, args.trials, args.epochs, [int(s) for s in args.seeds.split(",")]
                )
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
