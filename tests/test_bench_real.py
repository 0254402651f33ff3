"""benchmarks/bench_real.py: the evaluation collections come from the same shared data
folder as training (``--shared``), and a teacher dir sets the scoring it was trained with.
Built on a tiny fake shared folder: no real data needed."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from optical_ray.data import real

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_real.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_real", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fake_ntrex(root: Path, tag: str) -> Path:
    """NTREX files for en and swa: 10 documents of 2 lines, texts marked with ``tag``."""
    ntrex = root / "ntrex128"
    (ntrex / "NTREX-128").mkdir(parents=True)
    (ntrex / "DOCUMENT_IDS.tsv").write_text(
        "".join(f"doc{i // 2}\t{i}\n" for i in range(20)), encoding="utf-8"
    )
    for name, lang in (("newstest2019-src.eng.txt", "en"), ("newstest2019-ref.swa.txt", "swa")):
        (ntrex / "NTREX-128" / name).write_text(
            "".join(f"{tag} {lang} sentence {i}\n" for i in range(20)), encoding="utf-8"
        )
    return root


def test_tasks_read_the_given_shared_folder_not_the_environment(bench, tmp_path, monkeypatch):
    given = _fake_ntrex(tmp_path / "given", "GIVEN")
    monkeypatch.setenv(real.ENV_VAR, str(_fake_ntrex(tmp_path / "env", "ENV")))
    cols = bench.tasks("swa", "test", reference=False, shared=str(given))
    assert {"ntrex_xx_en", "ntrex_doc", "ntrex_en_xx"} <= set(cols)  # no AfriQA here: skipped
    for col in cols.values():
        texts = list(col.queries.values()) + [d.text for d in col.corpus]
        assert texts and all(t.startswith("GIVEN") for t in texts)
    env = bench.tasks("swa", "test", reference=True)  # no --shared: the variable
    assert all(t.startswith("ENV") for t in env["ntrex_xx_en"].queries.values())


def test_teacher_dir_sets_its_scoring(bench, tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "optical_ray.json").write_text(
        json.dumps({"model": {"scoring": "late_interaction", "projection_dim": 0}}),
        encoding="utf-8",
    )
    assert bench.teacher_model_keys(str(model)) == {
        "model.scoring": "late_interaction",
        "model.projection_dim": 0,
    }
    with pytest.raises(SystemExit, match="not a model saved by optical-ray"):
        bench.teacher_model_keys(str(tmp_path))


def _tiny_sweep_args(shared: Path, out: Path, encoder: str) -> list[str]:
    """bench_real arguments for 2-step methods and 2-trial sweeps on a tiny encoder."""
    return [
        "--shared",
        str(shared),
        "--steps",
        "2",
        "--batch-size",
        "4",
        "--sweep-trials",
        "2",
        "--out",
        str(out),
        "--set",
        f"model.name_or_path={encoder}",
        "--set",
        "train.eval_every=1",
        "--set",
        "distill.sinkhorn_iters=50",
        "--finalist-seeds",
        "1",
    ]


def test_sweep_system_runs_and_is_tested_against_the_hand_set_run(
    bench, cluster, tiny_encoder_dir, tmp_path, capsys
):
    """``--methods ot,sweep`` on a fake shared folder with a tiny encoder: a 2-trial
    TPE + ASHA sweep over the real space, its best evaluated on the same test tasks
    as the hand-set OT run, and a ``sweep_target`` line with both target figures."""
    from tests.fake_shared import make_fake_shared

    shared = make_fake_shared(tmp_path / "shared", langs=("swa",), reference=("deu",))
    bench.main(
        ["--langs", "swa", "--reference", "deu", "--methods", "ot,sweep", "--finalists", "1"]
        + _tiny_sweep_args(shared, tmp_path / "out", tiny_encoder_dir)
    )
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    systems = {(r["system"], r["task"]) for r in lines if r["figure"] == "retrieval"}
    assert ("sweep", "ntrex_xx_en") in systems and ("ot", "ntrex_xx_en") in systems
    sweep_row = next(r for r in lines if r.get("system") == "sweep")
    assert sweep_row["trials"] == 2 and sweep_row["best_config"]["method"] in (
        "ot",
        "mse_sentence",
        "contrastive",
    )
    (target,) = [r for r in lines if r["figure"] == "sweep_target"]
    beats = target["sweep_beats_hand_set"]["ntrex_xx_en"]
    assert set(beats) == {"delta_map", "p", "holds"} and 0 <= beats["p"] <= 1
    assert "gap_to_deu_closed" in target
    assert target["sweep_vs_mse_sentence"] is None  # not run
    # issue 30: the answer (a finalist or the base) against the base, the same seeds
    assert ("sweep_base", "ntrex_doc") in systems
    (answer,) = [r for r in lines if r["figure"] == "answer_target"]
    assert set(answer["vs_base"]) == {"ntrex_xx_en", "ntrex_en_xx", "ntrex_doc"}
    assert isinstance(answer["answer_never_worse"], bool)
    if answer["answer_is_base"]:  # then it says so, and it is the base on test
        assert answer["answer_better"] and answer["says"].startswith("no config significantly")
        assert all(t["delta_map"] == 0 for t in answer["vs_base"].values())
    (budget,) = [r for r in lines if r["figure"] == "budget"]
    assert budget["search_trial_epochs"] > 0 and budget["finalist_trial_epochs"] > 0
    assert budget["total_trial_epochs"] == (
        budget["search_trial_epochs"] + budget["finalist_trial_epochs"]
    )
    assert budget["plain_asha_trial_epochs_same_trials"] <= budget["search_trial_epochs"]


def test_warm_started_sweep_is_compared_with_the_cold_one(
    bench, cluster, tiny_encoder_dir, tmp_path, capsys
):
    """``--sweep-warm-start swa-en`` for hau: the cold and the warm sweep of hau-en run
    with the same budget, the warm one's first trial is swa-en's best config, and the
    ``warm_start`` line compares the two (dev curves, test MAP with paired p)."""
    from tests.fake_shared import make_fake_shared

    shared = make_fake_shared(tmp_path / "shared", langs=("swa", "hau"), reference=())
    common = ["--reference", "", "--methods", "sweep", "--finalists", "0"] + _tiny_sweep_args(
        shared, tmp_path / "out", tiny_encoder_dir
    )
    bench.main(["--langs", "swa", *common])
    capsys.readouterr()
    bench.main(["--langs", "hau", "--sweep-warm-start", "swa-en", *common])
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    systems = {r["system"] for r in lines if r["figure"] == "retrieval"}
    assert {"sweep", "sweep_warm"} <= systems
    (warm,) = [r for r in lines if r["figure"] == "warm_start"]
    assert warm["lang"] == "hau" and warm["warm_start"] == "swa-en"
    assert warm["warm_origins"][0].startswith("warm_start:swa-en/")
    assert warm["cold_trial_epochs"] > 0 and len(warm["warm_curve"]) >= 1
    ratio = warm["epochs_to_cold_best_ratio"]
    assert ratio is None or ratio > 0
    assert warm["warm_minus_cold_best_dev"] == pytest.approx(
        warm["warm_best_dev_map"] - warm["cold_best_dev_map"], abs=1e-3
    )
    test = warm["test_warm_vs_cold"]["ntrex_xx_en"]
    assert 0 <= test["p"] <= 1
    assert test["delta_map"] == pytest.approx(test["warm_map"] - test["cold_map"], abs=1e-3)
