"""Study designs, plans and data checks (no Ray): every shipped design validates, bad
designs are refused with every problem listed at once, runs and origins follow the
design, and a knob's training text that overlaps an evaluation split is refused, naming
the overlapping lines."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from optical_ray.config import from_flat
from optical_ray.config.rules import origin_problems, parse_study_origin
from optical_ray.errors import ConfigError, DataError
from optical_ray.studies.design import load_design, parse_design
from optical_ray.studies.plan import plan_study
from optical_ray.sweeps.protocol import ORIGIN_KEY

SHIPPED = sorted((Path(__file__).resolve().parents[2] / "studies").glob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_every_shipped_design_validates(path: Path) -> None:
    design = load_design(path)
    plan = plan_study(design, pairs=["swa-en", "hau-en"])
    cells = design.cells()
    assert plan.runs == len(cells) * len(design.seeds) * 2
    for pair in plan.pairs:
        for point in plan.points[pair]:
            cfg = plan.run_config(pair, point)  # every run's whole config is valid
            assert cfg.eval.split == "dev" and cfg.pair == pair
        assert set(plan.reference[pair]) <= set(plan.tasks[pair])


def test_the_shipped_domain_adaptation_design_is_the_issues_grid() -> None:
    design = load_design(SHIPPED[0].parent / "domain_adaptation.yaml")
    assert [f.name for f in design.factors] == ["adapt", "hybrid", "method"]
    assert design.seeds == [0, 1] and len(design.cells()) == 8
    plan = plan_study(design, pairs=["swa-en", "hau-en"])
    assert plan.reference["hau-en"] == {
        "hau-en": "deu-en",
        "en-hau": "en-deu",
        "hau-en_doc": "deu-en_doc",
    }
    on = plan.run_config("swa-en", plan.points["swa-en"][-1])
    assert on.train.stages == ["adapt", "distill"] and on.distill.rank_batch_size == 8
    assert on.data.mono["swa"].format == "mafand" and on.data.rank.format == "english_train"
    assert on.distill.weight < 1  # hybrid batches weigh the ranking loss


def test_cells_seeds_and_origins() -> None:
    design = parse_design(
        {
            "name": "s",
            "factors": {
                "adapt": {
                    "key": "train.stages",
                    "levels": {"off": ["distill"], "on": ["adapt", "distill"]},
                },
                "distill.method": ["ot", "mse_sentence", "none"],
                "hybrid": {
                    "levels": {
                        "off": {"distill.rank_batch_size": 0},
                        "on": {"distill.rank_batch_size": 8, "distill.weight": 0.7},
                    }
                },
            },
            "seeds": [3, 7],
        }
    )
    assert len(design.cells()) == 12
    points = design.points()
    assert len(points) == 24
    first = points[0]
    assert first["train.stages"] == ["distill"] and first["train.seed"] == 3
    assert first[ORIGIN_KEY] == "study:adapt=off,distill.method=ot,hybrid=off/3"
    assert parse_study_origin(first[ORIGIN_KEY]) == ("adapt=off,distill.method=ot,hybrid=off", 3)
    assert origin_problems(first[ORIGIN_KEY]) == []
    assert origin_problems("study:a=b") != [] and origin_problems("study:/1") != []
    plan = plan_study(design, pairs=["en-xc"])
    cfg = plan.run_config("en-xc", points[-1])
    assert cfg.distill.method == "none" and cfg.distill.weight == 0.7 and cfg.train.seed == 7


def test_bad_designs_list_every_problem_at_once() -> None:
    with pytest.raises(ConfigError) as exc:
        parse_design(
            {
                "name": "s",
                "factors": {
                    "distill.lrr": [1e-4, 1e-3],
                    "distill.rank_batch_size": [-1, 8],
                    "eps": {"key": "distill.epsilon", "levels": {"a": 0.1, "b": -1}},
                    "single": {"key": "distill.lr", "levels": [1e-4]},
                    "train.seed": [0, 1],
                },
                "seeds": 0,
                "fraction": "1/3",
            },
            source="bad.yaml",
        )
    problems = exc.value.problems
    assert any(
        "factors.distill.lrr: unknown config key" in p and "'distill.lr'" in p for p in problems
    )
    assert any(
        "distill.rank_batch_size" in p and "'-1'" in p and "must be >= 0" in p for p in problems
    )
    assert any("factors.eps: level 'b'" in p and "must be > 0" in p for p in problems)
    assert any("factors.single: got 1 level" in p for p in problems)
    assert any("train.seed is set by the study's seeds" in p for p in problems)
    assert any(p.startswith("seeds: got 0") for p in problems)
    assert any(p.startswith("fraction: got '1/3'") for p in problems)
    assert len(problems) == 7


def test_more_runs_than_allowed_are_refused_with_the_count() -> None:
    design = parse_design({"name": "s", "factors": {"distill.method": ["ot", "none"]}, "seeds": 3})
    with pytest.raises(
        ConfigError, match=r"2 cells x 3 seeds x 2 pair\(s\) = 12 runs, more than --max-runs 10"
    ):
        plan_study(design, pairs=["en-xa", "en-xc"], max_runs=10)
    assert plan_study(design, pairs=["en-xa", "en-xc"], max_runs=10, seeds=2).runs == 8


def test_a_cell_the_config_cannot_run_and_selection_on_test_are_refused() -> None:
    design = parse_design(
        {
            "name": "s",
            "base": {"eval.split": "test"},
            "factors": {"distill.method": ["ot", "contrastive"], "distill.rank_batch_size": [0, 8]},
        }
    )
    with pytest.raises(ConfigError) as exc:
        plan_study(design, pairs=["en-xc"])
    text = " | ".join(exc.value.problems)
    assert "cell distill.method=contrastive,distill.rank_batch_size=0: distill.contrastive" in text
    assert "eval.split is 'test'" in text
    assert "distill.weight=1: the ranking loss is weighed by 1 - weight = 0" in text
    with pytest.raises(ConfigError, match="override distill.method: a factor"):
        plan_study(design, pairs=["en-xc"], overrides={"distill.method": "ot"})


def test_a_half_fraction_keeps_main_effects_apart() -> None:
    design = parse_design(
        {
            "name": "s",
            "factors": {
                "a": {"key": "distill.lr", "levels": [1e-4, 1e-3]},
                "b": {"key": "distill.epsilon", "levels": [0.05, 0.1]},
                "c": {"key": "distill.weight", "levels": [0.5, 0.9]},
            },
            "fraction": "1/2",
        }
    )
    cells = [dict(c.levels) for c in design.cells()]
    assert len(cells) == 4
    for f in "abc":  # each factor's two levels in two cells each
        assert sorted(Counter(c[f] for c in cells).values()) == [2, 2]
    assert design.aliases() == {
        "a": ["b:c"],
        "b": ["a:c"],
        "c": ["a:b"],
        "a:b": ["c"],
        "a:c": ["b"],
        "b:c": ["a"],
    }
    with pytest.raises(ConfigError, match="needs at least 3 factors"):
        parse_design(
            {"name": "s", "factors": {"distill.method": ["ot", "none"]}, "fraction": "1/2"}
        )


# --------------------------------------------------------------------------- data checks


def _plan(tiny_world, tmp_path, **raw):
    design = parse_design({"name": "s", **raw})
    base = from_flat(
        {"data.root": str(tiny_world.root), "output_dir": str(tmp_path), "eval.pairs": ["en-xc"]}
    )
    return plan_study(design, base, pairs=["en-xc"])


def test_a_missing_reference_lists_the_pairs_that_exist(tiny_world, tmp_path) -> None:
    from optical_ray.studies.checks import check_study_data

    plan = _plan(
        tiny_world, tmp_path, factors={"distill.method": ["ot", "none"]}, reference="xq-en"
    )
    with pytest.raises(DataError) as exc:
        check_study_data(plan)
    line = str(exc.value)
    assert "en-xc: reference xq-en has no evaluation data" in line
    assert "pairs with evaluation data: en-en, en-xa, en-xb, en-xc, xa-en" in line
    assert "\n" not in line


def test_monolingual_text_that_overlaps_an_evaluation_split_is_refused(
    tiny_world, tmp_path
) -> None:
    from optical_ray.data.collection import load_collection
    from optical_ray.studies.checks import check_study_data

    test = load_collection(tiny_world.root / "eval" / "en-xc" / "test")
    qid, query = next((q, t) for q, t in test.queries.items() if len(t.split()) >= 4)
    mono = tmp_path / "xc.txt"
    mono.write_text(f"first line of xc text here\n{query}\n", encoding="utf-8")
    raw = {
        "factors": {
            "adapt": {
                "key": "train.stages",
                "levels": {"off": ["distill"], "on": ["adapt", "distill"]},
            }
        },
        "base": {"data.mono": {"xc": {"path": str(mono)}}},
    }
    with pytest.raises(DataError) as exc:
        check_study_data(_plan(tiny_world, tmp_path, **raw))
    line = str(exc.value)
    assert "data.mono.xc (auto) shares 1 text(s) with en-xc test" in line
    assert f"text 2 {query[:20]}" in line.replace("'", "") and f"= query {qid}" in line
    # Without the adapt stage the text is never read: nothing to refuse.
    raw["factors"] = {"distill.method": ["ot", "none"]}
    check_study_data(_plan(tiny_world, tmp_path, **raw))


def test_ranking_text_that_overlaps_an_evaluation_split_is_refused(tiny_world, tmp_path) -> None:
    """Hybrid batches read data.rank: a ranking query that is an English test query of
    en-en (evaluated for dev selection here) is refused, naming it."""
    import shutil

    from optical_ray.data.collection import load_collection
    from optical_ray.studies.checks import check_study_data

    rank = tmp_path / "rank"
    shutil.copytree(tiny_world.root / "train" / "en", rank)
    test = load_collection(tiny_world.root / "eval" / "en-en" / "dev")
    qid, query = next((q, t) for q, t in test.queries.items() if len(t.split()) >= 4)
    lines = (rank / "queries.tsv").read_text(encoding="utf-8").splitlines()
    first = lines[0].split("\t")[0]
    lines[0] = f"{first}\t{query}"
    (rank / "queries.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    raw = {
        "factors": {
            "hybrid": {
                "levels": {
                    "off": {"distill.rank_batch_size": 0},
                    "on": {"distill.rank_batch_size": 4, "distill.weight": 0.8},
                }
            }
        },
        "base": {"data.rank": {"path": str(rank)}, "eval.pairs": ["en-en", "en-xc"]},
    }
    with pytest.raises(
        DataError,
        match=rf"data.rank \(auto\) shares 1 text\(s\) with en-en dev.*query {first} .* = query {qid}",
    ):
        check_study_data(_plan(tiny_world, tmp_path, **raw))
