"""What noise-aware promotion costs: trial-epochs against Ray's plain ASHA on the same
learning curves, on the tiny synthetic world.

``--trials`` configs are drawn at random from a space (learning rate over three orders
of magnitude, epsilon over two, the layers) and each is trained to the end once
(no Ray: :func:`optical_ray.training.recipe.run` with a context that keeps every dev
evaluation's per-query values, as a sweep trial sends them). Then the same curves are
replayed (:func:`optical_ray.distributed.promotion.replay`) in ``--orders`` random
arrival orders through Ray's ``AsyncHyperBandScheduler`` and through ``PairedASHA``
(a trial stops at a rung only when its per-query dev values are significantly below
the rung's cut-off trial, one-sided, at ``--alpha``), with the same rungs
(``reduction_factor`` 2, grace period 1). Replaying one set of curves isolates the
rule: a live sweep would also change what TPE samples next.

One JSON line per order (``"figure": "order"``): trial-epochs under each rule, their
ratio (``extra_budget_ratio`` = paired / plain: the extra cost), the trial-epochs of
running every trial to the end (no early stopping), stops the paired test turned into
continues, and whether each rule stopped the trial that ends best (``cut_best``); then
one ``"figure": "summary"`` line with the mean ratio over orders.

    python benchmarks/bench_promotion.py [--trials 16] [--orders 5] [--steps 16]
                                         [--smoke-test]

CPU-sized: about 10 s of training per trial on one thread of a shared core.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path
from typing import Any

PAIR = "en-xc"


def _emit(**fields: Any) -> None:
    print(json.dumps({"bench": "promotion", **fields}), flush=True)


def _teacher(root: Path, steps: int) -> dict[str, Any]:
    """A tiny world and an English teacher trained on it; the trials' base config."""
    from optical_ray.config import from_flat
    from optical_ray.data.synthetic import synthesize_world
    from optical_ray.training.recipe import LocalContext, run

    world = synthesize_world(root / "world", seed=0, scale="tiny")
    base = {
        "data.root": str(world.root),
        "output_dir": str(root / "runs"),
        "model.tiny.dropout": 0.0,
        "eval.metrics": ["map"],
        "eval.pairs": ["en-en", PAIR],
        "eval.retention": False,
        "train.log_every": 10_000,
        "train.device": "cpu",
    }
    cfg = from_flat(
        {
            **base,
            "name": "teacher",
            "pair": PAIR,
            "train.stages": ["rank"],
            "rank.steps": steps,
            "rank.batch_size": 16,
            "rank.lr": 2e-3,
            "train.warmup_ratio": 0.1,
        }
    )
    run(cfg, LocalContext(root / "teacher"))
    return {**base, "train.teacher": str(root / "teacher" / "model")}


def _curve(
    base: dict[str, Any], sampled: dict[str, Any], steps: int, every: int, run_dir: Path
) -> list[dict]:
    """Train one config to the end; its dev evaluations as a sweep trial reports them
    (the objective and its per-query values, ``dev_units``)."""
    from optical_ray.config import from_flat
    from optical_ray.distributed.devreports import DevReports
    from optical_ray.training.context import TrainContext
    from optical_ray.training.recipe import run

    cfg = from_flat(
        {
            **base,
            **sampled,
            "name": "trial",
            "pair": PAIR,
            "train.stages": ["distill"],
            "distill.steps": steps,
            "distill.batch_size": 16,
            "train.eval_every": every,
            "train.warmup_ratio": 0.0,
            "sweep.objective": f"mean({PAIR}/map, en-en/map)",
            "sweep.metric": "objective",
        }
    )
    results: list[dict] = []

    class Keep(TrainContext):
        def checkpoint_root(self) -> None:
            return None  # nothing reads them back

        def report(self, metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
            if "objective" in metrics:
                out = {"objective": metrics["objective"], "training_iteration": len(results) + 1}
                reports.attach(metrics, out)
                results.append(out)

    ctx = Keep(run_dir=run_dir)
    ctx.dev_per_query = {}  # filled by each dev evaluation (training.recipe.evaluate_dev)
    reports = DevReports(cfg, ctx.dev_per_query)
    run(cfg, ctx)
    return results


def _sample(rng: Any) -> dict[str, Any]:
    return {
        "distill.lr": float(10 ** rng.uniform(-4.5, -1.5)),
        "distill.epsilon": float(10 ** rng.uniform(-2, 0)),
        "distill.layers": [int(rng.choice([-1, -2]))],
    }


def _replay(curves: list[list[dict]], alpha: float) -> dict[str, Any]:
    from ray.tune.schedulers import AsyncHyperBandScheduler

    from optical_ray.distributed.promotion import PairedASHA, replay

    kwargs = {
        "time_attr": "training_iteration",
        "grace_period": 1,
        "reduction_factor": 2,
        "max_t": max(len(c) for c in curves) + 1,  # as a sweep: the summary is the end
    }
    plain = AsyncHyperBandScheduler(**kwargs)
    paired = PairedASHA(alpha=alpha, **kwargs)
    for s in (plain, paired):
        s.set_search_properties("objective", "max")
    spent_plain, spent_paired = replay(curves, plain), replay(curves, paired)
    final = [c[-1]["objective"] for c in curves]
    best = max(range(len(curves)), key=lambda i: final[i])
    full = [len(c) for c in curves]
    return {
        "plain_trial_epochs": sum(spent_plain),
        "paired_trial_epochs": sum(spent_paired),
        "extra_budget_ratio": round(sum(spent_paired) / sum(spent_plain), 3),
        "full_trial_epochs": sum(full),
        "reprieved": paired.reprieved,
        "plain_cut_best": spent_plain[best] < full[best],
        "paired_cut_best": spent_paired[best] < full[best],
        "plain_best_found": round(
            max(max(r["objective"] for r in c[:n]) for c, n in zip(curves, spent_plain)), 4
        ),
        "paired_best_found": round(
            max(max(r["objective"] for r in c[:n]) for c, n in zip(curves, spent_paired)), 4
        ),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=16, help="configs trained to the end")
    ap.add_argument("--orders", type=int, default=5, help="arrival orders replayed")
    ap.add_argument("--steps", type=int, default=16, help="distill steps per trial")
    ap.add_argument("--every", type=int, default=2, help="steps between dev evaluations")
    ap.add_argument("--alpha", type=float, default=0.1, help="sweep.promotion_alpha")
    ap.add_argument("--teacher-steps", type=int, default=150)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--smoke-test", action="store_true", help="tiny sizes, checks it runs")
    args = ap.parse_args(argv)
    if args.smoke_test:
        args.trials, args.orders, args.steps, args.teacher_steps = 4, 2, 4, 10
    import numpy as np
    import torch

    torch.set_num_threads(1)
    rng = np.random.default_rng(args.seed)
    with tempfile.TemporaryDirectory(prefix="bench-promotion-") as tmp:
        base = _teacher(Path(tmp), args.teacher_steps)
        curves = [
            _curve(base, _sample(rng), args.steps, args.every, Path(tmp) / f"trial{i}")
            for i in range(args.trials)
        ]
    ratios = []
    for order in range(args.orders):
        perm = [int(i) for i in rng.permutation(len(curves))]
        row = _replay([curves[i] for i in perm], args.alpha)
        ratios.append(row["extra_budget_ratio"])
        _emit(figure="order", order=order, trials=len(curves), alpha=args.alpha, **row)
    _emit(
        figure="summary",
        trials=len(curves),
        orders=args.orders,
        evaluations_per_trial=len(curves[0]),
        alpha=args.alpha,
        mean_extra_budget_ratio=round(statistics.mean(ratios), 3),
        max_extra_budget_ratio=max(ratios),
    )


if __name__ == "__main__":
    main()
