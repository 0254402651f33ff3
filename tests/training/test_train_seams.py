"""The seams of the training split: the reporting rule (fill_metric), the one
checkpoint-state builder, the distill loss mix, progress rows after a resume, the run
directory under --storage, distill.layers against the model's depth, and a model
builder that never generates data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from optical_ray.training.checkpoint import read_checkpoint_state, save_checkpoint
from optical_ray.cli.parser import main
from optical_ray.config import from_flat
from optical_ray.training.context import (
    PROGRESS_FILE,
    UNSCORED,
    History,
    LocalContext,
    fill_metric,
    read_progress,
)
from optical_ray.errors import ConfigError
from optical_ray.training.loop import Stage, checkpoint_state, finish_without_training
from optical_ray.training.losses import mix_distill_losses, token_mse_loss
from optical_ray.models.encoder import RetrievalModel, check_distill_layers, model_depth
from optical_ray.training.recipe import local_run_dir, run

pytestmark = [
    pytest.mark.usefixtures("one_torch_thread"),
    pytest.mark.filterwarnings("ignore::optical_ray.ot.SinkhornConvergenceWarning"),
]


# --------------------------------------------------------------------------- fill_metric


@pytest.mark.parametrize("mode, worst", [("max", -UNSCORED), ("min", UNSCORED)])
def test_fill_metric_current_then_last_then_worst_finite(mode, worst):
    first = fill_metric({"loss": 1.0}, {}, "map", mode)
    assert first == {"loss": 1.0, "map": worst, "score": worst}
    now = fill_metric({"loss": 0.9, "map": 0.4}, {"map": 0.3}, "map", mode)
    assert now["map"] == 0.4 and now["score"] == 0.4
    later = fill_metric({"loss": 0.8}, {"map": 0.4, "loss": 0.9}, "map", mode)
    assert later == {"loss": 0.8, "map": 0.4, "score": 0.4}
    # a non-finite metric never becomes the score: Ray saves it as JSON
    bad = fill_metric({"map": float("nan")}, {}, "map", mode)
    assert bad["score"] == worst
    assert fill_metric({}, {"map": float("-inf")}, "map", mode)["map"] == worst
    for out in (first, now, later):
        json.dumps(out, allow_nan=False)


def test_fill_metric_leaves_its_arguments_alone():
    metrics, last = {"loss": 1.0}, {"map": 0.2}
    fill_metric(metrics, last, "map", "max")
    assert metrics == {"loss": 1.0} and last == {"map": 0.2}
    with pytest.raises(ValueError, match="mode"):
        fill_metric({}, {}, "map", "up")


# --------------------------------------------------------------------------- losses


def _distill_cfg(**over):
    return from_flat(
        {"distill.weight": 0.25, "distill.contrastive": 2.0, "distill.l2sp": 0.5, **over}
    ).distill


def test_mix_distill_losses_bitext_only_and_hybrid():
    d = _distill_cfg()
    l_d, l_con, pen, l_rank = (torch.tensor(v) for v in (1.0, 3.0, 4.0, 10.0))
    total, parts = mix_distill_losses(l_d, d, contrastive=l_con, l2sp=pen)
    assert float(total) == pytest.approx(1.0 + 2.0 * 3.0 + 0.5 * 4.0)
    assert list(parts) == ["ot", "contrastive", "l2sp"]
    assert float(parts["ot"]) == 1.0 and float(parts["l2sp"]) == 2.0
    total, parts = mix_distill_losses(l_d, d, contrastive=l_con, l2sp=pen, rank=l_rank)
    assert float(total) == pytest.approx(0.25 * (1.0 + 6.0) + 0.75 * 10.0 + 2.0)
    assert list(parts) == ["ot", "contrastive", "l2sp", "rank"]
    total, parts = mix_distill_losses(l_d, d)
    assert float(total) == 1.0 and list(parts) == ["ot"]


def test_mix_distill_losses_contrastive_method_names_its_term():
    d = _distill_cfg(**{"distill.method": "contrastive"})
    total, parts = mix_distill_losses(torch.tensor(0.0), d, contrastive=torch.tensor(3.0))
    assert (
        float(total) == 6.0
        and list(parts) == ["contrastive"]
        and float(parts["contrastive"]) == 3.0
    )


def test_mix_distill_losses_carries_gradients_to_every_term():
    d = _distill_cfg()
    terms = [torch.tensor(v, requires_grad=True) for v in (1.0, 3.0, 4.0, 10.0)]
    total, _ = mix_distill_losses(terms[0], d, contrastive=terms[1], l2sp=terms[2], rank=terms[3])
    total.backward()
    assert [float(t.grad) for t in terms] == pytest.approx([0.25, 0.5, 0.5, 0.75])


def test_mse_baselines_check_their_layer_weights_like_the_ot_loss():
    states = [torch.randn(2, 3, 4)]
    mask = torch.ones(2, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match="one per layer"):
        token_mse_loss(states, states, mask, mask, layer_weights=[1.0, 1.0])
    with pytest.raises(ValueError, match="not all zero"):
        token_mse_loss(states, states, mask, mask, layer_weights=[0.0])


# --------------------------------------------------------------------------- checkpoints


def _stage(model: RetrievalModel, name: str = "distill", index: int = 1) -> Stage:
    return Stage(
        name,
        index,
        model,
        model,
        lr=1e-3,
        steps=1,
        epochs=1.0,
        batches=None,
        examples_per_batch=1,
        loss=lambda *a: None,
    )


def test_checkpoint_state_round_trips_through_save(tiny_config, tmp_path):
    cfg = tiny_config()
    model = RetrievalModel.from_config(cfg)
    history = History(steps=[{"stage": "rank", "step": 1, "global_step": 1, "loss": 1.0}])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    state = checkpoint_state(
        _stage(model),
        history,
        step=3,
        total_steps=5,
        done=False,
        epoch=1,
        position=2,
        scheduler=sched,
    )
    path = save_checkpoint(
        tmp_path / "ckpts",
        "ckpt-1-distill-0000003",
        state=state,
        model=model,
        cfg=cfg,
        optimizer=opt,
    )
    back = read_checkpoint_state(path)
    for key, value in state.items():
        assert back[key] == json.loads(json.dumps(value)), key
    # what resume reads: where the run stands, the history, the scheduler, the RNG, config
    assert (back["stage"], back["stage_index"], back["step"], back["stage_done"]) == (
        "distill",
        1,
        3,
        False,
    )
    assert back["global_step"] == 1 and History.from_dict(back["history"]) == history
    assert back["selection"] is None and back["scaler"] is None and "rng" in back
    assert back["config"]["pair"] == cfg.pair


def test_a_run_resumes_past_a_stage_that_trained_nothing(tiny_config):
    """distill.method none checkpoints through the same builder; a rerun of the run
    directory finds that stage done and trains nothing again."""
    cfg = tiny_config(
        **{"train.stages": ["rank", "distill"], "distill.method": "none", "eval.pairs": ["en-xc"]}
    )
    first = run(cfg)
    again = run(cfg)
    assert len(again.steps) == len(first.steps) == cfg.rank.steps
    assert again.resumes and again.resumes[-1]["stage"] == "distill"
    ckpt = Path(read_progress(local_run_dir(cfg))[-1]["checkpoint"])
    state = read_checkpoint_state(ckpt)
    assert state["stage_done"] and state["step"] == 0 and state["selection"] is None


def test_finish_without_training_reports_step_zero(tiny_config, tmp_path):
    cfg = tiny_config()
    model = RetrievalModel.from_config(cfg)
    ctx = LocalContext(tmp_path / "run")
    finish_without_training(_stage(model), cfg, ctx, History(), lambda m: {"map": 0.5})
    (row,) = read_progress(tmp_path / "run")
    assert (row["stage"], row["step"], row["map"]) == ("distill", 0, 0.5)
    assert read_checkpoint_state(row["checkpoint"])["total_steps"] == 0


# --------------------------------------------------------------------------- progress rows


class _KillAfter(LocalContext):
    """Dies right after the report of ``(stage, step)``."""

    def __init__(self, run_dir, stage: str, step: int) -> None:
        super().__init__(run_dir, keep=None)
        self.at = (stage, step)

    def report(self, metrics, checkpoint_dir):
        super().report(metrics, checkpoint_dir)
        if (metrics["stage"], metrics["step"]) == self.at:
            raise KeyboardInterrupt


def test_progress_rows_after_a_resume_are_one_per_step(tiny_config):
    cfg = tiny_config(
        **{
            "train.stages": ["rank"],
            "rank.steps": 4,
            "train.eval_every": 1,
            "train.checkpoint_every": 2,
            "eval.pairs": ["en-xc"],
        }
    )
    run_dir = local_run_dir(cfg)
    with pytest.raises(KeyboardInterrupt):  # after step 3's evaluation, before a checkpoint
        run(cfg, _KillAfter(run_dir, "rank", 3))
    run(cfg, LocalContext(run_dir))
    raw = [json.loads(x) for x in (run_dir / PROGRESS_FILE).read_text().splitlines()]
    assert [r["step"] for r in raw] == [1, 2, 3, 3, 4]  # step 3 ran twice
    rows = read_progress(run_dir)
    assert [(r["stage"], r["step"]) for r in rows] == [("rank", s) for s in (1, 2, 3, 4)]
    assert rows[2]["time"] == raw[3]["time"]  # the resumed run's row wins
    # a kill mid-write: the torn line is skipped, the next row is not glued to it
    (run_dir / PROGRESS_FILE).write_text((run_dir / PROGRESS_FILE).read_text() + '{"torn')
    LocalContext(run_dir).report({"stage": "rank", "step": 5, "loss": 0.0}, None)
    assert [r["step"] for r in read_progress(run_dir)] == [1, 2, 3, 4, 5]


# --------------------------------------------------------------------------- storage


def test_local_run_dir_follows_a_local_storage(tiny_config, tmp_path):
    cfg = tiny_config()
    assert local_run_dir(cfg) == Path(cfg.output_dir) / cfg.name
    store = tmp_path / "store"
    assert local_run_dir(tiny_config(**{"storage.uri": str(store)})) == store / cfg.name
    assert local_run_dir(tiny_config(**{"storage.uri": f"file://{store}"})) == store / cfg.name


def test_train_storage_dir_holds_the_local_run(tiny_world, tmp_path, capsys):
    store = tmp_path / "store"
    code = main(
        [
            "train",
            "--storage",
            str(store),
            "--name",
            "stored",
            f"data.root={tiny_world.root}",
            f"output_dir={tmp_path / 'runs'}",
            "pair=en-xc",
            "train.stages=[rank]",
            "rank.steps=1",
            "rank.batch_size=8",
            "eval.pairs=[en-xc]",
            "eval.metrics=[map]",
        ]
    )
    assert code == 0
    assert (store / "stored" / "model" / "optical_ray.json").is_file()
    assert read_progress(store / "stored")
    assert not (tmp_path / "runs" / "stored").exists()
    assert f"model in {store / 'stored' / 'model'}" in capsys.readouterr().out


# --------------------------------------------------------------------------- layers, depth


def test_model_depth(tiny_config, tmp_path):
    cfg = tiny_config(**{"model.tiny.num_layers": 3})
    assert model_depth(cfg) == 3
    RetrievalModel.from_config(tiny_config()).save(tmp_path / "teacher", tiny_config())
    assert model_depth(tiny_config(**{"train.teacher": str(tmp_path / "teacher")})) == 2
    assert model_depth(tiny_config(**{"model.name_or_path": str(tmp_path / "teacher")})) == 2
    assert model_depth(tiny_config(**{"model.name_or_path": "org/hub-model"})) == 2  # fallback


def test_layers_beyond_the_model_fail_before_any_stage(tiny_config):
    cfg = tiny_config(**{"distill.layers": [7, -1]})
    with pytest.raises(ConfigError) as info:
        run(cfg)
    msg = str(info.value)
    assert "distill.layers" in msg and "7" in msg and "-3" in msg and "\n" not in msg
    assert not local_run_dir(cfg).exists()  # the rank stage never started
    check_distill_layers(tiny_config(**{"distill.layers": [0, 2, -3]}))  # the whole range is fine
    check_distill_layers(
        tiny_config(**{"model.name_or_path": "org/hub-model", "distill.layers": [30]})
    )  # depth unknown: not checked


def test_config_command_rejects_layers_beyond_the_model(capsys):
    assert main(["config", "distill.layers=[7]"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "distill.layers" in err and "0 (embeddings) .. 2" in err


def test_keep_best_without_a_distill_stage_is_a_config_error(tiny_config):
    with pytest.raises(ConfigError, match="train.keep_best/train.patience"):
        tiny_config(**{"train.stages": ["rank"], "train.keep_best": True})


# --------------------------------------------------------------------------- model builder


def test_building_a_tiny_model_generates_no_data(tmp_path):
    cfg = from_flat({"output_dir": str(tmp_path / "out"), "data.synthetic_scale": "tiny"})
    with pytest.raises(ConfigError, match="model.tokenizer"):
        RetrievalModel.from_config(cfg)
    assert not (tmp_path / "out").exists()


def test_distill_reports_sinkhorn_convergence(tiny_config):
    """Every report of an OT distill stage carries the fraction of its steps whose plan
    stopped before distill.sinkhorn_tol and the worst marginal error (the catalog keeps
    both); a budget that suffices reports 0."""
    from optical_ray.training.recipe import local_run_dir, run

    def last_row(**over):
        cfg = tiny_config(
            **{"train.stages": ["distill"], "distill.steps": 3, "distill.method": "ot", **over}
        )
        history = run(cfg)
        assert all("sinkhorn_unconverged" in s for s in history.steps)
        return read_progress(local_run_dir(cfg))[-1]

    starved = last_row(**{"distill.epsilon": 1e-3, "distill.sinkhorn_iters": 3, "name": "starved"})
    assert starved["sinkhorn_unconverged"] == 1.0
    assert starved["sinkhorn_max_error"] > 1e-3
    ample = last_row(**{"distill.epsilon": 0.5, "distill.sinkhorn_iters": 2000, "name": "ample"})
    assert ample["sinkhorn_unconverged"] == 0.0 and ample["sinkhorn_max_error"] == 0.0
