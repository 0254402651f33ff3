"""Trials the catalog already holds as ended are not run, nor recorded, again on resume
(issue 33, item 5); the end-to-end run is in ``test_sweep_guards.py``. No Ray cluster."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest

pytest.importorskip("ray")

SPACE = {
    "base": {"train.stages": ["distill"], "distill.steps": 2, "train.eval_every": 1},
    "params": {"distill.lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2}},
}


@pytest.fixture
def plan(tmp_path):
    from optical_ray.config import from_flat
    from optical_ray.sweeps.plan import PairPlan
    from optical_ray.sweeps.space import parse_space

    cfg = from_flat({"name": "rec", "storage.uri": str(tmp_path / "store")})
    return PairPlan(
        "en-sw",
        "rec-en-sw",
        str(tmp_path / "store" / "rec-en-sw"),
        cfg,
        parse_space(SPACE),
        2,
        3,
        resume=True,
    )


def _record(catalog, trial_id: str, status: str, last: dict) -> None:
    from optical_ray.catalog import TrialRecord

    catalog.append(
        TrialRecord(
            experiment="rec-en-sw",
            pair="en-sw",
            trial_id=trial_id,
            status=status,
            config={"distill.lr": 0.001},
            best_metrics=last,
            last_metrics=last,
            error="boom" if status == "failed" else None,
            training_s=12.5,
            record_id=f"rec-en-sw--{trial_id}",
        )
    )


def test_recorded_results_are_the_ended_trials_as_tune_results(plan, tmp_path) -> None:
    from optical_ray.catalog import Catalog
    from optical_ray.distributed.callbacks import recorded_results
    from optical_ray.sweeps.protocol import CONFIG_KEY, FINISHED_KEY

    catalog = Catalog(str(tmp_path / "store"))
    assert recorded_results(catalog, plan) == {}  # an empty catalog
    _record(catalog, "t1", "finished", {"map": 0.4, "en-en/map": 0.6})
    _record(catalog, "t2", "stopped", {"map": 0.2})
    _record(catalog, "t3", "failed", {})  # retried by a resume: not here
    _record(catalog, "t4", "finished", {"ndcg@10": 0.3})  # no sweep metric: runs again
    got = recorded_results(catalog, plan)
    assert set(got) == {"t1", "t2"}
    assert got["t1"]["map"] == 0.4 and got["t1"]["en-en/map"] == 0.6
    assert got["t1"][FINISHED_KEY] == 1 and FINISHED_KEY not in got["t2"]
    assert got["t1"]["train_s"] == 12.5
    assert json.loads(got["t1"][CONFIG_KEY])["distill.lr"] == 0.001
    assert all(math.isfinite(v) for r in got.values() for v in r.values() if isinstance(v, float))


def test_the_trial_reports_the_record_and_the_callback_writes_none(plan, tmp_path, monkeypatch):
    from ray import tune

    from optical_ray.catalog import Catalog
    from optical_ray.distributed.callbacks import CatalogCallback
    from optical_ray.distributed.pair import _trainable

    ran, reported = [], []
    monkeypatch.setattr(tune, "report", lambda result, **kw: reported.append(result))
    trial_id = ["t1"]
    monkeypatch.setattr(
        tune, "get_context", lambda: SimpleNamespace(get_trial_id=lambda: trial_id[0])
    )
    trainable = _trainable(plan, lambda sampled, plan: ran.append(sampled), {"t1": {"map": 0.4}})
    trainable({"distill.lr": 0.001})
    assert ran == [] and reported == [{"map": 0.4}]  # recorded: nothing trained
    trial_id[0] = "t9"
    trainable({"distill.lr": 0.002})
    assert ran == [{"distill.lr": 0.002}]  # not recorded: it runs

    catalog = Catalog(str(tmp_path / "store"))
    callback = CatalogCallback(catalog, plan, None, already={"t1"})
    trial = SimpleNamespace(
        trial_id="t1",
        last_result={"map": 0.4},
        metric_analysis={},
        config={},
        checkpoint=None,
        error_file=None,
        status="TERMINATED",
    )
    callback.on_trial_complete(0, [trial], trial)
    callback.on_experiment_end([trial])
    assert not catalog.parts() and "t1" in callback.recorded
    other = SimpleNamespace(**{**vars(trial), "trial_id": "t9"})
    callback.on_trial_complete(0, [other], other)
    assert list(catalog.records()["trial_id"]) == ["t9"]
