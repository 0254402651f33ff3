"""Batch sizing: one real training step measured per stage at maximum lengths, the
largest batch for a budget from a line through measured batches, and the sweep's
warning before launch, on the tiny model (CPU: peak RSS growth)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from optical_ray.errors import ConfigError
from optical_ray.sweeps.space import parse_space
from optical_ray.training import (
    StepMemory,
    StepProbe,
    dry_run,
    largest_batch,
    largest_trial_config,
    measure_step_memory,
    warn_step_memory,
)

pytestmark = [
    pytest.mark.usefixtures("one_torch_thread"),
    pytest.mark.filterwarnings("ignore::optical_ray.ot.SinkhornConvergenceWarning"),
]

#: Short inputs keep the three stages' steps cheap.
SHORT = {"model.max_query_length": 8, "model.max_doc_length": 24, "model.max_bitext_length": 16}


def _files(root: Path) -> list[Path]:
    return sorted(root.rglob("*"))


def test_dry_run_measures_one_step_per_stage_and_writes_nothing(tiny_config, tmp_path) -> None:
    cfg = tiny_config(
        **SHORT,
        **{
            "train.stages": ["rank", "adapt", "distill"],
            "rank.batch_size": 4,
            "rank.hard_negatives": 1,
            "adapt.batch_size": 4,
            "distill.batch_size": 4,
            "distill.rank_batch_size": 2,
            "storage.uri": str(tmp_path / "store"),
        },
    )
    before = _files(tmp_path)
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    rows = dry_run(cfg)
    assert torch.equal(torch.rand(3), expected)  # the caller's RNG is left as it was
    assert _files(tmp_path) == before  # no run dir, no checkpoint, no storage
    assert [r["stage"] for r in rows] == ["rank", "adapt", "distill"]
    for row in rows:
        assert row["skipped"] is None
        assert row["peak_bytes"] > 0
        assert row["total_bytes"] == row["peak_bytes"] + row["weights_bytes"]  # CPU
        assert row["measure"] == "CPU peak RSS growth"
        assert row["text"].startswith(f"{row['stage']}: one step at batch 4, ")
    # padded to the configured maxima: the worst case
    assert rows[0]["lengths"] == {"query": 8, "doc": 24}
    assert rows[1]["lengths"] == {"text": 24}
    assert rows[2]["lengths"] == {"english": 16, "foreign": 16, "query": 8, "doc": 24}
    # distill holds the frozen teacher and the student
    assert rows[2]["weights_bytes"] == 2 * rows[0]["weights_bytes"]


def test_a_teacher_run_skips_rank_and_method_none_is_not_measured(
    tiny_config, tiny_encoder_dir
) -> None:
    cfg = tiny_config(
        **SHORT,
        **{
            "train.stages": ["rank", "distill"],
            "train.teacher": str(tiny_encoder_dir),
            "distill.method": "none",
        },
    )
    rows = dry_run(cfg)
    assert [(r["stage"], r["skipped"] is not None) for r in rows] == [("distill", True)]
    assert "trains nothing" in rows[0]["text"]
    with pytest.raises(ConfigError, match="distill.method: got 'none'"):
        measure_step_memory(cfg, "distill")
    with pytest.raises(ValueError, match="allowed rank, adapt, distill"):
        measure_step_memory(cfg, "evaluate")


def test_a_larger_batch_takes_more_memory(tiny_config) -> None:
    probe = StepProbe(tiny_config(), "distill")
    small, large = probe.measure(2), probe.measure(32)
    assert (small.batch_size, large.batch_size) == (2, 32)
    assert large.peak_bytes > small.peak_bytes
    assert large.weights_bytes == small.weights_bytes


def test_the_largest_batch_solves_the_fitted_line(tiny_config) -> None:
    cfg = tiny_config(**{"distill.batch_size": 16})
    at_16 = measure_step_memory(cfg, "distill")
    budget = 3 * at_16.total_bytes
    fit = largest_batch(cfg, "distill", budget, sizes=[4, 8, 16])
    assert [p.batch_size for p in fit.points[:3]] == [4, 8, 16]
    assert fit.slope > 0
    assert fit.batch is not None and fit.batch > 16  # three times the memory of batch 16
    # the fit puts the answer within the budget, and one more example over it
    assert fit.predicted(fit.batch) <= budget < fit.predicted(fit.batch + 1)
    assert fit.margin_bytes is not None and fit.margin_bytes >= 0
    # at most 4x the measured batches: measured, and within the budget
    assert fit.checked is not None and fit.checked.batch_size == fit.batch
    assert fit.checked.total_bytes <= budget
    with pytest.raises(ValueError, match="two distinct batch sizes"):
        largest_batch(cfg, "distill", budget, sizes=[8, 8])


def test_a_configured_batch_over_the_budget_is_said(tiny_config) -> None:
    cfg = tiny_config(**{"train.stages": ["distill"]})
    (row,) = dry_run(cfg, budget_bytes=2**20)
    assert row["fits"] is False
    assert row["budget_bytes"] == 2**20
    assert "OVER the budget of 1 MiB at batch 8" in row["text"]
    assert {"largest_batch", "margin_bytes", "bytes_per_example", "points"} <= set(row)


# --------------------------------------------------------------------------- sweeps


def _space() -> object:
    return parse_space(
        {
            "base": {"train.stages": ["distill"], "distill.steps": 2},
            "params": {
                "distill.epsilon": {"type": "loguniform", "low": 0.05, "high": 1.0},
                "distill.batch_size": {"type": "categorical", "choices": [4, 24]},
            },
        }
    )


def test_the_sweep_warns_before_launch_when_its_largest_batch_does_not_fit(
    sweep_base, tmp_path, caplog
) -> None:
    space = _space()
    cfg = sweep_base(
        tmp_path / "store",
        **{"sweep.pairs": ["en-xa", "en-xc"], "sweep.memory_budget": "1M"},
    )
    trial, searched = largest_trial_config(cfg, space, "en-xc")
    assert trial.distill.batch_size == 24 and searched == {"distill.batch_size"}
    with caplog.at_level(logging.WARNING, logger="optical_ray.training.sizing"):
        lines = warn_step_memory(cfg, space)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warned == lines and len(lines) == 2  # one per pair (one stage each)
    for pair, line in zip(["en-xa", "en-xc"], lines):
        assert line.startswith(f"{pair} distill: one step at distill.batch_size=24 ")
        assert "(the space's largest)" in line
        assert "over the memory budget 1 MiB (sweep.memory_budget)" in line
    assert not (tmp_path / "store").exists()  # measured, nothing written

    caplog.clear()
    assert warn_step_memory(cfg, space, budget_bytes=2**40) == []
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.skipif(torch.cuda.is_available(), reason="the default budget is the GPU's")
def test_a_cpu_sweep_without_a_budget_measures_nothing(sweep_base, tmp_path, monkeypatch) -> None:
    import optical_ray.training.sizing as sizing

    def refuse(*args, **kwargs):
        raise AssertionError("measured without a budget")

    monkeypatch.setattr(sizing, "measure_step_memory", refuse)
    cfg = sweep_base(tmp_path / "store", **{"sweep.pairs": ["en-xa"]})
    assert warn_step_memory(cfg, _space()) == []


class _Quadratic:
    """A probe whose step grows with the square of the batch (as in-batch
    late-interaction scores do): ``total = 1 MiB * (batch + batch^2 / 8)``."""

    stage = "rank"

    def __init__(self) -> None:
        self.measured: list[int] = []

    def measure(self, batch: int) -> StepMemory:
        self.measured.append(batch)
        total = 2**20 * (batch + batch * batch // 8)
        return StepMemory("rank", batch, {"query": 8}, "cuda:0", "stand-in", total, 0)


def test_a_batch_measured_over_the_budget_is_never_the_answer(tiny_config) -> None:
    probe = _Quadratic()
    budget = 100 * 2**20  # fits batch 24 (96 MiB), not 25 (103 MiB)
    fit = largest_batch(tiny_config(), "rank", budget, sizes=[4, 8, 16], probe=probe)
    # the line through 4, 8, 16 promises more than fits; the checks walk it back
    assert probe.measured[:3] == [4, 8, 16] and len(probe.measured) > 3
    over = [p.batch_size for p in fit.points if p.total_bytes > budget]
    assert over and fit.batch is not None and fit.batch < min(over)
    assert fit.checked is not None
    if fit.checked.batch_size == fit.batch:
        assert fit.checked.total_bytes <= budget and fit.margin_bytes >= 0
