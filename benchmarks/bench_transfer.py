"""Transfer HPO: does ``--warm-start auto`` make a new language's sweep cheaper?

Setup: a synthetic family of ``--languages`` related low-resource languages
(``optical_ray.data.family``, tiny scale) and one English teacher trained on it. Per
seed, every language is swept cold (TPE + ASHA), each in its own sweep with its own
sampler seed (one sweep of all pairs would give every pair the same seeded draws, and
a warm start would only replay configs the held-out pair already tried); then, leave
one out, each language is swept again with ``--warm-start auto`` from the other
languages' cold records (read from the cold storage with ``sweep.warm_start_from``;
the warm sweep writes elsewhere, so no warm record ever feeds another warm sweep).
Same budget and sampler seed for a language's cold and warm sweeps.

One JSON line per (seed, language) and summary lines:

* ``warm_epochs_to_cold_best``: the warm sweep's trial-epochs (evaluations of all its
  trials, in the order they finished) until its best dev metric reaches the cold
  sweep's final best, divided by the cold sweep's trial-epochs (target: median <= 0.5);
* ``warm_minus_cold_best``: final best dev MAP, warm minus cold (target: never
  significantly worse);
* ``test_map``: test-split MAP of both sweeps' best checkpoints, and
  ``test_warm_minus_cold``: their difference over the same test queries with a paired
  randomisation test's p; ``warm_minus_cold_test_map`` counts the runs where the warm
  best is significantly worse (target: none) or better. ``dev_warm_minus_cold`` is the
  same test on the dev queries, which tells a miss of the first figure that is a tie
  (two configs at the same plateau) from one that is not.

    python benchmarks/bench_transfer.py [--languages 5] [--trials 8] [--epochs 2]
                                        [--seeds 0,1,2] [--family-seed 0] [--out DIR]
                                        [--smoke-test]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

BATCH = 16
SPACE = {
    "base": {
        "train.stages": ["distill"],
        "distill.method": "ot",
        "train.log_every": 10_000,
        "train.warmup_ratio": 0.0,
        "distill.batch_size": BATCH,
        "distill.sinkhorn_iters": 800,
    },
    "params": {
        "distill.epsilon": {"type": "loguniform", "low": 1e-2, "high": 1.0},
        "distill.lr": {"type": "loguniform", "low": 1e-5, "high": 3e-2},
        "distill.layers": {"type": "layers", "strategies": ["last", "one"], "max_k": 2},
    },
}


def _emit(**fields: Any) -> None:
    print(json.dumps({"bench": "transfer", **fields}), flush=True)


def _setup(root: Path, n: int, family_seed: int, teacher_steps: int) -> dict[str, Any]:
    """The family world and an English teacher; the sweeps' base config."""
    from optical_ray.config import from_flat
    from optical_ray.data.family import family_specs
    from optical_ray.data.synthetic import synthesize_world
    from optical_ray.training.recipe import LocalContext, run

    specs, sizes = family_specs(n, family_seed, "tiny")
    world = synthesize_world(
        root / "world", seed=0, languages=specs, bitext_sizes=sizes, scale="tiny"
    )
    pairs = [f"en-{s.code}" for s in specs]
    base = {
        "data.root": str(world.root),
        "output_dir": str(root / "runs"),
        "model.tiny.dropout": 0.0,
        "eval.metrics": ["map"],
        "train.log_every": 10_000,
        "train.device": "cpu",
    }
    cfg = from_flat(
        {
            **base,
            "name": "teacher",
            "pair": "en-en",
            "train.stages": ["rank"],
            "rank.steps": teacher_steps,
            "rank.batch_size": 16,
            "rank.lr": 2e-3,
            "train.warmup_ratio": 0.1,
            "eval.pairs": ["en-en"],
        }
    )
    with contextlib.redirect_stdout(sys.stderr):  # training logs; stdout is JSON lines
        history = run(cfg, LocalContext(root / "teacher"))
    _emit(
        figure="teacher_dev_map",
        value=round(history.evals[-1]["en-en/map"], 4),
        languages={
            s.code: {"cognate_rate": s.cognate_rate, "bitext": sizes[s.code]} for s in specs
        },
    )
    # One epoch = the smallest bitext's pass: every pair's trial has the same length.
    return {
        **base,
        "train.teacher": str(root / "teacher" / "model"),
        "steps_per_epoch": max(1, min(sizes.values()) // BATCH),
        "pairs": pairs,
    }


def _sweep(base: dict[str, Any], storage: Path, name: str, pairs: list[str], **over: Any) -> Any:
    """One sweep (TPE + ASHA, two trials at a time); its catalog records."""
    from optical_ray.catalog import Catalog
    from optical_ray.config import from_flat
    from optical_ray.sweeps.space import parse_space
    from optical_ray.distributed import run_sweep

    spe, epochs = base["steps_per_epoch"], base["epochs"]
    flat = {k: v for k, v in base.items() if k not in ("steps_per_epoch", "pairs", "epochs")}
    cfg = from_flat(
        {
            **flat,
            "storage.uri": str(storage),
            "scaling.cpus_per_worker": 1.0,
            "sweep.grace_period": 1,
            "sweep.reduction_factor": 2.0,
            "sweep.optuna_storage": "memory",
            **over,
        }
    )
    space = {
        **SPACE,
        "base": {**SPACE["base"], "distill.steps": spe * epochs, "train.eval_every": spe},
    }
    # The driver's own lines (the warm start's choice) go to stderr: stdout is JSON lines.
    with contextlib.redirect_stdout(sys.stderr):
        run_sweep(cfg, parse_space(space), pairs=pairs, name=name, verbose=0, max_concurrent=2)
    return Catalog(str(storage)).records(experiment=None)


def _curve(records: Any) -> tuple[list[tuple[int, float]], int]:
    """(trial-epochs spent, best so far) after each trial, in finishing order; total."""
    from optical_ray.catalog import trial_epochs

    spent, best, out = 0, float("-inf"), []
    for _, r in records[records["status"] != "failed"].sort_values("finished_at").iterrows():
        spent += trial_epochs(r["status"], r["iterations"])
        best = max(best, float(r["best_value"]))
        out.append((spent, best))
    return out, spent


def _best_maps(storage: Path, pair: str, experiment: str) -> dict[str, tuple[float | None, Any]]:
    """Per split (test, dev): MAP of the experiment's best checkpoint and its per-query
    values, from one load of the model."""
    from optical_ray.catalog import best_config
    from optical_ray.config import from_flat
    from optical_ray.models.encoder import RetrievalModel
    from optical_ray.training.recipe import evaluate_dev

    best = best_config(pair, storage=str(storage), experiment=experiment)[0]
    if not best.checkpoint_uri:
        return {split: (None, {}) for split in ("test", "dev")}
    model = RetrievalModel.load(str(Path(best.checkpoint_uri) / "model"))
    cfg = from_flat(best.flat_config)
    out = {}
    for split in ("test", "dev"):
        keep: dict[str, Any] = {}
        value = evaluate_dev(model, cfg, split=split, keep=keep).get("map")
        out[split] = (value, keep["evals"][-1][1] if keep.get("evals") else {})
    return out


def _paired(warm: dict[str, Any], cold: dict[str, Any]) -> dict[str, float] | None:
    """Warm minus cold test MAP over the same queries, with the two-sided p of a paired
    randomisation test (:func:`optical_ray.evaluation.compare.paired_test`)."""
    from optical_ray.evaluation.compare import paired_test

    if not warm or not cold:
        return None
    delta, p = paired_test(warm, cold, "map")
    return {"delta_map": round(delta, 4), "p": round(p, 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--languages", type=int, default=5)
    ap.add_argument("--trials", type=int, default=8, help="trials per pair and sweep")
    ap.add_argument("--epochs", type=int, default=2, help="epochs per full trial")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--family-seed", type=int, default=0)
    ap.add_argument("--teacher-steps", type=int, default=150)
    ap.add_argument(
        "--out",
        default=None,
        help="keep the world, teacher and sweep storages here (default: a temporary folder); "
        "its cold-<seed> and warm-<seed>-<pair> folders are catalogs `optical-ray best` reads",
    )
    ap.add_argument("--smoke-test", action="store_true", help="tiny sizes, checks it runs")
    args = ap.parse_args()
    if args.out and Path(args.out).exists() and any(Path(args.out).iterdir()):
        ap.error(f"--out: {args.out} is not empty; give a new or empty folder")
    if args.smoke_test:
        args.languages, args.trials, args.epochs, args.seeds = 3, 3, 1, "0"
        args.teacher_steps = 10
    import ray
    import torch

    from optical_ray.evaluation.compare import holm

    torch.set_num_threads(1)
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        object_store_memory=200 * 2**20,
    )
    ratios: list[float] = []
    deltas: list[float] = []
    tests: list[dict[str, float] | None] = []
    try:
        with contextlib.ExitStack() as stack:
            if args.out:
                root = Path(args.out)
                root.mkdir(parents=True, exist_ok=True)
            else:
                root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-")))
            base = _setup(root, args.languages, args.family_seed, args.teacher_steps)
            base = {**base, "epochs": args.epochs}
            seeds = [int(s) for s in args.seeds.split(",")]
            for seed in seeds:
                cold_store = root / f"cold-{seed}"
                for i, pair in enumerate(base["pairs"]):
                    cold = _sweep(
                        base,
                        cold_store,
                        f"cold{seed}",
                        [pair],
                        **{"sweep.samples": args.trials, "sweep.seed": 1000 * seed + i},
                    )
                for i, pair in enumerate(base["pairs"]):
                    warm_store = root / f"warm-{seed}-{pair}"
                    warm = _sweep(
                        base,
                        warm_store,
                        f"warm{seed}",
                        [pair],
                        **{
                            "sweep.samples": args.trials,
                            "sweep.seed": 1000 * seed + i,
                            "sweep.warm_start": "auto",
                            "sweep.warm_start_from": str(cold_store),
                        },
                    )
                    cold_curve, cold_total = _curve(cold[cold["pair"] == pair])
                    warm_curve, _ = _curve(warm)
                    target = cold_curve[-1][1]
                    reached = next((x for x, best in warm_curve if best >= target), None)
                    ratio = reached / cold_total if reached is not None else None
                    delta = warm_curve[-1][1] - target
                    ratios.append(ratio if ratio is not None else float("inf"))
                    deltas.append(delta)
                    sources = sorted(
                        {
                            o.split(":")[1].split("/")[0]
                            for o in warm["origin"].dropna()
                            if o.startswith("warm_start:")
                        }
                    )
                    cold_maps = _best_maps(cold_store, pair, f"cold{seed}-{pair}")
                    warm_maps = _best_maps(warm_store, pair, f"warm{seed}-{pair}")
                    (cold_test, cold_q), (warm_test, warm_q) = cold_maps["test"], warm_maps["test"]
                    paired = _paired(warm_q, cold_q)
                    tests.append(paired)
                    # whether a miss is a tie: the two bests on the dev queries
                    dev = _paired(warm_maps["dev"][1], cold_maps["dev"][1])
                    _emit(
                        figure="warm_epochs_to_cold_best",
                        seed=seed,
                        pair=pair,
                        value=round(ratio, 3) if ratio is not None else None,
                        warm_minus_cold_best=round(delta, 4),
                        cold_best_map=round(target, 4),
                        warm_best_map=round(warm_curve[-1][1], 4),
                        cold_trial_epochs=cold_total,
                        warm_epochs_to_reach=reached,
                        sources=sources,
                        test_map={"cold": _round(cold_test), "warm": _round(warm_test)},
                        dev_warm_minus_cold=dev,
                        test_warm_minus_cold=paired,
                    )
            median = statistics.median(ratios)
            _emit(
                figure="warm_epochs_to_cold_best_median",
                value=round(median, 3) if median != float("inf") else None,
                target=0.5,
                within_target=median <= 0.5,
                runs=len(ratios),
                reached=sum(r != float("inf") for r in ratios),
                statistic="median over (seed, held-out language) of (warm trial-epochs "
                "until its best >= the cold sweep's final best) / (cold trial-epochs)",
            )
            _emit(
                figure="warm_minus_cold_best",
                mean=round(statistics.mean(deltas), 4),
                min=round(min(deltas), 4),
                max=round(max(deltas), 4),
                worse=sum(d < 0 for d in deltas),
                runs=len(deltas),
            )
            done = [t for t in tests if t is not None]
            adjusted = holm([t["p"] for t in done])
            _emit(
                figure="warm_minus_cold_test_map",
                mean=round(statistics.mean(t["delta_map"] for t in done), 4) if done else None,
                significantly_worse=sum(t["delta_map"] < 0 and t["p"] < 0.05 for t in done),
                significantly_better=sum(t["delta_map"] > 0 and t["p"] < 0.05 for t in done),
                significantly_worse_holm=sum(
                    t["delta_map"] < 0 and p < 0.05 for t, p in zip(done, adjusted)
                ),
                target="never significantly worse",
                within_target=bool(done)
                and not any(t["delta_map"] < 0 and t["p"] < 0.05 for t in done),
                runs=len(done),
                statistic="per (seed, held-out language): test MAP of the warm sweep's best "
                "minus the cold one's, paired randomisation test over test queries, "
                "two-sided p < 0.05 without correction for the runs (the target's count), "
                "and with Holm's correction over the runs",
            )
    finally:
        ray.shutdown()


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


if __name__ == "__main__":
    main()
