"""A study's fixed list of runs on Tune, without a cluster: the searcher suggests every
run in order and then finishes, skips runs the catalog already holds as finished (also
after a restore from saved state), and a PairPlan pickled before ``points`` existed
still reads as a sweep's."""

from __future__ import annotations

import pickle

import pytest

pytest.importorskip("ray")


def _points(n: int) -> list[dict]:
    from optical_ray.config.rules import study_origin
    from optical_ray.sweeps.protocol import ORIGIN_KEY

    return [
        {"distill.method": m, "train.seed": s, ORIGIN_KEY: study_origin(f"m={m}", s)}
        for m in ("ot", "none")
        for s in range(n)
    ]


def test_the_fixed_searcher_suggests_each_run_once_and_skips_recorded_ones(tmp_path) -> None:
    from ray.tune.search import Searcher

    from optical_ray.catalog import Catalog, TrialRecord
    from optical_ray.distributed.searchers import FixedSearcher
    from optical_ray.sweeps.protocol import ORIGIN_KEY

    points = _points(2)
    storage = (str(tmp_path), None, None)
    searcher = FixedSearcher(points, storage, "s-en-xc", "en-xc", metric="map", mode="max")
    first = searcher.suggest("t0")
    assert first == points[0]
    path = tmp_path / "searcher.pkl"
    searcher.save(str(path))
    # Runs 2 and 3 finish and are recorded, then the driver dies before Tune saves
    # again: the restored searcher (index 1) must not suggest them a second time.
    catalog = Catalog(str(tmp_path))
    for i in (1, 2):
        catalog.append(
            TrialRecord(
                experiment="s-en-xc",
                pair="en-xc",
                trial_id=f"t{i}",
                origin=points[i][ORIGIN_KEY],
                config={"train.seed": points[i]["train.seed"]},
            )
        )
    catalog.append(  # a failed run is run again
        TrialRecord(
            experiment="s-en-xc",
            pair="en-xc",
            trial_id="t9",
            status="failed",
            origin=points[3][ORIGIN_KEY],
        )
    )
    restored = FixedSearcher([], storage, "s-en-xc", "en-xc")
    restored.restore(str(path))
    assert restored.suggest("t5") == points[3]
    assert restored.suggest("t6") == Searcher.FINISHED
    # A fresh searcher (a pair that starts again) skips every finished run too.
    fresh = FixedSearcher(points, storage, "s-en-xc", "en-xc")
    assert [fresh.suggest(f"u{i}") for i in range(3)] == [points[0], points[3], Searcher.FINISHED]


def test_a_plan_with_points_builds_the_fixed_searcher_behind_the_shared_budget(tmp_path) -> None:
    from optical_ray.config import from_flat
    from optical_ray.distributed.searchers import FixedSearcher, build_searcher
    from optical_ray.distributed.slots import SharedLimiter
    from optical_ray.sweeps.plan import PairPlan
    from optical_ray.sweeps.space import parse_space

    cfg = from_flat({"storage.uri": str(tmp_path), "sweep.scheduler": "none"})
    plan = PairPlan(
        "en-xc",
        "s-en-xc",
        str(tmp_path / "s-en-xc"),
        cfg,
        parse_space({}),
        2,
        10,
        points=tuple(_points(1)),
    )
    searcher = build_searcher(plan, "no-coordinator")
    assert isinstance(searcher, SharedLimiter) and isinstance(searcher.searcher, FixedSearcher)
    assert searcher.samples == 2
    # A plan pickled by an older version has no ``points``: it is a sweep's plan.
    old = pickle.loads(pickle.dumps(plan))
    del old.__dict__["points"]
    assert old.points is None


def test_a_finalists_seeds_share_an_origin_and_each_runs_once(tmp_path) -> None:
    """Finalist runs of one config share their origin (``finalist:<trial>``) across
    seeds: the searcher skips the seed the catalog holds, never the others."""
    import json

    from ray.tune.search import Searcher

    from optical_ray.catalog import Catalog, TrialRecord
    from optical_ray.distributed.searchers import FixedSearcher, run_seed
    from optical_ray.sweeps.protocol import ORIGIN_KEY, RUN_KEY

    points = [
        {RUN_KEY: json.dumps({"train.seed": s}), ORIGIN_KEY: "finalist:abc", "train.seed": s}
        for s in (1, 2)
    ]
    assert [run_seed(p) for p in points] == [1, 2]
    Catalog(str(tmp_path)).append(
        TrialRecord(
            experiment="s-en-xc-final",
            pair="en-xc",
            trial_id="t0",
            origin="finalist:abc",
            config={"train.seed": 1},
        )
    )
    searcher = FixedSearcher(points, (str(tmp_path), None, None), "s-en-xc-final", "en-xc")
    assert [searcher.suggest(f"t{i}") for i in range(2)] == [points[1], Searcher.FINISHED]
