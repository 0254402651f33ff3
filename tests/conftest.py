"""Shared fixtures, one per resource for the whole suite: a tiny synthetic world and a
tiny encoder built from its tokenizer, training configs on them, a sweep root (world +
teacher), the sweep-space and sweep-config builders, one local Ray node shared by the
session's sweep tests, and a real S3 server (``tests/s3server.py``).

The ``slow`` marker (integration tests: real Ray, real S3, training) is registered in
``pyproject.toml``; ``bash scripts/test.sh -m "not slow"`` is the quick tier."""

from __future__ import annotations

from pathlib import Path

import pytest

# A real S3 server (SeaweedFS) on loopback: fixtures s3_server, s3_env, s3_storage_uri.
pytest_plugins = ["tests.s3server"]


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory: pytest.TempPathFactory):
    """A tiny-scale synthetic world (seed 0): its :class:`WorldManifest`, root at ``.root``.

    Shared by the whole session: treat it as read-only.
    """
    from optical_ray.data.synthetic import synthesize_world

    return synthesize_world(tmp_path_factory.mktemp("tiny_world"), seed=0, scale="tiny")


@pytest.fixture(scope="session")
def tiny_encoder_dir(tiny_world, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory with the tiny world's tokenizer and a 2-layer, hidden-64 BERT (seed 0),
    loadable with ``AutoTokenizer`` / ``AutoModel.from_pretrained``. Read-only."""
    from optical_ray.models.tiny import TinyModelSpec, write_tiny_encoder

    return write_tiny_encoder(
        tmp_path_factory.mktemp("tiny_encoder"), tiny_world.tokenizer_dir, TinyModelSpec(), seed=0
    )


# --------------------------------------------------------------------------- model / train


@pytest.fixture
def one_torch_thread():
    """Run a test on one intra-op thread: on a small shared machine two threads that
    contend with other processes are several times slower than one."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def tiny_config(tiny_world, tmp_path):
    """Factory of validated Configs on the tiny world: ``tiny_config(**{"rank.steps": 2})``.

    Training defaults are shrunk for tests (small batches, few steps, quiet logs); the
    run directory is under ``tmp_path``.
    """
    from optical_ray.config import from_flat

    base = {
        "data.root": str(tiny_world.root),
        "output_dir": str(tmp_path / "runs"),
        "pair": "en-xc",
        "train.log_every": 1000,
        "train.warmup_ratio": 0.0,
        "rank.batch_size": 8,
        "rank.steps": 2,
        "rank.lr": 1e-3,
        "adapt.batch_size": 8,
        "adapt.steps": 2,
        "adapt.lr": 1e-3,
        "distill.batch_size": 8,
        "distill.steps": 2,
        "distill.lr": 1e-3,
        "eval.metrics": ["map", "mrr@10"],
        "eval.pairs": ["en-en", "en-xc"],
    }

    def make(**overrides):
        return from_flat({**base, **overrides})

    return make


# --------------------------------------------------------------------------- sweeps


@pytest.fixture(scope="session")
def sweep_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory with a tiny world (``world/``) and a randomly initialised teacher
    saved from it (``teacher/``), for sweep tests. Read-only: write elsewhere."""
    from optical_ray.config import from_flat
    from optical_ray.data.synthetic import synthesize_world
    from optical_ray.models.encoder import RetrievalModel

    root = tmp_path_factory.mktemp("sweep")
    world = synthesize_world(root / "world", seed=0, scale="tiny")
    cfg = from_flat({"data.root": str(world.root)})
    RetrievalModel.from_config(cfg).save(root / "teacher", cfg)
    return root


@pytest.fixture(scope="session")
def sweep_space():
    """Builder of the small sweep space the sweep tests share: a distill-only trial of
    ``steps`` steps evaluated (and checkpointed) every ``eval_every`` steps, searching
    epsilon and the learning rate, plus any ``params`` given (e.g. ``distill.layers``)."""

    def make(steps: int = 4, eval_every: int = 2, **params) -> dict:
        return {
            "base": {
                "train.stages": ["distill"],
                "distill.steps": steps,
                "distill.batch_size": 8,
                "train.eval_every": eval_every,
                "train.log_every": 1000,
                "train.warmup_ratio": 0.0,
            },
            "params": {
                "distill.epsilon": {"type": "loguniform", "low": 0.01, "high": 1.0},
                "distill.lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2},
                **params,
            },
        }

    return make


@pytest.fixture(scope="session")
def sweep_base(sweep_root: Path):
    """Builder of a sweep's base config on ``sweep_root`` (its world and teacher), with
    ``storage`` and any flat overrides."""
    from optical_ray.config import from_flat

    def make(storage, **over):
        return from_flat(
            {
                "data.root": str(sweep_root / "world"),
                "output_dir": str(sweep_root / "runs"),
                "storage.uri": str(storage),
                "train.teacher": str(sweep_root / "teacher"),
                "eval.metrics": ["map", "mrr@10"],
                "eval.pairs": ["en-en"],
                "sweep.max_concurrent": 2,
                **over,
            }
        )

    return make


# --------------------------------------------------------------------------- Ray


@pytest.fixture(scope="session")
def ray_node():
    """One local Ray node (2 CPUs, 200 MB of object store), started on first use and
    shared by every module of the session that runs sweeps on it."""
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    node = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 2, "object_store_memory": 200 * 2**20}
    )
    yield node
    if ray.is_initialized():
        ray.shutdown()
    node.shutdown()


@pytest.fixture(scope="module")
def cluster(ray_node):
    """This test module's Ray driver, connected to the session's node (modules that need
    a cluster of their own, e.g. one whose nodes a test kills, override this)."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    # Unpinned on purpose: a sweep pins its own pair tasks (driver._pair_task_env), which
    # test_sweep.py::test_a_pair_task_is_pinned_to_its_cluster checks.
    ray.init(address=ray_node.address)
    yield ray_node
    ray.shutdown()
