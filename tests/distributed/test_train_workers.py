"""Ray Train: two real nodes on this machine, DDP across them, a killed worker."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def two_nodes(ray_node, tmp_path_factory):
    """A head and one worker node (1 CPU and 1 logical GPU each, small object stores) from
    :class:`~optical_ray.cluster.local.LocalCluster`, this process connected; stopped after.

    The session's ``ray_node`` runs beside it, as another cluster on a user's host may:
    Ray's own lookups in the workers then find the newest cluster, not this one, unless
    the job pins its address (:func:`~optical_ray.cluster.nodes.pinned_env`)."""
    from optical_ray.cluster.local import LocalCluster

    if ray.is_initialized():
        ray.shutdown()
    with LocalCluster(
        nodes=1,
        cpus_per_node=1,
        gpus_per_node=1,  # logical: Ray hands them out, torch sees no CUDA behind them
        object_store_memory=150 * 2**20,
        name="two-nodes",
        state_dir=tmp_path_factory.mktemp("cluster"),
    ) as cluster:
        cluster.connect()
        try:
            yield cluster
        finally:
            ray.shutdown()


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    """A tiny world and a (randomly initialised) teacher saved from it."""
    from optical_ray.config import from_flat
    from optical_ray.data.synthetic import synthesize_world
    from optical_ray.models.encoder import RetrievalModel

    root = tmp_path_factory.mktemp("dist")
    world = synthesize_world(root / "world", seed=0, scale="tiny")
    cfg = from_flat({"data.root": str(world.root), "model.tiny.dropout": 0.0})
    RetrievalModel.from_config(cfg).save(root / "teacher", cfg)
    return root


def _cfg(root: Path, name: str, **over):
    from optical_ray.config import from_flat

    base = {
        "data.root": str(root / "world"),
        "output_dir": str(root / "runs"),
        "storage.uri": str(root / "storage"),
        "name": name,
        "pair": "en-xc",
        "train.teacher": str(root / "teacher"),
        "train.stages": ["distill"],
        "train.warmup_ratio": 0.0,
        "train.log_every": 1000,
        "model.tiny.dropout": 0.0,
        "distill.batch_size": 8,
        "distill.steps": 6,
        "distill.lr": 1e-3,
        "train.checkpoint_every": 3,
        "eval.metrics": ["map"],
        "eval.pairs": ["en-xc"],
    }
    return from_flat({**base, **over})


def _final_state(checkpoint: str) -> dict:
    return json.loads((Path(checkpoint) / "state.json").read_text())


def _train_worker_pids(cluster) -> list[int]:
    """Live Ray Train worker processes of ``cluster`` (Ray titles them
    ``ray::RayTrainWorker...``); never another cluster's."""
    import psutil

    out = []
    for pid in cluster.pids():
        try:
            cmd = " ".join(psutil.Process(pid).cmdline())
        except psutil.Error:
            continue
        if cmd.startswith("ray::RayTrainWorker"):
            out.append(pid)
    return sorted(out)


def test_two_workers_on_two_nodes_equal_one_worker(two_nodes, teacher_dir) -> None:
    from optical_ray.distributed.train import fit

    one = fit(_cfg(teacher_dir, "one", **{"scaling.workers": 1}))
    two = fit(
        _cfg(
            teacher_dir,
            "two",
            **{
                "scaling.workers": 2,
                "distill.batch_size": 4,
                "scaling.placement_strategy": "STRICT_SPREAD",
            },
        )
    )
    # Global batch 8 either way, round-robin shards: the same examples per step.
    s1 = _final_state(one.checkpoint)["history"]["steps"]
    s2 = _final_state(two.checkpoint)["history"]["steps"]
    assert len(s1) == len(s2) == 6
    for a, b in zip(s1, s2):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4, abs=1e-6)
    assert two.metrics["map"] == pytest.approx(one.metrics["map"], abs=1e-4)
    # STRICT_SPREAD put one worker on each node: the group spanned both nodes.
    assert two.metrics["num_nodes"] == 2 and two.metrics["num_workers"] == 2
    assert one.metrics["num_nodes"] == 1
    # Checkpoints went to the storage URI, the model with the resolved config beside it.
    assert Path(two.checkpoint).is_relative_to(teacher_dir / "storage" / "two")
    assert (Path(two.checkpoint) / "model" / "optical_ray.json").is_file()


def test_killed_worker_resumes_from_checkpoint(two_nodes, teacher_dir) -> None:
    from optical_ray.distributed.train import fit

    steps = 24
    calm = fit(
        _cfg(
            teacher_dir,
            "calm",
            **{
                "scaling.workers": 2,
                "distill.batch_size": 4,
                "distill.steps": steps,
                "train.checkpoint_every": 4,
            },
        )
    )
    storage = teacher_dir / "storage" / "storm"
    killed: list[int] = []

    def kill_one_worker_after_a_checkpoint() -> None:
        deadline = time.time() + 240
        while time.time() < deadline and not killed:
            # A second checkpoint on disk means the first one is registered with the
            # controller (a checkpoint directory appears before its report lands).
            if (
                storage.is_dir()
                and sum(p.name.startswith("checkpoint_") for p in storage.iterdir()) >= 2
            ):
                workers = _train_worker_pids(two_nodes)
                if workers:
                    os.kill(workers[-1], signal.SIGKILL)
                    killed.append(workers[-1])
                    return
            time.sleep(0.2)

    killer = threading.Thread(target=kill_one_worker_after_a_checkpoint, daemon=True)
    killer.start()
    storm = fit(
        _cfg(
            teacher_dir,
            "storm",
            **{
                "scaling.workers": 2,
                "distill.batch_size": 4,
                "distill.steps": steps,
                "train.checkpoint_every": 4,
                "scaling.max_failures": 2,
            },
        )
    )
    killer.join(timeout=5)
    assert killed, "no worker was killed: the run finished before its first checkpoint"
    history = _final_state(storm.checkpoint)["history"]
    # It resumed from a checkpoint (a step > 0), not from step 0 ...
    assert history["resumes"] and history["resumes"][0]["step"] > 0
    assert [s["step"] for s in history["steps"]] == list(range(1, steps + 1))
    # ... and ended where the undisturbed run ended.
    calm_steps = _final_state(calm.checkpoint)["history"]["steps"]
    assert history["steps"][-1]["loss"] == pytest.approx(calm_steps[-1]["loss"], rel=1e-4)
    assert storm.metrics["map"] == pytest.approx(calm.metrics["map"], abs=1e-4)


def test_restart_with_same_name_continues_after_driver_dies(two_nodes, teacher_dir) -> None:
    import subprocess
    import sys

    import yaml

    from optical_ray.config import to_dict
    from optical_ray.distributed.train import fit

    cfg = _cfg(teacher_dir, "again", **{"distill.steps": 30, "train.checkpoint_every": 3})
    path = teacher_dir / "again.yaml"
    path.write_text(yaml.safe_dump(to_dict(cfg)))
    driver = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "optical_ray.cli",
            "train",
            "--config",
            str(path),
            "--address",
            two_nodes.address,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    storage = teacher_dir / "storage" / "again"
    deadline = time.time() + 240
    try:
        while time.time() < deadline and driver.poll() is None:
            if (
                storage.is_dir()
                and sum(p.name.startswith("checkpoint_") for p in storage.iterdir()) >= 2
            ):
                break
            time.sleep(0.2)
        assert driver.poll() is None, "the driver ended before its first checkpoint"
    finally:
        driver.kill()  # SIGKILL: the driver dies mid-run
        driver.wait()
    again = fit(cfg)
    history = _final_state(again.checkpoint)["history"]
    assert history["resumes"] and history["resumes"][0]["step"] > 0
    assert [s["step"] for s in history["steps"]] == list(range(1, 31))


def test_too_many_workers_is_one_clear_error(two_nodes, teacher_dir) -> None:
    from optical_ray.distributed.train import fit
    from optical_ray.errors import ConfigError

    with pytest.raises(ConfigError, match="needs 8 CPUs .* the cluster has 2 CPUs"):
        fit(_cfg(teacher_dir, "big", **{"scaling.workers": 8}))


def test_workers_find_their_own_cluster_beside_another(two_nodes) -> None:
    """With the session's other cluster running on this host, Ray's state API in a worker
    (what Ray Train's placement-group cleaner asks whether its controller lives) finds
    this cluster's actors: the job pins ``RAY_ADDRESS``. Unpinned, it looked in the
    newest cluster, took the controller for dead and removed the training workers."""

    @ray.remote(num_cpus=0)
    class Probe:
        def look(self) -> tuple[str | None, bool]:
            from ray.util.state import get_actor

            me = ray.get_runtime_context().get_actor_id()
            return os.environ.get("RAY_ADDRESS"), get_actor(me) is not None

    probe = Probe.remote()
    address, found = ray.get(probe.look.remote())
    ray.kill(probe)
    assert address == two_nodes.address
    assert found


def test_gpu_workers_get_their_own_gpu_and_train_on_cpu(two_nodes, teacher_dir, caplog) -> None:
    """``--workers 2 --gpus-per-worker 1`` on the two nodes' logical GPUs: each worker
    holds its own GPU (no two share one, none holds more than asked), torch sees no CUDA
    behind them, so the run trains on CPU over gloo after one warning, never a crash."""
    from optical_ray.distributed.train import GPU_WITHOUT_CUDA, fit

    result = fit(_cfg(teacher_dir, "gpu", **{"scaling.workers": 2, "scaling.gpus_per_worker": 1}))
    placement = _final_state(result.checkpoint)["placement"]
    assert [p["rank"] for p in placement] == [0, 1]
    assert all(len(p["gpu_ids"]) == 1 and p["device"] == "cpu" for p in placement)
    held = [(p["node"], p["gpu_ids"][0]) for p in placement]
    assert len(set(held)) == 2 and len({node for node, _ in held}) == 2
    assert result.metrics["num_nodes"] == 2
    assert [r.getMessage() for r in caplog.records].count(GPU_WITHOUT_CUDA) == 1


def test_more_gpus_than_the_cluster_has_is_one_line(two_nodes, teacher_dir) -> None:
    from optical_ray.distributed.train import fit
    from optical_ray.errors import ConfigError

    with pytest.raises(
        ConfigError, match="needs 1 CPUs and 3 GPUs; the cluster has 2 CPUs and 2 GPUs"
    ):
        fit(_cfg(teacher_dir, "gbig", **{"scaling.workers": 1, "scaling.gpus_per_worker": 3}))
