"""scripts/gpu_check.sh on a machine without CUDA: every CUDA figure is one JSON line
marked skipped, with the reason, and the script exits 0 (on a GPU node the same script
measures them: docs/gpu.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: run the script")
def test_gpu_check_without_cuda_prints_each_figure_skipped() -> None:
    env = {**os.environ, "VENV": str(Path(sys.executable).parent.parent)}
    proc = subprocess.run(
        ["bash", "scripts/gpu_check.sh"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    figures = {line["figure"]: line for line in lines}
    assert figures.pop("device")["cuda"] is None
    assert set(figures) == {
        "ot_cuda_eps0.01",
        "ot_cuda_eps0.05",
        "step_fp32",
        "step_bf16",
        "train_1gpu",
        "sweep_gpu_trials",
        "minilm_distill_examples_per_s",
    }
    assert all(
        f["skipped"] and f["reason"] == "torch sees no CUDA device" for f in figures.values()
    )


def test_bench_gpu_refuses_an_unknown_figure() -> None:
    proc = subprocess.run(
        [sys.executable, "benchmarks/bench_gpu.py", "--figures", "train_1gpu,warp"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "unknown warp" in proc.stderr
