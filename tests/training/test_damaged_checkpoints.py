"""A damaged ``optimizer.pt`` (cut short, or tampered with: a pickle of other objects)
never ends a resume in a traceback: the run falls back to the previous complete
checkpoint with a warning, as it does for an unreadable ``state.json``, and torch's
advice to load the file with ``weights_only=False`` is never passed on (#33 item 8)."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import pytest

from optical_ray.errors import TrainingError
from optical_ray.training.checkpoint import (
    checkpoint_problem,
    read_checkpoint_state,
    read_optimizer_state,
)
from optical_ray.training.recipe import LocalContext, run


@pytest.fixture(scope="module")
def trained(tiny_world, tmp_path_factory):
    """A run of 3 rank steps with a checkpoint after each (all kept), and its history;
    each test damages a copy of it."""
    from optical_ray.config import from_flat

    cfg = from_flat(
        {
            "data.root": str(tiny_world.root),
            "output_dir": str(tmp_path_factory.mktemp("damaged") / "runs"),
            "pair": "en-xc",
            "train.stages": ["rank"],
            "train.checkpoint_every": 1,
            "train.log_every": 1000,
            "train.warmup_ratio": 0.0,
            "rank.steps": 3,
            "rank.batch_size": 8,
            "rank.lr": 1e-3,
            "eval.metrics": ["map"],
            "eval.pairs": ["en-en"],
        }
    )
    run_dir = Path(cfg.output_dir) / cfg.name
    history = run(cfg, LocalContext(run_dir, keep=None))
    return cfg, run_dir, history


def _copy(trained, tmp_path):
    """The trained run in a directory of this test's, as a run stopped after step 2."""
    from optical_ray.config import from_flat

    cfg, run_dir, history = trained
    cfg = from_flat({"output_dir": str(tmp_path / "runs")}, cfg)
    mine = Path(cfg.output_dir) / cfg.name
    shutil.copytree(run_dir, mine)
    shutil.rmtree(mine / "model")
    ckpts = _by_step(mine / "checkpoints")
    shutil.rmtree(ckpts.pop(3))  # the stage's end: it keeps no optimizer state
    return cfg, mine, ckpts, history


def _by_step(root: Path) -> dict[int, Path]:
    return {
        read_checkpoint_state(p)["step"]: p for p in root.iterdir() if p.name.startswith("ckpt-")
    }


def _tamper(path: Path) -> None:
    """Replace ``optimizer.pt`` with a pickle of another object, padded to the same size
    (the manifest's size check passes; only loading can tell)."""
    file = path / "optimizer.pt"
    size = file.stat().st_size
    evil = pickle.dumps(Path("/etc/passwd"))  # a global weights_only refuses
    file.write_bytes(evil + b"\0" * (size - len(evil)))


def _truncate(path: Path) -> None:
    file = path / "optimizer.pt"
    file.write_bytes(file.read_bytes()[:100])


@pytest.mark.parametrize("damage", [_truncate, _tamper], ids=["truncated", "tampered"])
def test_a_resume_falls_back_past_a_damaged_optimizer_state(trained, tmp_path, damage):
    cfg, run_dir, ckpts, whole = _copy(trained, tmp_path)
    damage(ckpts[2])  # the newest
    assert "optimizer.pt" in checkpoint_problem(ckpts[2])
    with pytest.warns(UserWarning, match=r"ckpt-0-rank-0000002 is damaged \(.*optimizer.pt"):
        assert LocalContext(run_dir).latest_checkpoint() == str(ckpts[1])
    with pytest.warns(UserWarning, match="resuming from the previous complete checkpoint"):
        resumed = run(cfg, LocalContext(run_dir, keep=None))
    assert [r["step"] for r in resumed.resumes] == [1]
    assert resumed.losses() == pytest.approx(whole.losses(), rel=1e-6)


def test_a_damaged_optimizer_state_is_one_line_without_torchs_advice(trained, tmp_path):
    _, _, ckpts, _ = _copy(trained, tmp_path)
    _tamper(ckpts[1])
    with pytest.raises(TrainingError) as info:
        read_optimizer_state(ckpts[1])
    message = str(info.value)
    assert "optimizer.pt: not a plain optimizer state" in message and "\n" not in message
    assert "weights_only=False" not in message and "it was not unpickled" in message


def test_a_tune_trial_skips_a_damaged_checkpoint(trained, tmp_path, monkeypatch):
    """The same fall-back where checkpoints live in a trial's storage directory."""
    from ray import tune

    import optical_ray.distributed.trial as tune_trial

    cfg, _, ckpts, _ = _copy(trained, tmp_path)
    trial_dir = tmp_path / "trial"
    for step, ckpt in sorted(ckpts.items()):  # Tune's names: checkpoint_000000, ...
        shutil.copytree(ckpt, trial_dir / f"checkpoint_{step - 1:06d}")
    named = trial_dir / "checkpoint_000001"  # the newest: step 2
    _tamper(named)
    monkeypatch.setattr(tune_trial.tune, "get_checkpoint", lambda: tune.Checkpoint(path=str(named)))
    with pytest.warns(UserWarning, match="checkpoint_000001 is damaged"):
        restored = tune_trial.TuneContext(cfg).latest_checkpoint()
    assert read_checkpoint_state(restored)["step"] == 1
