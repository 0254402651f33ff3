"""Tracking views onto the catalog: a real MLflow server, the persisted Optuna study,
TensorBoard event files, W&B offline runs, and a tracking server that dies mid-sweep.

One Ray instance and one MLflow server for the module; the sweeps are tiny (one pair,
a 2-layer model, 4 distill steps). The server-kill test runs last: it kills the
module's server.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path

import pytest

from tests.mlflowserver import mlflow_server  # noqa: F401 - the module's fixture

ray = pytest.importorskip("ray")
pytest.importorskip("mlflow")

# --------------------------------------------------------------------------- no Ray


def test_bad_tracking_values_are_one_clear_error_each() -> None:
    from optical_ray.config import from_flat
    from optical_ray.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        from_flat(
            {
                "sweep.tracking": ["mlfow", "tensorboard=x", "mlflow=http://u:pw@h:1"],
                "train.tracking": ["wandb", "wandb"],
                "sweep.optuna_storage": "postgresql://u:hunter2@db/optuna",
            }
        )
    text = str(err.value)
    for expected in (
        "sweep.tracking[0]: got 'mlfow', expected one of mlflow, tensorboard, wandb",
        "sweep.tracking[1]",
        "only mlflow takes a URI",
        "sweep.tracking[2]",
        "MLFLOW_TRACKING_PASSWORD",
        "train.tracking[1]: got 'wandb', wandb is already listed",
        "sweep.optuna_storage",
        "PGPASSWORD",
    ):
        assert expected in text
    assert "hunter2" not in text and ":pw@" not in text
    cfg = from_flat(
        {
            "sweep.tracking": "mlflow=http://127.0.0.1:5000",
            "sweep.optuna_storage": "journal:/tmp/x.log",
        }
    )
    assert cfg.sweep.tracking == ["mlflow=http://127.0.0.1:5000"]


def test_cli_rejects_a_bad_tracking_flag_with_exit_2(capsys) -> None:
    from optical_ray.cli.parser import main

    code = main(
        [
            "sweep",
            "--space",
            "search_spaces/default.yaml",
            "--pairs",
            "en-xc",
            "--tracking",
            "mlflow,neptune",
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "sweep.tracking[1]: got 'neptune'" in err and "Traceback" not in err


def test_params_never_carry_secrets(monkeypatch) -> None:
    from optical_ray.tracking.trackers import safe_params

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t-value-123")
    params = safe_params(
        {
            "model.tokenizer": "tok",
            "storage.uri": "s3://b/p",
            "x.api_key": "abc",
            "y.session_token": "t",
            "z.password": "p",
            "data.root": "http://user:hunter2@host/data",
            "note": "key s3cr3t-value-123",
            "distill.layers": [-1, -2],
        }
    )
    assert params["model.tokenizer"] == "tok" and params["distill.layers"] == "[-1, -2]"
    assert not {"x.api_key", "y.session_token", "z.password"} & set(params)
    assert "hunter2" not in params["data.root"] and "s3cr3t" not in params["note"]


def test_an_existing_study_needs_resume_and_gives_importances(tmp_path) -> None:
    import optuna

    from optical_ray.errors import ConfigError
    from optical_ray.storage import resolve_storage
    from optical_ray.tracking.trackers import optuna_storage_url, prepare_study, study_importances

    store = resolve_storage(str(tmp_path / "store"))
    url = optuna_storage_url(None, store)
    assert url == f"sqlite:///{tmp_path / 'store' / 'optuna.db'}"
    storage = prepare_study(url, "s-en-xc", resume=False, metric="map", mode="max")
    study = optuna.load_study(study_name="s-en-xc", storage=storage)
    for i in range(8):  # the value follows x, not y
        x, y = i / 7, (i * 3 % 8) / 7
        study.add_trial(
            optuna.trial.create_trial(
                params={"x": x, "y": y},
                value=x,
                distributions={
                    "x": optuna.distributions.FloatDistribution(0, 1),
                    "y": optuna.distributions.FloatDistribution(0, 1),
                },
            )
        )
    with pytest.raises(ConfigError, match="already exists .* --resume .* delete-study"):
        prepare_study(url, "s-en-xc", resume=False, metric="map", mode="max")
    prepare_study(url, "s-en-xc", resume=True, metric="map", mode="max")  # reattaches
    imp = study_importances(store, "s-en-xc", "map")
    assert imp and max(imp, key=imp.get) == "x"
    assert study_importances(store, "s-en-xc", "ndcg@10") is None  # another objective
    assert study_importances(store, "other-en-xc", "map") is None
    assert study_importances(resolve_storage(str(tmp_path / "none")), "s-en-xc", "map") is None


def test_a_broken_or_foreign_study_file_is_one_line_naming_it(tmp_path, caplog) -> None:
    """A study file of random bytes or of another Optuna's schema: one StorageError naming
    the file and what to do; the report (importances) falls back to the catalog."""
    import sqlite3

    from optical_ray.errors import StorageError
    from optical_ray.storage import resolve_storage
    from optical_ray.tracking.trackers import (
        check_study_storage,
        open_study_storage,
        optuna_storage_url,
        study_importances,
    )

    broken = resolve_storage(str(tmp_path / "broken"))
    db = tmp_path / "broken" / "optuna.db"
    db.parent.mkdir()
    db.write_bytes(bytes(range(256)) * 8)
    with pytest.raises(StorageError) as info:
        check_study_storage(None, broken)
    text = str(info.value)
    assert f"Optuna study file {str(db)!r} cannot be used (file is not a database)" in text
    assert "move it aside" in text and "--optuna-storage memory" in text
    assert "\n" not in text and "[SQL:" not in text
    caplog.set_level("WARNING")
    assert study_importances(broken, "s-en-xc", "map") is None
    assert any(str(db) in r.getMessage() for r in caplog.records)

    foreign = resolve_storage(str(tmp_path / "foreign"))
    check_study_storage(None, foreign)  # nothing to check yet, and nothing created
    assert not (tmp_path / "foreign" / "optuna.db").exists()
    open_study_storage(optuna_storage_url(None, foreign))  # what the sweep creates
    check_study_storage(None, foreign)  # a fresh study file passes
    with sqlite3.connect(tmp_path / "foreign" / "optuna.db") as con:
        con.execute("UPDATE alembic_version SET version_num = 'v99.0.0'")
    with pytest.raises(StorageError, match="holds another Optuna version's schema: The runtime"):
        check_study_storage(None, foreign)
    journal = tmp_path / "journal.log"
    journal.write_bytes(b"\xff\xfe not a journal\n")
    with pytest.raises(StorageError, match=r"journal.log' cannot be used"):
        check_study_storage(f"journal:{journal}", foreign)


def test_a_tracking_uri_with_credentials_is_refused_once_without_the_aws_hint() -> None:
    from optical_ray.config import from_flat
    from optical_ray.errors import ConfigError

    for key in ("train.tracking", "sweep.tracking"):
        with pytest.raises(ConfigError) as err:
            from_flat({key: ["mlflow=postgresql://u:hunter2@db:5432/mlflow"]})
        assert len(err.value.problems) == 1, err.value.problems
        (line,) = err.value.problems
        assert line.startswith(f"{key}[0]: got 'mlflow=postgresql://***@db:5432/mlflow'")
        assert "PGPASSWORD" in line and "AWS" not in line and "hunter2" not in line
    with pytest.raises(ConfigError) as err:
        from_flat({"sweep.optuna_storage": "postgresql://u:hunter2@db/optuna"})
    assert len(err.value.problems) == 1 and "AWS" not in str(err.value)
    with pytest.raises(ConfigError, match="MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD"):
        from_flat({"train.tracking": ["mlflow=https://u:hunter2@mlflow.example"]})


def _open_study(args: tuple[str, str]) -> str:
    """What a pair's task does with its study (module level: spawned processes run it)."""
    import optuna

    from optical_ray.tracking.trackers import open_study_storage

    url, name = args
    try:
        storage = open_study_storage(url)
        optuna.create_study(storage=storage, study_name=name, load_if_exists=True)
        return "ok"
    except Exception as exc:  # noqa: BLE001 - reported back to the test
        return f"{type(exc).__name__}: {exc}"[:200]


def test_the_driver_prepares_every_study_before_pairs_open_them(tmp_path) -> None:
    """Pair tasks each creating a fresh SQLite file's schema collided (alembic's version
    row, with 10 pairs); the driver now creates the schema and every study first."""
    import multiprocessing

    import optuna

    from optical_ray.config import from_dict
    from optical_ray.errors import ConfigError
    from optical_ray.distributed.driver import prepare_studies
    from optical_ray.sweeps.plan import PairPlan
    from optical_ray.storage import resolve_storage
    from optical_ray.tracking.trackers import optuna_storage_url

    cfg = from_dict(
        {
            "name": "many",
            "sweep": {"pairs": [f"en-x{i}" for i in range(6)]},
            "storage": {"uri": str(tmp_path / "store")},
        }
    )
    plans = [
        PairPlan(pair=p, experiment=f"many-{p}", path="", base=cfg, space=None, depth=2, max_t=1)
        for p in cfg.sweep.pairs
    ]
    store = resolve_storage(cfg.storage.uri)
    prepare_studies(plans, store, resume=False)
    url = optuna_storage_url(None, store)
    names = {s.study_name for s in optuna.get_all_study_summaries(url)}
    assert names == {p.experiment for p in plans}
    with multiprocessing.get_context("spawn").Pool(3) as pool:
        assert pool.map(_open_study, [(url, p.experiment) for p in plans]) == ["ok"] * 6
    with pytest.raises(ConfigError, match="already exists"):
        prepare_studies(plans, store, resume=False)
    prepare_studies(plans, store, resume=True)  # reattaches


def test_wandb_runs_offline_without_network(tmp_path, monkeypatch) -> None:
    pytest.importorskip("wandb")
    from optical_ray.storage import resolve_storage
    from optical_ray.tracking.trackers import make_trackers

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    (tracker,) = make_trackers(
        ["wandb"],
        store=resolve_storage(str(tmp_path / "store")),
        experiment="s",
        group="s-en-xc",
        tags={"optical_ray.pair": "en-xc"},
        output_dir=str(tmp_path),
    )
    tracker.start("t1", {"distill.epsilon": "0.05"}, {"optical_ray.trial_id": "t1"})
    for step in (2, 4):
        tracker.log("t1", {"en-xc/map": 0.1 * step}, step)
    tracker.finish("t1", "finished", {"optical_ray.checkpoint_uri": "/x"})
    tracker.close()
    runs = list((tmp_path / "wandb" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))
    assert tracker._sender is None  # closed, nothing left queued


# --------------------------------------------------------------------------- sweeps


@pytest.fixture(scope="module")
def tracked(cluster, sweep_root, mlflow_server, sweep_space, sweep_base):
    """A 3-trial sweep of en-xc tracked to the MLflow server and TensorBoard."""
    SPACE = sweep_space()
    from optical_ray.sweeps.space import parse_space
    from optical_ray.distributed import run_sweep

    storage = str(sweep_root / "store-tracked")
    result = run_sweep(
        sweep_base(storage),
        parse_space(SPACE),
        pairs=["en-xc"],
        samples=3,
        name="trk",
        verbose=0,
        tracking=[f"mlflow={mlflow_server.uri}", "tensorboard"],
    )
    return result, storage


def _records(storage: str):
    from optical_ray.catalog import Catalog

    return Catalog(storage).records().set_index("trial_id")


def _runs(uri: str, sweep: str):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(sweep)
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("optical_ray.role") == "pair"]
    children = [r for r in runs if r.data.tags.get("optical_ray.role") == "trial"]
    return client, parents, children


@pytest.mark.slow
def test_mlflow_runs_mirror_the_catalog(tracked, mlflow_server) -> None:
    from optical_ray.tracking.trackers import safe_params

    _, storage = tracked
    records = _records(storage)
    client, parents, children = _runs(mlflow_server.uri, "trk")
    assert [p.info.run_name for p in parents] == ["trk-en-xc"]
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["optical_ray.pair"] == "en-xc"
    assert len(children) == len(records) == 3
    for run in children:
        tags = run.data.tags
        assert tags["mlflow.parentRunId"] == parent.info.run_id
        rec = records.loc[tags["optical_ray.trial_id"]]
        assert tags["optical_ray.catalog_record_id"] == rec["record_id"]
        assert tags["optical_ray.checkpoint_uri"] == rec["checkpoint_uri"]
        assert tags["optical_ray.status"] == rec["status"]
        assert tags["optical_ray.sweep"] == "trk" and tags["optical_ray.pair"] == "en-xc"
        assert run.info.status == "FINISHED"
        assert run.data.params == safe_params(json.loads(rec["config"]))
        history = client.get_metric_history(run.info.run_id, "en-xc/map")
        steps = [m.step for m in history]
        assert steps == sorted(steps) and len(set(steps)) == len(steps) >= 1
        assert max(m.value for m in history) == pytest.approx(rec["best_value"])
        assert history[-1].value == pytest.approx(rec["last_value"])


@pytest.mark.slow
def test_the_persisted_optuna_study_matches_the_catalog(tracked) -> None:
    import optuna

    _, storage = tracked
    records = _records(storage)
    study = optuna.load_study(
        study_name="trk-en-xc", storage=f"sqlite:///{Path(storage, 'optuna.db')}"
    )
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == len(records) == 3
    states = {
        "finished": optuna.trial.TrialState.COMPLETE,
        "stopped": optuna.trial.TrialState.PRUNED,
        "failed": optuna.trial.TrialState.FAIL,
    }
    configs = [json.loads(c) for c in records["config"]]
    for trial in trials:
        (i,) = [
            i
            for i, c in enumerate(configs)
            if c["distill.epsilon"] == pytest.approx(trial.params["distill.epsilon"])
            and c["distill.lr"] == pytest.approx(trial.params["distill.lr"])
        ]
        rec = records.iloc[i]
        assert trial.state == states[rec["status"]]
        if trial.state == optuna.trial.TrialState.COMPLETE:
            assert trial.value == pytest.approx(rec["last_value"])


@pytest.mark.slow
def test_tensorboard_event_files_per_trial(tracked) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, storage = tracked
    records = _records(storage)
    root = Path(storage, "tensorboard", "trk", "trk-en-xc")
    assert sorted(p.name for p in root.iterdir()) == sorted(records.index)
    for trial_id in records.index:
        acc = EventAccumulator(str(root / trial_id))
        acc.Reload()
        values = acc.Scalars("en-xc/map")
        assert values and max(v.value for v in values) == pytest.approx(
            records.loc[trial_id, "best_value"]
        )


@pytest.mark.slow
def test_resume_reattaches_to_the_study_and_the_parent_run(
    tracked, sweep_root, mlflow_server, sweep_space, sweep_base
) -> None:
    SPACE = sweep_space()
    import optuna

    from optical_ray.sweeps.space import parse_space
    from optical_ray.distributed import run_sweep

    _, storage = tracked
    # Resuming a finished sweep: nothing runs again, and nothing is tracked twice.
    result = run_sweep(
        sweep_base(storage),
        parse_space(SPACE),
        pairs=["en-xc"],
        samples=3,
        name="trk",
        verbose=0,
        resume=True,
        tracking=[f"mlflow={mlflow_server.uri}"],
    )
    assert result.pairs["en-xc"].trials == 3
    study = optuna.load_study(
        study_name="trk-en-xc", storage=f"sqlite:///{Path(storage, 'optuna.db')}"
    )
    assert len(study.trials) == 3
    assert all(t.state.is_finished() for t in study.trials)
    _, parents, children = _runs(mlflow_server.uri, "trk")
    assert len(parents) == 1 and len(children) == 3
    assert parents[0].info.status == "FINISHED"
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parents[0].info.run_id}


@pytest.mark.slow
def test_a_dead_tracking_server_costs_warnings_not_results(
    cluster, sweep_root, mlflow_server, sweep_space, sweep_base
) -> None:
    """Runs last: it kills the module's server once the first trial's run exists."""
    SPACE = sweep_space()
    from mlflow import MlflowClient

    from optical_ray.sweeps.space import parse_space
    from optical_ray.distributed import run_sweep

    storage = str(sweep_root / "store-killed")
    client = MlflowClient(tracking_uri=mlflow_server.uri)
    killed = threading.Event()

    def kill_when_a_trial_is_tracked() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            exp = client.get_experiment_by_name("dead")
            if exp and client.search_runs([exp.experiment_id], "tags.`optical_ray.role` = 'trial'"):
                mlflow_server.stop(signal.SIGKILL)
                killed.set()
                return
            time.sleep(0.5)

    killer = threading.Thread(target=kill_when_a_trial_is_tracked, daemon=True)
    killer.start()
    result = run_sweep(
        sweep_base(storage, **{"sweep.max_concurrent": 1}),
        parse_space(SPACE),
        pairs=["en-xc"],
        samples=3,
        name="dead",
        verbose=0,
        tracking=[f"mlflow={mlflow_server.uri}"],
    )
    killer.join(timeout=5)
    assert killed.is_set(), "the sweep ended before the server could be killed"
    r = result.pairs["en-xc"]
    assert r.trials == 3 and not r.failed
    records = _records(storage)
    assert len(records) == 3 and set(records["status"]) <= {"finished", "stopped"}
    assert records["checkpoint_uri"].notna().all() and records["best_value"].notna().all()
    # The pair's task logged them on its node; the result brings them to the summary.
    warnings = r.warnings
    assert warnings and all(f"warning: {w}" in result.summary() for w in warnings)
    assert warnings and all(mlflow_server.uri in w for w in warnings)
    assert any("the sweep goes on" in w for w in warnings)


def test_a_sweep_prepares_every_pair_study_through_one_storage(tmp_path, monkeypatch) -> None:
    """Opening an RDB storage costs a schema check (Alembic): the driver opens it once
    for all pairs, and the checks still hold through the shared one."""
    import types

    import optuna

    from optical_ray.distributed import driver as launch

    from optical_ray.tracking import trackers as tracking
    from optical_ray.config import Config
    from optical_ray.errors import ConfigError
    from optical_ray.storage import resolve_storage

    opened = []
    real_open = tracking.open_study_storage

    def counting(url):
        opened.append(url)
        return real_open(url)

    monkeypatch.setattr(tracking, "open_study_storage", counting)
    store = resolve_storage(str(tmp_path / "store"))
    sw = Config().sweep
    plans = [types.SimpleNamespace(base=Config(), experiment=f"s-{p}") for p in ("a", "b", "c")]
    launch.prepare_studies(plans, store, resume=False)
    assert len(opened) == 1
    url = tracking.optuna_storage_url(sw.optuna_storage, store)
    names = {s.study_name for s in optuna.get_all_study_summaries(real_open(url))}
    assert names == {"s-a", "s-b", "s-c"}
    with pytest.raises(ConfigError, match="'s-a' already exists"):
        launch.prepare_studies(plans, store, resume=False)
    launch.prepare_studies(plans, store, resume=True)  # reattaches, one opening again
    assert len(opened) == 3
