"""Views onto the catalog: persistent Optuna studies, MLflow runs, TensorBoard events and
W&B runs, written as a sweep goes.

The catalog stays the source of truth. Everything here is a *view* that can fail on its
own: a tracking server that is down costs warnings naming it, never a trial or a record.
Tracking calls run on one background thread per backend, so a slow or dead server never
holds up Ray Tune's event loop either.

* Optuna: each pair's study is ``<sweep name>-<pair>`` in ``sweep.optuna_storage`` (by
  default ``sqlite:///<storage>/optuna.db`` for local storage), handed to Ray's
  ``OptunaSearch(storage=..., study_name=...)``; ``optuna-dashboard <url>`` shows every
  pair of a sweep side by side, and :func:`study_importances` reads importances back.
* MLflow: a parent run per pair, a nested child run per trial (flat config as params,
  every dev evaluation as step metrics, catalog record id and checkpoint URI as tags).
* TensorBoard: one event file directory per trial under ``<storage>/tensorboard``.
* W&B: one run per trial, grouped by pair (offline unless the user has a key).

This module needs no Ray: :mod:`optical_ray.distributed.tracking` drives these trackers from
Ray Tune callbacks (on Train V2 they go on the Tuner's ``RunConfig``, not the
TorchTrainer), and :class:`TrackedContext` from a single training run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import re
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

from optical_ray.config.rules import (
    TRACKERS,
    TrackingTarget,
    optuna_storage_problems,
    parse_tracking,
    tracking_problems,
)
from optical_ray.errors import ConfigError, StorageError
from optical_ray.storage import redact
from optical_ray.sweeps.protocol import FINISHED_KEY
from optical_ray.tracking.backends import (
    MlflowBackend,
    TensorBoardBackend,
    WandbBackend,
    metric_key,
    mlflow_tracking_uri,
)

__all__ = [
    "TRACKERS",
    "TrackingTarget",
    "parse_tracking",
    "tracking_problems",
    "optuna_storage_problems",
    "study_name",
    "optuna_storage_url",
    "open_study_storage",
    "check_study_storage",
    "prepare_study",
    "study_importances",
    "mlflow_tracking_uri",
    "Tracker",
    "MlflowBackend",
    "TensorBoardBackend",
    "WandbBackend",
    "make_trackers",
    "TrackedContext",
    "track_run",
    "safe_params",
    "param_value",
    "metric_key",
    "step_metrics",
]

log = logging.getLogger(__name__)

#: After a failed call, a backend drops calls for this long before it tries the server again.
RETRY_AFTER_S = 20.0
#: How long the end of an experiment waits for a backend's queued calls.
CLOSE_TIMEOUT_S = 60.0
# Result keys that are Ray Tune's bookkeeping or our step counters, not measurements.
_NOT_METRICS = frozenset(
    {
        "training_iteration",
        "time_this_iter_s",
        "time_total_s",
        "timestamp",
        "time_since_restore",
        "iterations_since_restore",
        "timesteps_total",
        "episodes_total",
        "timesteps_since_restore",
        "pid",
        "done",
        "step",
        "global_step",
        "epoch",
        FINISHED_KEY,
        "trial_id",
        "date",
        "hostname",
        "node_ip",
        "experiment_id",
        "checkpoint_dir_name",
        "should_checkpoint",
    }
)
# Config keys (or their last part) that name a secret: never logged, whatever the value.
_SECRET_KEY = re.compile(
    r"(?i)(password|passwd|secret|credential|api[_-]?key|access[_-]?key|"
    r"private[_-]?key|(^|[._-])(auth|token)s?$)"
)


# --------------------------------------------------------------------------- parsing


# --------------------------------------------------------------------------- Optuna


def study_name(sweep_name: str, pair: str) -> str:
    """The Optuna study of ``pair`` in sweep ``sweep_name`` (same as its Tune experiment)."""
    return f"{sweep_name}-{pair}"


def optuna_storage_url(value: str | None, store: Any) -> str | None:
    """The study storage of a sweep: ``value`` as given; by default a SQLite file in a
    local ``store`` (``sqlite:///<storage>/optuna.db``), and in-memory (None) for object
    storage, where SQLite cannot live, or for ``'memory'``."""
    if value == "memory":
        return None
    if value:
        if value.startswith("journal:"):
            return "journal:" + str(Path(value[len("journal:") :].strip()).expanduser().absolute())
        return value
    if getattr(store, "scheme", "local") != "local":
        log.info(
            "sweep.optuna_storage is not set and storage %s is not local: the Optuna "
            "studies stay in memory (set sweep.optuna_storage to an RDB URL to keep "
            "them)",
            store.uri,
        )
        return None
    return f"sqlite:///{Path(store.path, 'optuna.db')}"


def _study_file(url: str) -> Path | None:
    """The local file of a SQLite or journal study storage; None for a server."""
    if url.startswith("journal:"):
        return Path(url[len("journal:") :])
    if url.startswith("sqlite:///"):
        return Path(url[len("sqlite:///") :])
    return None


@contextlib.contextmanager
def _study_errors(url: str) -> Iterator[None]:
    """A study storage that is not a database this Optuna reads (random bytes, another
    Optuna's schema), or that takes no writes, is one line naming the file and what to
    do; Optuna and SQLAlchemy would raise a traceback through the sweep."""
    from sqlalchemy.exc import SQLAlchemyError

    try:
        yield
    except ImportError as exc:  # the URL names a database whose driver is missing
        raise StorageError(
            f"Optuna storage {redact(url)} needs a database driver that is not installed "
            f"({exc}); install it (e.g. psycopg2-binary for postgresql://, PyMySQL for "
            "mysql+pymysql://) or pass --optuna-storage memory"
        ) from None
    except (SQLAlchemyError, RuntimeError, OSError, ValueError) as exc:
        reason = " ".join(str(getattr(exc, "orig", None) or exc).split())
        reason = redact(reason.split(" [SQL:")[0])[:300] or type(exc).__name__
        file = _study_file(url)
        where = f"Optuna study file {str(file)!r}" if file else f"Optuna storage {redact(url)}"
        low = reason.lower()
        if isinstance(exc, RuntimeError) and "schema" in low:  # Optuna's advice is the fix
            raise StorageError(
                f"{where} holds another Optuna version's schema: {reason.rstrip('.')}; "
                "or move the file aside to start the studies afresh"
            ) from None
        if isinstance(exc, PermissionError) or any(
            k in low for k in ("readonly", "read-only", "unable to open")
        ):
            todo = "make it writable (or give another --storage), or pass --optuna-storage memory"
        elif file is not None:
            todo = (
                "move it aside (the studies then start afresh) or restore it from a "
                "backup; --optuna-storage memory keeps the studies in memory"
            )
        else:
            todo = "check --optuna-storage (sweep.optuna_storage) and that the server is up"
        raise StorageError(f"{where} cannot be used ({reason}); {todo}") from None


def open_study_storage(url: str) -> Any:
    """An Optuna storage object for ``url`` (Ray's OptunaSearch takes objects, not URLs).
    A broken or foreign database is a one-line :class:`StorageError` naming the file."""
    import optuna

    with _study_errors(url):
        if url.startswith("journal:"):
            path = Path(url[len("journal:") :])
            path.parent.mkdir(parents=True, exist_ok=True)
            from optuna.storages.journal import JournalFileBackend

            return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
        kwargs: dict[str, Any] = {}
        if url.startswith("sqlite:"):
            Path(url.partition(":///")[2]).parent.mkdir(parents=True, exist_ok=True)
            # Pairs of a sweep write one file at once: wait for the lock instead of failing.
            kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}
        return optuna.storages.RDBStorage(url, **kwargs)


def check_study_storage(value: str | None, store: Any) -> None:
    """Open a sweep's study storage (``sweep.optuna_storage`` on ``store``) once, before
    Ray starts: a broken or foreign ``optuna.db`` is one line now, not a traceback
    from the pair tasks. A file not there yet is left for the sweep to create."""
    import optuna

    url = optuna_storage_url(value, store)
    file = None if url is None else _study_file(url)
    if file is not None and not file.exists():
        return  # nothing to check, and a sweep refused later leaves no empty database
    if url is not None:
        storage = open_study_storage(url)
        with _study_errors(url):  # a journal is read only now
            optuna.get_all_study_names(storage)


def prepare_study(
    url: str,
    name: str,
    *,
    resume: bool,
    metric: str | list[str],
    mode: str | list[str],
    storage: Any = None,
) -> Any:
    """The storage object for study ``name``, checked: a study of that name that exists
    without ``resume`` is refused (its trials would steer a new search), and the study
    records its metric (so the report knows what its values are). Lists of metrics and
    modes make a multi-objective study. ``storage``: one already open on ``url``
    (opening an RDB storage costs a schema check; a sweep prepares every pair's study
    through one)."""
    import optuna

    modes = [mode] if isinstance(mode, str) else list(mode)
    storage = storage if storage is not None else open_study_storage(url)
    with _study_errors(url):
        names = set(optuna.get_all_study_names(storage))
    if name in names and not resume:
        raise ConfigError(
            f"Optuna study {name!r} already exists in {redact(url)}; pass --resume to "
            f"continue it, another --name, or delete it: optuna delete-study --study-name "
            f"{name} --storage {redact(url)}"
        )
    with _study_errors(url):  # a read-only file fails at its first write
        study = optuna.create_study(
            storage=storage,
            study_name=name,
            load_if_exists=True,
            directions=["maximize" if m == "max" else "minimize" for m in modes],
        )
        study.set_user_attr("metric", metric if isinstance(metric, str) else ",".join(metric))
    return storage


def study_importances(
    store: Any, experiment: str, metric: str, *, url: str | None = None
) -> dict[str, float] | None:
    """Parameter importances (Optuna's PED-ANOVA) of the persisted study ``experiment``,
    or None when there is no such study, it optimised another metric, or it has fewer
    than 3 complete trials (the caller then rebuilds a study from the catalog)."""
    import warnings

    import optuna

    url = url or optuna_storage_url(None, store)
    if not url or (url.startswith("sqlite:///") and not Path(url[len("sqlite:///") :]).is_file()):
        return None
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        try:
            storage = open_study_storage(url)
        except StorageError as exc:  # the report falls back to the catalog's trials
            log.warning("%s", exc)
            return None
        if experiment not in {s.study_name for s in optuna.get_all_study_summaries(storage)}:
            return None
        study = optuna.load_study(study_name=experiment, storage=storage)
        if study.user_attrs.get("metric", metric) != metric:
            return None
        complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if len(complete) < 3:
            return None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ExperimentalWarning
            result = optuna.importance.get_param_importances(
                study, evaluator=optuna.importance.PedAnovaImportanceEvaluator()
            )
    finally:
        optuna.logging.set_verbosity(verbosity)
    return {k: float(v) for k, v in result.items()}


# --------------------------------------------------------------------------- values


def param_value(value: Any) -> str:
    """A config value as a tracking param: strings as they are, the rest as JSON."""
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def safe_params(flat: Mapping[str, Any]) -> dict[str, str]:
    """The flat config as params, without secrets: keys that name one are dropped, and
    values that carry one (``scheme://user:pw@``, AWS keys from the environment) masked."""
    return {k: redact(param_value(v)) for k, v in flat.items() if not _SECRET_KEY.search(k)}


def step_metrics(result: Mapping[str, Any]) -> tuple[dict[str, float], int]:
    """The measurements of one Tune result and its step (the training step when the
    trial reports it, else Tune's iteration)."""
    metrics = {
        k: float(v)
        for k, v in result.items()
        if isinstance(v, (int, float))
        and not isinstance(v, bool)
        and k not in _NOT_METRICS
        and not k.startswith(("config/", "time_"))
    }
    step = result.get("global_step", result.get("training_iteration", 0))
    return metrics, int(step) if isinstance(step, (int, float)) else 0


def git_commit() -> str | None:
    """The commit of the optical-ray checkout this runs from, if it is one."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and re.fullmatch(r"[0-9a-f]{40}", commit) else None


# --------------------------------------------------------------------------- sending


class _Sender:
    """Runs one backend's calls in order on a background thread. A failed call becomes
    one warning naming the server; calls in the next :data:`RETRY_AFTER_S` seconds are
    dropped (counted), then the server is tried again."""

    def __init__(self, backend: str, where: str) -> None:
        self.backend, self.where = backend, where
        self.dropped = self.failed = 0
        self.problems: list[str] = []  # every warning it logged, for the sweep's summary
        self._queue: queue.Queue[tuple[Callable[[], Any], str] | None] = queue.Queue()
        self._down_until = 0.0
        self._thread = threading.Thread(
            target=self._loop, name=f"optical-ray-{backend}", daemon=True
        )
        self._thread.start()

    def submit(self, fn: Callable[[], Any], what: str) -> None:
        self._queue.put((fn, what))

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            fn, what = item
            if time.monotonic() < self._down_until:
                self.dropped += 1
                continue
            try:
                fn()
            except Exception as exc:  # noqa: BLE001 - a view must never fail the sweep
                self.failed += 1
                self._down_until = time.monotonic() + RETRY_AFTER_S
                reason = redact(" ".join(str(exc).split()))[:300]
                self._warn(
                    f"{self.backend} tracking at {self.where} failed ({what}): "
                    f"{reason or type(exc).__name__}; the sweep goes on and the "
                    f"catalog keeps every result; calls in the next "
                    f"{RETRY_AFTER_S:.0f} s are skipped"
                )

    def _warn(self, message: str) -> None:
        self.problems.append(message)
        log.warning("%s", message)

    def close(self, timeout: float = CLOSE_TIMEOUT_S) -> None:
        self._queue.put(None)
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._warn(
                f"{self.backend} tracking at {self.where}: gave up waiting "
                f"{timeout:.0f} s for queued calls"
            )
        elif self.failed or self.dropped:
            self._warn(
                f"{self.backend} tracking at {self.where}: {self.failed} call(s) "
                f"failed and {self.dropped} were skipped while it was unreachable; "
                "the catalog has every result"
            )


# --------------------------------------------------------------------------- trackers


class Tracker:
    """One backend driven off the caller's thread: ``start`` / ``log`` / ``finish`` a run
    per key (a trial, or a training run), ``close`` at the end. Never raises."""

    def __init__(self, backend: Any) -> None:
        self.backend = backend
        self._sender: _Sender | None = None
        self._runs: dict[str, Any] = {}
        self.problems: list[str] = []  # the warnings of every closed sender

    @property
    def name(self) -> str:
        return self.backend.name

    def _submit(self, fn: Callable[[], Any], what: str) -> None:
        if self._sender is None:
            self._sender = _Sender(self.backend.name, self.backend.where())
            self._sender.submit(self.backend.begin, "starting")
        self._sender.submit(fn, what)

    def begin(self) -> None:
        """Connect now (a parent run, the experiment), not at the first run."""
        self._submit(lambda: None, "starting")

    def start(self, key: str, params: dict[str, str], tags: dict[str, str]) -> None:
        self._submit(
            lambda: self._runs.__setitem__(key, self.backend.open(key, params, tags)),
            f"opening run {key}",
        )

    def log(self, key: str, metrics: dict[str, float], step: int) -> None:
        if metrics:
            self._submit(
                lambda: self._with_run(key, lambda run: self.backend.log(run, metrics, step)),
                f"logging metrics of run {key}",
            )

    def finish(self, key: str, status: str, tags: dict[str, str]) -> None:
        def close(run: Any) -> None:
            try:
                self.backend.close(run, status, tags)
            finally:
                self._runs.pop(key, None)

        self._submit(lambda: self._with_run(key, close), f"closing run {key}")

    def _with_run(self, key: str, fn: Callable[[Any], Any]) -> None:
        run = self._runs.get(key)
        if run is None:
            if self._sender is not None:
                self._sender.dropped += 1  # its run never opened (the server was down)
            return
        fn(run)

    def close(self, timeout: float = CLOSE_TIMEOUT_S) -> None:
        """End the experiment and wait (at most ``timeout``) for queued calls."""
        if self._sender is not None:
            self._sender.submit(self.backend.end, "ending")
            self._sender.close(timeout)
            self.problems.extend(self._sender.problems)
            self._sender = None


def make_trackers(
    targets: Sequence[str],
    *,
    store: Any,
    experiment: str,
    group: str | None,
    tags: Mapping[str, str],
    output_dir: str | None = None,
) -> list[Tracker]:
    """Trackers for ``tracking`` items. ``experiment`` is the MLflow experiment and W&B
    project (the sweep name); ``group`` the pair's parent run / W&B group / TensorBoard
    folder (``<sweep>-<pair>``), None for a single training run."""
    out = []
    tags = {**dict(tags), **({"mlflow.source.git.commit": c} if (c := git_commit()) else {})}
    for target in parse_tracking(targets):
        if target.kind == "mlflow":
            uri = mlflow_tracking_uri(target.uri, store, output_dir)
            out.append(Tracker(MlflowBackend(uri, experiment, group, tags)))
        elif target.kind == "tensorboard":
            rel = f"tensorboard/{experiment}" + (f"/{group}" if group else "")
            out.append(Tracker(TensorBoardBackend(store, rel, tags)))
        else:
            wdir = str(Path(output_dir or "optical_runs", "wandb").absolute())
            out.append(Tracker(WandbBackend(experiment, group, wdir, tags)))
    return out


class TrackedContext:
    """A :class:`~optical_ray.training.recipe.TrainContext` whose reports also go to trackers (a
    single training run with ``train.tracking``): every report is a step, the run ends
    with :meth:`close`. Everything else is the wrapped context's."""

    def __init__(
        self,
        inner: Any,
        trackers: Sequence[Tracker],
        key: str,
        params: dict[str, str],
        tags: dict[str, str],
    ) -> None:
        self._inner, self._trackers, self._key = inner, list(trackers), key
        for t in self._trackers:
            t.start(key, params, tags)

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        if self._inner.rank == 0:
            values, step = step_metrics(metrics)
            for t in self._trackers:
                t.log(self._key, values, step)
        self._inner.report(metrics, checkpoint_dir)

    def close(self, status: str, tags: dict[str, str] | None = None) -> None:
        for t in self._trackers:
            t.finish(self._key, status, dict(tags or {}))
            t.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


@contextlib.contextmanager
def track_run(cfg: Any, ctx: Any, *, experiment: str = "optical-ray") -> Iterator[Any]:
    """``ctx`` with its reports also sent to ``cfg.train.tracking`` (a single training
    run: one MLflow run named ``cfg.name`` in experiment ``experiment``, a TensorBoard
    directory ``<storage>/tensorboard/<experiment>/<name>``, a W&B run); ``ctx`` as it
    is without tracking."""
    if not cfg.train.tracking:
        yield ctx
        return
    from optical_ray.config import to_flat
    from optical_ray.storage import resolve_storage

    store = resolve_storage(cfg.storage.uri, cfg.storage.endpoint, cfg.storage.region)
    trackers = make_trackers(
        cfg.train.tracking,
        store=store,
        experiment=experiment,
        group=None,
        tags={"optical_ray.pair": cfg.pair},
        output_dir=cfg.output_dir,
    )
    tracked = TrackedContext(
        ctx, trackers, cfg.name, safe_params(to_flat(cfg)), {"optical_ray.role": "run"}
    )
    status = "failed"
    try:
        yield tracked
        status = "finished"
    finally:
        tracked.close(status, {"optical_ray.model_dir": str(Path(ctx.run_dir, "model"))})
