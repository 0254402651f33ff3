"""Experiments saved before the package moved into subpackages still resume.

``tests/fixtures/sweep_v0`` holds what the flat-layout code (a529f09) left in storage
when its sweep's driver was SIGKILLed mid-sweep (see its README): Ray Tune pickled
``optical_ray.raytune``, ``optical_ray.sweep``, ``optical_ray.schema`` and other old
class paths into it. ``--resume`` with today's code must verify its signed state,
unpickle it through the old paths (:mod:`optical_ray._moved`), finish the trial that
was cut short from its checkpoint, and never run the finished one again.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "sweep_v0"
KEY = "optical-ray-test-fixture-key-0123456789abcdef0123456789abcdef"
TINY = {
    "model.tiny.num_layers": 1,
    "model.tiny.hidden_size": 16,
    "model.tiny.num_heads": 1,
    "model.tiny.intermediate_size": 32,
}


def test_the_fixture_names_the_old_module_paths() -> None:
    """The fixture is what it claims: its pickles name the flat layout's modules."""
    state = FIXTURE / "storage" / "v0-en-xc"
    blob = b"".join(p.read_bytes() for p in state.glob("*.pkl"))
    for old in (b"optical_ray.raytune", b"optical_ray.sweep", b"optical_ray.schema"):
        assert old in blob
    assert b"optical_ray.distributed" not in blob


def test_a_sweep_saved_before_the_move_resumes_after_it(cluster, tmp_path, monkeypatch) -> None:
    from optical_ray.catalog import Catalog
    from optical_ray.config import from_flat
    from optical_ray.data.synthetic import synthesize_world
    from optical_ray.distributed import run_sweep
    from optical_ray.models import RetrievalModel
    from optical_ray.sweeps import load_space

    monkeypatch.setenv("OPTICAL_RAY_STATE_KEY", KEY)
    storage = tmp_path / "storage"
    shutil.copytree(FIXTURE / "storage", storage)
    before = Catalog(str(storage)).records()
    assert list(before["status"]) == ["finished"]
    # The world and the teacher the fixture's trials trained on (both seeded).
    world = synthesize_world(tmp_path / "world", seed=0, scale="tiny")
    cfg = from_flat({"data.root": str(world.root), **TINY})
    RetrievalModel.from_config(cfg).save(tmp_path / "teacher", cfg)
    base = from_flat(
        {
            "data.root": str(world.root),
            "output_dir": str(tmp_path / "runs"),
            "storage.uri": str(storage),
            "train.teacher": str(tmp_path / "teacher"),
            "eval.metrics": ["map"],
            "eval.pairs": ["en-en"],
            "sweep.max_concurrent": 1,
            "sweep.optuna_storage": "memory",
            **TINY,
        }
    )
    result = run_sweep(
        base,
        load_space(FIXTURE / "space.yaml"),
        pairs=["en-xc"],
        samples=2,
        name="v0",
        scheduler="none",
        resume=True,
        verbose=0,
    )
    assert result.exit_code == 0, result.summary()
    after = Catalog(str(storage)).records()
    assert len(after) == after["record_id"].nunique() == 2
    assert set(after["status"]) == {"finished"}
    done = after[after["trial_id"] == before["trial_id"].iloc[0]]
    assert done["best_value"].iloc[0] == pytest.approx(before["best_value"].iloc[0])
    # The cut-short trial went on from its checkpoint: its last checkpoint's history
    # trained every step once, with a resume at a step > 0.
    resumed = after[after["trial_id"] != before["trial_id"].iloc[0]]["trial_id"].iloc[0]
    (trial_dir,) = (storage / "v0-en-xc").glob(f"trial_*{resumed}*")
    last = sorted(trial_dir.glob("checkpoint_*"))[-1]
    history = json.loads((last / "state.json").read_text())["history"]
    steps = [r["step"] for r in history["steps"]]
    assert steps == list(range(1, 41))
    assert [r["step"] > 0 for r in history["resumes"]] == [True]
