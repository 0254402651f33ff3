"""``optical-ray evaluate --best``: each pair's best checkpoint from the catalog on test,
next to the zero-shot teacher and named baselines; per-query values in storage with a
pointer in the catalog; the report's tables; and the bad inputs (a pair without
records, a deleted checkpoint, a baseline on another test set). Tiny models on the
tiny synthetic world, no Ray."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from optical_ray.catalog import Catalog, TrialRecord
from optical_ray.cli.parser import main
from optical_ray.config import from_flat, to_flat
from optical_ray.errors import ConfigError, DataError, StorageError
from optical_ray.evaluation.best import (
    BEST,
    ZERO_SHOT,
    evaluate_best,
    load_evaluations,
    parse_baselines,
)


@pytest.fixture(scope="module")
def setup(tiny_world, tmp_path_factory):
    """A teacher, two trial checkpoints of en-xc in a catalog (the better one first by
    dev MAP), and a baseline run directory."""
    import torch

    from optical_ray.models.encoder import RetrievalModel

    root = tmp_path_factory.mktemp("evalbest")
    base = {
        "data.root": str(tiny_world.root),
        "output_dir": str(root / "runs"),
        "pair": "en-xc",
        "eval.metrics": ["map", "mrr@10"],
        "eval.pairs": ["en-xc"],
    }
    cfg = from_flat(base)
    torch.manual_seed(0)
    RetrievalModel.from_config(cfg).save(root / "teacher", cfg)
    trial_cfg = from_flat({"train.teacher": str(root / "teacher"), "distill.method": "ot"}, cfg)
    for i, name in enumerate(("ckpt_a", "ckpt_b", "hand_set/model")):
        torch.manual_seed(i + 1)
        RetrievalModel.from_config(cfg).save(root / name / ("" if "/" in name else "model"), cfg)
    storage = root / "storage"
    catalog = Catalog(storage, spool_dir=root / "spool")
    for tid, value, ckpt in (("a", 0.6, "ckpt_a"), ("b", 0.4, "ckpt_b")):
        catalog.append(
            TrialRecord(
                experiment="s-en-xc",
                pair="en-xc",
                trial_id=tid,
                config=to_flat(trial_cfg),
                best_metrics={"map": value},
                checkpoint_uri=str(root / ckpt),
            )
        )
    return root, storage


@pytest.fixture(scope="module")
def evaluated(setup):
    root, storage = setup
    return evaluate_best(
        storage, split="test", baselines=parse_baselines([f"hand={root / 'hand_set'}"])
    )


def test_best_is_evaluated_next_to_zero_shot_and_baselines(setup, evaluated):
    root, storage = setup
    (ev,) = evaluated
    assert ev.pair == "en-xc" and ev.split == "test" and ev.reference_pair == "en-en"
    assert ev.record["trial_id"] == "a" and ev.systems[BEST] == str(root / "ckpt_a")
    assert set(ev.results) == {ZERO_SHOT, BEST, "hand"}
    assert set(ev.results[ZERO_SHOT]) == {"en-en", "en-xc"}
    queries = set(ev.results[BEST]["en-xc"].per_query)
    assert queries and queries == set(ev.results["hand"]["en-xc"].per_query)
    vs_zero, vs_hand = ev.reports
    assert vs_zero.baseline == ZERO_SHOT and vs_hand.baseline == "hand"
    tested = [r for r in vs_zero.rows if r.pair == "en-xc" and r.system != ZERO_SHOT]
    assert {r.system for r in tested} == {BEST, "hand"}
    assert all(r.p_value is not None and r.p_holm >= r.p_value for r in tested)
    assert {r.system for r in vs_hand.rows if r.p_value is not None} == {BEST}
    text = ev.to_text()
    assert "vs zero-shot" in text and "vs hand" in text and "Holm" in text
    # per-query values in storage, with a pointer beside the trial's records
    assert Path(ev.uri).is_file() and "/evaluations/en-xc/test/" in ev.uri
    pointer = json.loads(Path(ev.pointer).read_text())
    assert pointer["per_query"].startswith("evaluations/") and pointer["trial_id"] == "a"
    assert "/catalog/s-en-xc/en-xc/" in ev.pointer
    assert len(Catalog(storage).records()) == 2  # the pointer is not a record
    (back,) = load_evaluations(storage)
    assert back.results[BEST]["en-xc"].per_query == ev.results[BEST]["en-xc"].per_query
    assert [r.p_value for r in back.reports[0].rows] == [r.p_value for r in vs_zero.rows]


def test_report_includes_the_test_tables(setup, evaluated, tmp_path):
    from optical_ray.report.gap import build_report

    root, storage = setup
    path = build_report(storage, tmp_path / "report")
    md = path.read_text()
    assert "The best on held-out data" in md and "### en-xc: the best on test" in md
    assert "vs zero-shot" in md and "vs hand" in md
    doc = json.loads((tmp_path / "report" / "report.json").read_text())
    assert doc["evaluations"][0]["pair"] == "en-xc"
    assert "the best on test" in (tmp_path / "report" / "report.html").read_text()


def test_cli_prints_the_gap_table(setup, capsys):
    root, storage = setup
    code = main(["evaluate", "--best", "--storage", str(storage), "--split", "test"])
    out = capsys.readouterr().out
    assert code == 0 and "en-xc" in out and "gap closed" in out and "p (Holm)" in out


def test_bad_input_is_one_line(setup, tmp_path, capsys):
    root, storage = setup
    with pytest.raises(
        StorageError, match=r"no records for pair\(s\) en-xa .*pairs with records: en-xc"
    ):
        evaluate_best(storage, pairs=["en-xa"])
    code = main(["evaluate", "--best", "--storage", str(storage), "--pairs", "en-xa"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "en-xa" in err

    # a deleted checkpoint: its URI in one line
    copy = tmp_path / "storage"
    shutil.copytree(storage, copy)
    gone = tmp_path / "gone_ckpt"
    shutil.copytree(root / "ckpt_a", gone)
    rec = Catalog(copy, spool_dir=tmp_path / "spool").records().iloc[0]
    Catalog(copy, spool_dir=tmp_path / "spool").append(
        TrialRecord(
            experiment="s-en-xc",
            pair="en-xc",
            trial_id="c",
            config=json.loads(rec["config"]),
            best_metrics={"map": 0.9},
            checkpoint_uri=str(gone),
        )
    )
    shutil.rmtree(gone)
    with pytest.raises(DataError, match=rf"{gone}.*does not exist"):
        evaluate_best(copy, write=False)

    # a baseline whose own test set is not the best's: refused, both named
    other_root = tmp_path / "other_world"
    shutil.copytree(Path(json.loads(rec["config"])["data.root"]), other_root)
    qrels = other_root / "eval" / "en-xc" / "test" / "qrels.txt"
    lines = qrels.read_text().splitlines()
    qrels.write_text("\n".join(lines[1:]) + "\n")
    from optical_ray.models.encoder import RetrievalModel

    bcfg = from_flat({"data.root": str(other_root), "pair": "en-xc"})
    RetrievalModel.load(root / "hand_set" / "model").save(tmp_path / "elsewhere" / "model", bcfg)
    with pytest.raises(ConfigError) as exc:
        evaluate_best(
            storage, baselines=parse_baselines([str(tmp_path / "elsewhere")]), write=False
        )
    line = str(exc.value)
    assert "'elsewhere' is evaluated on en-xc test from" in line and str(other_root) in line
    assert "but the best on en-xc test from" in line and str(root.parent) not in ""

    with pytest.raises(ConfigError, match="reserved"):
        parse_baselines(["best=/x"])


def test_demo_ends_with_the_same_code_path(setup):
    from types import SimpleNamespace

    from optical_ray.cli.demo import _gap

    root, storage = setup
    sweep = SimpleNamespace(
        pairs={
            "en-xc": SimpleNamespace(best_checkpoint=str(root / "ckpt_a")),
            "en-xa": SimpleNamespace(best_checkpoint=None),  # no finished trial: left out
        }
    )
    (ev,) = _gap(str(storage), sweep, ["en-xc", "en-xa"])
    assert ev.pair == "en-xc" and ev.uri and set(ev.results) == {ZERO_SHOT, BEST}
    assert _gap(str(storage), SimpleNamespace(pairs={}), ["en-xc"]) == []


def test_real_configs_never_fall_back_to_a_synthetic_world(tmp_path):
    from optical_ray.evaluation.best import _collection

    cfg = from_flat(
        {
            "pair": "swa-en",
            "output_dir": str(tmp_path),
            "data.eval": {"swa-en": {"path": "", "format": "ntrex"}},
        }
    )
    with pytest.raises(DataError, match=r"reference pair en-en: .*no data.eval source .*swa-en"):
        _collection(cfg, "en-en", "test", "reference pair en-en")
    assert not (tmp_path / "world").exists()


def test_cli_flag_mistakes_are_one_line(tmp_path, capsys):
    for argv in (
        ["evaluate"],
        ["evaluate", "--best", "--checkpoint", "x"],
        ["evaluate", "--checkpoint", "x", "--baselines", "a=b"],
        ["evaluate", "--best", "--storage", str(tmp_path / "empty")],
    ):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("optical-ray: error:") and "\n" not in err
