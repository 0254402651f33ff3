"""A study's effects from stored per-query values (no Ray, no training): they equal a
brute-force computation over the stored values, a planted effect is found, a null
factor's interval covers 0 (at about the nominal rate), interactions and fractions."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from optical_ray.catalog import Catalog, TrialRecord
from optical_ray.config import from_flat
from optical_ray.config.rules import study_origin
from optical_ray.storage import resolve_storage
from optical_ray.studies.design import parse_design
from optical_ray.studies.effects import contrasts, study_effects
from optical_ray.studies.plan import plan_study
from optical_ray.studies.store import run_path, save_design, write_values, zero_shot_path

PAIR, TASK, REF = "en-xc", "en-xc", "en-en"
# Two factors on real config keys (the values never train anything here).
FACTORS = {
    "lr": {"key": "distill.lr", "levels": {"low": 1e-4, "high": 1e-3}},
    "eps": {"key": "distill.epsilon", "levels": {"a": 0.05, "b": 0.1}},
}


def _stored_study(
    root: Path,
    value,
    *,
    factors=FACTORS,
    seeds: int = 3,
    n_queries: int = 60,
    fraction=None,
    reference: float | None = 0.8,
    skip: tuple[str, ...] = (),
):
    """A study in storage ``root`` as run_study leaves it (design, a finished catalog
    record and a Parquet file of per-query values per run, the zero-shot file), with
    ``value(levels, seed, q)`` the value of query ``q``."""
    raw = {"name": "s", "factors": factors, "seeds": seeds, "reference": REF}
    if fraction:
        raw["fraction"] = fraction
    design = parse_design(raw)
    plan = plan_study(design, from_flat({"storage.uri": str(root)}), pairs=[PAIR])
    store = resolve_storage(str(root))
    save_design(store, plan.doc(), resume=False)
    catalog = Catalog(store)
    qids = [f"q{i:03d}" for i in range(n_queries)]
    for n, (cell, seed) in enumerate(itertools.product(design.cells(), design.seeds)):
        if cell.name in skip:
            continue
        levels = dict(cell.levels)
        values = {TASK: {q: {"map": float(value(levels, seed, i))} for i, q in enumerate(qids)}}
        write_values(store, run_path("s", PAIR, cell.name, seed), values, ["map"], {})
        catalog.append(
            TrialRecord(
                experiment=f"s-{PAIR}",
                pair=PAIR,
                trial_id=f"t{n}",
                config={},
                origin=study_origin(cell.name, seed),
            )
        )
    if reference is not None:
        zero = {
            TASK: {q: {"map": 0.3} for q in qids},
            REF: {q: {"map": reference} for q in qids},
        }
        write_values(store, zero_shot_path("s", PAIR), zero, ["map"], {})
    return store, design


def _noise(seed: int, q: int, salt: int) -> float:
    return float(np.random.default_rng([seed, q, salt]).normal(0, 0.05))


def test_effects_equal_a_brute_force_computation_over_the_stored_values(tmp_path) -> None:
    base = np.random.default_rng(1).uniform(0.2, 0.6, size=40)

    def value(levels, seed, q):
        bump = {"low": 0.0, "high": 0.07}[levels["lr"]] + {"a": 0.0, "b": -0.02}[levels["eps"]]
        inter = 0.03 if (levels["lr"], levels["eps"]) == ("high", "b") else 0.0
        return base[q] + bump + inter + _noise(seed, q, hash(tuple(levels.values())) % 97)

    store, design = _stored_study(tmp_path, value, n_queries=40)
    eff = study_effects(store, "s", n_boot=500, n_resamples=2000)
    # Brute force: read every stored file back, average by hand.
    import pyarrow.parquet as pq

    runs = {}
    for f in (tmp_path / "studies" / "s" / "runs" / PAIR).glob("*.parquet"):
        cell, seed = f.stem.rsplit("--", 1)
        from urllib.parse import unquote

        t = pq.read_table(f).to_pylist()
        runs[(unquote(cell), int(seed))] = {r["qid"]: r["map"] for r in t}
    assert len(runs) == 12

    def cell_mean(lr, eps, seeds=(0, 1, 2)):
        name = f"lr={lr},eps={eps}"
        per_seed = [np.mean(list(runs[(name, s)].values())) for s in seeds]
        return float(np.mean(per_seed))

    def main_lr(seeds=(0, 1, 2)):
        return np.mean([cell_mean("high", e, seeds) for e in "ab"]) - np.mean(
            [cell_mean("low", e, seeds) for e in "ab"]
        )

    def inter(seeds=(0, 1, 2)):
        m = {(lr, e): cell_mean(lr, e, seeds) for lr in ("low", "high") for e in "ab"}
        return (m["high", "b"] - m["low", "b"]) - (m["high", "a"] - m["low", "a"])

    rows = {e.name: e for e in eff.effects}
    assert set(rows) == {"lr: high vs low", "eps: b vs a", "lr x eps: high/low x b/a"}
    assert rows["lr: high vs low"].estimate == pytest.approx(main_lr(), abs=1e-9)
    assert rows["lr x eps: high/low x b/a"].estimate == pytest.approx(inter(), abs=1e-9)
    per_seed = [main_lr((s,)) for s in range(3)]
    assert rows["lr: high vs low"].per_seed == pytest.approx(per_seed, abs=1e-9)
    assert rows["lr: high vs low"].seed_sd == pytest.approx(np.std(per_seed, ddof=1))
    # The gap to the reference (0.8) and the share of it that lr=high closes: the gap
    # left at lr=low.
    low = np.mean([cell_mean("low", e) for e in "ab"])
    assert rows["lr: high vs low"].gap_closed == pytest.approx(main_lr() / (0.8 - low))
    cells = {c.cell: c for c in eff.cells}
    assert cells["lr=high,eps=b"].gap == pytest.approx(0.8 - cell_mean("high", "b"))
    assert cells["lr=high,eps=b"].closed == pytest.approx((cell_mean("high", "b") - 0.3) / 0.5)
    for e in eff.effects:
        assert e.ci_low <= e.estimate <= e.ci_high
        assert e.p_holm is not None and e.p_holm >= e.p_value


def test_a_planted_effect_is_found_and_a_null_factor_covers_zero(tmp_path) -> None:
    # lr=high adds 0.05 on every query; eps does nothing (its runs differ by seed and
    # query noise only, as every cell's do).
    def value(levels, seed, q):
        planted = 0.05 if levels["lr"] == "high" else 0.0
        salt = 1 + 10 * (levels["eps"] == "b") + 100 * (levels["lr"] == "high")
        return 0.4 + planted + _noise(seed, q, salt)

    store, _ = _stored_study(tmp_path, value, n_queries=80, seeds=2)
    rows = {e.name: e for e in study_effects(store, "s", n_boot=1000).effects}
    lr, eps = rows["lr: high vs low"], rows["eps: b vs a"]
    assert lr.ci_low > 0 and lr.ci_low <= 0.05 <= lr.ci_high
    assert lr.p_holm < 0.01
    assert eps.ci_low < 0 < eps.ci_high
    assert eps.p_value > 0.05


def test_a_null_factor_covers_zero_at_about_the_nominal_rate() -> None:
    """The interval's coverage, over 100 null datasets of 60 queries and 2 seeds per
    cell: 95 % nominal, at least 85 % here (the bootstrap percentile interval runs a
    little narrow at this size)."""
    from optical_ray.studies.effects import effects_of

    cells = {f"f={lv}": {"f": lv} for lv in ("x", "y")}
    covered = 0
    for rep in range(100):
        rng = np.random.default_rng(rep)
        base = rng.uniform(0.1, 0.9, size=60)
        values = {
            c: {s: np.clip(base + rng.normal(0, 0.1, size=60), 0, 1) for s in (0, 1)} for c in cells
        }
        (row,), _ = effects_of(
            PAIR, TASK, "map", [("f", ["x", "y"])], cells, values, n_boot=400, n_resamples=200
        )
        covered += row.ci_low <= 0 <= row.ci_high
    assert covered >= 85


def test_contrasts_weigh_cells_as_the_textbook_definitions() -> None:
    cells = [{"a": a, "b": b} for a in ("0", "1") for b in ("0", "1")]
    main_a, main_b, inter = contrasts([("a", ["0", "1"]), ("b", ["0", "1"])], cells)
    assert main_a.weights == pytest.approx((-0.5, -0.5, 0.5, 0.5))
    assert main_b.weights == pytest.approx((-0.5, 0.5, -0.5, 0.5))
    assert inter.weights == pytest.approx((1, -1, -1, 1))
    three = contrasts([("a", ["0", "1", "2"])], [{"a": x} for x in "012"])
    assert [c.name for c in three] == ["a: 1 vs 0", "a: 2 vs 0"]


def test_a_half_fraction_estimates_main_effects_and_names_their_aliases(tmp_path) -> None:
    factors = {
        **FACTORS,
        "w": {"key": "distill.weight", "levels": {"p": 0.5, "q": 0.9}},
    }

    def value(levels, seed, q):
        return 0.4 + 0.06 * (levels["w"] == "q") + _noise(seed, q, len(str(levels)))

    store, design = _stored_study(tmp_path, value, factors=factors, fraction="1/2", seeds=2)
    assert len(design.cells()) == 4
    eff = study_effects(store, "s", n_boot=300, n_resamples=500)
    rows = {e.name: e for e in eff.effects}
    assert rows["w: q vs p"].estimate == pytest.approx(0.06, abs=0.03)
    assert rows["w: q vs p"].aliases == ["lr:eps"]
    assert rows["lr x eps: high/low x b/a"].aliases == ["w"]


def test_a_cell_without_runs_leaves_out_only_the_effects_that_need_it(tmp_path) -> None:
    store, _ = _stored_study(
        tmp_path, lambda lv, s, q: 0.5 + _noise(s, q, 5), skip=("lr=high,eps=b",), seeds=1
    )
    eff = study_effects(store, "s", n_boot=200, n_resamples=200)
    assert eff.effects == []  # every effect of a 2x2 touches the missing cell
    assert any("1 of 4 runs not finished" in n for n in eff.notes)
    assert any("not estimated" in n and "lr: high vs low" in n for n in eff.notes)


def test_a_study_of_another_metric_or_name_is_one_clear_line(tmp_path) -> None:
    from optical_ray.errors import ConfigError, StorageError

    store, _ = _stored_study(tmp_path, lambda lv, s, q: 0.5, seeds=1, n_queries=5)
    with pytest.raises(StorageError, match="no study 'nope'.*studies there: s"):
        study_effects(store, "nope")
    with pytest.raises(ConfigError, match="'p@5'.*stored map"):
        study_effects(store, "s", "p@5")
