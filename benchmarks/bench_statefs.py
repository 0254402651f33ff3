"""Benchmark: what restoring through verified bytes costs a pair's Tune driver.

A pair's Tune driver hands Tune a :class:`~optical_ray.distributed.statefs.StateFileSystem`
(the storage filesystem, with the experiment root's state files served from bytes it
verified or wrote). Everything Tune writes through it goes to storage; the state files
are also kept in memory. This measures the writes and reads a pair's driver makes, with
Ray's own helpers, through the plain filesystem and through the wrapper, in one run:

- ``experiment_upload``: ``_upload_to_fs_path`` of a driver's staging directory (what
  Tune's ``sync_up_experiment_state`` does after every snapshot): the state files (an
  ``experiment_state`` of ``--trials`` trials, a searcher state, ``tuner.pkl``) and one
  directory per trial with its result files;
- ``checkpoint_upload``: a 32 MB (``--smoke-test``: 4 MB) checkpoint directory, the
  bulk data that passes through untouched (trials write theirs through the plain
  filesystem: pickled, the wrapper is the storage filesystem itself);
- ``restore_reads``: listing the root, reading ``tuner.pkl`` and the newest experiment
  state, and downloading every root ``.json``/``.pkl`` (what a restore reads).

One JSON line per figure: ``{"bench": "statefs", "storage", "what", "files", "mb",
"plain_s", "wrapped_s", "ratio"}``; ``*_s`` are medians of ``--repeats``, ``ratio`` is
wrapped over plain (1.0: no cost). Local storage always; SeaweedFS (real S3 on loopback,
``tests/s3server.py``) when its binary is installed.

Usage: ``python benchmarks/bench_statefs.py [--smoke-test] [--repeats R] [--trials N]``
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from optical_ray.distributed.statefs import state_filesystem  # noqa: E402
from optical_ray.storage import resolve_storage  # noqa: E402
from tests.s3server import SeaweedS3, find_weed  # noqa: E402

STAMP = "2025-01-01_00-00-00"


def staging_dir(where: Path, trials: int) -> Path:
    """A pair driver's staging directory: state files and per-trial result files."""
    where.mkdir(parents=True)
    rng = os.urandom
    state = {"trial_data": [["x" * 4000, "y" * 1000] for _ in range(trials)]}
    (where / f"experiment_state-{STAMP}.json").write_text(json.dumps(state))
    (where / f"searcher-state-{STAMP}.pkl").write_bytes(pickle.dumps(rng(200_000)))
    (where / f"basic-variant-state-{STAMP}.json").write_text("{}")
    (where / "tuner.pkl").write_bytes(pickle.dumps(rng(20_000)))
    for t in range(trials):
        trial = where / f"trial_{t:05d}"
        trial.mkdir()
        (trial / "result.json").write_text('{"map": 0.5}\n' * 40)
        (trial / "progress.csv").write_text("map,score\n" + "0.5,0.5\n" * 40)
        (trial / "params.json").write_text('{"distill.lr": 0.001}')
    return where


def files_and_mb(path: Path) -> tuple[int, float]:
    files = [p for p in path.rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files) / 2**20


def median_s(fn: Callable[[int], Any], repeats: int) -> float:
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench(store: Any, name: str, work: Path, args: argparse.Namespace) -> None:
    from ray.train._internal.storage import (
        _download_from_fs_path,
        _list_at_fs_path,
        _upload_to_fs_path,
    )
    from ray.tune.execution.experiment_state import _find_newest_experiment_checkpoint

    staging = staging_dir(work / f"{name}-staging", args.trials)
    ckpt = work / f"{name}-ckpt"
    ckpt.mkdir()
    (ckpt / "model.safetensors").write_bytes(os.urandom((4 if args.smoke_test else 32) * 2**20))
    (ckpt / "state.json").write_text("{}")
    state_files = {
        p.name: p.read_bytes() for p in staging.iterdir() if p.suffix in (".json", ".pkl")
    }

    def fs_for(wrapped: bool, root: str) -> Any:
        base = store.filesystem
        return state_filesystem(base, root, state_files) if wrapped else base

    def figure(
        what: str,
        source: Path | None,
        run: Callable[[Any, str, int], None],
        prepare: Callable[[str], None] = lambda root: None,
    ) -> None:
        times: dict[str, list[float]] = {}
        for wrapped in (False, True, False, True):  # interleaved: drift hits both
            label = "wrapped" if wrapped else "plain"
            root = store.join(f"bench-{name}-{what}-{label}")
            prepare(root)
            fs = fs_for(wrapped, root)
            times.setdefault(label, []).append(
                median_s(lambda i, fs=fs, root=root: run(fs, root, i), args.repeats)
            )
        plain, wrapped = min(times["plain"]), min(times["wrapped"])
        files, mb = files_and_mb(source) if source else (len(state_files), 0.0)
        print(
            json.dumps(
                {
                    "bench": "statefs",
                    "storage": name,
                    "what": what,
                    "files": files,
                    "mb": round(mb, 2),
                    "plain_s": round(plain, 4),
                    "wrapped_s": round(wrapped, 4),
                    "ratio": round(wrapped / plain, 3),
                }
            ),
            flush=True,
        )

    figure(
        "experiment_upload", staging, lambda fs, root, i: _upload_to_fs_path(str(staging), fs, root)
    )
    figure(
        "checkpoint_upload",
        ckpt,
        lambda fs, root, i: _upload_to_fs_path(str(ckpt), fs, f"{root}/checkpoint_{i:06d}"),
    )

    def restore(fs: Any, root: str, i: int) -> None:
        with fs.open_input_file(f"{root}/tuner.pkl") as f:
            f.readall()
        with fs.open_input_stream(_find_newest_experiment_checkpoint(root, fs=fs)) as f:
            f.readall()
        local = work / f"{name}-restore-{time.monotonic_ns()}"
        for rel in _list_at_fs_path(fs, root):
            if rel.endswith((".json", ".pkl")):
                _download_from_fs_path(fs, f"{root}/{rel}", str(local / rel))
        shutil.rmtree(local, ignore_errors=True)

    figure(
        "restore_reads",
        None,
        restore,
        prepare=lambda root: _upload_to_fs_path(str(staging), store.filesystem, root),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke-test", action="store_true", help="small sizes, 3 repeats")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--trials", type=int, default=None)
    args = parser.parse_args()
    args.repeats = args.repeats or (3 if args.smoke_test else 7)
    args.trials = args.trials or (20 if args.smoke_test else 200)
    work = Path(tempfile.mkdtemp(prefix="bench-statefs-"))
    try:
        bench(resolve_storage(str(work / "store")), "local", work, args)
        if find_weed() is not None:
            with SeaweedS3(work / "seaweed") as server:
                server.make_bucket(server.bucket)
                os.environ.update(server.client_env())
                bench(resolve_storage(f"s3://{server.bucket}/bench"), "s3", work, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
