"""The tracking backends, one class each: MLflow (a parent run per pair, nested child
runs per trial), TensorBoard (event files per trial under storage) and W&B (offline unless
the user has a key). Each ``open``s, ``log``s and ``close``s runs; :class:`optical_ray.
tracking.trackers.Tracker` drives them off the caller's thread and turns their failures into
warnings."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping

from optical_ray.storage import redact

__all__ = [
    "mlflow_tracking_uri",
    "metric_key",
    "MlflowBackend",
    "TensorBoardBackend",
    "WandbBackend",
]

_MLFLOW_BAD = re.compile(r"[^A-Za-z0-9_\-. /]")


def metric_key(key: str) -> str:
    """A metric name MLflow accepts: ``en-sw/mrr@10`` -> ``en-sw/mrr_at_10``."""
    return _MLFLOW_BAD.sub("_", key.replace("@", "_at_"))


def mlflow_tracking_uri(uri: str | None, store: Any, output_dir: str | None = None) -> str:
    """Where MLflow runs go: ``uri`` (``--tracking mlflow=URI``), else
    ``MLFLOW_TRACKING_URI``, else a SQLite store beside the results (local storage) or in
    ``output_dir`` (object storage, where SQLite cannot live)."""
    if uri:
        return uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    root = (
        store.path
        if getattr(store, "scheme", "local") == "local"
        else str(Path(output_dir or "optical_runs").absolute())
    )
    Path(root).mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{Path(root, 'mlflow.db')}"


def _quiet_mlflow_retries() -> None:
    """MLflow retries a request 7 times with growing back-off (minutes per call against
    a dead server); a view gives up sooner. The user's own settings win."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")


# --------------------------------------------------------------------------- backends


class MlflowBackend:
    """MLflow through ``MlflowClient`` (explicit run ids: no global active run). With a
    ``parent`` name, runs are nested children of that run (a pair of a sweep), found
    again on resume by their tags; without, each run stands alone (a training run)."""

    name = "mlflow"

    def __init__(
        self, tracking_uri: str, experiment: str, parent: str | None, tags: Mapping[str, str]
    ) -> None:
        self.tracking_uri, self.experiment, self.parent_name = tracking_uri, experiment, parent
        self.tags = dict(tags)
        self._client: Any = None
        self._exp_id: str | None = None
        self._parent: str | None = None

    def where(self) -> str:
        return redact(self.tracking_uri)

    def _find(self, query: str) -> str | None:
        found = self._client.search_runs([self._exp_id], filter_string=query, max_results=1)
        return found[0].info.run_id if found else None

    def begin(self) -> None:
        if self._client is not None and (self._parent or not self.parent_name):
            return
        from mlflow import MlflowClient

        _quiet_mlflow_retries()
        self._client = client = MlflowClient(tracking_uri=self.tracking_uri)
        exp = client.get_experiment_by_name(self.experiment)
        self._exp_id = exp.experiment_id if exp else client.create_experiment(self.experiment)
        if not self.parent_name:
            return
        self._parent = self._find(
            f"tags.`optical_ray.run` = '{self.parent_name}' and tags.`optical_ray.role` = 'pair'"
        )
        if self._parent:  # a resumed sweep: the pair's run goes on
            client.update_run(self._parent, status="RUNNING")
        else:
            self._parent = client.create_run(
                self._exp_id,
                run_name=self.parent_name,
                tags={**self.tags, "optical_ray.run": self.parent_name, "optical_ray.role": "pair"},
            ).info.run_id

    def open(self, key: str, params: dict[str, str], tags: dict[str, str]) -> Any:
        from mlflow.entities import Param

        self.begin()
        client = self._client
        role = "trial" if self.parent_name else "run"
        nest = {"mlflow.parentRunId": self._parent} if self._parent else {}
        query = f"tags.`optical_ray.run` = '{key}' and tags.`optical_ray.role` = '{role}'"
        run_id = self._find(
            query + (f" and tags.`mlflow.parentRunId` = '{self._parent}'" if self._parent else "")
        )
        if run_id:  # resumed: its run goes on (params are already there)
            client.update_run(run_id, status="RUNNING")
            return run_id
        run_id = client.create_run(
            self._exp_id,
            run_name=key,
            tags={**self.tags, **tags, **nest, "optical_ray.run": key, "optical_ray.role": role},
        ).info.run_id
        items = [Param(k[:250], v[:6000]) for k, v in sorted(params.items())]
        for i in range(0, len(items), 100):  # MLflow's batch limit
            client.log_batch(run_id, params=items[i : i + 100])
        return run_id

    def log(self, run: Any, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._client.log_batch(
            run, metrics=[Metric(metric_key(k), v, now, step) for k, v in metrics.items()]
        )

    def close(self, run: Any, status: str, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        self._client.log_batch(run, tags=[RunTag(k, v) for k, v in tags.items()])
        self._client.set_terminated(run, status="FAILED" if status == "failed" else "FINISHED")

    def end(self) -> None:
        if self._parent is not None:
            self._client.set_terminated(self._parent, status="FINISHED")


class TensorBoardBackend:
    """TensorBoard (tensorboardX): one event directory per run, ``<storage>/<rel>/<run>``,
    written locally and copied to object storage when the run ends, so that
    ``tensorboard --logdir <storage>/tensorboard`` shows every run."""

    name = "tensorboard"

    def __init__(self, store: Any, rel: str, tags: Mapping[str, str]) -> None:
        self.store, self.rel, self.tags = store, rel.strip("/"), dict(tags)

    def where(self) -> str:
        return self.store.uri_of(self.rel)

    def begin(self) -> None:
        pass

    def open(self, key: str, params: dict[str, str], tags: dict[str, str]) -> Any:
        from tensorboardX import SummaryWriter

        rel = f"{self.rel}/{key}"
        staging = (
            None
            if self.store.scheme == "local"
            else Path(tempfile.mkdtemp(prefix="optical-ray-tb-"))
        )
        local = Path(self.store.path, rel) if staging is None else staging / key
        writer = SummaryWriter(logdir=str(local))
        writer.add_text("config", "\n".join(f"    {k} = {v}" for k, v in sorted(params.items())))
        writer.add_text(
            "tags", "\n".join(f"    {k} = {v}" for k, v in sorted({**self.tags, **tags}.items()))
        )
        return writer, rel, local, staging

    def log(self, run: Any, metrics: dict[str, float], step: int) -> None:
        writer = run[0]
        for key, value in metrics.items():
            writer.add_scalar(key, value, step)
        writer.flush()

    def close(self, run: Any, status: str, tags: dict[str, str]) -> None:
        writer, rel, local, staging = run
        writer.add_text(
            "end",
            "\n".join([f"    status = {status}", *(f"    {k} = {v}" for k, v in tags.items())]),
        )
        writer.close()
        if staging is not None:
            for path in local.rglob("*"):
                if path.is_file():
                    self.store.write_bytes(f"{rel}/{path.relative_to(local)}", path.read_bytes())
            shutil.rmtree(staging, ignore_errors=True)

    def end(self) -> None:
        pass


class WandbBackend:
    """Weights & Biases: one run per trial in project ``project``, grouped by ``group``.
    Offline (files under ``dir``; ``wandb sync`` uploads them later) unless
    ``WANDB_MODE`` says otherwise; online mode needs the user's own key (``WANDB_API_KEY``
    or ``wandb login``)."""

    name = "wandb"

    def __init__(self, project: str, group: str | None, dir: str, tags: Mapping[str, str]) -> None:
        self.project, self.group, self.dir, self.tags = project, group, dir, dict(tags)

    def where(self) -> str:
        mode = os.environ.get("WANDB_MODE", "offline")
        return (
            self.dir
            if mode in ("offline", "disabled")
            else os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")
        )

    def begin(self) -> None:
        Path(self.dir).mkdir(parents=True, exist_ok=True)

    def open(self, key: str, params: dict[str, str], tags: dict[str, str]) -> Any:
        import wandb

        run_id = re.sub(r"[^A-Za-z0-9_-]", "-", f"{self.group or self.project}-{key}")
        run = wandb.init(
            project=self.project,
            group=self.group,
            name=key,
            id=run_id,
            dir=self.dir,
            config=params,
            resume="allow",
            reinit="create_new",
            mode=os.environ.get("WANDB_MODE", "offline"),
            tags=sorted({self.tags.get("optical_ray.pair", ""), self.project} - {""}),
            settings=wandb.Settings(silent=True, console="off", x_disable_stats=True),
        )
        run.summary.update({**self.tags, **tags})
        return run

    def log(self, run: Any, metrics: dict[str, float], step: int) -> None:
        run.log({**metrics, "global_step": step})

    def close(self, run: Any, status: str, tags: dict[str, str]) -> None:
        run.summary.update({**tags, "optical_ray.status": status})
        run.finish(exit_code=1 if status == "failed" else 0)

    def end(self) -> None:
        pass
