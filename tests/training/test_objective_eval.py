"""A dev evaluation reports the sweep's objective, and keeps every evaluated pair's
per-query values for the trial's reports."""

from __future__ import annotations

import pytest


def test_a_dev_evaluation_reports_the_objective_and_keeps_every_pair(
    tiny_config, one_torch_thread
) -> None:
    from optical_ray.models.encoder import RetrievalModel
    from optical_ray.training.recipe import evaluate_dev

    cfg = tiny_config(
        **{
            "sweep.objective": "mean(map, 2*en-en/mrr@10)",
            "sweep.metric": "objective",
            "train.keep_best": True,
            "train.select_metric": "objective",
        }
    )
    keep: dict = {}
    flat = evaluate_dev(RetrievalModel.from_config(cfg), cfg, keep=keep)
    assert flat["objective"] == pytest.approx((flat["en-xc/map"] + 2 * flat["en-en/mrr@10"]) / 3)
    ((metrics, per_pair),) = keep["evals"]
    assert metrics is flat and set(per_pair) == {"en-en", "en-xc"}
    assert all("map" in v for v in per_pair["en-xc"].values())
    # without an objective, no such key
    plain = tiny_config()
    assert "objective" not in evaluate_dev(RetrievalModel.from_config(plain), plain)
