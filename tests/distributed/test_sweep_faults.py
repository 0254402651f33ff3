"""Sweeps that lose part of the cluster: a worker node SIGKILLed mid-sweep (its trials
restart from their checkpoints on the surviving nodes), and the driver of a 2-pair
concurrent sweep SIGKILLed, then the same command with --resume (nothing finished runs
again, no record is duplicated) — as a plain driver process and as a `ray job`.

One local 3-node cluster (head + 2 worker nodes, 1 CPU each) serves the module; the
lost-node test runs last, since it leaves one worker node dead.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow

ray = pytest.importorskip("ray")

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[2]
STEPS = 8  # 4 evaluations and checkpoints per trial (train.eval_every 2)
#: The sweep space of these tests (conftest's builder), epsilon from 0.05.
EPSILON = {"distill.epsilon": {"type": "loguniform", "low": 0.05, "high": 1.0}}
# A dead node is noticed within ~3 s instead of Ray's default ~30 s (the GCS reads
# these when the head starts).
FAST_HEALTH_CHECKS = {
    "RAY_health_check_initial_delay_ms": "0",
    "RAY_health_check_period_ms": "1000",
    "RAY_health_check_timeout_ms": "1000",
    "RAY_health_check_failure_threshold": "3",
}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A head and 2 worker nodes, 1 CPU and 1 (logical) GPU each, connected from this
    process."""
    from optical_ray.cluster.local import LocalCluster

    if ray.is_initialized():
        ray.shutdown()
    saved = {k: os.environ.get(k) for k in FAST_HEALTH_CHECKS}
    os.environ.update(FAST_HEALTH_CHECKS)
    c = LocalCluster(
        nodes=2,
        cpus_per_node=1,
        gpus_per_node=1,  # logical GPUs: the lost-node test runs GPU trials
        object_store_memory="100M",
        name=f"f{uuid.uuid4().hex[:6]}",
        state_dir=tmp_path_factory.mktemp("cluster-state"),
    )
    try:
        c.up()
        for k, v in saved.items():  # only the nodes need them
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        c.connect()
        yield c
    finally:
        if ray.is_initialized():
            ray.shutdown()
        if c.state_path.exists():
            c.down()


def _write_inputs(base, space: dict, where: Path) -> tuple[Path, Path]:
    from optical_ray.config import to_dict

    where.mkdir(parents=True, exist_ok=True)
    (where / "space.yaml").write_text(yaml.safe_dump(space))
    (where / "base.yaml").write_text(yaml.safe_dump(to_dict(base)))
    return where / "base.yaml", where / "space.yaml"


def _records(storage: Path):
    from optical_ray.catalog import Catalog

    if not (storage / "catalog").is_dir():
        return None
    return Catalog(str(storage)).records()


def _steps(checkpoint_uri: str) -> tuple[list[int], list[dict]]:
    """The training steps in a trial's last checkpoint history, and its resumes."""
    state = json.loads((Path(checkpoint_uri) / "state.json").read_text())
    history = state["history"]
    return [r["step"] for r in history["steps"]], history.get("resumes", [])


def _check_resumed_sweep(before, after, pairs: list[str], samples: int) -> None:
    """Every trial has exactly one record; those recorded before the kill kept their
    result and trained every step exactly once (nothing ran again)."""
    assert len(after) == after["record_id"].nunique() == len(pairs) * samples
    assert set(after["pair"]) == set(pairs)
    assert set(after["status"]) <= {"finished", "stopped"}
    for row in before.itertuples():
        again = after[after["record_id"] == row.record_id]
        assert len(again) == 1
        assert again["best_value"].iloc[0] == pytest.approx(row.best_value)
        steps, _ = _steps(again["checkpoint_uri"].iloc[0])
        assert steps == list(range(1, len(steps) + 1))


def _wait_for_records(storage: Path, alive, at_least: int, timeout: float = 420) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and alive():
        records = _records(storage)
        if records is not None and len(records) >= at_least:
            return
        time.sleep(0.5)
    assert alive(), "the sweep ended before it could be killed"
    pytest.fail(f"no {at_least} catalog record(s) within {timeout:.0f}s")


# --------------------------------------------------------------------------- driver loss


def test_two_pair_sweep_resumes_after_its_driver_is_killed(
    cluster, sweep_root, sweep_space, sweep_base
) -> None:
    from optical_ray.sweeps.space import parse_space
    from optical_ray.distributed import run_sweep

    storage = sweep_root / "faults-driver"
    pairs, samples = ["en-xc", "xc-en"], 2
    space = sweep_space(steps=STEPS, **EPSILON)
    base = sweep_base(storage, **{"eval.metrics": ["map"]})
    cfg_path, space_path = _write_inputs(base, space, sweep_root / "faults-driver-in")
    cmd = [
        str(BIN / "optical-ray"),
        "sweep",
        "--config",
        str(cfg_path),
        "--space",
        str(space_path),
        "--pairs",
        ",".join(pairs),
        "--samples",
        str(samples),
        "--name",
        "dk",
        "--address",
        cluster.address,
    ]
    driver = subprocess.Popen(
        cmd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **cluster.env()},
    )
    try:
        _wait_for_records(storage, lambda: driver.poll() is None, 1)
    finally:
        driver.kill()  # SIGKILL, with both pairs' experiments running
        driver.wait()
    before = _records(storage)
    assert 1 <= len(before) < len(pairs) * samples
    # The same sweep with --resume (in this process, on the same cluster).
    result = run_sweep(
        base,
        parse_space(space),
        pairs=pairs,
        samples=samples,
        name="dk",
        resume=True,
        verbose=0,
    )
    assert result.exit_code == 0, result.summary()
    assert all(r.trials == samples and not r.failed for r in result.pairs.values()), [
        (p, r.trials, r.failed) for p, r in result.pairs.items()
    ]
    _check_resumed_sweep(before, _records(storage), pairs, samples)


def _job_driver_pids(cluster, name: str) -> list[int]:
    """The job's driver: the process of this cluster whose argv is `optical-ray sweep ...
    --name <name>` (the shell the job supervisor starts it with has it as one string)."""
    found = []
    for pid in cluster.pids():
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"sweep" in argv and name.encode() in argv:
            found.append(pid)
    return found


def test_job_sweep_resumes_after_its_driver_is_killed(
    cluster, sweep_root, sweep_space, sweep_base
) -> None:
    """The same under `ray job submit`: the job's driver process is SIGKILLed, and a
    second job with --resume finishes the sweep."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    storage = sweep_root / "faults-job"
    pairs, samples = ["en-xc", "xc-en"], 2
    job_dir = sweep_root / "faults-job-in"
    base = sweep_base(storage, **{"eval.metrics": ["map"]})
    _write_inputs(base, sweep_space(steps=STEPS, **EPSILON), job_dir)
    client = JobSubmissionClient(cluster.dashboard_url)
    env = {**os.environ, **cluster.env()}

    def submit(*extra: str) -> str:
        job_id = f"faults-{uuid.uuid4().hex[:8]}"
        out = subprocess.run(
            [
                str(BIN / "ray"),
                "job",
                "submit",
                "--address",
                cluster.dashboard_url,
                "--working-dir",
                str(job_dir),
                "--submission-id",
                job_id,
                "--no-wait",
                "--",
                "optical-ray",
                "sweep",
                "--config",
                "base.yaml",
                "--space",
                "space.yaml",
                "--pairs",
                ",".join(pairs),
                "--samples",
                str(samples),
                "--name",
                "jk",
                *extra,
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
            check=False,
        )
        assert out.returncode == 0, out.stderr[-3000:]
        return job_id

    def ended(job_id: str) -> bool:
        return client.get_job_status(job_id) in {
            JobStatus.SUCCEEDED,
            JobStatus.FAILED,
            JobStatus.STOPPED,
        }

    first = submit()
    _wait_for_records(storage, lambda: not ended(first), 1)
    pids = _job_driver_pids(cluster, "jk")
    assert pids, "the job's driver process was not found"
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    deadline = time.time() + 120
    while not ended(first):
        assert time.time() < deadline, "the job did not end after its driver was killed"
        time.sleep(1)
    assert client.get_job_status(first) != JobStatus.SUCCEEDED
    before = _records(storage)
    assert 1 <= len(before) < len(pairs) * samples

    second = submit("--resume")
    deadline = time.time() + 600
    while not ended(second):
        assert time.time() < deadline, client.get_job_logs(second)[-3000:]
        time.sleep(2)
    logs = client.get_job_logs(second)
    assert client.get_job_status(second) == JobStatus.SUCCEEDED, logs[-4000:]
    assert "best config per pair" in logs
    _check_resumed_sweep(before, _records(storage), pairs, samples)


# --------------------------------------------------------------------------- lost node


def _session(pid: int) -> int | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()
    except OSError:
        return None
    return int(fields[3])


def _trial_on(cluster, node, experiment_dir: Path) -> str | None:
    """The directory name of a trial running on ``node`` half-way: its first or second
    of 4 checkpoints reported (a trial actor's working directory is its trial
    directory, Tune's default; an idle reused actor keeps a finished trial's)."""
    for pid in cluster.pids():
        if _session(pid) != node.pid:
            continue
        try:
            cwd = Path(os.readlink(f"/proc/{pid}/cwd"))
        except OSError:
            continue
        done = sorted(p.name for p in (experiment_dir / cwd.name).glob("checkpoint_*"))
        if (
            cwd.name.startswith("trial_")
            and done
            and done[-1] in {"checkpoint_000000", "checkpoint_000001"}
        ):
            return cwd.name
    return None


def test_a_sweep_survives_a_lost_worker_node(
    cluster, sweep_root, sweep_space, sweep_base, caplog
) -> None:
    """GPU trials (1 worker, 1 of the nodes' logical GPUs each): the trial on a node that
    dies restarts from its checkpoint on a surviving node, holding one GPU there; the
    GPUs have no CUDA behind them, so they train on CPU after one warning."""
    from optical_ray.distributed.train import GPU_WITHOUT_CUDA
    from optical_ray.sweeps.space import parse_space
    from optical_ray.distributed import run_sweep

    storage = sweep_root / "faults-node"
    experiment = storage / "ln-en-xc"
    samples = 4
    workers = [n for n in cluster.status().nodes if n.role == "worker"]
    outcome: dict = {}

    def sweep() -> None:
        try:
            outcome["result"] = run_sweep(
                sweep_base(
                    storage,
                    **{
                        "eval.metrics": ["map"],
                        "sweep.max_concurrent": 3,
                        "scaling.gpus_per_worker": 1,
                    },
                ),
                parse_space(sweep_space(steps=STEPS, **EPSILON)),
                pairs=["en-xc"],
                samples=samples,
                name="ln",
                scheduler="none",
                verbose=0,
            )
        except BaseException as exc:  # noqa: BLE001 - re-raised by the test below
            outcome["error"] = exc

    runner = threading.Thread(target=sweep, daemon=True)
    runner.start()
    victim, trial_dir = None, None
    deadline = time.time() + 420
    while runner.is_alive() and time.time() < deadline and victim is None:
        for node in workers:
            trial_dir = _trial_on(cluster, node, experiment)
            if trial_dir is not None:
                victim = node
                break
        time.sleep(0.3)
    assert victim is not None, f"no trial checkpointed on a worker node: {outcome}"
    # SIGKILL every process of that node: its launcher, raylet, agents, Ray workers.
    pids = [p for p in cluster.pids() if _session(p) == victim.pid]
    assert victim.pid in pids and len(pids) >= 3
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    runner.join(timeout=600)
    assert not runner.is_alive(), "the sweep did not finish after the node was lost"
    assert "error" not in outcome, outcome.get("error")
    result = outcome["result"]
    assert result.exit_code == 0, result.summary()
    r = result.pairs["en-xc"]
    assert r.trials == samples and not r.failed
    records = _records(storage)
    assert len(records) == records["trial_id"].nunique() == samples
    assert set(records["status"]) <= {"finished", "stopped"}
    # The interrupted trial resumed from its checkpoint, on a surviving node: its history
    # records a resume at step > 0 and every step once.
    row = records[[t in trial_dir for t in records["trial_id"]]]
    assert len(row) == 1 and row["status"].iloc[0] == "finished"
    steps, resumes = _steps(row["checkpoint_uri"].iloc[0])
    assert steps == list(range(1, STEPS + 1))
    assert resumes and all(r["step"] > 0 for r in resumes)
    # Every trial held exactly the one GPU it asked for, and trained on CPU.
    for uri in records["checkpoint_uri"]:
        placement = json.loads((Path(uri) / "state.json").read_text())["placement"]
        assert [(len(p["gpu_ids"]), p["device"]) for p in placement] == [(1, "cpu")]
    assert [r.getMessage() for r in caplog.records].count(GPU_WITHOUT_CUDA) == 1
