"""Studies on Ray (the session's shared node): every cell x seed runs once as a trial of
its pair's experiment, each an ordinary catalog record with origin
``study:<cell>/<seed>``, evaluated once on its test tasks; the effects are a query over
the stored per-query values; a study killed mid-way resumes and runs nothing twice."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

pytestmark = pytest.mark.slow

ray = pytest.importorskip("ray")

BASE = {
    "train.stages": ["distill"],
    "distill.steps": 8,
    "distill.batch_size": 8,
    "distill.lr": 5e-3,
    "train.eval_every": 4,
    "train.log_every": 1000,
    "train.warmup_ratio": 0.0,
}


def _design(seeds: int = 2, tasks: tuple[str, ...] = ("{pair}", "en-en"), **factors) -> dict:
    return {
        "name": "s",
        "base": BASE,
        "factors": factors,
        "seeds": seeds,
        "tasks": list(tasks),
        "reference": {"{pair}": "en-en"},
    }


def _stored(storage: Path, name: str) -> dict[tuple[str, int], dict[str, dict[str, float]]]:
    """Every run's stored test values, read straight from its Parquet file."""
    import pyarrow.parquet as pq
    from urllib.parse import unquote

    out = {}
    for f in (storage / "studies" / name / "runs" / "en-xc").glob("*.parquet"):
        cell, seed = f.stem.rsplit("--", 1)
        rows = pq.read_table(f).to_pylist()
        out[(unquote(cell), int(seed))] = {
            task: {r["qid"]: r["map"] for r in rows if r["task"] == task}
            for task in {r["task"] for r in rows}
        }
    return out


def test_a_study_runs_each_cell_and_seed_once_and_its_effects_come_from_stored_values(
    cluster, sweep_root, sweep_base, tmp_path, capsys
) -> None:
    from optical_ray.catalog import Catalog
    from optical_ray.cli.parser import main
    from optical_ray.config.rules import parse_study_origin
    from optical_ray.distributed import run_study
    from optical_ray.errors import ConfigError
    from optical_ray.studies.design import parse_design
    from optical_ray.studies.effects import study_effects

    storage = tmp_path / "store"
    # method none trains nothing (the zero-shot teacher); ot at this learning rate moves
    # the student a long way: a planted effect. log_every changes no computation: a
    # null factor.
    design = parse_design(
        _design(**{"distill.method": ["none", "ot"], "train.log_every": [1000, 999]})
    )
    base = sweep_base(storage, **{"eval.pairs": ["en-xc"]})
    result = run_study(design, base, pairs=["en-xc"], verbose=0)
    assert result.exit_code == 0, result.summary()
    records = Catalog(str(storage)).records()
    origins = [parse_study_origin(o) for o in records["origin"]]
    assert len(records) == 8 and set(records["status"]) == {"finished"}
    assert sorted(origins) == sorted((c.name, s) for c in design.cells() for s in (0, 1))
    for row, (cell, seed) in zip(records.itertuples(), origins):
        cfg = json.loads(row.config)  # the cell's levels and the seed are in its config
        levels = dict(kv.split("=") for kv in cell.split(","))
        assert cfg["distill.method"] == levels["distill.method"]
        assert str(cfg["train.log_every"]) == levels["train.log_every"]
        assert cfg["train.seed"] == seed and row.experiment == "s-en-xc"
    # The effects are a query over the stored per-query values: brute force from the files.
    stored = _stored(storage, "s")
    assert len(stored) == 8
    eff = study_effects(str(storage), "s", n_boot=1000)
    rows = {(e.task, e.name): e for e in eff.effects}

    def mean(method: str, task: str) -> float:
        runs = [v[task] for (c, _), v in stored.items() if f"distill.method={method}" in c]
        return float(np.mean([np.mean(list(r.values())) for r in runs]))

    for task in ("en-xc", "en-en"):
        planted = rows[(task, "distill.method: ot vs none")]
        assert planted.estimate == pytest.approx(mean("ot", task) - mean("none", task), abs=1e-9)
        assert planted.ci_high < 0 or planted.ci_low > 0  # found: the interval excludes 0
        null = rows[(task, "train.log_every: 999 vs 1000")]
        assert null.ci_low <= 0 <= null.ci_high
    assert rows[("en-en", "distill.method: ot vs none")].p_holm < 0.05
    base_row = next(b for b in eff.baselines if b.task == "en-xc")
    assert base_row.reference_pair == "en-en" and base_row.reference > 0
    assert base_row.zero_shot == pytest.approx(mean("none", "en-xc"))  # none = zero-shot
    # The report: tables and figures from the same values.
    out = tmp_path / "report"
    code = main(["report", "--study", "s", "--storage", str(storage), "--out", str(out)])
    assert code == 0
    text = (out / "study-s.md").read_text()
    assert "distill.method: ot vs none" in text and "gap to ref" in text
    assert (out / "study-s-interaction-distill.method-train.log_every.png").is_file()
    assert (out / "study-s-gap-en-xc-en-xc.png").is_file()
    assert "distill.method: ot vs none" in capsys.readouterr().out
    # Again without --resume: refused; with it: nothing runs again.
    with pytest.raises(ConfigError, match="study 's' already exists.*--resume"):
        run_study(design, base, pairs=["en-xc"], verbose=0)
    again = run_study(design, base, pairs=["en-xc"], verbose=0, resume=True)
    assert again.exit_code == 0
    after = Catalog(str(storage)).records()
    assert sorted(after["record_id"]) == sorted(records["record_id"])
    assert list(after.sort_values("record_id")["finished_at"]) == list(
        records.sort_values("record_id")["finished_at"]
    )


def test_a_killed_study_resumes_and_runs_nothing_twice(
    cluster, sweep_root, sweep_base, tmp_path
) -> None:
    from optical_ray.catalog import Catalog
    from optical_ray.config import to_dict
    from optical_ray.config.rules import parse_study_origin
    from optical_ray.distributed import run_study
    from optical_ray.studies.store import run_path
    from tests.distributed.test_sweep import _pair_task_processes

    storage = tmp_path / "store"
    design_path = tmp_path / "design.yaml"
    # Two runs, one at a time: the driver is killed once the first is recorded.
    raw = _design(seeds=1, tasks=("{pair}",), **{"distill.method": ["none", "ot"]})
    design_path.write_text(yaml.safe_dump(raw))
    cfg_path = tmp_path / "base.yaml"
    base = sweep_base(storage, **{"eval.pairs": ["en-xc"], "sweep.max_concurrent": 1})
    cfg_path.write_text(yaml.safe_dump(to_dict(base)))
    cmd = [
        sys.executable,
        "-m",
        "optical_ray.cli",
        "study",
        "--design",
        str(design_path),
        "--pairs",
        "en-xc",
        "--config",
        str(cfg_path),
        "--address",
        cluster.address,
    ]
    other = frozenset(_pair_task_processes())
    driver = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    catalog = Catalog(str(storage))
    deadline = time.time() + 300
    try:
        while time.time() < deadline and driver.poll() is None:
            if (storage / "catalog").is_dir() and len(catalog.records()) >= 1:
                break
            time.sleep(0.5)
        assert driver.poll() is None, "the study ended before it could be killed"
    finally:
        driver.kill()  # SIGKILL mid-study
        driver.wait()
    deadline = time.time() + 20
    while time.time() < deadline and _pair_task_processes(other):
        time.sleep(0.2)
    before = catalog.records()
    assert len(before) == 1
    files = {
        f.name: f.stat().st_mtime_ns
        for f in (storage / "studies" / "s" / "runs" / "en-xc").glob("*.parquet")
    }
    result = run_study(design_path, base, pairs=["en-xc"], verbose=0, resume=True)
    assert result.exit_code == 0, result.summary()
    after = Catalog(str(storage)).records()
    shown = after[["trial_id", "origin", "status"]].to_string()
    # Every run once: one record per cell and seed, the ones recorded before the kill
    # untouched (same trial, values not written again).
    assert len(after) == 2 and after["origin"].nunique() == 2, shown
    for row in before.itertuples():
        again = after[after["origin"] == row.origin]
        assert list(again["trial_id"]) == [row.trial_id], shown
    for origin in before["origin"]:
        path = storage / run_path("s", "en-xc", *parse_study_origin(origin))
        assert path.stat().st_mtime_ns == files[path.name], origin
    assert len(list((storage / "studies" / "s" / "runs" / "en-xc").glob("*.parquet"))) == 2
