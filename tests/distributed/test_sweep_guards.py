"""Issue 33 through the real sweep driver (Ray Tune + Optuna), with stand-in trials:

* a state file swapped in storage between the driver's check and Tune's restore never
  runs: the resume restores from the bytes that were checked (item 1);
* a second driver, fresh or ``--resume``, is refused while the first runs; a killed
  driver's lease is taken over at once on its host (item 4);
* a trial the catalog already holds as ended is not run again on resume, and gets no
  second catalog part (item 5).
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow

ray = pytest.importorskip("ray")

ROOT = Path(__file__).resolve().parents[2]
SPACE = {
    "base": {"train.stages": ["distill"], "distill.steps": 2, "train.eval_every": 1},
    "params": {"distill.lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2}},
}


def stand_in(sampled: dict[str, Any], *, plan: Any) -> None:
    """A trial without training: notes that it ran (``ran-<trial>`` in the sweep's
    output_dir), waits for a ``go`` file there, reports a dev MAP and ends."""
    from ray import tune

    from optical_ray.config import to_flat
    from optical_ray.sweeps.plan import resolve_trial_config
    from optical_ray.sweeps.protocol import CONFIG_KEY, FINISHED_KEY

    trial_id = tune.get_context().get_trial_id()
    control = Path(plan.base.output_dir)
    with open(control / f"ran-{trial_id}", "a") as f:
        f.write("ran\n")
    deadline = time.time() + 300
    while not (control / "go").exists() and time.time() < deadline:
        time.sleep(0.2)
    config = json.dumps(to_flat(resolve_trial_config(plan, sampled, trial_id)), sort_keys=True)
    tune.report({"map": 0.5, FINISHED_KEY: 1, CONFIG_KEY: config})


DRIVER = """
import json, sys
from ray import cloudpickle
from optical_ray.distributed.driver import run
from optical_ray.errors import OpticalRayError
from optical_ray.sweeps.space import parse_space
sys.path.insert(0, {tests!r})
import test_sweep_guards
from test_sweep_guards import SPACE, stand_in, config
cloudpickle.register_pickle_by_value(test_sweep_guards)

args = json.loads(sys.argv[1])
try:
    result = run(config(args["root"], args["name"], args["storage"], args["samples"]),
                 parse_space(SPACE), resume=args["resume"], address=args["address"],
                 verbose=0, out=lambda _: None, check_data=False, trial_fn=stand_in)
except OpticalRayError as exc:
    print(f"{{type(exc).__name__}}: {{exc}}", flush=True)
    sys.exit(2)
print("exit", result.exit_code, flush=True)
"""


def config(root: str, name: str, storage: str, samples: int) -> Any:
    from optical_ray.config import from_flat

    return from_flat(
        {
            "name": name,
            "output_dir": str(Path(root) / "runs"),
            "storage.uri": storage,
            "sweep.pairs": ["en-sw"],
            "sweep.samples": samples,
            "sweep.max_concurrent": 1,
            "sweep.scheduler": "none",
            "sweep.optuna_storage": "memory",
            "scaling.cpus_per_worker": 1.0,
        }
    )


@pytest.fixture(scope="module")
def cluster(cluster):
    """The session's Ray node, with this module's stand-in trial pickled by value (Ray's
    workers cannot import a test module)."""
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield cluster
    cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


def _run(root: Path, name: str, storage: str, samples: int, **kw: Any) -> Any:
    from optical_ray.distributed.driver import run
    from optical_ray.sweeps.space import parse_space

    (root / "runs").mkdir(parents=True, exist_ok=True)
    return run(
        config(str(root), name, storage, samples),
        parse_space(SPACE),
        verbose=0,
        out=lambda _: None,
        check_data=False,
        trial_fn=stand_in,
        **kw,
    )


def _driver(root: Path, name: str, storage: str, samples: int, **kw: Any) -> subprocess.Popen:
    """A sweep's driver in a process of its own (the CLI's run, with stand-in trials)."""
    script = root / "driver.py"
    if not script.exists():
        script.write_text(DRIVER.format(tests=str(Path(__file__).parent)))
    args = {"root": str(root), "name": name, "storage": storage, "samples": samples}
    args.update(resume=kw.get("resume", False), address=kw.get("address"))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TUNE_GLOBAL_CHECKPOINT_S": "1"}
    return subprocess.Popen(
        [sys.executable, str(script), json.dumps(args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
        text=True,
    )


def _pair_tasks() -> list[int]:
    """Pids of processes running a pair's Tune driver task on this machine."""
    import psutil

    return [
        p.pid
        for p in psutil.process_iter(["cmdline"])
        if (p.info["cmdline"] or [""])[0].startswith("ray::fit_pair")
    ]


def _raw_rows(storage: Path, record_id: str) -> int:
    """Catalog rows with ``record_id`` in every part (queries keep one of each)."""
    import pyarrow.dataset as ds

    table = ds.dataset(str(storage / "catalog"), format="parquet").to_table(columns=["record_id"])
    return table.column("record_id").to_pylist().count(record_id)


def _wait_for(what: str, ok, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while not ok():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)


def test_a_state_file_swapped_after_the_check_never_runs(cluster, tmp_path, monkeypatch) -> None:
    from ray import cloudpickle

    import optical_ray.distributed.driver as driver
    from tests.distributed.test_trust import _Payload

    storage = tmp_path / "store"
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "go").touch()
    assert _run(tmp_path, "race", str(storage), 2).exit_code == 0
    markers = []

    def bomb(name: str) -> bytes:
        markers.append(tmp_path / f"pwned-{name}")
        if name.endswith(".pkl"):
            return pickle.dumps(_Payload(str(markers[-1])))
        blob = cloudpickle.dumps(_Payload(str(markers[-1]))).hex()
        return json.dumps({"_type": "CLOUDPICKLE_FALLBACK", "value": blob}).encode()

    real = driver.verify_state

    def verify_then_swap(store, rel, key=None, *, trust=False):
        state = real(store, rel, key, trust=trust)
        # the race: once checked, every state file becomes a pickle that writes a
        # marker when loaded, and a newer experiment state is planted beside them
        for name in [*state.files, "experiment_state-2099-01-01_00-00-00.json"]:
            (storage / rel / name).write_bytes(bomb(name))
        return state

    monkeypatch.setattr(driver, "verify_state", verify_then_swap)
    result = _run(tmp_path, "race", str(storage), 2, resume=True)
    assert len(markers) >= 4 and not [m for m in markers if m.exists()]
    # The resume used the checked bytes: the experiment as it was, nothing run again.
    assert result.exit_code == 0 and result.pairs["en-sw"].trials == 2, result.summary()
    assert len(list((tmp_path / "runs").glob("ran-*"))) == 2
    # Tune rewrote (and the driver signed) the state it restored; the planted newer
    # experiment state is still there, never read, and the next resume refuses it.
    monkeypatch.undo()
    from optical_ray.distributed.trust import UntrustedStateError

    with pytest.raises(UntrustedStateError, match=r"experiment_state-2099\S* was not written"):
        _run(tmp_path, "race", str(storage), 2, resume=True)
    assert not [m for m in markers if m.exists()]


def test_one_driver_per_experiment_and_ended_trials_never_run_again(cluster, tmp_path) -> None:
    from optical_ray.catalog import Catalog, TrialRecord

    storage = tmp_path / "store"
    runs = tmp_path / "runs"
    runs.mkdir()
    others = set(_pair_tasks())  # pair tasks of other tests' or users' sweeps
    first = _driver(tmp_path, "lease", str(storage), 1, address=cluster.address)
    try:
        _wait_for("the first driver's trial", lambda: list(runs.glob("ran-*")))
        (trial_id,) = [p.name[len("ran-") :] for p in runs.glob("ran-*")]
        # A second driver, fresh or resuming, is refused in one line naming the first.
        seconds = [
            _driver(tmp_path, "lease", str(storage), 1, resume=resume, address=cluster.address)
            for resume in (False, True)
        ]
        for second in seconds:
            out, _ = second.communicate(timeout=180)
            assert second.returncode == 2, out
            (line,) = out.strip().splitlines()
            assert line.startswith("LeaseHeldError: experiment lease-en-sw is being run by")
            assert f"pid {first.pid}," in line and "last heartbeat" in line
        # Tune's snapshot names the trial running; the driver dies (SIGKILL) just as
        # the trial ends and is recorded.
        state = storage / "lease-en-sw"
        _wait_for(
            "a snapshot naming the trial",
            lambda: any(trial_id in p.read_text() for p in state.glob("experiment_state-*")),
        )
    finally:
        first.kill()
        first.wait()
    # Its pair task ends at its next step, once the state it saved is signed and stored.
    with contextlib.suppress(AssertionError):
        _wait_for("the killed driver's pair task", lambda: not set(_pair_tasks()) - others, 60)
    Catalog(str(storage)).append(
        TrialRecord(
            experiment="lease-en-sw",
            pair="en-sw",
            trial_id=trial_id,
            config={"distill.lr": 0.001},
            best_metrics={"map": 0.777},
            last_metrics={"map": 0.777, "score": 0.777},
            record_id=f"lease-en-sw--{trial_id}",
        )
    )
    (runs / "go").touch()
    # The same sweep resumed here: the dead driver's lease is taken over at once, and the
    # trial the catalog holds as finished reports its record instead of running again.
    result = _run(tmp_path, "lease", str(storage), 1, resume=True)
    assert result.exit_code == 0, result.summary()
    assert (runs / f"ran-{trial_id}").read_text() == "ran\n"  # it ran once, before the kill
    assert _raw_rows(storage, f"lease-en-sw--{trial_id}") == 1
    assert result.pairs["en-sw"].best_metrics["map"] == pytest.approx(0.777)
    assert not (state / "optical-ray.lease").exists()  # released at the end


def test_a_second_driver_is_refused_on_s3(s3_storage_uri, tmp_path) -> None:
    """On S3 the lease is a conditional put: a real driver (its own process) is refused
    while this process holds the experiment's lease as a running driver does."""
    from optical_ray.distributed.lease import SweepLeases
    from optical_ray.storage import resolve_storage

    (tmp_path / "runs").mkdir()
    with SweepLeases(resolve_storage(s3_storage_uri), ["s3lease-en-sw"]):
        second = _driver(tmp_path, "s3lease", s3_storage_uri, 1)
        out, _ = second.communicate(timeout=180)
    assert second.returncode == 2, out
    (line,) = out.strip().splitlines()
    assert line.startswith("LeaseHeldError: experiment s3lease-en-sw is being run by")
    assert f"pid {os.getpid()}," in line and s3_storage_uri in line
