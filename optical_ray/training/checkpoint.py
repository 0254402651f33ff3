"""Training checkpoints: atomic directories of safetensors plus a ``state.json`` with a
file manifest, the RNG state that makes a resumed run bit-identical, and finding the
newest complete checkpoint of a run.

Nothing in a checkpoint needs unpickling arbitrary objects: weights and RNG states are
safetensors, the optimizer state is read back with ``weights_only=True``.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from optical_ray.config import Config, to_dict
from optical_ray.errors import TrainingError
from optical_ray.models.encoder import RetrievalModel

__all__ = [
    "STATE_FILE",
    "CHECKPOINT_PREFIX",
    "complete_checkpoints",
    "remote_checkpoints",
    "newest_checkpoint",
    "fetch_checkpoint",
    "fetch_usable_checkpoint",
    "checkpoint_problem",
    "read_optimizer_state",
    "warn_damaged",
    "rng_state",
    "set_rng_state",
    "save_checkpoint",
    "read_checkpoint_state",
    "load_module",
]

STATE_FILE = "state.json"
CHECKPOINT_PREFIX = "ckpt-"


def complete_checkpoints(root: Path) -> list[Path]:
    """Finished checkpoints under ``root``, oldest first (by stage, then step)."""
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        if p.name.startswith(CHECKPOINT_PREFIX) and (p / STATE_FILE).is_file():
            try:
                s = json.loads((p / STATE_FILE).read_text(encoding="utf-8"))
                found.append(((s["stage_index"], s["step"], s["stage_done"]), p))
            except (OSError, ValueError, KeyError):
                continue  # unreadable: not a checkpoint we wrote completely
    return [p for _, p in sorted(found)]


def remote_checkpoints(filesystem: Any, run_path: str) -> list[str]:
    """Paths of the complete checkpoints under ``run_path`` on ``filesystem``, newest
    first (by stage, then step). Complete = every file of its manifest present with
    its size; a checkpoint cut off mid-upload is skipped."""
    import pyarrow.fs as pafs

    try:
        entries = filesystem.get_file_info(pafs.FileSelector(run_path, allow_not_found=True))
    except OSError:
        return []
    found: list[tuple[tuple[int, int, bool], str]] = []
    for entry in entries:
        if entry.type != pafs.FileType.Directory or not entry.base_name.startswith("checkpoint_"):
            continue
        try:
            with filesystem.open_input_stream(f"{entry.path}/state.json") as f:
                state = json.loads(f.read())
            files = state.get("files") or {}
            infos = filesystem.get_file_info([f"{entry.path}/{rel}" for rel in files])
            if any(
                i.type != pafs.FileType.File or i.size != files[i.path[len(entry.path) + 1 :]]
                for i in infos
            ):
                continue
            key = (int(state["stage_index"]), int(state["step"]), bool(state["stage_done"]))
        except (OSError, ValueError, KeyError):
            continue
        found.append((key, entry.path))
    return [path for _, path in sorted(found, reverse=True)]


def newest_checkpoint(filesystem: Any, run_path: str) -> tuple[str, Any] | None:
    """``(path, filesystem)`` of the newest complete checkpoint under ``run_path``
    (see :func:`remote_checkpoints`), or None."""
    found = remote_checkpoints(filesystem, run_path)
    return (found[0], filesystem) if found else None


def fetch_checkpoint(found: tuple[str, Any], target: Path) -> Path:
    """Copy the checkpoint ``(path, filesystem)`` (as :func:`newest_checkpoint` gives
    it) into the local directory ``target``."""
    import pyarrow.fs as pafs

    pafs.copy_files(
        found[0],
        str(target),
        source_filesystem=found[1],
        destination_filesystem=pafs.LocalFileSystem(),
    )
    return target


def fetch_usable_checkpoint(filesystem: Any, run_path: str, target: Path) -> Path | None:
    """The newest checkpoint under ``run_path`` that a run can resume from, copied into
    ``target/<name>``; a damaged one (:func:`checkpoint_problem`) is skipped with a
    warning for the one before it. None when there is none."""
    for path in remote_checkpoints(filesystem, run_path):
        local = fetch_checkpoint((path, filesystem), target / path.rstrip("/").rsplit("/", 1)[-1])
        problem = checkpoint_problem(local)
        if problem is None:
            return local
        warn_damaged(path, problem)
        shutil.rmtree(local, ignore_errors=True)
    return None


def read_optimizer_state(path: str | os.PathLike, device: Any = "cpu") -> dict[str, Any]:
    """The optimizer state in checkpoint ``path`` (``optimizer.pt``, tensors and numbers
    only). A file cut short or holding anything else (a pickle of other objects) is a
    one-line :class:`TrainingError`: it is never unpickled, and torch's advice to load
    it with ``weights_only=False`` is not passed on."""
    file = Path(path) / "optimizer.pt"
    try:
        with warnings.catch_warnings():
            # torch warns about the pickle protocol of a file it then refuses to unpickle
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            state = torch.load(file, map_location=device, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a bad file
        raise TrainingError(
            f"{file}: not a plain optimizer state ({type(exc).__name__}: truncated, "
            "damaged or tampered); it was not unpickled"
        ) from None
    if not isinstance(state, dict) or not {"state", "param_groups"} <= set(state):
        raise TrainingError(f"{file}: not an optimizer state (no state/param_groups)")
    return state


def checkpoint_problem(path: str | os.PathLike) -> str | None:
    """Why a run cannot resume from the local checkpoint directory ``path`` (a file of
    its manifest missing or of another size, an optimizer state that is not plain
    tensors), or None when it can."""
    p = Path(path)
    try:
        state = json.loads((p / STATE_FILE).read_text(encoding="utf-8"))
        files = dict(state.get("files") or {})
    except (OSError, ValueError, TypeError, AttributeError):
        return f"{STATE_FILE} is unreadable"
    for rel, size in files.items():
        f = p / rel
        if not f.is_file():
            return f"{rel} is missing"
        if f.stat().st_size != size:
            return f"{rel} has {f.stat().st_size} bytes, its manifest says {size}"
    if (p / "optimizer.pt").is_file():
        try:
            read_optimizer_state(p)
        except TrainingError:
            return "optimizer.pt is not a plain optimizer state (truncated, damaged or tampered)"
    return None


def warn_damaged(path: str | os.PathLike, problem: str) -> None:
    """The warning for a checkpoint skipped on resume: the one before it is used."""
    warnings.warn(
        f"checkpoint {path} is damaged ({problem}); resuming from the previous complete "
        "checkpoint instead (or from the start when there is none)",
        UserWarning,
        stacklevel=3,
    )


def rng_state() -> tuple[dict[str, Tensor], dict[str, Any]]:
    np_state = np.random.get_state()
    tensors = {
        "torch": torch.get_rng_state(),
        "numpy": torch.from_numpy(np_state[1].astype(np.int64)),
    }
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda{i}"] = s
    py = random.getstate()
    meta = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], int(np_state[2]), int(np_state[3]), float(np_state[4])],
    }
    return tensors, meta


def set_rng_state(tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["torch"])
    name, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((name, tensors["numpy"].numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = meta["python"]
    random.setstate((version, tuple(internal), gauss))
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("cuda")]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def save_checkpoint(
    root: Path,
    name: str,
    *,
    state: dict[str, Any],
    model: RetrievalModel,
    cfg: Config,
    teacher: RetrievalModel | None = None,
    extra: dict[str, nn.Module] | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    tensors: dict[str, dict[str, Tensor]] | None = None,
) -> Path:
    """Write a checkpoint directory atomically (temporary sibling, then rename).

    Holds ``model/`` and ``teacher/`` (safetensors), ``<extra>.safetensors`` (e.g. the
    MLM head), ``<key>.safetensors`` per entry of ``tensors`` (e.g. the best weights so
    far of a stage that keeps its best dev evaluation), ``optimizer.pt`` (tensors and
    numbers only: read back with
    ``weights_only=True``), ``rng.safetensors`` and ``state.json`` (step, scheduler,
    history, config). Nothing in it needs unpickling arbitrary objects.
    """
    root.mkdir(parents=True, exist_ok=True)
    final = root / name
    tmp = root / f".tmp-{name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    model.save(tmp / "model", cfg)
    if teacher is not None:
        teacher.save(tmp / "teacher", cfg)
    for key, module in (extra or {}).items():
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()},
            str(tmp / f"{key}.safetensors"),
        )
    for key, values in (tensors or {}).items():
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in values.items()},
            str(tmp / f"{key}.safetensors"),
        )
    if optimizer is not None:
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    rng_tensors, rng_meta = rng_state()
    save_file(rng_tensors, str(tmp / "rng.safetensors"))
    # A manifest of every file: a copy in object storage (uploaded in no particular
    # order) is complete when all of them are there with these sizes.
    files = {
        p.relative_to(tmp).as_posix(): p.stat().st_size
        for p in sorted(tmp.rglob("*"))
        if p.is_file()
    }
    doc = {**state, "rng": rng_meta, "config": to_dict(cfg), "version": 1, "files": files}
    (tmp / STATE_FILE).write_text(json.dumps(doc, sort_keys=True) + "\n", encoding="utf-8")
    if final.exists():  # the same step written again (a resumed run): replace it whole
        old = root / f".old-{name}-{os.getpid()}"
        os.replace(final, old)
        shutil.rmtree(old, ignore_errors=True)
    os.replace(tmp, final)
    return final


def read_checkpoint_state(path: str | os.PathLike) -> dict[str, Any]:
    """The ``state.json`` of a checkpoint directory."""
    p = Path(path) / STATE_FILE
    if not p.is_file():
        raise TrainingError(f"{path}: not a checkpoint (no {STATE_FILE}); it may be half written")
    return json.loads(p.read_text(encoding="utf-8"))


def load_module(path: Path, key: str, module: nn.Module, device: torch.device) -> None:
    module.load_state_dict(load_file(str(path / f"{key}.safetensors"), device=str(device)))
