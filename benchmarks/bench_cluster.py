"""The sweep driver at cluster scale: slot utilisation with pairs run concurrently
against one after another, and the scheduler's overhead per trial from 100 to 1,000
trials. One JSON line per figure.

The real driver (:func:`optical_ray.distributed.driver.run`: checks, one zero-CPU Ray task per pair,
the shared trial budget), the real searcher (Optuna TPE), scheduler (ASHA) and results
catalog run; only the trials are stand-ins that sleep a fixed time per evaluation and
report a synthetic dev metric, as Ray's own Tune scalability release tests do. The Ray
slots are logical CPUs (the stand-ins sleep), so 8 slots fit a 2-core machine.

* **utilisation** — busy slot-seconds / (slots x wall) for 8 pairs x 8 trials on 8
  slots with ASHA, ``pair_order: concurrent`` against ``sequential``. Busy time is the
  stand-ins' own work (their sleeps, summed from the catalog's ``training_s``); wall
  is the whole :func:`launch.run` call (checks, pair tasks, catalog writes included).
  The catalog's started/finished spans (a trial's life as the driver sees it, actor
  start and reports included) give a second, looser figure.
  ``trial_phase_utilisation`` leaves out the sweep's start-up (``startup_s``: checks,
  pair tasks and their Tune set-up until the first trial starts), which is fixed per
  sweep, not per trial. ``pair_gap_median_s`` / ``pair_gap_max_s``: seconds from a
  trial's end to the start of its pair's next trial (the hand-off a trial pays).
  ``first_start_spread_s`` / ``last_end_spread_s``: how far apart the pairs' first
  trials started and their last trials ended; ``pair_chain_median_s``: a pair's first
  start to last end. ``--seconds`` sets the stand-in's work per evaluation (2 s by
  default; real OPTICAL evaluations are a minute or more apart), so the fixed start-up
  weighs less as it grows.
* **overhead** — per-trial scheduler overhead = (wall - ideal wall) / trials, where
  ideal wall = trials x work per trial / slots: what the driver adds per trial on top
  of perfect packing (suggest, the shared budget, actor reuse, result handling,
  experiment snapshots, catalog appends, the pair task's start). Measured at 100 and
  1,000 trials across 10 pairs (FIFO, every trial the same length), and their ratio.

    python benchmarks/bench_cluster.py [--part all|utilisation|overhead]
                                       [--slots 8] [--seconds 2] [--orders ...] [--smoke-test]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# A small space: what the stand-in's synthetic metric depends on.
SPACE = {
    "base": {"train.stages": ["distill"], "train.log_every": 10_000},
    "params": {
        "distill.epsilon": {"type": "loguniform", "low": 0.01, "high": 1.0},
        "distill.lr": {"type": "loguniform", "low": 1e-5, "high": 3e-2},
    },
}
LANGS = ["sw", "yo", "ha", "ig", "am", "so", "zu", "xh", "rw", "wo", "tw", "ln"]


JSON_OUT = sys.stdout  # the JSON lines; anything else printed goes to stderr (see main)


def _emit(**fields: Any) -> None:
    print(json.dumps({"bench": "cluster", **fields}), file=JSON_OUT, flush=True)


def stand_in(sampled: dict[str, Any], *, plan: Any, seconds: float) -> None:
    """A trial that sleeps ``seconds`` per evaluation for the pair's full length
    (``plan.max_t - 1`` evaluations) and reports a synthetic dev MAP after each; then
    the end-of-trial report a real trial makes (:func:`optical_ray.distributed.trial.run_trial`).
    ``train_s`` in every report is the work done so far, so a trial ASHA stops early
    leaves its work in the catalog too."""
    from ray import tune

    from optical_ray.config import to_flat
    from optical_ray.sweeps.protocol import CONFIG_KEY, FINISHED_KEY
    from optical_ray.sweeps.plan import resolve_trial_config

    trial_id = tune.get_context().get_trial_id()
    config = json.dumps(to_flat(resolve_trial_config(plan, sampled, trial_id)), sort_keys=True)
    # Best at lr 1e-3 and epsilon 0.05; a learning curve that saturates.
    quality = (
        0.5
        - 0.04 * (math.log10(sampled["distill.lr"]) + 3) ** 2
        - 0.02 * (math.log10(sampled["distill.epsilon"]) + 1.3) ** 2
    )
    evaluations = plan.max_t - 1
    work = 0.0
    value = 0.0
    for i in range(1, evaluations + 1):
        start = time.perf_counter()
        time.sleep(seconds)
        work += time.perf_counter() - start
        value = quality * (1 - math.exp(-i / 3))
        out = {"map": value, "train_s": work}
        if i == 1:
            out[CONFIG_KEY] = config
        tune.report(out)
    tune.report({"map": value, FINISHED_KEY: 1, "train_s": work, CONFIG_KEY: config})


def _sweep(
    root: Path,
    name: str,
    *,
    pairs: int,
    samples: int,
    slots: int,
    seconds: float,
    evaluations: int,
    scheduler: str,
    pair_order: str,
) -> dict[str, Any]:
    """Run one sweep through the real driver; its wall time and catalog records."""
    from optical_ray.catalog import Catalog
    from optical_ray.config import from_flat
    from optical_ray.distributed.driver import run
    from optical_ray.sweeps.space import parse_space

    storage = root / f"store-{name}"
    # distill.steps / eval_every fix the trial's length in evaluations: ASHA's max_t.
    space = parse_space(
        {**SPACE, "base": {**SPACE["base"], "distill.steps": evaluations, "train.eval_every": 1}}
    )
    cfg = from_flat(
        {
            "name": name,
            "output_dir": str(root / "runs"),
            "storage.uri": str(storage),
            "sweep.pairs": [f"en-{x}" for x in LANGS[:pairs]],
            "sweep.samples": samples,
            "sweep.max_concurrent": slots,
            "sweep.scheduler": scheduler,
            "sweep.pair_order": pair_order,
            "sweep.grace_period": 1,
            "sweep.reduction_factor": 2.0,
            "scaling.cpus_per_worker": 1.0,
        }
    )
    lines: list[str] = []
    began, start = time.time(), time.perf_counter()
    result = run(
        cfg,
        space,
        verbose=1,
        out=lines.append,
        check_data=False,
        trial_fn=functools.partial(stand_in, seconds=seconds),
    )
    wall = time.perf_counter() - start
    records = Catalog(str(storage)).records()
    first = records["started_at"].min().timestamp()
    last = records["finished_at"].max().timestamp()
    return {
        "wall": wall,
        "records": records,
        "result": result,
        "lines": lines,
        "startup": first - began,
        "trial_phase": last - first,
    }


def _busy(records: Any) -> tuple[float, float]:
    """Busy slot-seconds: the stand-ins' own work, and the trials' driver-side spans."""
    work = float(records["training_s"].fillna(0).sum())
    spans = float((records["finished_at"] - records["started_at"]).dt.total_seconds().sum())
    return work, spans


def _pair_gaps(records: Any) -> list[float]:
    """Seconds between one trial's end and the pair's next trial's start, for every
    pair: the hand-off a pair pays per trial (a slot kept for its next trial reuses the
    warm actor; one lost to another pair waits for a CPU)."""
    gaps: list[float] = []
    for _, rows in records.sort_values("started_at").groupby("pair"):
        starts = list(rows["started_at"])[1:]
        ends = sorted(rows["finished_at"])[: len(starts)]
        gaps += [max(0.0, (s - e).total_seconds()) for s, e in zip(starts, ends)]
    return gaps


def _spreads(records: Any) -> dict[str, float]:
    """Where the trial phase loses slot-time: how far apart the pairs' first trials
    started and their last trials ended (seconds), and the median pair's chain (first
    start to last end)."""
    by_pair = records.groupby("pair")
    first, last = by_pair["started_at"].min(), by_pair["finished_at"].max()
    chain = (last - first).dt.total_seconds()
    return {
        "first_start_spread_s": round((first.max() - first.min()).total_seconds(), 1),
        "last_end_spread_s": round((last.max() - last.min()).total_seconds(), 1),
        "pair_chain_median_s": round(float(chain.median()), 1),
    }


def _utilisation(
    root: Path,
    slots: int,
    pairs: int,
    samples: int,
    seconds: float,
    evaluations: int,
    orders: tuple[str, ...] = ("sequential", "concurrent"),
) -> None:
    runs = {}
    for order in orders:
        run = _sweep(
            root,
            f"util-{order}",
            pairs=pairs,
            samples=samples,
            slots=slots,
            seconds=seconds,
            evaluations=evaluations,
            scheduler="asha",
            pair_order=order,
        )
        records = run["records"]
        work, spans = _busy(records)
        util = work / (slots * run["wall"])
        gaps = _pair_gaps(records)
        runs[order] = run
        target = 0.85 if order == "concurrent" else None
        _emit(
            figure=f"slot_utilisation_{order}",
            value=round(util, 3),
            target=target,
            within_target=(util >= target) if target else None,
            statistic="sum of trials' work (their sleeps) / (slots x sweep wall)",
            span_utilisation=round(spans / (slots * run["wall"]), 3),
            trial_phase_utilisation=round(work / (slots * run["trial_phase"]), 3),
            startup_s=round(run["startup"], 1),
            pair_gap_median_s=round(statistics.median(gaps), 2) if gaps else None,
            pair_gap_max_s=round(max(gaps), 1) if gaps else None,
            **_spreads(records),
            wall_s=round(run["wall"], 1),
            busy_slot_s=round(work, 1),
            slots=slots,
            pairs=pairs,
            trials=len(records),
            finished=int((records["status"] == "finished").sum()),
            stopped=int((records["status"] == "stopped").sum()),
            failed=int((records["status"] == "failed").sum()),
            progress_lines=len(run["lines"]),
            exit_code=run["result"].exit_code,
        )
    if len(runs) < 2:
        return
    ratio = runs["concurrent"]["wall"] / runs["sequential"]["wall"]
    _emit(
        figure="concurrent_over_sequential_wall",
        value=round(ratio, 3),
        target=0.6,
        within_target=ratio <= 0.6,
        concurrent_wall_s=round(runs["concurrent"]["wall"], 1),
        sequential_wall_s=round(runs["sequential"]["wall"], 1),
    )


def _overhead(root: Path, slots: int, pairs: int, sizes: list[int], seconds: float) -> None:
    per_trial = {}
    for trials in sizes:
        samples = trials // pairs
        run = _sweep(
            root,
            f"oh-{trials}",
            pairs=pairs,
            samples=samples,
            slots=slots,
            seconds=seconds,
            evaluations=1,
            scheduler="none",
            pair_order="concurrent",
        )
        records = run["records"]
        n = len(records)
        work, _ = _busy(records)
        ideal = work / slots
        ms = (run["wall"] - ideal) / n * 1000
        per_trial[trials] = ms
        _emit(
            figure=f"scheduler_overhead_ms_per_trial_{trials}",
            value=round(ms, 1),
            unit="ms",
            statistic="(sweep wall - trials' work / slots) / trials",
            slot_ms_per_trial=round(ms * slots, 1),
            wall_s=round(run["wall"], 1),
            ideal_wall_s=round(ideal, 1),
            trials=n,
            pairs=pairs,
            slots=slots,
            work_per_trial_s=seconds,
            failed=int((records["status"] == "failed").sum()),
            exit_code=run["result"].exit_code,
        )
    small, large = min(sizes), max(sizes)
    _emit(
        figure="scheduler_overhead_growth",
        value=round(per_trial[large] / per_trial[small], 2),
        statistic=f"overhead per trial at {large} trials / at {small} trials "
        "(1.0: constant per trial)",
        **{f"ms_per_trial_{k}": round(v, 1) for k, v in per_trial.items()},
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--part", choices=["all", "utilisation", "overhead"], default="all")
    ap.add_argument("--slots", type=int, default=8, help="logical CPU slots (trials in flight)")
    ap.add_argument("--pairs", type=int, default=8, help="pairs (utilisation)")
    ap.add_argument("--samples", type=int, default=8, help="trials per pair (utilisation)")
    ap.add_argument(
        "--seconds", type=float, default=2.0, help="stand-in work per evaluation (utilisation)"
    )
    ap.add_argument(
        "--evaluations",
        type=int,
        default=8,
        help="evaluations of a full trial (utilisation; ASHA's horizon)",
    )
    ap.add_argument(
        "--orders",
        default="sequential,concurrent",
        choices=["sequential,concurrent", "concurrent", "sequential"],
        help="pair orders to measure (utilisation); both for the wall-time ratio",
    )
    ap.add_argument("--overhead-pairs", type=int, default=10)
    ap.add_argument("--overhead-trials", default="100,1000")
    ap.add_argument(
        "--overhead-seconds", type=float, default=0.5, help="stand-in work per trial (overhead)"
    )
    ap.add_argument(
        "--smoke-test", "--quick", action="store_true", help="tiny sizes, checks it runs"
    )
    args = ap.parse_args()
    if args.smoke_test:
        args.pairs, args.samples, args.seconds, args.evaluations = 2, 2, 0.2, 2
        args.overhead_pairs, args.overhead_trials, args.overhead_seconds = 2, "4,8", 0.1
    import ray

    # Ray's log lines stay in the session's files: the JSON lines are the output.
    ray.init(
        address="local",
        num_cpus=args.slots,
        include_dashboard=False,
        log_to_driver=False,
        object_store_memory=200 * 2**20,
    )
    try:
        # Ray prints the raylet's warnings (e.g. on worker start-up) to stdout: send
        # them to stderr, so stdout holds the JSON lines alone.
        with (
            contextlib.redirect_stdout(sys.stderr),
            tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp,
        ):
            root = Path(tmp)
            if args.part in ("all", "utilisation"):
                _utilisation(
                    root,
                    args.slots,
                    args.pairs,
                    args.samples,
                    args.seconds,
                    args.evaluations,
                    tuple(args.orders.split(",")),
                )
            if args.part in ("all", "overhead"):
                _overhead(
                    root,
                    args.slots,
                    args.overhead_pairs,
                    [int(x) for x in args.overhead_trials.split(",")],
                    args.overhead_seconds,
                )
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
