"""benchmarks/bench_peer.py: our distill loop against sentence-transformers' MSELoss step,
run end to end on the tiny world's bitext and a tiny encoder (2 layers, hidden 64).
Checks the figures and that every value is finite and positive; never the timings."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

from optical_ray.data.formats import iter_bitext

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_peer.py"
FIGURES = {
    "mse_step_ratio",
    "ot_over_their_mse",
    "dev_map_ours",
    "dev_map_theirs",
    "dev_map_diff",
    "dev_map_ours_ot",
    "dev_map_teacher",
}

pytest.importorskip("sentence_transformers")


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_peer", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_figures_are_finite_and_positive(
    bench, tiny_world, tiny_encoder_dir, one_torch_thread, capsys
):
    args = bench.parser().parse_args(
        [
            "--steps", "3",
            "--batch-size", "4",
            "--max-len", "16",
            "--warmup", "1",
            "--lr", "1e-3",
            "--model-dir", str(tiny_encoder_dir),
        ]
    )  # fmt: skip
    xx = next(iter(tiny_world.languages))
    train = list(iter_bitext(tiny_world.bitext_path(xx, "train")))[:6]  # 3 steps x 4 rows
    dev = list(iter_bitext(tiny_world.bitext_path(xx, "dev")))[:20]
    records = bench.run(args, str(tiny_encoder_dir), train, dev, f"synthetic en-{xx}")

    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert printed == records
    assert {r["figure"] for r in records} == FIGURES
    by = {r["figure"]: r for r in records}
    assert all(r["bench"] == "peer" and r["data"] == f"synthetic en-{xx}" for r in records)
    for name in ("mse_step_ratio", "ot_over_their_mse"):
        r = by[name]
        for key in ("value", "ours_ms", "their_step_ms", "ratio_to_their_step_without_labelling"):
            assert math.isfinite(r[key]) and r[key] > 0, (name, key, r[key])
    ratio = by["mse_step_ratio"]
    assert ratio["target"] == 1.10 and ratio["met"] == (ratio["value"] <= 1.10)
    assert ratio["met"] or ratio["reason"]
    for name in ("dev_map_ours", "dev_map_theirs", "dev_map_ours_ot", "dev_map_teacher"):
        assert 0 < by[name]["value"] <= 1 and by[name]["n_queries"] == 20
    diff = by["dev_map_diff"]
    assert diff["value"] == pytest.approx(
        by["dev_map_ours"]["value"] - by["dev_map_theirs"]["value"], abs=2e-4
    )
    assert 0 < diff["p_value"] <= 1 and diff["agree"] == (diff["p_value"] >= 0.05)


def test_rows_are_the_papers(bench):
    rows = bench.paper_rows([("a cat", "paka"), ("a dog", "mbwa")])
    assert rows == [("a cat", "paka"), ("a dog", "mbwa"), ("a cat", "a cat"), ("a dog", "a dog")]
