"""Shared fixtures: a tiny synthetic world and a tiny encoder built from its tokenizer."""

from __future__ import annotations

from pathlib import Path

import pytest

# A real S3 server (SeaweedFS) on loopback: fixtures s3_server, s3_env, s3_storage_uri.
pytest_plugins = ["tests.s3server"]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "slow: integration tests (real Ray, real S3, default-scale data, training); "
        "deselect with -m 'not slow'",
    )


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
