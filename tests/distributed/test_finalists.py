"""Finalists through the real driver (Ray Tune), with stand-in trials: after each
pair's search, its top config and the space's base config re-train with new seeds in
a second experiment (``<experiment>-final``); the answer is the finalist when it beats
the base significantly, else the base; and a driver killed during the finalists
resumes them without running any twice. One sweep (a driver in a subprocess, killed,
then resumed here) shows all three."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytestmark = pytest.mark.slow

ray = pytest.importorskip("ray")

ROOT = Path(__file__).resolve().parents[2]
N = 120
BASE = np.random.default_rng(0).uniform(0.2, 0.8, (2, N))
SPACE = {
    "base": {
        "train.stages": ["distill"],
        "distill.steps": 2,
        "train.eval_every": 1,
        "distill.lr": 1.0e-4,  # the base config: what a user runs without a sweep
        "eval.pairs": ["{pair}", "en-en"],
        "sweep.objective": "mean({pair}/map, 2*en-en/map)",
    },
    "params": {"distill.lr": {"type": "loguniform", "low": 1e-3, "high": 1e-2}},
}


def stand_in(sampled: dict[str, Any], *, plan: Any) -> None:
    """A trial without training, reporting like a real one (through DevReports): on
    bb-en every searched learning rate beats the base's by 0.05 on every query; on
    aa-en nothing does. Per-query noise depends on the seed and the config. A
    finalist run waits ``plan.base.output_dir/slow`` seconds per report when that file
    exists (time to kill its driver)."""
    from ray import tune

    from optical_ray.config import to_flat
    from optical_ray.distributed.devreports import DevReports
    from optical_ray.sweeps.plan import resolve_trial_config
    from optical_ray.sweeps.protocol import CONFIG_KEY, FINISHED_KEY, RUN_KEY

    trial_id = tune.get_context().get_trial_id()
    cfg = resolve_trial_config(plan, sampled, trial_id)
    lr = cfg.distill.lr
    shift = 0.05 if cfg.pair == "bb-en" and lr > 5e-4 else 0.0
    rng = np.random.default_rng([cfg.train.seed, int(lr * 1e7)])
    values = np.clip(BASE + shift + rng.normal(0, 0.05, BASE.shape), 0, 1)
    per_pair = {
        task: {f"q{i}": {"map": float(v)} for i, v in enumerate(row)}
        for task, row in zip((cfg.pair, "en-en"), values)
    }
    own, english = values.mean(axis=1)
    flat = {f"{cfg.pair}/map": own, "en-en/map": english, "map": own}
    flat["objective"] = (own + 2 * english) / 3
    reports = DevReports(cfg)
    config = json.dumps(to_flat(cfg), sort_keys=True)
    slow = Path(cfg.output_dir) / "slow"
    for _ in range(1, plan.max_t):
        if RUN_KEY in sampled and slow.exists():
            time.sleep(float(slow.read_text()))
        reports.keep["evals"] = [(flat, per_pair)]
        out = {**flat, CONFIG_KEY: config}
        reports.attach(flat, out)
        tune.report(out)
    tune.report({**flat, FINISHED_KEY: 1})


@pytest.fixture(scope="module")
def cluster(cluster):
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield cluster
    cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


def sweep_config(root: Path, name: str, pairs: list[str]) -> tuple[Any, Any]:
    from optical_ray.config import from_flat
    from optical_ray.sweeps.space import parse_space

    cfg = from_flat(
        {
            "name": name,
            "output_dir": str(root / "runs"),
            "storage.uri": str(root / "store"),
            "sweep.pairs": pairs,
            "sweep.samples": 3,
            "sweep.max_concurrent": 2,
            "sweep.finalists": 1,
            "sweep.finalist_seeds": 2,
            "scaling.cpus_per_worker": 1.0,
        }
    )
    return cfg, parse_space(SPACE)


def _pair_task_processes(other: frozenset[int] = frozenset()) -> list[int]:
    import psutil

    return [
        p.pid
        for p in psutil.process_iter(["cmdline"])
        if (p.info["cmdline"] or [""])[0].startswith("ray::fit_pair") and p.pid not in other
    ]


DRIVER = """
import sys
from pathlib import Path
sys.path.insert(0, {root!r})
from ray import cloudpickle
import tests.distributed.test_finalists as m
cloudpickle.register_pickle_by_value(m)
from optical_ray.distributed.driver import run
cfg, space = m.sweep_config(Path({tmp!r}), "ans", ["aa-en", "bb-en"])
run(cfg, space, address={address!r}, verbose=0, check_data=False, trial_fn=m.stand_in)
"""


def _final_runs(catalog: Any, pair: str) -> Any:
    df = catalog.records(pair, f"ans-{pair}-final")
    return df.assign(seed=[json.loads(c)["train.seed"] for c in df["config"]])


def test_finalists_answer_or_fall_back_and_resume_after_the_driver_is_killed(
    cluster, tmp_path
) -> None:
    """Two pairs: on aa-en nothing beats the base (the answer is the base, and says
    so), on bb-en the search's best does. The driver is killed once a finalist run is
    recorded; --resume finishes the finalists without running any twice."""
    from optical_ray.catalog import Catalog, pair_answer
    from optical_ray.distributed.driver import run

    (tmp_path / "runs").mkdir(parents=True)
    (tmp_path / "runs" / "slow").write_text("1.0")
    other = frozenset(_pair_task_processes())
    code = DRIVER.format(root=str(ROOT), tmp=str(tmp_path), address=cluster.address)
    driver = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL)
    store = tmp_path / "store"
    deadline = time.time() + 300
    try:
        while time.time() < deadline and driver.poll() is None:
            if (store / "catalog").is_dir():
                df = Catalog(str(store)).records()
                if df["experiment"].str.endswith("-final").any():
                    break
            time.sleep(0.5)
        assert driver.poll() is None, "the sweep ended before it could be killed"
    finally:
        driver.kill()  # SIGKILL during the finalists
        driver.wait()
    deadline = time.time() + 30
    while time.time() < deadline and _pair_task_processes(other):
        time.sleep(0.2)
    before = Catalog(str(store)).records()
    done = set(before.loc[before["experiment"].str.endswith("-final"), "record_id"])
    assert 1 <= len(done) < 8
    (tmp_path / "runs" / "slow").unlink()
    cfg, space = sweep_config(tmp_path, "ans", ["aa-en", "bb-en"])
    result = run(
        cfg, space, resume=True, verbose=0, out=lambda _: None, check_data=False, trial_fn=stand_in
    )
    assert result.exit_code == 0 and result.metric == "objective"
    catalog = Catalog(str(store))
    after = catalog.records()
    assert done <= set(after["record_id"])  # recorded before the kill: kept, not re-run
    for pair in ("aa-en", "bb-en"):
        assert len(catalog.records(pair, f"ans-{pair}")) == 3  # the search: not again
        final = _final_runs(catalog, pair)
        runs = list(zip(final["origin"], final["seed"]))
        assert len(final) == final["record_id"].nunique() == len(set(runs)) == 4, runs
        assert final["dev_per_query"].notna().all()
    tie, win = result.pairs["aa-en"].answer, result.pairs["bb-en"].answer
    assert tie.is_base and tie.statement.startswith(
        "no config significantly better than the base (best candidate"
    )
    assert not win.is_base and win.chosen.delta == pytest.approx(0.05, abs=0.01)
    assert win.objective == "mean(bb-en/map, 2*en-en/map)" and win.trials == 3
    search = catalog.records("bb-en", "ans-bb-en")
    best = search.sort_values("best_value").iloc[-1]["trial_id"]
    assert win.chosen.trial_id == best  # the search's best finished trial
    lr = json.loads(search.set_index("trial_id").loc[best, "config"])["distill.lr"]
    final = _final_runs(catalog, "bb-en")
    assert {
        (o, s, json.loads(c)["distill.lr"])
        for o, s, c in zip(final["origin"], final["seed"], final["config"])
    } == {
        ("finalist:base", 1, 1e-4),
        ("finalist:base", 2, 1e-4),
        (f"finalist:{best}", 1, lr),
        (f"finalist:{best}", 2, lr),
    }
    assert "answer: trial" in result.summary() and "answer: no config" in result.summary()
    assert pair_answer("bb-en", str(store)).chosen.trial_id == best
