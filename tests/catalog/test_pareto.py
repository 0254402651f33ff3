"""Several objectives: fronts, constraints, hypervolume (pure), the catalog queries and
CLI over hand-written records, and one small multi-objective sweep on the synthetic
world (Ray, module-scoped)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from optical_ray.catalog import (
    Catalog,
    TrialRecord,
    best_config,
    hypervolume,
    non_dominated,
    pareto_front,
    parse_objectives,
    parse_where,
)
from optical_ray.errors import ConfigError, StorageError

# --------------------------------------------------------------------------- pure functions


def _brute_front(v: np.ndarray, maximize: list[bool]) -> np.ndarray:
    s = np.where(maximize, 1.0, -1.0)
    w = v * s
    out = np.zeros(len(v), bool)
    for i in range(len(v)):
        if np.isnan(w[i]).any():
            continue
        dominated = any(
            not np.isnan(w[j]).any() and np.all(w[j] >= w[i]) and np.any(w[j] > w[i])
            for j in range(len(v))
        )
        out[i] = not dominated
    return out


@pytest.mark.parametrize("k", [2, 3])
def test_non_dominated_matches_brute_force_with_ties_and_nans(k: int) -> None:
    rng = np.random.default_rng(k)
    for trial in range(30):
        v = rng.integers(0, 5, size=(25, k)).astype(float)  # many ties
        v[rng.random(25) < 0.1, 0] = np.nan
        maximize = [bool(b) for b in rng.integers(0, 2, size=k)]
        assert (non_dominated(v, maximize) == _brute_front(v, maximize)).all(), trial


def _brute_hv(points: np.ndarray, ref: np.ndarray, maximize: list[bool]) -> float:
    """Exact hypervolume by the grid of all coordinates (minimisation after a flip)."""
    s = np.where(maximize, -1.0, 1.0)
    p, r = points * s, ref * s
    axes = [np.unique(np.concatenate([p[:, j], [r[j]]])) for j in range(p.shape[1])]
    total = 0.0
    for cell in itertools.product(*[range(len(a) - 1) for a in axes]):
        lo = np.array([axes[j][c] for j, c in enumerate(cell)])
        hi = np.array([axes[j][c + 1] for j, c in enumerate(cell)])
        if (hi > r).any():
            continue
        if np.any(np.all(p <= lo, axis=1)):
            total += float(np.prod(hi - lo))
    return total


@pytest.mark.parametrize("k", [2, 3])
def test_hypervolume_matches_the_grid_computation(k: int) -> None:
    rng = np.random.default_rng(10 + k)
    for _ in range(10):
        pts = rng.random((7, k))
        maximize = [True, False, True][:k]
        ref = np.array([0.0, 1.0, 0.0][:k])
        assert hypervolume(pts, ref, maximize) == pytest.approx(_brute_hv(pts, ref, maximize))


def test_hypervolume_of_known_fronts() -> None:
    # two points (1, 3) and (2, 2) maximised, reference (0, 0): 1*3 + 1*2 = 5
    assert hypervolume(np.array([[1, 3], [2, 2]]), [0, 0], [True, True]) == pytest.approx(5.0)
    # points no better than the reference add nothing
    assert hypervolume(np.array([[-1, 3]]), [0, 0], [True, True]) == 0.0
    assert hypervolume(np.zeros((0, 2)), [0, 0], [True, True]) == 0.0


def test_objectives_have_directions_and_bad_names_are_named() -> None:
    objs = parse_objectives("map,en-en/map,cost,eval_s,retention:min")
    assert [(o.name, o.mode) for o in objs] == [
        ("map", "max"),
        ("en-en/map", "max"),
        ("cost", "min"),
        ("eval_s", "min"),
        ("retention", "min"),
    ]
    with pytest.raises(ConfigError) as exc:
        parse_objectives("map,speed,map:up")
    msg = str(exc.value)
    assert "'speed'" in msg and "retention, cost" in msg and "'map:up'" in msg


def test_where_parses_numbers_text_and_refuses_malformed_conditions() -> None:
    conds = parse_where(["retention>=0.98", "distill.method == ot", "cost<100"])
    assert [(c.key, c.op, c.value) for c in conds] == [
        ("retention", ">=", 0.98),
        ("distill.method", "==", "ot"),
        ("cost", "<", 100.0),
    ]
    for bad, named in [
        ("retention=>0.98", "OP one of"),
        ("speed>1", "unknown name 'speed'"),
        ("distill.method>=ot", "only == and !="),
    ]:
        with pytest.raises(ConfigError, match=named):
            parse_where(bad)


# --------------------------------------------------------------------------- catalog queries

#: (trial, map, en-en/map, retention, device_s, l2sp) — a hand-made trade-off
ROWS = [
    ("a", 0.50, 0.30, 0.60, 40.0, 0.0),  # best map, worst English
    ("b", 0.45, 0.45, 0.90, 20.0, 0.1),
    ("c", 0.40, 0.49, 0.98, 30.0, 1.0),  # best map among retention >= 0.98
    ("d", 0.30, 0.50, 1.00, 10.0, 10.0),  # best English, cheapest
    ("e", 0.35, 0.40, 0.80, 50.0, 0.5),  # dominated by b
]


@pytest.fixture
def store(tmp_path: Path) -> str:
    uri = str(tmp_path / "store")
    catalog = Catalog(uri)
    for i, (tid, m, en, ret, dev, l2sp) in enumerate(ROWS):
        catalog.append(
            TrialRecord(
                experiment="x-en-xa",
                pair="en-xa",
                trial_id=tid,
                config={"pair": "en-xa", "distill.l2sp": l2sp},
                best_metrics={"map": m, "en-xa/map": m, "en-en/map": en},
                retention=ret,
                device_s=dev,
                training_s=dev,
                eval_s=1.0,
                finished_at=1_700_000_000 + i,
            )
        )
    catalog.append(TrialRecord(experiment="x-en-xa", pair="en-xa", trial_id="f", status="failed"))
    return uri


def _brute_best(key, conds) -> str:
    ok = [r for r in ROWS if all(c(r) for c in conds)]
    return max(ok, key=key)[0]


def test_front_and_constrained_best_match_brute_force(store: str) -> None:
    front = pareto_front("en-xa", "map,en-en/map", store)
    values = np.array([[r[1], r[2]] for r in ROWS])
    expected = {ROWS[i][0] for i in np.flatnonzero(_brute_front(values, [True, True]))}
    assert {r.trial_id for r in front} == expected == {"a", "b", "c", "d"}
    assert [r.trial_id for r in front] == ["a", "b", "c", "d"]  # best first by map
    assert front[0].objectives == {"map": 0.5, "en-en/map": 0.3}
    assert [r.rank for r in front] == [1, 2, 3, 4]
    # with cost as a third objective every trial but e is still on it
    front3 = pareto_front("en-xa", "map,en-en/map,cost", store)
    assert {r.trial_id for r in front3} == {"a", "b", "c", "d"}

    plain = best_config("en-xa", storage=store)[0]
    constrained = best_config("en-xa", storage=store, where="retention>=0.98")[0]
    assert plain.trial_id == _brute_best(lambda r: r[1], []) == "a"
    assert constrained.trial_id == _brute_best(lambda r: r[1], [lambda r: r[3] >= 0.98]) == "c"
    assert constrained.trial_id != plain.trial_id
    assert constrained.retention == pytest.approx(0.98) and constrained.device_s == 30.0
    # config keys and several conditions; objectives rank cheapest first
    cheap = best_config(
        "en-xa", storage=store, where=["distill.l2sp>=0.1", "map>0.3"], objectives="cost"
    )[0]
    assert cheap.trial_id == "b" and cheap.objectives == {"cost": 20.0}
    # the front under a constraint (c: less map than b, and dearer)
    front = pareto_front("en-xa", "map,cost", store, where="retention>=0.9")
    assert {r.trial_id for r in front} == {"b", "d"}


def test_a_constraint_nothing_meets_names_the_closest_trial(store: str) -> None:
    with pytest.raises(StorageError) as exc:
        best_config("en-xa", storage=store, where=["retention>=0.99", "map>=0.45"])
    msg = str(exc.value)
    # b: 0.09 short of retention (rel 0.09), d: 0.15 short of map (rel 0.33)
    assert "closest: trial 'b'" in msg and "retention=0.9" in msg and "retention>=0.99" in msg
    with pytest.raises(StorageError, match="never recorded"):
        pareto_front("en-xa", "map,ndcg@10", store)


def test_cli_prints_the_front_and_refuses_bad_input(store: str, capsys) -> None:
    from optical_ray.cli.parser import main

    args = ["best", "--storage", store, "--pair", "en-xa"]
    assert main([*args, "--objectives", "map,en-en/map", "--pareto", "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["trial_id"] for r in out] == ["a", "b", "c", "d"]
    assert out[2]["objectives"] == {"map": 0.4, "en-en/map": 0.49}
    assert main([*args, "--objectives", "map,cost", "--pareto"]) == 0
    table = capsys.readouterr().out
    head, *rows = [line for line in table.splitlines() if line.strip() and "---" not in line]
    assert "cost" in head.split() and [r.split()[1] for r in rows] == ["1", "2", "3"]
    assert main([*args, "--where", "retention>=0.98", "--format", "yaml"]) == 0
    assert "trial 'c'" in capsys.readouterr().out
    assert main([*args, "--where", "retention=>0.98"]) == 2
    err = capsys.readouterr().err
    assert "retention=>0.98" in err and ">=, <=, >, <, ==, !=" in err
    assert main([*args, "--objectives", "map,speed", "--pareto"]) == 2
    assert "'speed'" in capsys.readouterr().err
    assert main([*args, "--where", "retention>=1.5"]) == 2
    assert "closest: trial 'd'" in capsys.readouterr().err


def test_report_plots_the_front_with_teacher_and_baseline_runs(store: str, tmp_path) -> None:
    from optical_ray.report.gap import build_report

    teacher = {"map": 0.25, "en-xa/map": 0.25, "en-en/map": 0.5}
    Catalog(store).append(
        TrialRecord(
            experiment="x-en-xa-none",
            pair="en-xa",
            trial_id="g",
            config={"pair": "en-xa", "distill.method": "none"},
            best_metrics=teacher,
            baseline_metrics=teacher,
        )
    )
    md = build_report(store, tmp_path / "report")
    assert (tmp_path / "report" / "pareto_en-xa.png").stat().st_size > 1000
    text = md.read_text()
    assert "![en-xa: Pareto front of map against en-en](pareto_en-xa.png)" in text
    table = text.split("Pareto front (non-dominated")[1]
    rows = [line for line in table.splitlines() if line.startswith("| ") and "trial" not in line]
    # a..d on the front, best low-resource first; g (the teacher run) is dominated by d
    assert [r.split("|")[2].strip() for r in rows[:4]] == ["a", "b", "c", "d"]
    assert "0.980" in rows[2] and "30.0" in rows[2]
    html = (tmp_path / "report" / "report.html").read_text()
    assert "Pareto front (non-dominated" in html and html.count("data:image/png") >= 2
    doc = json.loads((tmp_path / "report" / "report.json").read_text())
    assert [r["trial"] for r in doc["fronts"]["en-xa"]] == ["a", "b", "c", "d"]


def test_trials_evaluate_the_reference_pair_unless_retention_is_off(tiny_world) -> None:
    from optical_ray.config import from_flat
    from optical_ray.training.recipe import _dev_pairs

    root = {"data.root": str(tiny_world.root), "pair": "en-xc"}
    assert _dev_pairs(from_flat({**root, "eval.pairs": ["en-xc"]}), "dev") == ["en-en", "en-xc"]
    assert _dev_pairs(from_flat(root), "dev") == ["en-en", "en-xc"]
    off = {**root, "eval.retention": False}
    assert _dev_pairs(from_flat({**off, "eval.pairs": ["en-xc"]}), "dev") == ["en-xc"]
    assert _dev_pairs(from_flat(off), "dev") == ["en-xc"]
    other = from_flat({**root, "eval.pairs": ["en-xc"], "eval.reference": "en-xa"})
    assert _dev_pairs(other, "dev") == ["en-xa", "en-xc"]
    # a reference pair without an evaluation set is left out, not an error
    assert _dev_pairs(
        from_flat({**root, "eval.reference": "en-zz", "eval.pairs": ["en-xc"]}), "dev"
    ) == ["en-xc"]
    # real evaluation sources without a data root never make a synthetic world appear
    real = from_flat(
        {
            "pair": "swa-en",
            "data.eval": {"swa-en": {"path": "/nowhere", "format": "ntrex"}},
            "eval.pairs": ["swa-en"],
        }
    )
    assert _dev_pairs(real, "dev") == ["swa-en"]
    with pytest.raises(ConfigError, match="eval.reference"):
        from_flat({"eval.reference": "english"})


# --------------------------------------------------------------------------- sweep config


def test_several_objectives_run_fifo_and_asha_with_them_is_refused(capsys) -> None:
    from optical_ray.config import from_flat
    from optical_ray.sweeps.plan import sweep_config

    cfg = sweep_config(from_flat({}), pairs=["en-xa"], objectives=["map", "en-en/map"])
    assert cfg.sweep.scheduler == "none" and cfg.sweep.objectives == ["map", "en-en/map"]
    with pytest.raises(ConfigError) as exc:
        sweep_config(
            from_flat({}), pairs=["en-xa"], objectives=["map", "en-en/map"], scheduler="asha"
        )
    assert "ASHA stops trials on one metric" in str(exc.value) and "--scheduler none" in str(
        exc.value
    )
    from optical_ray.cli.parser import main

    args = ["sweep", "--space", "search_spaces/default.yaml", "--pairs", "en-xa"]
    assert main([*args, "--objectives", "map,en-en/map", "--scheduler", "asha"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "ASHA stops trials on one metric" in err
    assert main([*args, "--constraint", "retention=0.98"]) == 2
    assert "retention=0.98" in capsys.readouterr().err
    cfg = sweep_config(from_flat({}), pairs=["en-xa"], constraints=["retention>=0.98"])
    assert cfg.sweep.scheduler == "asha"
    with pytest.raises(ConfigError, match="distill.l2sp"):
        sweep_config(from_flat({}), pairs=["en-xa"], constraints=["distill.l2sp>=1"])


# --------------------------------------------------------------------------- a real sweep

ray = pytest.importorskip("ray")

#: Knobs that trade the low-resource pair against English: reading English on some
#: pairs (english_fraction) and staying near the teacher (l2sp) keep en-en; a large
#: learning rate on foreign-only batches moves the student furthest.
TRADE_SPACE = {
    "base": {
        "train.stages": ["distill"],
        "distill.steps": 6,
        "distill.batch_size": 8,
        "train.eval_every": 6,
        "train.log_every": 1000,
        "train.warmup_ratio": 0.0,
        "distill.epsilon": 0.1,
    },
    # The trade is built in, so the front has two ends whatever the sampler draws: a
    # learning rate too small to move the student keeps the teacher's English exactly
    # (and its zero-shot low-resource MAP); distilling hard on bitext alone gains
    # low-resource MAP and loses English. English data and L2-SP sit in between.
    "params": {
        "distill.lr": {"type": "categorical", "choices": [1.0e-7, 1.0e-3, 3.0e-3]},
        "distill.english_fraction": {"type": "categorical", "choices": [0.0, 0.5]},
        "distill.l2sp": {"type": "categorical", "choices": [0.0, 10.0]},
    },
}


@pytest.mark.slow
def test_a_multi_objective_sweep_records_retention_cost_and_a_front(
    cluster, sweep_root, tmp_path
) -> None:
    import pandas as pd

    from optical_ray.catalog.pareto import values_of
    from optical_ray.config import from_flat
    from optical_ray.sweeps.space import parse_space
    from optical_ray.distributed import run_sweep

    storage = str(tmp_path / "store")
    base = from_flat(
        {
            "data.root": str(sweep_root / "world"),
            "output_dir": str(tmp_path / "runs"),
            "storage.uri": storage,
            "train.teacher": str(sweep_root / "teacher"),
            "eval.metrics": ["map"],
            "eval.pairs": ["en-xc"],  # en-en is added: eval.retention is on by default
            "sweep.max_concurrent": 2,
            # Seeded random search draws the same 8 configs in every run (TPE's draws
            # depend on which of 2 concurrent trials ends first), and training is
            # deterministic: the front is the same each time. Multi-objective TPE itself
            # is measured in benchmarks/bench_pareto.py.
            "sweep.search": "random",
        }
    )
    result = run_sweep(
        base,
        parse_space(TRADE_SPACE),
        pairs=["en-xc"],
        samples=8,
        name="mo",
        verbose=0,
        objectives=["map", "en-en/map"],
        constraints=["retention>=0.5"],
    )
    assert result.exit_code == 0, result.summary()
    df = Catalog(storage).records()
    assert len(df) == 8 and set(df["status"]) == {"finished"}
    teacher = result.pairs["en-xc"].baseline_metrics["en-en/map"]
    for _, row in df.iterrows():
        best = json.loads(row["best_metrics"])
        assert row["retention"] == pytest.approx(best["en-en/map"] / teacher)
        assert row["device_s"] == pytest.approx(row["training_s"]) and row["training_s"] > 0
        assert 0 < row["eval_s"] < row["training_s"]
    # brute force over the catalog rows
    values = np.column_stack([values_of(df, "map"), values_of(df, "en-en/map")])
    expected = set(df["trial_id"][_brute_front(values, [True, True])])
    front = pareto_front("en-xc", "map,en-en/map", storage)
    assert {r.trial_id for r in front} == expected
    on_front = values[df["trial_id"].isin(expected).to_numpy()]
    assert len({tuple(v) for v in on_front}) >= 2, df[["trial_id", "best_metrics"]].to_string()
    plain = best_config("en-xc", storage=storage)[0]
    limit = float(df["retention"].max())  # the most English any trial kept
    constrained = best_config("en-xc", storage=storage, where=f"retention>={limit}")[0]
    ok = df[pd.to_numeric(df["retention"]) >= limit]

    def tops(rows: pd.DataFrame) -> set[str]:  # trials that undistilled ones may tie
        return set(rows.loc[rows["best_value"] == rows["best_value"].max(), "trial_id"])

    assert constrained.trial_id in tops(ok)
    assert plain.trial_id in tops(df)
    assert constrained.trial_id != plain.trial_id
    # Optuna saw both objectives, and each trial's constraint (feasible when <= 0)
    import optuna

    study = optuna.load_study(study_name="mo-en-xc", storage=f"sqlite:///{storage}/optuna.db")
    assert len(study.directions) == 2
    by_values = {tuple(t.values): t for t in study.trials}
    for _, row in df.iterrows():
        best = json.loads(row["best_metrics"])
        trial = by_values[(best["map"], best["en-en/map"])]
        assert trial.constraints == {"retention>=0.5": pytest.approx(0.5 - row["retention"])}


def test_shipped_spaces_search_the_retention_knobs() -> None:
    from optical_ray.sweeps.space import load_space

    root = Path(__file__).resolve().parents[2] / "search_spaces"
    for name in ("low_resource.yaml", "minilm.yaml"):
        keys = {p.key for p in load_space(root / name).params}
        assert {"distill.english_fraction", "distill.l2sp"} <= keys, name
