"""Ray Train wiring: the stage functions of :mod:`optical_ray.training.recipe`, run by a
``TorchTrainer`` across workers and nodes.

Everything Ray-specific about training lives here (Ray's API moves fast: one place to
change). The per-worker function builds the config and calls :func:`train.run` with a
:class:`RayTrainContext`, which maps the context protocol onto Ray Train: rank and
world size from ``ray.train.get_context()``, DDP through ``prepare_model`` (gloo on
CPU, NCCL on GPU), ``ray.train.report`` for metrics and checkpoints (uploaded to the
storage URI), ``ray.train.get_checkpoint`` for resume after a worker failure or a
restart with the same name and storage.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from optical_ray.training.checkpoint import fetch_checkpoint, fetch_usable_checkpoint
from optical_ray.config import Config, from_dict, from_flat, to_dict
from optical_ray.distributed.devreports import DevReports
from optical_ray.training.context import UNSCORED, TrainContext, fill_metric, worst_score
from optical_ray.errors import ConfigError, TrainingError
from optical_ray.models.encoder import check_distill_layers
from optical_ray.training.recipe import run

log = logging.getLogger(__name__)

__all__ = [
    "RayTrainContext",
    "FitResult",
    "UNSCORED",
    "build_trainer",
    "check_resources",
    "GPU_WITHOUT_CUDA",
    "gpu_workers_see_cuda",
    "resolve_backend",
    "checkpoint_score",
    "fit",
    "init_ray",
    "prepare_config",
    "worker_loop",
]


def init_ray(
    address: str | None = None, *, num_cpus: int | None = None, log_to_driver: bool = True
) -> None:
    """Connect to ``address`` (``auto``, ``HOST:PORT``, ``ray://...``) or start a local
    Ray with capped memory; a no-op if Ray is already up. ``log_to_driver=False`` keeps
    workers' output in their log files (a sweep prints its own progress lines)."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        from optical_ray.cluster.nodes import pinned_env

        # "auto" and ray:// resolve on connect: only a HOST:PORT can be pinned here.
        pin = "://" not in address and address != "auto"
        env = pinned_env(address) if pin else None
        ray.init(address=address, log_to_driver=log_to_driver, runtime_env=env)
        return
    # A local Ray claims ~30% of RAM for its object store by default; we pass
    # tensors by file, not through the object store, so a small one is enough.
    # address="local": always a fresh local instance, never a cluster that another
    # process happens to run on this machine.
    ray.init(
        address="local",
        num_cpus=num_cpus,
        object_store_memory=512 * 1024 * 1024,
        include_dashboard=False,
        log_to_driver=log_to_driver,
    )


def prepare_config(cfg: Config) -> Config:
    """Make paths absolute so every worker (on any node) resolves them the same way.

    A synthetic world (``data.root`` unset) is regenerated per node from its seed, so it
    needs no shared file system; a user's ``data.root`` must be visible on every node.
    """
    data = to_dict(cfg)
    data["output_dir"] = str(Path(cfg.output_dir).expanduser().resolve())
    if cfg.data.root is not None:
        data["data"]["root"] = str(Path(cfg.data.root).expanduser().resolve())
    return from_dict(data)


def checkpoint_score(metrics: dict[str, Any], key: str, mode: str) -> float:
    """The value Ray Train ranks a reported checkpoint by: ``metrics[key]`` when it is
    a finite number, else the worst finite score for ``mode`` (``max`` or ``min``;
    :data:`~optical_ray.training.context.UNSCORED`, see there why not -inf)."""
    value = metrics.get(key)
    if isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    return worst_score(mode)


class RayTrainContext(TrainContext):
    """:class:`~optical_ray.training.recipe.TrainContext` on a Ray Train worker."""

    def __init__(self, cfg: Config, run_path: str | None = None, storage: Any = None) -> None:
        import ray.train
        import ray.train.torch

        c = ray.train.get_context()
        local = Path(tempfile.mkdtemp(prefix=f"optical-ray-{cfg.name}-r{c.get_world_rank()}-"))
        device = ray.train.torch.get_device()
        if device.type == "cuda" and not torch.cuda.is_available():
            # GPU resources without CUDA (logical GPUs): the driver said so once
            # (resolve_backend); the worker trains on its CPU.
            device = torch.device("cpu")
        super().__init__(
            rank=c.get_world_rank(),
            world_size=c.get_world_size(),
            device=device,
            run_dir=local,
        )
        self.score_key, self.score_mode = cfg.sweep.metric, cfg.sweep.mode
        self.last: dict[str, Any] = {}  # the last report that carried the metric
        self.run_path, self.storage = run_path, storage
        self._restored: Path | None = None
        self._num_nodes: int | None = None
        self._placement: list[dict[str, Any]] | None = None
        self._started = time.perf_counter()
        # rank 0 evaluates (training.recipe.evaluate_dev fills it): its reports carry
        # the per-query values Tune's noise-aware promotion and the catalog read
        self.dev_per_query: dict[str, Any] = {}
        self.dev_reports = DevReports(cfg, self.dev_per_query)

    @property
    def num_nodes(self) -> int:
        """How many distinct Ray nodes this worker group spans (reported with metrics)."""
        if self._num_nodes is None:
            self._num_nodes = len({p["node"] for p in self.placement()})
        return self._num_nodes

    def placement(self) -> list[dict[str, Any]]:
        """Every rank's node, the GPU ids Ray assigned it and the device it trains on,
        gathered once from all ranks (a collective: every rank calls it)."""
        if self._placement is None:
            import ray

            here = {
                "rank": self.rank,
                "node": ray.get_runtime_context().get_node_id(),
                "gpu_ids": [
                    str(i) for i in ray.get_runtime_context().get_accelerator_ids().get("GPU", [])
                ],
                "device": str(self.device),
            }
            everyone: list[Any] = [here]
            if self.world_size > 1 and dist.is_initialized():
                everyone = [None] * self.world_size
                dist.all_gather_object(everyone, here)
            self._placement = everyone
        return self._placement

    def prepare_model(self, model: nn.Module) -> nn.Module:
        if self.world_size == 1:
            return model
        import ray.train.torch

        # The stage loops move modules to the device themselves.
        return ray.train.torch.prepare_model(model, move_to_device=False)

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        import ray.train

        # run_s: seconds since this worker began the run (the trial's own work, without
        # the worker-group start-up that comes before it).
        out = {
            **metrics,
            "num_workers": self.world_size,
            "num_nodes": self.num_nodes,
            "run_s": time.perf_counter() - self._started,
        }
        if self.score_key in metrics:
            self.last = dict(metrics)
        self.dev_reports.attach(metrics, out)
        # The checkpoint manager ranks by "score"; every report must carry it, finite.
        out = fill_metric(out, self.last, self.score_key, self.score_mode)
        checkpoint = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        ray.train.report(out, checkpoint=checkpoint)  # collective: every rank calls it
        if checkpoint_dir:
            shutil.rmtree(checkpoint_dir, ignore_errors=True)  # persisted to storage now

    def latest_checkpoint(self) -> str | None:
        """The newest complete checkpoint of this run: Ray's own, or a newer one found
        in the run's storage directory.

        Ray Train can hand a restarted worker group no checkpoint, or an older one,
        when the group failed before the controller processed the last reports; our
        checkpoints describe themselves (stage, step, file manifest), so the run
        directory is the ground truth.
        """
        import ray.train

        if self._restored is not None:
            return str(self._restored)
        ckpt = ray.train.get_checkpoint()
        if self.storage is None and ckpt is None:
            return None
        target = Path(tempfile.mkdtemp(prefix="optical-ray-restore-", dir=self.run_dir))
        # the newest usable one in storage (a damaged one is skipped with a warning)
        found = (
            fetch_usable_checkpoint(self.storage, self.run_path, target) if self.storage else None
        )
        if found is None and ckpt is not None:
            found = fetch_checkpoint((ckpt.path, ckpt.filesystem), target)
        if found is None:
            shutil.rmtree(target, ignore_errors=True)
            return None
        self._restored = found
        return str(found)

    def all_reduce_mean(self, value: float) -> float:
        if self.world_size == 1 or not dist.is_initialized():
            return value
        t = torch.tensor([value], dtype=torch.float64)
        if dist.get_backend() == "nccl":
            t = t.to(self.device)
        dist.all_reduce(t)
        return float(t.item()) / self.world_size

    def barrier(self) -> None:
        if self.world_size > 1 and dist.is_initialized():
            dist.barrier()


def worker_loop(loop_config: dict[str, Any]) -> None:
    """The per-worker training function handed to ``TorchTrainer``."""
    from optical_ray.storage import resolve_storage

    cfg = from_dict(loop_config["config"])
    store = resolve_storage(cfg.storage.uri, cfg.storage.endpoint, cfg.storage.region)
    ctx = RayTrainContext(
        cfg, run_path=store.join(loop_config["run_name"]), storage=store.filesystem
    )
    try:
        run(cfg, ctx)
    finally:
        shutil.rmtree(ctx.run_dir, ignore_errors=True)


def build_trainer(
    cfg: Config, *, storage: Any = None, callbacks: list[Any] | None = None, name: str | None = None
) -> Any:
    """A ``TorchTrainer`` for ``cfg`` writing checkpoints and results to its storage.

    The same ``name`` and storage resume a run that stopped (Train V2 restores from
    the run's checkpoint-manager snapshot), and ``scaling.max_failures`` restarts the
    worker group from the latest checkpoint when a worker dies.
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from optical_ray.storage import resolve_storage

    sc = cfg.scaling
    store = storage or resolve_storage(cfg.storage.uri, cfg.storage.endpoint, cfg.storage.region)
    resources = {"CPU": sc.cpus_per_worker}
    if sc.gpus_per_worker > 0:
        resources["GPU"] = sc.gpus_per_worker
    return TorchTrainer(
        worker_loop,
        train_loop_config={"config": to_dict(cfg), "run_name": name or cfg.name},
        torch_config=TorchConfig(backend=_backend(sc.backend, sc.gpus_per_worker)),
        scaling_config=ScalingConfig(
            num_workers=sc.workers,
            use_gpu=sc.gpus_per_worker > 0,
            resources_per_worker=resources,
            placement_strategy=sc.placement_strategy,
        ),
        run_config=RunConfig(
            name=name or cfg.name,
            storage_path=store.ray_storage_path(),
            storage_filesystem=store.ray_storage_filesystem(),
            checkpoint_config=CheckpointConfig(
                num_to_keep=2,
                checkpoint_score_attribute="score",
                checkpoint_score_order=cfg.sweep.mode,
            ),
            failure_config=FailureConfig(max_failures=sc.max_failures),
            callbacks=callbacks,
        ),
    )


@dataclass
class FitResult:
    """What a distributed run left behind."""

    metrics: dict[str, Any]
    checkpoint: str | None
    path: str
    history: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> str:
        shown = {
            k: round(v, 4) for k, v in self.metrics.items() if isinstance(v, float) and "/" in k
        }
        return f"run at {self.path}; final checkpoint {self.checkpoint}; {shown}"


def fit(cfg: Config, *, address: str | None = None) -> FitResult:
    """Train ``cfg`` with Ray Train on ``scaling.workers`` workers; returns the result.

    The final model is ``<checkpoint>/model`` (the last checkpoint of the last stage).
    """
    from optical_ray.storage import resolve_storage

    cfg = prepare_config(cfg)
    check_distill_layers(cfg)  # before Ray starts: one line, not a failed worker group
    store = resolve_storage(cfg.storage.uri, cfg.storage.endpoint, cfg.storage.region)
    if store.scheme == "s3":
        store.ensure_bucket()
    store.check_writable()  # before Ray: not when the first checkpoint is saved
    init_ray(address)
    check_resources(cfg)
    cfg = resolve_backend(cfg)
    trainer = build_trainer(cfg, storage=store)
    result = trainer.fit()
    if result.error is not None:
        raise TrainingError(f"training run {cfg.name!r} failed: {_root_cause(result.error)}")
    df = result.metrics_dataframe
    history = df.to_dict("records") if df is not None else []
    return FitResult(
        metrics=dict(result.metrics or {}),
        checkpoint=(store.uri_of(store.rel(result.checkpoint.path)) if result.checkpoint else None),
        path=result.path,
        history=history,
    )


#: The driver's one line when a run's GPU workers see no CUDA device.
GPU_WITHOUT_CUDA = "GPU resources were assigned but torch sees no CUDA device; running on CPU"


def _backend(backend: str, gpus_per_worker: float) -> str:
    """The torch.distributed backend: ``backend``, or for ``auto`` NCCL on GPUs and gloo
    otherwise (:func:`resolve_backend` settles ``auto`` before a run with GPUs)."""
    if backend != "auto":
        return backend
    return "nccl" if gpus_per_worker > 0 else "gloo"


def gpu_workers_see_cuda(gpus_per_worker: float, timeout: float = 120.0) -> bool:
    """Whether torch sees a CUDA device in a process holding ``gpus_per_worker`` of
    Ray's GPUs (a task placed like a training worker). Ray's GPUs are logical: a node
    started with ``--num-gpus`` advertises them whether or not it has any. A probe that
    finds no free GPU within ``timeout`` seconds assumes CUDA (Ray's own default)."""
    import ray
    from ray.exceptions import GetTimeoutError

    @ray.remote(num_cpus=0, num_gpus=min(gpus_per_worker, 1.0), max_retries=0)
    def probe() -> bool:
        import torch

        return torch.cuda.is_available()

    ref = probe.remote()
    try:
        return bool(ray.get(ref, timeout=timeout))
    except GetTimeoutError:
        ray.cancel(ref, force=True)
        log.warning(
            "no GPU came free within %.0f s to check for CUDA; assuming the GPU workers have it",
            timeout,
        )
        return True


def resolve_backend(cfg: Config) -> Config:
    """``cfg`` with ``scaling.backend`` settled for the cluster it runs on: with GPUs
    per worker, NCCL when the GPU workers see CUDA; GPUs that torch cannot see (Ray's
    logical GPUs on a CPU host) train on CPU over gloo after one warning,
    :data:`GPU_WITHOUT_CUDA`. Asking for ``nccl`` or ``train.device=cuda`` there is one
    line (:class:`~optical_ray.errors.ConfigError`)."""
    sc = cfg.scaling
    if sc.gpus_per_worker <= 0 or gpu_workers_see_cuda(sc.gpus_per_worker):
        backend = _backend(sc.backend, sc.gpus_per_worker)
        return cfg if backend == sc.backend else from_flat({"scaling.backend": backend}, cfg)
    if sc.backend == "nccl":
        raise ConfigError(
            "scaling.backend: got 'nccl' but torch sees no CUDA device on the GPU workers "
            "(Ray's GPUs here are logical); use 'auto' or 'gloo'"
        )
    if cfg.train.device == "cuda":
        raise ConfigError(
            "train.device: got 'cuda' but torch sees no CUDA device on the GPU workers "
            "(Ray's GPUs here are logical); use 'auto'"
        )
    log.warning(GPU_WITHOUT_CUDA)
    return from_flat({"scaling.backend": "gloo"}, cfg)


def check_resources(cfg: Config) -> None:
    """Fail fast (one line) when the cluster can never fit the worker group."""
    import ray

    total = ray.cluster_resources()
    sc = cfg.scaling
    need_cpu = sc.workers * sc.cpus_per_worker
    need_gpu = sc.workers * sc.gpus_per_worker
    if need_cpu > total.get("CPU", 0) or need_gpu > total.get("GPU", 0):
        raise ConfigError(
            f"scaling: {sc.workers} workers x ({sc.cpus_per_worker:g} CPU, "
            f"{sc.gpus_per_worker:g} GPU) needs {need_cpu:g} CPUs and {need_gpu:g} GPUs; "
            f"the cluster has {total.get('CPU', 0):g} CPUs and {total.get('GPU', 0):g} GPUs "
            "(lower scaling.workers / cpus_per_worker / gpus_per_worker)"
        )


def _root_cause(error: BaseException) -> str:
    """The innermost user-facing message of a Ray error chain, on one line."""
    seen = error
    while True:
        nxt = getattr(seen, "cause", None) or seen.__cause__
        if nxt is None or nxt is seen:
            break
        seen = nxt
    text = str(seen).strip().splitlines()
    return text[-1] if text else type(seen).__name__
