"""``optical-ray train --dry-run``: one line (or JSON object) per stage, exit 0 even over
the budget, and nothing written; ``sweep --memory-budget`` is ``sweep.memory_budget``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from optical_ray.cli.parser import main

pytestmark = [
    pytest.mark.usefixtures("one_torch_thread"),
    pytest.mark.filterwarnings("ignore::optical_ray.ot.SinkhornConvergenceWarning"),
]


def _argv(tiny_world, tmp_path: Path) -> list[str]:
    return [
        "train",
        "--dry-run",
        f"data.root={tiny_world.root}",
        f"output_dir={tmp_path / 'runs'}",
        "pair=en-xc",
        "train.stages=[adapt,distill]",
        "adapt.batch_size=4",
        "distill.batch_size=4",
        "model.max_doc_length=24",
        "model.max_bitext_length=16",
    ]


def test_dry_run_prints_one_line_per_stage(tiny_world, tmp_path, capsys) -> None:
    assert main(_argv(tiny_world, tmp_path)) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == ["adapt", "distill"]
    assert lines[0].startswith("adapt: one step at batch 4, text 24 tokens: peak ")
    assert lines[1].startswith("distill: one step at batch 4, english 16 + foreign 16 tokens")
    assert all("(CPU peak RSS growth; with " in line for line in lines)
    assert not (tmp_path / "runs").exists()


def test_dry_run_json_with_a_budget(tiny_world, tmp_path, capsys) -> None:
    argv = [*_argv(tiny_world, tmp_path), "--memory-budget", "1M", "--format", "json"]
    assert main(argv) == 0  # a report: over the budget is not an error
    stages = json.loads(capsys.readouterr().out)["stages"]
    assert [s["stage"] for s in stages] == ["adapt", "distill"]
    for s in stages:
        for key in (
            "batch_size",
            "lengths",
            "device",
            "measure",
            "peak_bytes",
            "weights_bytes",
            "total_bytes",
            "budget_bytes",
            "fits",
            "largest_batch",
            "margin_bytes",
            "bytes_per_example",
            "points",
            "text",
        ):
            assert key in s, key
        assert s["budget_bytes"] == 2**20 and s["fits"] is False
        assert "OVER the budget of 1 MiB" in s["text"]
    assert not (tmp_path / "runs").exists()


def test_sweep_memory_budget_is_the_config_key(monkeypatch, tmp_path) -> None:
    import optical_ray.distributed as distributed

    seen = {}

    def fake_run_sweep(cfg, space, **kwargs):
        seen["budget"] = cfg.sweep.memory_budget
        raise SystemExit(0)

    monkeypatch.setattr(distributed, "run_sweep", fake_run_sweep)
    with pytest.raises(SystemExit):
        main(
            [
                "sweep",
                "--space",
                "search_spaces/default.yaml",
                "--pairs",
                "en-xa",
                "--memory-budget",
                "500",
                f"output_dir={tmp_path / 'runs'}",
            ]
        )
    assert seen == {"budget": "500"}
