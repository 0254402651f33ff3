"""Sweeps: Ray Tune + Optuna + ASHA per pair, catalog records, failures, resume."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow

ray = pytest.importorskip("ray")


def test_sweep_records_every_trial_and_best_answers(
    cluster, sweep_root, sweep_space, sweep_base
) -> None:
    SPACE = sweep_space(
        **{"distill.layers": {"type": "layers", "strategies": ["last", "one"], "max_k": 2}}
    )
    from optical_ray.catalog import Catalog, best_config, best_yaml
    from optical_ray.config import from_dict, to_flat
    from optical_ray.report.sections import best_vs_runner_up
    from optical_ray.evaluation.perquery import decode_per_query
    from optical_ray.sweeps.space import parse_space
    from optical_ray.distributed import run_sweep

    storage = str(sweep_root / "store-a")
    result = run_sweep(
        sweep_base(storage),
        parse_space(SPACE),
        pairs=["en-xc", "xc-en"],
        samples=3,
        name="t",
        verbose=0,
    )
    assert result.exit_code == 0
    for pair in ("en-xc", "xc-en"):
        r = result.pairs[pair]
        assert r.trials == 3 and not r.failed
        assert r.best_metrics["map"] > 0
        assert r.baseline_metrics and "map" in r.baseline_metrics
        assert r.best_checkpoint and Path(r.best_checkpoint, "model").is_dir()
    records = Catalog(storage).records()
    assert len(records) == 6
    assert set(records["pair"]) == {"en-xc", "xc-en"}
    assert set(records["status"]) <= {"finished", "stopped"}
    # Each record's config is the config the trial ran: the one saved beside its
    # checkpoint (name, checkpoint_every and the sampled values included).
    for _, row in records.iterrows():
        state = json.loads((Path(row["checkpoint_uri"]) / "state.json").read_text())
        ran = to_flat(from_dict(state["config"]))
        assert json.loads(row["config"]) == json.loads(json.dumps(ran, default=str))
        assert ran["name"] == f"t-{row['pair']}-{row['trial_id']}"
        assert ran["train.checkpoint_every"] == ran["train.eval_every"] == 2
        # Sinkhorn convergence of the trial's distill steps is in the catalog too.
        last = json.loads(row["last_metrics"])
        assert 0.0 <= last["sinkhorn_unconverged"] <= 1.0 and "sinkhorn_max_error" in last
        # The best dev evaluation's per-query values, kept compactly in the record.
        pair, per_query = decode_per_query(row["dev_per_query"])
        assert pair == row["pair"] and per_query
        mean = sum(v["map"] for v in per_query.values()) / len(per_query)
        assert mean == pytest.approx(json.loads(row["best_metrics"])["map"], abs=1e-5)
    assert {r["pair"] for r in best_vs_runner_up(records)} == {"en-xc", "xc-en"}
    # The two pairs ran at the same time (one experiment each, one shared budget of 2).
    spans = {
        p: [(r.started_at, r.finished_at) for r in records[records["pair"] == p].itertuples()]
        for p in ("en-xc", "xc-en")
    }
    assert any(a0 < b1 and b0 < a1 for a0, a1 in spans["en-xc"] for b0, b1 in spans["xc-en"])
    best = best_config("en-xc", storage=storage)[0]
    assert best.value == pytest.approx(result.pairs["en-xc"].best_metrics["map"])
    cfg = from_dict(yaml.safe_load(best_yaml(best)))
    assert cfg.pair == "en-xc" and 0.01 <= cfg.distill.epsilon <= 1.0
    assert "best config per pair" in result.summary()


def test_failed_trials_are_recorded_and_the_sweep_exits_non_zero(
    cluster, sweep_root, sweep_space, sweep_base
) -> None:
    SPACE = sweep_space(
        **{"distill.layers": {"type": "layers", "strategies": ["last", "one"], "max_k": 2}}
    )
    from optical_ray.catalog import Catalog
    from optical_ray.sweeps.space import parse_space
    from optical_ray.distributed import run_sweep

    # Every bitext pair is longer than 4 tokens and dropped: each trial fails at run time.
    space = {
        **SPACE,
        "base": {**SPACE["base"], "model.max_bitext_length": 4, "distill.long_pairs": "drop"},
    }
    storage = str(sweep_root / "store-b")
    result = run_sweep(
        sweep_base(storage),
        parse_space(space),
        pairs=["en-xc"],
        samples=2,
        name="bad",
        verbose=0,
    )
    r = result.pairs["en-xc"]
    assert r.trials == 2 and len(r.failed) == 2
    assert all("filtered out" in reason for _, reason in r.failed)
    assert result.exit_code == 1
    summary = result.summary()
    assert "error: no finished trial for en-xc" in summary and "Traceback" not in summary
    records = Catalog(storage).records()
    assert list(records["status"]) == ["failed", "failed"]
    assert all("filtered out" in e for e in records["error"])


def test_layers_beyond_the_model_are_refused_before_any_trial(
    cluster, sweep_root, sweep_space, sweep_base
) -> None:
    SPACE = sweep_space(
        **{"distill.layers": {"type": "layers", "strategies": ["last", "one"], "max_k": 2}}
    )
    from optical_ray.errors import ConfigError
    from optical_ray.sweeps.space import parse_space
    from optical_ray.distributed import run_sweep

    space = {
        **SPACE,
        "params": {
            **SPACE["params"],
            "distill.layers": {"type": "layers", "strategies": ["set"], "sets": [[1], [7]]},
        },
    }
    storage = sweep_root / "store-e"
    with pytest.raises(ConfigError, match=r"layer 7 is beyond the model depth 2"):
        run_sweep(
            sweep_base(str(storage)),
            parse_space(space),
            pairs=["en-xc"],
            samples=2,
            name="deep",
            verbose=0,
        )
    assert not (storage / "deep-en-xc").exists()


def _pair_task_processes(other: frozenset[int] = frozenset()) -> list[int]:
    """Pids of processes running a pair's Tune driver task (Ray titles them so), but
    ``other``: those that ran before the test (another Ray on this machine may have
    pair tasks of its own)."""
    import psutil

    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info["cmdline"] or []
        if cmd and cmd[0].startswith("ray::fit_pair") and proc.pid not in other:
            found.append(proc.pid)
    return found


def test_resume_after_the_driver_is_killed(cluster, sweep_root, sweep_space, sweep_base) -> None:
    SPACE = sweep_space(
        **{"distill.layers": {"type": "layers", "strategies": ["last", "one"], "max_k": 2}}
    )
    from optical_ray.catalog import Catalog
    from optical_ray.config import to_dict
    from optical_ray.sweeps.space import parse_space
    from optical_ray.distributed import run_sweep

    storage = sweep_root / "store-c"
    space = {**SPACE, "base": {**SPACE["base"], "distill.steps": 8}}
    space_path = sweep_root / "space.yaml"
    space_path.write_text(yaml.safe_dump(space))
    cfg_path = sweep_root / "base.yaml"
    cfg_path.write_text(
        yaml.safe_dump(to_dict(sweep_base(str(storage), **{"sweep.max_concurrent": 1})))
    )
    cmd = [
        sys.executable,
        "-m",
        "optical_ray.cli",
        "sweep",
        "--space",
        str(space_path),
        "--pairs",
        "en-xc",
        "--samples",
        "4",
        "--name",
        "kill",
        "--config",
        str(cfg_path),
        "--address",
        cluster.address,
    ]
    other = frozenset(_pair_task_processes())
    driver = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    catalog = Catalog(str(storage))
    deadline = time.time() + 300
    try:
        while time.time() < deadline and driver.poll() is None:
            if (storage / "catalog").is_dir() and len(catalog.records()) >= 1:
                break
            time.sleep(0.5)
        assert driver.poll() is None, "the sweep ended before it could be killed"
    finally:
        driver.kill()  # SIGKILL mid-sweep
        driver.wait()
    # Ray lets a killed driver's tasks run on; its pair task ends itself (driverwatch),
    # so it neither starts trials nor writes records next to the resumed sweep.
    deadline = time.time() + 20
    while time.time() < deadline and _pair_task_processes(other):
        time.sleep(0.2)
    assert not _pair_task_processes(other), "the killed driver's pair task still runs"
    before = catalog.records()
    assert 1 <= len(before) < 4
    done = dict(zip(before["trial_id"], before["best_value"]))
    # The same command with --resume: finished trials are not run again.
    result = run_sweep(
        sweep_base(str(storage), **{"sweep.max_concurrent": 1}),
        parse_space(space),
        pairs=["en-xc"],
        samples=4,
        name="kill",
        resume=True,
        verbose=0,
    )
    after = Catalog(str(storage)).records()
    assert result.pairs["en-xc"].trials == 4
    shown = after[["trial_id", "status", "started_at", "finished_at"]].to_string()
    assert after["trial_id"].nunique() == len(after) == 4, shown
    for trial_id, best_value in done.items():
        row = after[after["trial_id"] == trial_id]
        # One record, the same result, and no training step ran twice: a trial whose
        # end Tune had not yet saved resumes at its final checkpoint and trains nothing.
        assert len(row) == 1 and row["best_value"].iloc[0] == pytest.approx(best_value)
        state = json.loads((Path(row["checkpoint_uri"].iloc[0]) / "state.json").read_text())
        steps = [r["step"] for r in state["history"]["steps"]]
        assert steps == list(range(1, len(steps) + 1)), steps  # every step once
        if row["status"].iloc[0] == "finished":  # not stopped early by ASHA
            assert len(steps) == 8, steps
    # Without --resume, an existing sweep is refused with one clear line.
    from optical_ray.errors import ConfigError

    with pytest.raises(ConfigError, match="already exist .* pass --resume"):
        run_sweep(
            sweep_base(str(storage)),
            parse_space(space),
            pairs=["en-xc"],
            samples=4,
            name="kill",
            verbose=0,
        )
    # A pickle planted in the experiment's storage is refused before Ray reads it.
    import pickle

    from optical_ray.distributed.trust import UntrustedStateError
    from tests.distributed.test_trust import _Payload

    marker = sweep_root / "pwned"
    (storage / "kill-en-xc" / "tuner.pkl").write_bytes(pickle.dumps(_Payload(str(marker))))
    with pytest.raises(UntrustedStateError, match="tuner.pkl was not written"):
        run_sweep(
            sweep_base(str(storage)),
            parse_space(space),
            pairs=["en-xc"],
            samples=4,
            name="kill",
            resume=True,
            verbose=0,
        )
    assert not marker.exists()


def declining_trial(sampled: dict, *, plan) -> None:
    """A stand-in trial that checkpoints at each of three evaluations, dev MAP 0.7,
    0.5, 0.6, through a real trial's reporting context: its best is its first."""
    import tempfile

    from ray import tune

    from optical_ray.sweeps.plan import resolve_trial_config
    from optical_ray.sweeps.protocol import FINISHED_KEY
    from optical_ray.distributed.trial import TuneContext

    ctx = TuneContext(resolve_trial_config(plan, sampled, tune.get_context().get_trial_id()))
    for step, value in enumerate((0.7, 0.5, 0.6), 1):
        ckpt = Path(tempfile.mkdtemp())
        (ckpt / "value.txt").write_text(str(value))
        ctx.report({"map": value, "step": step}, str(ckpt))
    tune.report({"map": 0.6, FINISHED_KEY: 1})


def test_a_trial_is_recorded_with_its_best_checkpoint_not_its_last(
    cluster, tmp_path, sweep_space
) -> None:
    """The catalog's best value and its checkpoint agree: the checkpoint named is the
    one that scored the best dev value, kept with the latest (for resume); the others
    are deleted."""
    SPACE = sweep_space(
        **{"distill.layers": {"type": "layers", "strategies": ["last", "one"], "max_k": 2}}
    )
    from ray import cloudpickle

    from optical_ray.catalog import Catalog, best_config
    from optical_ray.config import from_flat
    from optical_ray.distributed.driver import run
    from optical_ray.sweeps.space import parse_space

    cfg = from_flat(
        {
            "name": "decline",
            "output_dir": str(tmp_path / "runs"),
            "storage.uri": str(tmp_path / "store"),
            "sweep.pairs": ["en-sw"],
            "sweep.samples": 1,
            "sweep.scheduler": "none",
            "scaling.cpus_per_worker": 1.0,
        }
    )
    space = parse_space(
        {**SPACE, "base": {**SPACE["base"], "distill.steps": 3, "train.eval_every": 1}}
    )
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    try:
        result = run(
            cfg, space, verbose=0, out=lambda _: None, check_data=False, trial_fn=declining_trial
        )
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    assert result.exit_code == 0
    record = Catalog(str(tmp_path / "store")).records("en-sw").iloc[0]
    assert record["best_value"] == pytest.approx(0.7)
    best = Path(record["checkpoint_uri"])
    assert best.name == "checkpoint_000000" and (best / "value.txt").read_text() == "0.7"
    assert best_config("en-sw", storage=str(tmp_path / "store"))[0].checkpoint_uri == str(best)
    assert result.pairs["en-sw"].best_checkpoint == str(best)
    # kept: the best and the latest; the worse middle one is gone
    assert sorted(p.name for p in best.parent.glob("checkpoint_*")) == [
        "checkpoint_000000",
        "checkpoint_000002",
    ]


def test_two_worker_trials_run_a_torch_trainer_each(
    cluster, sweep_root, sweep_space, sweep_base
) -> None:
    """workers_per_trial=2: the trial driver holds no CPU (on 2 CPUs both go to the
    TorchTrainer's workers), each trial is a 2-worker DDP run, and its work time is
    the rank-0 worker's."""
    SPACE = sweep_space(
        **{"distill.layers": {"type": "layers", "strategies": ["last", "one"], "max_k": 2}}
    )
    from optical_ray.catalog import Catalog
    from optical_ray.sweeps.space import parse_space
    from optical_ray.distributed import run_sweep

    storage = str(sweep_root / "store-d")
    result = run_sweep(
        sweep_base(storage, **{"distill.batch_size": 4}),
        parse_space(SPACE),
        pairs=["en-xc"],
        samples=1,
        name="ddp",
        workers_per_trial=2,
        verbose=0,
    )
    r = result.pairs["en-xc"]
    assert r.trials == 1 and not r.failed and r.best_metrics["map"] > 0
    assert r.best_checkpoint and Path(r.best_checkpoint, "model").is_dir()
    record = Catalog(storage).records().iloc[0]
    assert record["status"] == "finished"
    # The trial ran as a Ray Train run of its own (storage trainruns/<experiment>/<trial>).
    assert Path(storage, "trainruns", "ddp-en-xc", record["trial_id"]).is_dir()
    wall = (record["finished_at"] - record["started_at"]).total_seconds()
    assert 0 < record["training_s"] < wall


def test_impossible_sweeps_fail_in_one_line_before_any_trial(
    cluster, sweep_root, sweep_space, sweep_base
) -> None:
    """A pair without data and a trial that needs more CPUs than the cluster has are
    refused up front (they used to fail inside Ray, or hang retrying worker start-up)."""
    SPACE = sweep_space(
        **{"distill.layers": {"type": "layers", "strategies": ["last", "one"], "max_k": 2}}
    )
    from optical_ray.errors import ConfigError, DataError
    from optical_ray.sweeps.space import parse_space
    from optical_ray.distributed import run_sweep

    storage = sweep_root / "store-f"
    with pytest.raises(DataError, match="en-zz") as info:
        run_sweep(
            sweep_base(str(storage)),
            parse_space(SPACE),
            pairs=["en-xc", "en-zz"],
            samples=1,
            name="zz",
            verbose=0,
        )
    assert "\n" not in str(info.value) and "Traceback" not in str(info.value)
    with pytest.raises(ConfigError, match="99 workers .* the cluster has 2 CPUs"):
        run_sweep(
            sweep_base(str(storage)),
            parse_space(SPACE),
            pairs=["en-xc"],
            samples=1,
            name="big",
            workers_per_trial=99,
            verbose=0,
        )
    assert not storage.exists() or not any(storage.iterdir()), sorted(map(str, storage.rglob("*")))


def test_a_pair_task_is_pinned_to_its_cluster(cluster) -> None:
    """A pair's task (and the Tune trials and Train controllers under it) gets this
    cluster's address: Ray's state API in them must not look in another cluster."""
    import ray

    from optical_ray.distributed.driver import _pair_task_env

    assert _pair_task_env()["RAY_ADDRESS"] == ray.get_runtime_context().gcs_address
