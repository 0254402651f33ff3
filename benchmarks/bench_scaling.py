"""Ray Train scaling on this machine: step time and examples/s for 1 vs 2 workers, and
the framework overhead (wall time of a run minus the sum of its step times).

Prints one JSON line per figure. Both runs use the same per-worker batch (weak
scaling: 2 workers process twice the examples per step) on the tiny model and the
tiny synthetic world, in one process, one after the other, so the ratios compare like
with like on a noisy shared machine.

    python benchmarks/bench_scaling.py [--steps 40] [--batch 16] [--smoke-test]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path


def _run(root: Path, workers: int, steps: int, batch: int) -> dict:
    from optical_ray.config import from_flat
    from optical_ray.distributed.train import fit

    cfg = from_flat(
        {
            "data.root": str(root / "world"),
            "output_dir": str(root / "runs"),
            "storage.uri": str(root / "storage"),
            "name": f"scale-{workers}",
            "pair": "en-xc",
            "train.teacher": str(root / "teacher"),
            "train.stages": ["distill"],
            "train.log_every": 10_000,
            "distill.steps": steps,
            "distill.batch_size": batch,
            "scaling.workers": workers,
            "eval.pairs": ["en-xc"],
            "eval.metrics": ["map"],
        }
    )
    start = time.perf_counter()
    result = fit(cfg)
    wall = time.perf_counter() - start
    state = json.loads((Path(result.checkpoint) / "state.json").read_text())
    steps_rec = state["history"]["steps"]
    # examples_per_s = batch * workers / step seconds (global examples per step)
    step_s = [batch * workers / r["examples_per_s"] for r in steps_rec]
    steady = step_s[2:] or step_s  # the first steps include warm-up (allocations, DDP)
    return {
        "workers": workers,
        "steps": len(step_s),
        "median_step_s": statistics.median(steady),
        "examples_per_s": batch * workers / statistics.median(steady),
        "sum_step_s": sum(step_s),
        "wall_s": wall,
        "overhead_s": wall - sum(step_s),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--batch", type=int, default=16, help="per-worker batch")
    p.add_argument("--smoke-test", action="store_true", help="a few steps only")
    args = p.parse_args()
    steps = 4 if args.smoke_test else args.steps

    import ray

    from optical_ray.config import from_flat
    from optical_ray.data.synthetic import synthesize_world
    from optical_ray.models.encoder import RetrievalModel

    root = Path(tempfile.mkdtemp(prefix="bench-scaling-"))
    synthesize_world(root / "world", seed=0, scale="tiny")
    cfg = from_flat({"data.root": str(root / "world")})
    RetrievalModel.from_config(cfg).save(root / "teacher", cfg)
    ray.init(
        address="local",
        num_cpus=2,
        object_store_memory=256 * 2**20,
        include_dashboard=False,
        log_to_driver=False,
    )
    try:
        runs = {w: _run(root, w, steps, args.batch) for w in (1, 2)}
    finally:
        ray.shutdown()
    for r in runs.values():
        print(
            json.dumps(
                {
                    "bench": "scaling",
                    "figure": "run",
                    **{k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()},
                    "overhead_frac": round(r["overhead_s"] / r["wall_s"], 4),
                }
            )
        )
    one, two = runs[1], runs[2]
    print(
        json.dumps(
            {
                "bench": "scaling",
                "figure": "throughput_2_vs_1_workers",
                "value": round(two["examples_per_s"] / one["examples_per_s"], 4),
                "ideal": 2.0,
                "note": "same per-worker batch; 2 CPU cores shared with Ray's own processes",
            }
        )
    )
    print(
        json.dumps(
            {
                "bench": "scaling",
                "figure": "step_time_2_vs_1_workers",
                "value": round(two["median_step_s"] / one["median_step_s"], 4),
                "ideal": 1.0,
            }
        )
    )


if __name__ == "__main__":
    main()
