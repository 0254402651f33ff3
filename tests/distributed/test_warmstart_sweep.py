"""A warm-started sweep through the real driver (Ray Tune + Optuna), with stand-in
trials: the source pairs' best configs are the new pair's first trials, and every
catalog record says where its config came from."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow

ray = pytest.importorskip("ray")

SPACE = {
    "base": {"train.stages": ["distill"], "distill.steps": 2, "train.eval_every": 1},
    "params": {
        "distill.epsilon": {"type": "loguniform", "low": 0.01, "high": 1.0},
        "distill.lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2},
    },
}


def stand_in(sampled: dict[str, Any], *, plan: Any) -> None:
    """A trial without training: a dev MAP that peaks at lr 1e-3 and epsilon 0.05,
    reported like a real trial (config first, the end-of-trial report last)."""
    from ray import tune

    from optical_ray.config import to_flat
    from optical_ray.sweeps.plan import resolve_trial_config
    from optical_ray.sweeps.protocol import CONFIG_KEY, FINISHED_KEY

    trial_id = tune.get_context().get_trial_id()
    config = json.dumps(to_flat(resolve_trial_config(plan, sampled, trial_id)), sort_keys=True)
    quality = (
        0.5
        - 0.04 * (math.log10(sampled["distill.lr"]) + 3) ** 2
        - 0.02 * (math.log10(sampled["distill.epsilon"]) + 1.3) ** 2
    )
    for i in range(1, plan.max_t):
        tune.report({"map": quality * i / (plan.max_t - 1), CONFIG_KEY: config})
    tune.report({"map": quality, FINISHED_KEY: True})


@pytest.fixture(scope="module")
def cluster(cluster):
    """The session's Ray node, with this module's stand-in trial pickled by value (Ray's
    workers cannot import a test module)."""
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield cluster
    cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


def _run(root: Path, name: str, pairs: list[str], **over: Any) -> tuple[Any, list[str]]:
    from optical_ray.config import from_flat
    from optical_ray.distributed.driver import run
    from optical_ray.sweeps.space import parse_space

    cfg = from_flat(
        {
            "name": name,
            "output_dir": str(root / "runs"),
            "storage.uri": str(root / "store"),
            "sweep.pairs": pairs,
            "sweep.samples": 3,
            "sweep.max_concurrent": 1,
            "sweep.scheduler": "none",
            "scaling.cpus_per_worker": 1.0,
            **over,
        }
    )
    lines: list[str] = []
    result = run(
        cfg, parse_space(SPACE), verbose=1, out=lines.append, check_data=False, trial_fn=stand_in
    )
    return result, lines


def test_a_warm_sweep_runs_the_sources_best_configs_first(cluster, tmp_path: Path) -> None:
    from optical_ray.catalog import Catalog, best_config

    cold, _ = _run(tmp_path, "cold", ["en-sw", "en-ha"])
    assert cold.exit_code == 0
    records = Catalog(str(tmp_path / "store")).records()
    # TPE's random start-up, then the sampler
    assert set(records["origin"]) <= {"random", "sampler"} and "random" in set(records["origin"])
    store = str(tmp_path / "store")
    keys = ("distill.epsilon", "distill.lr")
    best = {"en-sw": best_config("en-sw", storage=store)[0]}
    # Both pairs sampled with one seed: en-ha's best may be en-sw's config, which runs
    # once; en-ha then gives its best other config.
    best["en-ha"] = next(
        r
        for r in best_config("en-ha", storage=store, top=3)
        if [r.flat_config[k] for k in keys] != [best["en-sw"].flat_config[k] for k in keys]
    )

    warm, lines = _run(
        tmp_path, "warm", ["en-yo"], **{"sweep.warm_start": "auto", "sweep.warm_start_top": 2}
    )
    assert warm.exit_code == 0
    assert any(line.startswith("[warm-start] en-yo: from en-sw (similarity") for line in lines)
    ran = Catalog(store).records("en-yo").sort_values("started_at")
    assert len(ran) == 3
    first = ran.head(2)
    # en-sw (same family as yo) is the first source; each source's best ran, in order
    assert list(first["origin"]) == [
        f"warm_start:en-sw/{best['en-sw'].trial_id}",
        f"warm_start:en-ha/{best['en-ha'].trial_id}",
    ]
    for (_, row), pair in zip(first.iterrows(), ("en-sw", "en-ha")):
        cfg = json.loads(row["config"])
        for key in keys:
            assert cfg[key] == pytest.approx(best[pair].flat_config[key])
    # the third is sampled, by TPE warmed by the prior (no random start-up)
    assert ran.iloc[2]["origin"] == "sampler"
    import optuna

    study = optuna.load_study(
        study_name="warm-en-yo", storage=f"sqlite:///{tmp_path / 'store' / 'optuna.db'}"
    )
    assert [t.user_attrs.get("origin") for t in study.trials][:2] == list(first["origin"])
    assert best_config("en-yo", storage=store)[0].origin.startswith(("warm_start:", "sampler"))
