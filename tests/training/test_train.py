"""Training stages: losses, determinism, resume, accumulation, errors, and the learning claim."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest
import torch

import optical_ray.training.losses as losses
import optical_ray.training.recipe as train_mod
import optical_ray.training.stages as stages_mod
from optical_ray.config import Config
from optical_ray.data.sources import bitext_pairs, rank_collection
from optical_ray.errors import ConfigError, TrainingError
from optical_ray.models.encoder import RetrievalModel
from optical_ray.models.tiny import TinyModelSpec, build_tiny_encoder
from optical_ray.training.checkpoint import read_checkpoint_state
from optical_ray.training.losses import distill_loss
from optical_ray.training.recipe import (
    History,
    LocalContext,
    TrainContext,
    resolve_precision,
    run,
    train_adapt,
    train_distill,
    train_rank,
)

pytestmark = [
    pytest.mark.usefixtures("one_torch_thread"),
    # 100 Sinkhorn iterations (the default) rarely reach tol=1e-3 on untrained
    # tiny models; the loss is still well defined, the warning is noise here.
    pytest.mark.filterwarnings("ignore::optical_ray.ot.SinkhornConvergenceWarning"),
]

METHODS = ["ot", "mse_token", "mse_sentence"]


def tiny_model(
    cfg: Config, tokenizer_dir: Path, *, dropout: float = 0.1, seed: int = 0
) -> RetrievalModel:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    enc = build_tiny_encoder(tok, TinyModelSpec(dropout=dropout), seed=seed)
    return RetrievalModel(enc, tok, cfg.model)


def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_weights(a: dict, b: dict, **tol) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], msg=k, **tol)


class Stop(Exception):
    """A simulated kill right after a checkpoint was reported."""


class StopAfter(LocalContext):
    def __init__(self, run_dir, stop_at: int) -> None:
        super().__init__(run_dir, keep=None)
        self.stop_at = stop_at

    def report(self, metrics, checkpoint_dir):
        super().report(metrics, checkpoint_dir)
        if checkpoint_dir is not None and metrics["global_step"] >= self.stop_at:
            raise Stop(checkpoint_dir)


# --------------------------------------------------------------------------- context


def test_shard_is_deterministic_disjoint_and_even():
    shards = [TrainContext(rank=r, world_size=3).shard(10, epoch=1, seed=7) for r in range(3)]
    assert [len(s) for s in shards] == [3, 3, 3]
    assert len({i for s in shards for i in s}) == 9
    assert shards[0] == TrainContext(rank=0, world_size=3).shard(10, epoch=1, seed=7)
    assert shards[0] != TrainContext(rank=0, world_size=3).shard(10, epoch=2, seed=7)
    assert sorted(TrainContext().shard(5, 0, 0)) == list(range(5))


def test_precision_resolution(tiny_config):
    cpu = torch.device("cpu")
    assert resolve_precision(tiny_config(), cpu) is None
    assert resolve_precision(tiny_config(**{"train.precision": "bf16"}), cpu) is torch.bfloat16
    with pytest.raises(ConfigError, match="fp16"):
        resolve_precision(tiny_config(**{"train.precision": "fp16"}), cpu)


def test_bf16_autocast_trains_on_cpu(tiny_config, tiny_world):
    cfg = tiny_config(
        **{"train.precision": "bf16", "distill.rank_batch_size": 4, "distill.weight": 0.5}
    )
    teacher = tiny_model(cfg, tiny_world.tokenizer_dir)
    student, hist = train_distill(
        None, teacher, bitext_pairs(cfg), cfg, rank_data=rank_collection(cfg)
    )
    assert all(math.isfinite(x) for x in hist.losses())
    assert all(p.dtype == torch.float32 for p in student.parameters())  # master weights stay fp32


# --------------------------------------------------------------------------- losses


@pytest.mark.parametrize("method", METHODS)
def test_distill_loss_is_finite_and_reaches_only_the_student(tiny_config, tiny_world, method):
    cfg = tiny_config(**{"distill.method": method, "distill.layers": [1, -1]})
    teacher = tiny_model(cfg, tiny_world.tokenizer_dir)
    student = teacher.copy()
    pairs = bitext_pairs(cfg)[:4]
    tb = teacher.tokenize([e for e, _ in pairs], "bitext")
    sb = student.tokenize([f for _, f in pairs], "bitext")
    t_states = teacher.layer_states(tb["input_ids"], tb["attention_mask"], cfg.distill.layers)
    s_states = student.encode(
        sb["input_ids"], sb["attention_mask"], layers=cfg.distill.layers
    ).layer_states
    assert t_states[0].requires_grad  # the loss itself must cut the teacher off
    loss = distill_loss(method, t_states, s_states, tb["attention_mask"], sb["attention_mask"], cfg)
    assert loss.dim() == 0 and math.isfinite(loss.item()) and loss.item() > 0
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    grads = [p.grad for p in student.encoder.parameters() if p.grad is not None]
    assert grads and any(float(g.abs().sum()) > 0 for g in grads)


def test_distill_stage_trains_student_and_freezes_teacher(tiny_config, tiny_world):
    cfg = tiny_config(**{"distill.steps": 2})
    teacher = tiny_model(cfg, tiny_world.tokenizer_dir)
    before = weights(teacher)
    student, hist = train_distill(None, teacher, bitext_pairs(cfg), cfg)
    assert_same_weights(weights(teacher), before, rtol=0, atol=0)
    changed = [k for k, v in weights(student).items() if not torch.equal(v, before[k])]
    assert changed and all(math.isfinite(x) for x in hist.losses("distill"))
    assert all(p.requires_grad for p in student.parameters())  # unfrozen after the stage
    assert [r["step"] for r in hist.steps] == [1, 2] and set(hist.steps[0]) >= {
        "ot",
        "lr",
        "examples_per_s",
    }


@pytest.mark.parametrize("lam", [0.3, 1.0])
def test_hybrid_loss_is_the_weighted_sum(tiny_config, tiny_world, lam):
    cfg = tiny_config(**{"distill.rank_batch_size": 4, "distill.weight": lam})
    teacher = tiny_model(cfg, tiny_world.tokenizer_dir)
    _, hist = train_distill(None, teacher, bitext_pairs(cfg), cfg, rank_data=rank_collection(cfg))
    for r in hist.steps:
        assert r["rank"] > 0 and r["ot"] > 0
        assert r["loss"] == pytest.approx(lam * r["ot"] + (1 - lam) * r["rank"], rel=1e-5)


def test_hybrid_without_rank_data_is_a_config_error(tiny_config, tiny_world):
    cfg = tiny_config(**{"distill.rank_batch_size": 4})
    with pytest.raises(ConfigError, match="rank_batch_size"):
        train_distill(None, tiny_model(cfg, tiny_world.tokenizer_dir), bitext_pairs(cfg), cfg)


def test_nan_distill_loss_raises_training_error(tiny_config, tiny_world, monkeypatch):
    cfg = tiny_config(**{"distill.rank_batch_size": 4, "distill.weight": 0.5})
    monkeypatch.setattr(
        losses, "ot_distillation_loss", lambda t, s, *a, **k: s[0].sum() * float("nan")
    )
    teacher = tiny_model(cfg, tiny_world.tokenizer_dir)
    with pytest.raises(
        TrainingError,
        match=r"distill loss became nan at step 1 \(ot=nan, rank=[0-9.]+\);"
        r" .*distill.epsilon",
    ):
        train_distill(None, teacher, bitext_pairs(cfg), cfg, rank_data=rank_collection(cfg))


def test_inf_rank_loss_raises_training_error(tiny_config, tiny_world, monkeypatch):
    cfg = tiny_config()
    monkeypatch.setattr(
        stages_mod, "rank_loss", lambda model, q, d, k, t: q.vectors.sum() * float("inf")
    )
    with pytest.raises(TrainingError, match=r"rank loss became (inf|nan) at step 1 .*rank.lr"):
        train_rank(tiny_model(cfg, tiny_world.tokenizer_dir), rank_collection(cfg), cfg)


# --------------------------------------------------------------------------- stages


def test_rank_loss_falls_and_schedule_warms_up_then_decays(tiny_config, tiny_world):
    cfg = tiny_config(
        **{"rank.steps": 12, "rank.batch_size": 16, "rank.lr": 2e-3, "train.warmup_ratio": 0.25}
    )
    hist = train_rank(tiny_model(cfg, tiny_world.tokenizer_dir), rank_collection(cfg), cfg)
    losses = hist.losses("rank")
    assert sum(losses[-3:]) / 3 < 0.6 * sum(losses[:3]) / 3
    lrs = hist.losses("rank", key="lr")
    peak = lrs.index(max(lrs))
    assert peak == 3 and max(lrs) == pytest.approx(2e-3)
    assert lrs[:peak] == sorted(lrs[:peak]) and lrs[peak:] == sorted(lrs[peak:], reverse=True)
    assert lrs[-1] == pytest.approx(max(lrs) / 9)  # linear decay: 1/9 of the way left


def test_adapt_trains_the_encoder_with_mlm(tiny_config, tiny_world):
    cfg = tiny_config(**{"adapt.steps": 8, "adapt.lr": 3e-3})
    model = tiny_model(cfg, tiny_world.tokenizer_dir)
    before = weights(model)
    texts = (tiny_world.root / "mono" / "xc.txt").read_text(encoding="utf-8").splitlines()
    hist = train_adapt(model, texts, cfg)
    losses = hist.losses("adapt")
    assert losses[0] == pytest.approx(math.log(len(model.tokenizer)), rel=0.15)  # uniform at init
    assert sum(losses[-3:]) < sum(losses[:3])
    assert not torch.equal(
        weights(model)["encoder.encoder.layer.0.output.dense.weight"],
        before["encoder.encoder.layer.0.output.dense.weight"],
    )
    assert set(weights(model)) == set(before)  # the MLM head is not part of the model


@pytest.mark.parametrize("method", ["mse_sentence", "ot"])
def test_grad_accum_half_batch_matches_full_batch(tiny_config, tiny_world, method):
    def train(batch: int, accum: int) -> tuple[dict, History]:
        cfg = tiny_config(
            **{
                "distill.method": method,
                "distill.batch_size": batch,
                "distill.steps": 3,
                "train.grad_accum": accum,
                "distill.sinkhorn_iters": 3000,
                "distill.sinkhorn_tol": 1e-6,
            }
        )
        teacher = tiny_model(cfg, tiny_world.tokenizer_dir, dropout=0.0)
        student, hist = train_distill(None, teacher, bitext_pairs(cfg), cfg)
        return weights(student), hist

    full, h_full = train(8, 1)
    half, h_half = train(4, 2)
    assert h_full.losses() == pytest.approx(h_half.losses(), rel=1e-4)
    assert_same_weights(full, half, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("hybrid", [False, True])
def test_distill_trainable_embeddings_trains_only_the_input_embeddings(
    tiny_config, tiny_world, hybrid
):
    over = {"distill.rank_batch_size": 4, "distill.weight": 0.5} if hybrid else {}
    cfg = tiny_config(**{"distill.steps": 2, "distill.trainable": "embeddings", **over})
    teacher = tiny_model(cfg, tiny_world.tokenizer_dir)
    before = weights(teacher)
    student, _ = train_distill(
        None, teacher, bitext_pairs(cfg), cfg, rank_data=rank_collection(cfg) if hybrid else None
    )
    changed = {k for k, v in weights(student).items() if not torch.equal(v, before[k])}
    assert "encoder.embeddings.word_embeddings.weight" in changed
    assert changed and all(k.startswith("encoder.embeddings.") for k in changed), changed
    assert all(p.requires_grad for p in student.parameters())  # unfrozen after the stage


def test_distill_none_trains_nothing(tiny_config, tiny_world):
    cfg = tiny_config(**{"distill.method": "none"})
    teacher = tiny_model(cfg, tiny_world.tokenizer_dir)
    student, hist = train_distill(None, teacher, bitext_pairs(cfg), cfg)
    assert hist.steps == [] and student is not teacher
    assert_same_weights(weights(student), weights(teacher), rtol=0, atol=0)


def test_distill_init_from_saved_model(tiny_config, tiny_world, tmp_path):
    cfg0 = tiny_config()
    other = tiny_model(cfg0, tiny_world.tokenizer_dir, seed=5)
    other.save(tmp_path / "init", cfg0)
    cfg = tiny_config(**{"distill.init": str(tmp_path / "init"), "distill.steps": 1})
    student = train_mod.init_student(tiny_model(cfg, tiny_world.tokenizer_dir), cfg)
    assert_same_weights(weights(student), weights(other), rtol=0, atol=0)
    with pytest.raises(ConfigError, match="distill.init"):
        train_mod.init_student(student, tiny_config(**{"distill.init": str(tmp_path / "missing")}))


# --------------------------------------------------------------------------- run, resume


def test_run_reports_evaluates_and_saves(tiny_config):
    cfg = tiny_config(
        **{
            "train.stages": ["rank", "distill"],
            "train.eval_every": 1,
            "distill.rank_batch_size": 4,
            "distill.weight": 0.5,
        }
    )
    hist = run(cfg)
    run_dir = Path(cfg.output_dir) / cfg.name
    lines = [json.loads(x) for x in (run_dir / "progress.jsonl").read_text().splitlines()]
    assert len(lines) == 4 and [x["stage"] for x in lines] == ["rank", "rank", "distill", "distill"]
    for line in lines:
        assert {"stage", "step", "global_step", "loss", "map", "en-xc/map", "en-en/map"} <= set(
            line
        )
        assert line["map"] == line["en-xc/map"]
    assert [x["global_step"] for x in lines] == [1, 2, 3, 4]
    assert lines[-1]["checkpoint"] and lines[0]["checkpoint"] is None  # stage ends only
    assert [e["stage"] for e in hist.evals] == ["rank", "rank", "distill", "distill"]
    assert Path(hist.model_dir) == run_dir / "model"
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["distill"]["weight"] == 0.5
    loaded = RetrievalModel.load(hist.model_dir)
    assert (
        json.loads((run_dir / "model" / "optical_ray.json").read_text())["config"]["pair"]
        == "en-xc"
    )
    assert loaded.depth == 2
    # Checkpoints: safetensors and JSON; the optimizer reads back with weights_only=True.
    ckpt = Path(lines[1]["checkpoint"])
    assert (ckpt / "model" / "model.safetensors").is_file() and (ckpt / "rng.safetensors").is_file()
    state = read_checkpoint_state(ckpt)
    assert state["stage"] == "rank" and state["stage_done"] and state["step"] == 2


def test_same_seed_same_history(tiny_config, tmp_path):
    def once(out: str, seed: int) -> History:
        return run(
            tiny_config(
                **{
                    "output_dir": str(tmp_path / out),
                    "train.stages": ["rank"],
                    "train.seed": seed,
                    "rank.steps": 3,
                    "eval.pairs": ["en-en"],
                }
            )
        )

    a, b, c = once("a", 0), once("b", 0), once("c", 1)
    assert a.losses() == b.losses() and a.evals[-1]["en-en/map"] == b.evals[-1]["en-en/map"]
    assert a.evals[-1]["map"] == a.evals[-1]["en-xc/map"]  # the distilled pair is always there
    assert a.losses() != c.losses()


def test_resume_equals_uninterrupted(tiny_config, tmp_path):
    over = {
        "train.stages": ["rank", "adapt", "distill"],
        "train.checkpoint_every": 2,
        "rank.steps": 4,
        "adapt.steps": 2,
        "distill.steps": 4,
        "distill.rank_batch_size": 4,
        "distill.weight": 0.7,
        "eval.pairs": ["en-xc"],
    }
    cfg_a = tiny_config(**over, output_dir=str(tmp_path / "a"))
    whole = run(cfg_a)
    full_weights = weights(RetrievalModel.load(whole.model_dir))

    cfg_b = tiny_config(**over, output_dir=str(tmp_path / "b"))
    run_dir = Path(cfg_b.output_dir) / cfg_b.name
    for stop_at in (2, 8):  # mid-rank, then mid-distill (rank 4 + adapt 2 + distill 2)
        with pytest.raises(Stop):
            run(cfg_b, StopAfter(run_dir, stop_at))
    resumed = run(cfg_b, LocalContext(run_dir))
    assert [r["global_step"] for r in resumed.steps] == list(range(1, 11))
    for key in ("loss", "lr"):
        assert resumed.losses(key=key) == pytest.approx(whole.losses(key=key), rel=1e-6)
    assert [e["map"] for e in resumed.evals] == pytest.approx(
        [e["map"] for e in whole.evals], abs=1e-6
    )
    assert_same_weights(
        weights(RetrievalModel.load(resumed.model_dir)), full_weights, rtol=1e-5, atol=1e-6
    )


def _rank_checkpointing_every_step(tiny_config) -> Config:
    """3 rank steps, a checkpoint after each."""
    return tiny_config(
        **{
            "train.stages": ["rank"],
            "train.checkpoint_every": 1,
            "rank.steps": 3,
            "eval.pairs": ["en-en"],
        }
    )


def test_kill_mid_checkpoint_leaves_previous_checkpoint(tiny_config, tmp_path, monkeypatch):
    cfg = _rank_checkpointing_every_step(tiny_config)
    run_dir = Path(cfg.output_dir) / cfg.name
    real_save = RetrievalModel.save
    calls = []

    def dying_save(self, path, config=None):
        calls.append(path)
        if len(calls) == 2:  # the second checkpoint dies half-written
            real_save(self, path, config)
            raise KeyboardInterrupt
        return real_save(self, path, config)

    monkeypatch.setattr(RetrievalModel, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        run(cfg, LocalContext(run_dir, keep=None))
    monkeypatch.setattr(RetrievalModel, "save", real_save)
    ctx = LocalContext(run_dir)
    half_written = [p for p in (run_dir / "checkpoints").iterdir() if p.name.startswith(".tmp-")]
    assert half_written
    latest = Path(ctx.latest_checkpoint())
    assert read_checkpoint_state(latest)["step"] == 1
    assert not any(p.exists() for p in half_written)  # cleaned up, never picked
    (run_dir / "checkpoints" / "ckpt-0-rank-0000009").mkdir()  # no state.json: ignored
    assert Path(ctx.latest_checkpoint()) == latest
    resumed = run(cfg, ctx)
    whole = run(
        tiny_config(
            **{
                "train.stages": ["rank"],
                "rank.steps": 3,
                "eval.pairs": ["en-en"],
                "output_dir": str(tmp_path / "whole"),
            }
        )
    )
    assert resumed.losses() == pytest.approx(whole.losses(), rel=1e-6)


def test_tune_trial_resumes_from_its_newest_complete_checkpoint(tiny_config, tmp_path, monkeypatch):
    """A Tune snapshot can name a checkpoint the trial has since rotated away (driver
    killed between ``num_to_keep`` deleting it and the next snapshot): the trial then
    resumes from the newest complete checkpoint of its own directory."""
    import shutil

    from ray import tune

    import optical_ray.distributed.trial as tune_trial

    cfg = _rank_checkpointing_every_step(tiny_config)
    run_dir = Path(cfg.output_dir) / cfg.name
    run(cfg, LocalContext(run_dir, keep=None))
    written = sorted(
        (p for p in (run_dir / "checkpoints").iterdir() if p.name.startswith("ckpt-")),
        key=lambda p: read_checkpoint_state(p)["step"],
    )
    trial_dir = tmp_path / "trial"
    for i, ckpt in enumerate(written):  # Tune's names: checkpoint_000000, ...
        shutil.copytree(ckpt, trial_dir / f"checkpoint_{i:06d}")
    steps = [read_checkpoint_state(trial_dir / f"checkpoint_{i:06d}")["step"] for i in range(3)]
    assert steps == [1, 2, 3]
    named = trial_dir / "checkpoint_000000"
    shutil.rmtree(named)  # rotated away after the snapshot that names it
    model_file = next((trial_dir / "checkpoint_000002" / "model").iterdir())
    model_file.write_bytes(model_file.read_bytes()[:10])  # the newest cut off mid-upload
    monkeypatch.setattr(tune_trial.tune, "get_checkpoint", lambda: tune.Checkpoint(path=str(named)))
    ctx = tune_trial.TuneContext(cfg)
    restored = Path(ctx.latest_checkpoint())
    assert read_checkpoint_state(restored)["step"] == 2
    assert ctx.latest_checkpoint() == str(restored)  # copied once
    shutil.rmtree(trial_dir)
    with pytest.raises(TrainingError, match="no other complete checkpoint"):
        tune_trial.TuneContext(cfg).latest_checkpoint()


# --------------------------------------------------------------------------- the learning claim


@pytest.mark.slow
def test_teacher_learns_and_ot_distillation_closes_the_gap(tiny_config, tiny_world, capsys):
    """English teacher >> random on en-en; zero-shot en-xc (hard, low-resource) clearly
    worse; distilling on en-xc bitext shrinks the gap, OT at least as well as MSE."""
    over = {
        "pair": "en-xc",
        "eval.pairs": ["en-en", "en-xc"],
        "eval.metrics": ["map"],
        "rank.steps": 40,
        "rank.batch_size": 32,
        "rank.lr": 2e-3,
        "train.warmup_ratio": 0.1,
        "distill.steps": 100,
        "distill.batch_size": 32,
        "distill.lr": 2e-3,
        "train.stages": ["rank", "distill"],
    }
    start = time.perf_counter()
    cfg = tiny_config(**over)
    hist = run(cfg)
    rank_eval, ot_eval = hist.evals[0], hist.evals[-1]
    teacher_dir = [
        p
        for p in (Path(cfg.output_dir) / cfg.name / "checkpoints").iterdir()
        if p.name.startswith("ckpt-0-rank")
    ][0] / "model"
    figures = {
        "en-en (teacher)": rank_eval["en-en/map"],
        "en-xc zero-shot": rank_eval["en-xc/map"],
        "en-xc ot": ot_eval["en-xc/map"],
    }
    for method in ("mse_token", "mse_sentence"):
        mcfg = tiny_config(**{**over, "distill.method": method})
        teacher = RetrievalModel.load(teacher_dir)
        student, _ = train_distill(None, teacher, bitext_pairs(mcfg), mcfg)
        figures[f"en-xc {method}"] = train_mod.evaluate_dev(student, mcfg)["en-xc/map"]
    with capsys.disabled():
        print(
            "\nlearning claim (MAP, tiny world):",
            json.dumps({k: round(v, 3) for k, v in figures.items()}),
            f"{time.perf_counter() - start:.1f}s",
        )
    losses = hist.losses("rank")
    assert sum(losses[-5:]) < 0.5 * sum(losses[:5])
    assert figures["en-en (teacher)"] > 0.7  # random ranking: MAP ~0.04 on 120 documents
    assert figures["en-xc zero-shot"] < figures["en-en (teacher)"] - 0.3
    gap_before = figures["en-en (teacher)"] - figures["en-xc zero-shot"]
    assert figures["en-en (teacher)"] - figures["en-xc ot"] < gap_before - 0.05
    assert (
        figures["en-xc ot"] >= max(figures["en-xc mse_token"], figures["en-xc mse_sentence"]) - 0.02
    )


# --------------------------------------------------------------------------- regularisation


def test_filter_bitext_drops_long_pairs_and_extreme_ratios(tiny_config, tiny_world):
    from optical_ray.training.batches import filter_bitext

    cfg = tiny_config(**{"model.max_bitext_length": 12})
    model = tiny_model(cfg, tiny_world.tokenizer_dir)
    pairs = bitext_pairs(cfg)[:64]
    n_tok = lambda s: len(model.tokenizer(s, add_special_tokens=True)["input_ids"])  # noqa: E731
    long = [(e, f) for e, f in pairs if n_tok(e) > 12 or n_tok(f) > 12]
    assert long and len(long) < len(pairs)  # the data exercise both branches
    kept, counts = filter_bitext(pairs, model, model, cfg)
    assert kept == pairs and counts["too_long"] == 0  # truncate: nothing dropped

    drop = tiny_config(**{"model.max_bitext_length": 12, "distill.long_pairs": "drop"})
    kept, counts = filter_bitext(pairs, model, model, drop)
    assert counts["too_long"] == len(long) and len(kept) == len(pairs) - len(long)
    assert all(n_tok(e) <= 12 and n_tok(f) <= 12 for e, f in kept)

    skewed = pairs[:8] + [
        (pairs[0][0] + " " + pairs[1][0] + " " + pairs[2][0], pairs[0][1].split()[0])
    ]
    ratio = tiny_config(**{"distill.max_length_ratio": 2.5})
    kept, counts = filter_bitext(skewed, model, model, ratio)
    assert skewed[-1] not in kept and counts["bad_ratio"] >= 1


def test_everything_filtered_is_a_data_error(tiny_config, tiny_world):
    from optical_ray.errors import DataError

    cfg = tiny_config(**{"model.max_bitext_length": 4, "distill.long_pairs": "drop"})
    with pytest.raises(DataError, match="filtered out"):
        train_distill(None, tiny_model(cfg, tiny_world.tokenizer_dir), bitext_pairs(cfg), cfg)


def test_english_rows_hit_the_fraction_exactly():
    from optical_ray.training.batches import english_rows

    rows = [english_rows(b, 8, 0.3) for b in range(10)]
    assert sum(rows) == 24 and set(rows) <= {2, 3}  # 0.3 * 8 * 10, spread evenly
    assert [english_rows(b, 8, 0.0) for b in range(3)] == [0, 0, 0]
    assert [english_rows(b, 8, 1.0) for b in range(3)] == [8, 8, 8]


@pytest.mark.parametrize("method", ["mse_sentence", "ot"])
def test_english_retention_shows_the_student_english(tiny_config, tiny_world, method):
    # Without dropout the student (a copy of the teacher) reading the teacher's own
    # English input has the teacher's states: the sentence loss is 0 and the OT loss is
    # its entropic floor, well below the loss on the foreign side.
    def first_loss(fraction: float) -> float:
        cfg = tiny_config(
            **{"distill.method": method, "distill.steps": 1, "distill.english_fraction": fraction}
        )
        teacher = tiny_model(cfg, tiny_world.tokenizer_dir, dropout=0.0)
        _, hist = train_distill(None, teacher, bitext_pairs(cfg), cfg)
        return hist.losses()[0]

    english, foreign = first_loss(1.0), first_loss(0.0)
    if method == "mse_sentence":
        assert english == pytest.approx(0.0, abs=1e-10) and foreign > 1e-4
    else:
        assert english < 0.5 * foreign


def test_l2sp_penalises_distance_to_the_teacher(tiny_config, tiny_world):
    def drift(l2sp: float) -> tuple[float, History]:
        cfg = tiny_config(**{"distill.steps": 4, "distill.l2sp": l2sp, "distill.lr": 3e-3})
        teacher = tiny_model(cfg, tiny_world.tokenizer_dir)
        student, hist = train_distill(None, teacher, bitext_pairs(cfg), cfg)
        t = dict(teacher.named_parameters())
        return sum(
            float((p - t[n]).detach().pow(2).sum()) for n, p in student.named_parameters()
        ), hist

    free, free_hist = drift(0.0)
    held, held_hist = drift(10.0)
    assert "l2sp" not in free_hist.steps[0]
    assert held_hist.losses(key="l2sp")[0] == 0.0  # the student starts as the teacher
    assert held_hist.losses(key="l2sp")[-1] > 0
    assert held < 0.5 * free


@pytest.mark.parametrize("late", [False, True])
def test_pair_contrastive_loss_rewards_each_row_finding_its_own_pair(tiny_config, tiny_world, late):
    from optical_ray.training.losses import pair_contrastive_loss
    from optical_ray.models.encoder import Encoded

    model = tiny_model(tiny_config(), tiny_world.tokenizer_dir)
    torch.manual_seed(0)
    if late:
        base = torch.nn.functional.normalize(torch.randn(6, 5, 8), dim=-1)
        mask = torch.ones(6, 5, dtype=torch.bool)
    else:
        base = torch.nn.functional.normalize(torch.randn(6, 8), dim=-1)
        mask = torch.ones(6, 1, dtype=torch.bool)
    student = base.clone().requires_grad_(True)
    teacher = Encoded(base.clone(), mask)
    aligned = pair_contrastive_loss(model, Encoded(student, mask), teacher, 0.05)
    shuffled = pair_contrastive_loss(
        model, Encoded(student[[1, 2, 3, 4, 5, 0]], mask), teacher, 0.05
    )
    assert aligned.item() < 0.1 < shuffled.item()
    shuffled.backward()
    assert student.grad is not None and float(student.grad.abs().sum()) > 0


def test_contrastive_term_reaches_the_layers_above_the_aligned_ones(tiny_config, tiny_world):
    # Aligning layer 1 only, nothing above it gets a distillation gradient (frozen);
    # the contrastive term scores the ranking vectors, so it trains the top layers too.
    def top_drift(contrastive: float) -> tuple[float, History]:
        cfg = tiny_config(
            **{
                "distill.steps": 3,
                "distill.layers": [1],
                "distill.lr": 3e-3,
                "distill.contrastive": contrastive,
            }
        )
        teacher = tiny_model(cfg, tiny_world.tokenizer_dir)
        student, hist = train_distill(None, teacher, bitext_pairs(cfg), cfg)
        t = dict(teacher.named_parameters())
        top = [n for n, _ in student.named_parameters() if "layer.1." in n or "projection" in n]
        assert top
        params = dict(student.named_parameters())
        return sum(float((params[n] - t[n]).detach().abs().sum()) for n in top), hist

    off, off_hist = top_drift(0.0)
    on, on_hist = top_drift(1.0)
    assert off == 0.0 and on > 0
    assert "contrastive" not in off_hist.steps[0]
    assert on_hist.losses(key="contrastive")[0] > 0
    assert on_hist.losses()[0] > off_hist.losses()[0]  # the total carries the term


def test_contrastive_method_trains_on_the_term_alone(tiny_config, tiny_world):
    cfg = tiny_config(
        **{
            "distill.method": "contrastive",
            "distill.contrastive": 1.0,
            "distill.steps": 2,
            "distill.lr": 3e-3,
        }
    )
    teacher = tiny_model(cfg, tiny_world.tokenizer_dir)
    student, hist = train_distill(None, teacher, bitext_pairs(cfg), cfg)
    assert hist.losses() == pytest.approx(hist.losses(key="contrastive"))
    assert hist.losses()[0] > 0
    t = dict(teacher.named_parameters())
    assert any(float((p - t[n]).detach().abs().sum()) > 0 for n, p in student.named_parameters())


def _scripted_eval(values: list[float], snapshots: list[dict]):
    """An eval_fn returning ``values`` in turn as dev MAP and recording the weights."""
    calls = iter(values)

    def eval_fn(model):
        snapshots.append(weights(model))
        v = next(calls)
        return {"map": v, "en-xc/map": v}

    return eval_fn


def test_keep_best_ends_with_the_best_dev_weights(tiny_config, tiny_world):
    cfg = tiny_config(**{"distill.steps": 4, "train.eval_every": 1, "train.keep_best": True})
    snaps: list[dict] = []
    # evaluations at steps 0..4: the best is step 2
    eval_fn = _scripted_eval([0.3, 0.4, 0.6, 0.5, 0.2], snaps)
    student, hist = train_distill(
        None, tiny_model(cfg, tiny_world.tokenizer_dir), bitext_pairs(cfg), cfg, eval_fn=eval_fn
    )
    assert [e["step"] for e in hist.evals] == [0, 1, 2, 3, 4]
    assert hist.selections[-1]["kept_step"] == 2 and not hist.selections[-1]["stopped_early"]
    assert_same_weights(weights(student), snaps[2])
    with pytest.raises(AssertionError):
        assert_same_weights(weights(student), snaps[4])


def test_keep_best_falls_back_to_the_starting_model(tiny_config, tiny_world):
    cfg = tiny_config(**{"distill.steps": 3, "train.eval_every": 1, "train.keep_best": True})
    snaps: list[dict] = []
    student, hist = train_distill(
        None,
        tiny_model(cfg, tiny_world.tokenizer_dir),
        bitext_pairs(cfg),
        cfg,
        eval_fn=_scripted_eval([0.5, 0.4, 0.3, 0.2], snaps),
    )
    assert hist.selections[-1]["kept_step"] == 0
    assert_same_weights(weights(student), snaps[0])  # distillation only hurt: the teacher


def test_patience_stops_the_stage_early(tiny_config, tiny_world):
    cfg = tiny_config(**{"distill.steps": 8, "train.eval_every": 1, "train.patience": 2})
    snaps: list[dict] = []
    student, hist = train_distill(
        None,
        tiny_model(cfg, tiny_world.tokenizer_dir),
        bitext_pairs(cfg),
        cfg,
        eval_fn=_scripted_eval([0.5, 0.6, 0.55, 0.5, 0.9, 0.9], snaps),
    )
    assert len(hist.steps) == 3  # best at step 1, no better at 2 and 3: stop
    sel = hist.selections[-1]
    assert sel["stopped_early"] and sel["best_step"] == 1 and sel["kept_step"] == 3
    assert_same_weights(weights(student), snaps[3])  # patience alone keeps the last weights


def test_keep_best_and_patience_need_dev_evaluations(tiny_config, tiny_world):
    cfg = tiny_config(**{"train.keep_best": True})
    with pytest.raises(ConfigError, match="eval_fn"):
        train_distill(None, tiny_model(cfg, tiny_world.tokenizer_dir), bitext_pairs(cfg), cfg)
    with pytest.raises(ConfigError, match="train.eval_every"):
        tiny_config(**{"train.patience": 2})
    with pytest.raises(ConfigError, match="train.select_metric"):
        tiny_config(**{"train.keep_best": True, "train.select_metric": "ndcg@10"})
    with pytest.raises(ConfigError, match="max_length_ratio"):
        tiny_config(**{"distill.max_length_ratio": 0.5})


def test_keep_best_resume_equals_uninterrupted(tiny_config, tmp_path):
    over = {
        "train.stages": ["distill"],
        "train.checkpoint_every": 2,
        "train.eval_every": 1,
        "train.keep_best": True,
        "distill.steps": 5,
        "eval.pairs": ["en-xc"],
    }
    whole = run(tiny_config(**over, output_dir=str(tmp_path / "a")))
    cfg_b = tiny_config(**over, output_dir=str(tmp_path / "b"))
    run_dir = Path(cfg_b.output_dir) / cfg_b.name
    with pytest.raises(Stop):
        run(cfg_b, StopAfter(run_dir, 2))
    resumed = run(cfg_b, LocalContext(run_dir))
    assert resumed.selections == whole.selections
    assert_same_weights(
        weights(RetrievalModel.load(resumed.model_dir)),
        weights(RetrievalModel.load(whole.model_dir)),
        rtol=1e-5,
        atol=1e-6,
    )


def test_sinkhorn_non_convergence_is_reported_once_per_stage(tiny_config, tiny_world, capsys):
    import warnings as _warnings

    from optical_ray.ot import SinkhornConvergenceWarning

    cfg = tiny_config(
        **{
            "distill.method": "ot",
            "distill.steps": 3,
            "distill.epsilon": 0.001,
            "distill.sinkhorn_iters": 1,
            "distill.sinkhorn_tol": 1e-9,
        }
    )
    teacher = tiny_model(cfg, tiny_world.tokenizer_dir)
    with _warnings.catch_warnings(record=True) as caught:
        _warnings.simplefilter("always")
        train_distill(None, teacher, bitext_pairs(cfg), cfg)
    assert not [w for w in caught if issubclass(w.category, SinkhornConvergenceWarning)]
    out = capsys.readouterr().out
    assert out.count("did not converge") == 1
    assert (
        "Sinkhorn stopped at distill.sinkhorn_iters=1 before distill.sinkhorn_tol=1e-09 "
        "in 3 of 3 steps" in out
    )


def test_fp16_overflow_is_one_line_naming_the_precision(tiny_config, tiny_world, monkeypatch):
    """fp16 autocast (forced on CPU here: it needs a GPU otherwise) with hidden states
    beyond fp16's range: one TrainingError naming fp16's range and what to use instead."""
    import optical_ray.training.loop as loop

    monkeypatch.setattr(loop, "resolve_precision", lambda cfg, device: torch.float16)
    cfg = tiny_config(**{"train.precision": "fp16"})
    teacher = tiny_model(cfg, tiny_world.tokenizer_dir)
    student = teacher.copy()
    with torch.no_grad():  # embeddings far beyond 65504 once summed and projected
        for p in student.parameters():
            p.mul_(1e5)
    with pytest.raises(TrainingError, match=r"fp16's range \(65504\).*bf16") as info:
        train_distill(student, teacher, bitext_pairs(cfg), cfg)
    assert "\n" not in str(info.value)
