"""Multi-objective search and Pareto queries, one JSON line per figure.

Two parts:

* **search** — per seed, random search (Optuna ``RandomSampler``) and the
  multi-objective search (``--objectives map,en-en/map``: Optuna's multi-objective TPE,
  FIFO) run the same number of trials on the same space, on the tiny synthetic world with
  an English teacher trained first. The space holds the knobs that trade the
  low-resource pair against English (learning rate, epsilon, distill.english_fraction,
  distill.l2sp). Figure: hypervolume of the multi-objective search's front over random
  search's, per seed and the median. The reference point is, per seed, the worst value
  of each objective over both searches' trials (the nadir of their union), so each
  front is measured over the same box; it is printed with each seed.
* **query** — 10,000 synthetic records of one pair in a local catalog; the median time
  of ``best --pareto`` (``pareto_front`` on map, en-en/map, cost) over the plain ``best``
  (``best_config`` on map), both measured in this run, alternating.

    python benchmarks/bench_pareto.py [--part all|search|query] [--trials 16]
                                      [--seeds 0,1,2] [--records 10000] [--smoke-test]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

PAIR = "en-xc"
BATCH = 16
OBJECTIVES = ["map", "en-en/map"]
SPACE = {
    "base": {
        "train.stages": ["distill"],
        "distill.method": "ot",
        "train.log_every": 10_000,
        "train.warmup_ratio": 0.0,
        "distill.batch_size": BATCH,
        # ot.iterations_needed(1e-2) = 770: plans converge over the whole epsilon range
        "distill.sinkhorn_iters": 800,
    },
    "params": {
        "distill.lr": {"type": "loguniform", "low": 1e-4, "high": 3e-2},
        "distill.epsilon": {"type": "loguniform", "low": 1e-2, "high": 1.0},
        "distill.english_fraction": {"type": "uniform", "low": 0.0, "high": 1.0},
        "distill.l2sp": {"type": "loguniform", "low": 1e-3, "high": 10.0},
    },
}


def _emit(**fields: Any) -> None:
    print(json.dumps({"bench": "pareto", **fields}), flush=True)


def _setup(root: Path, teacher_steps: int) -> dict[str, Any]:
    """A tiny world, an English teacher trained on it, and the sweeps' base config."""
    from optical_ray.config import from_flat
    from optical_ray.data.synthetic import synthesize_world
    from optical_ray.training.recipe import LocalContext, run

    world = synthesize_world(root / "world", seed=0, scale="tiny")
    base = {
        "data.root": str(world.root),
        "output_dir": str(root / "runs"),
        "model.tiny.dropout": 0.0,
        "eval.metrics": ["map"],
        "eval.pairs": [PAIR],  # en-en is added for retention (eval.retention)
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
        }
    )
    history = run(cfg, LocalContext(root / "teacher"))
    _emit(
        figure="teacher_dev_map",
        **{k: round(v, 4) for k, v in history.evals[-1].items() if "/" in k},
    )
    with open(world.root / "bitext" / PAIR / "train.tsv", encoding="utf-8") as f:
        bitext = sum(1 for _ in f)
    return {
        **base,
        "train.teacher": str(root / "teacher" / "model"),
        "spe": max(1, bitext // BATCH),
    }


def _front_values(storage: Path) -> np.ndarray:
    from optical_ray.catalog import Catalog
    from optical_ray.catalog.pareto import objective_matrix, parse_objectives

    df = Catalog(str(storage)).records()
    df = df[df["status"] == "finished"]
    return objective_matrix(df, parse_objectives(OBJECTIVES))


def _search(base: dict[str, Any], root: Path, trials: int, epochs: int, seeds: list[int]) -> None:
    from optical_ray.catalog import hypervolume
    from optical_ray.config import from_flat
    from optical_ray.sweeps.space import parse_space
    from optical_ray.distributed import run_sweep

    spe = base["spe"]
    flat = {k: v for k, v in base.items() if k != "spe"}
    space = parse_space(
        {**SPACE, "base": {**SPACE["base"], "distill.steps": spe * epochs, "train.eval_every": spe}}
    )
    ratios = []
    for seed in seeds:
        values = {}
        for search in ("random", "tpe"):
            storage = root / f"store-{search}-{seed}"
            cfg = from_flat({**flat, "storage.uri": str(storage), "sweep.seed": seed})
            start = time.perf_counter()
            result = run_sweep(
                cfg,
                space,
                pairs=[PAIR],
                samples=trials,
                name=f"{search}{seed}",
                max_concurrent=1,
                search=search,
                objectives=OBJECTIVES,
                verbose=0,
            )
            if result.exit_code:
                raise SystemExit(result.summary())
            values[search] = _front_values(storage)
            _emit(
                figure="sweep_wall_s", search=search, seed=seed, trials=trials,
                value=round(time.perf_counter() - start, 1),
            )  # fmt: skip
        both = np.vstack(list(values.values()))
        reference = np.nanmin(both, axis=0)  # nadir of both searches' trials (maximised)
        hv = {s: hypervolume(v, reference, [True, True]) for s, v in values.items()}
        ratio = hv["tpe"] / hv["random"] if hv["random"] > 0 else float("inf")
        ratios.append(ratio)
        _emit(
            figure="hypervolume",
            seed=seed,
            trials=trials,
            objectives=OBJECTIVES,
            reference_point=[round(float(r), 4) for r in reference],
            mo_tpe=round(hv["tpe"], 6),
            random=round(hv["random"], 6),
            ratio=round(ratio, 3),
        )
    _emit(
        figure="hypervolume_ratio_median",
        value=round(statistics.median(ratios), 3),
        seeds=seeds,
        trials=trials,
        target=">= 1.1",
    )


def _query(root: Path, n: int, repeats: int) -> None:
    from optical_ray.catalog import Catalog, TrialRecord, best_config, pareto_front

    from optical_ray.config import from_flat, to_flat

    rng = np.random.default_rng(0)
    storage = str(root / "query-store")
    # what a sweep records: the whole config each trial ran
    whole = to_flat(from_flat({"pair": PAIR}))
    records = []
    for i in range(n):
        m, en = rng.random(), rng.random()
        records.append(
            TrialRecord(
                experiment="q-en-xc",
                pair=PAIR,
                trial_id=f"t{i:05d}",
                config={**whole, "distill.epsilon": float(rng.random())},
                best_metrics={"map": m, f"{PAIR}/map": m, "en-en/map": en, "en-en/mrr@10": en},
                retention=en / 0.5,
                device_s=float(rng.random() * 100),
                training_s=float(rng.random() * 100),
                finished_at=1_700_000_000 + i,
            )
        )
    Catalog(storage).extend(records)
    plain, pareto, front = [], [], []
    best_config(PAIR, storage=storage)  # warm the filesystem cache for both
    for _ in range(repeats):
        start = time.perf_counter()
        best_config(PAIR, storage=storage)
        plain.append(time.perf_counter() - start)
        start = time.perf_counter()
        front = pareto_front(PAIR, "map,en-en/map,cost", storage)
        pareto.append(time.perf_counter() - start)
    _emit(
        figure="pareto_query_time_ratio",
        records=n,
        front_size=len(front),
        best_s=round(statistics.median(plain), 4),
        pareto_s=round(statistics.median(pareto), 4),
        value=round(statistics.median(pareto) / statistics.median(plain), 3),
        target="<= 2",
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--part", choices=["all", "search", "query"], default="all")
    ap.add_argument("--trials", type=int, default=16, help="trials per search")
    ap.add_argument("--epochs", type=int, default=1, help="epochs per trial")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--teacher-steps", type=int, default=150)
    ap.add_argument("--records", type=int, default=10_000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--smoke-test", action="store_true", help="tiny sizes, checks it runs")
    args = ap.parse_args()
    if args.smoke_test:
        args.trials, args.seeds, args.teacher_steps, args.records = 3, "0", 10, 300
    with tempfile.TemporaryDirectory(prefix="bench-pareto-") as tmp:
        root = Path(tmp)
        if args.part in ("all", "query"):
            _query(root, args.records, args.repeats)
        if args.part in ("all", "search"):
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
                base = _setup(root, args.teacher_steps)
                _search(
                    base, root, args.trials, args.epochs, [int(s) for s in args.seeds.split(",")]
                )
            finally:
                ray.shutdown()


if __name__ == "__main__":
    main()
