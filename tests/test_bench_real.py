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
