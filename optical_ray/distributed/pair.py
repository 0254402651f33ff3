"""One pair's Ray Tune experiment: its Tuner built or restored, fitted and summarised
(:func:`fit_pair`, run in the pair's own zero-CPU Ray task), with the signed-state
guard and the end of the task when the sweep's driver dies.

The rest of the Tune side sits beside it: the searchers in
:mod:`~optical_ray.distributed.searchers`, the trial function in
:mod:`~optical_ray.distributed.trial` (imported only in trial processes, which bring
torch), the catalog and progress callbacks in :mod:`~optical_ray.distributed.callbacks`,
the cross-pair trial budget in :mod:`~optical_ray.distributed.slots`, the driver that
starts the pairs in :mod:`~optical_ray.distributed.driver`.

Ray's API moves fast; the private pieces this project cannot avoid are named where
they are used, each with a test that fails when Ray changes it: the copy of AWS keys
into trial runtime envs (``class_cache``), the callbacks of a restored Tuner
(``_local_tuner``), Ray's usage tag of callbacks, and Optuna's study inside
``OptunaSearch`` (in the searchers).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
from pathlib import Path
from typing import Any, Callable, Iterator

import ray
from ray import tune
from ray.tune import Callback

from optical_ray.config import from_flat, to_flat
from optical_ray.distributed.driverwatch import (
    DriverRef,
    end_task,
    local_driver,
    process_alive,
    watch_driver,
)
from optical_ray.errors import OpticalRayError
from optical_ray.distributed.searchers import build_searcher
from optical_ray.redaction import SECRET_ENV_VARS
from optical_ray.retries import OUTAGE_ATTEMPTS, StorageUnavailable, with_retries
from optical_ray.sweeps.plan import PairPlan, PairResult, error_reason, resolve_trial_config
from optical_ray.sweeps.protocol import CONFIG_KEY, FINISHED_KEY
from optical_ray.distributed.callbacks import (
    NAMESPACE,
    CatalogCallback,
    ProgressCallback,
    is_metric,
    best_kept_checkpoint,
    checkpoint_uri,
    recorded_results,
)
from optical_ray.distributed.statefs import StateFileSystem, state_filesystem
from optical_ray.distributed.trust import (
    StateManifest,
    StateSigner,
    VerifiedState,
    state_key,
    verify_state,
)

__all__ = [
    "fit_pair",
    "CatalogCallback",
    "ProgressCallback",
    "checkpoint_uri",
    "NAMESPACE",
]

DRIVER_MEMORY = 64 * 2**20  # bytes a multi-worker trial's driver reserves (it holds no CPU)
# Once its driver is gone, a pair task ends at its Tune loop's next step (steps are
# ~0.1 s apart), after at most UPLOAD_WAIT_S for the last state upload; one whose loop
# reaches no step within DRIVER_GONE_GRACE_S ends anyway.
UPLOAD_WAIT_S = 30.0
DRIVER_GONE_GRACE_S = 60.0
log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- reporting


def _trial(sampled: dict[str, Any], *, plan: PairPlan) -> None:
    """The Tune trial function (:func:`optical_ray.distributed.trial.run_trial`), imported in
    the trial's process: the training code brings torch, which the pair's Tune driver
    and the coordinator never use (about 2 CPU-seconds of start-up per process)."""
    from optical_ray.distributed.trial import run_trial

    run_trial(sampled, plan=plan)


TrialFn = Callable[..., None]


def _trainable(
    plan: PairPlan,
    trial_fn: TrialFn | None = None,
    recorded: dict[str, dict[str, Any]] | None = None,
) -> Callable[[dict[str, Any]], None]:
    """The pair's trial function, under a name of its own: Tune registers trainables
    cluster-wide by name, so two pairs fitting at once under one name (or one
    ``with_parameters`` key) would run each other's plans. ``trial_fn(sampled, plan=)``
    replaces the training trial (benchmarks of the driver use stand-ins). A trial in
    ``recorded`` (ended in the catalog, :func:`recorded_results`) reports its recorded
    result and trains nothing."""
    fn = trial_fn or _trial
    recorded = recorded or {}

    def trial(sampled: dict[str, Any]) -> None:
        result = recorded.get(tune.get_context().get_trial_id()) if recorded else None
        if result is not None:
            tune.report(result)
            return
        fn(sampled, plan=plan)

    trial.__name__ = trial.__qualname__ = f"trial_{plan.experiment}"
    return trial


# --------------------------------------------------------------------------- ray internals


@contextlib.contextmanager
def _credentials_stay_on_nodes() -> Iterator[None]:
    """Stop Ray Tune from copying the driver's AWS keys into each trial's
    ``runtime_env`` (Ray's runtime-env agent logs runtime envs in plain text, so the
    secret would land in the cluster's logs). Trials take credentials from their node's
    own AWS chain instead: the instance role, a Kubernetes secret, or the environment
    the node was started in (a local Ray started by this process inherits it)."""
    from ray.tune.execution import class_cache  # private: Tune's actor-class cache

    before = class_cache.ENV_VARS_TO_PROPAGATE
    class_cache.ENV_VARS_TO_PROPAGATE = set(before) - SECRET_ENV_VARS
    try:
        yield
    finally:
        class_cache.ENV_VARS_TO_PROPAGATE = before


def _result_loggers() -> list[Callback]:
    """The result files Tune's ResultGrid reads back (``progress.csv``,
    ``result.json``), passed explicitly because :func:`_no_default_loggers` turns Tune's
    defaults off."""
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    return [CSVLoggerCallback(), JsonLoggerCallback()]


@contextlib.contextmanager
def _no_default_loggers() -> Iterator[None]:
    """Keep Tune from adding its TensorBoard logger to every pair: it imports
    tensorboardX and torch into the pair's Tune driver (about 2 CPU-seconds per pair;
    17 s each for 8 pairs starting at once on 2 cores) and writes event files nobody
    asked for (``sweep.tracking: [tensorboard]`` is the opt-in view)."""
    before = os.environ.get("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS")
    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", None)
        else:
            os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = before


@contextlib.contextmanager
def _no_callback_telemetry() -> Iterator[None]:
    """Skip Ray's usage tag of the user's Tune callbacks: to name them it imports Ray's
    MLflow, W&B, Comet and Aim integrations (and mlflow and wandb themselves, when
    installed: about 3 CPU-seconds per pair's Tune driver), whether or not usage stats
    are on. Private: ``ray.air._internal.usage.tag_callbacks``, which ``tune.run`` calls."""
    from ray.air._internal import usage  # private

    before = usage.tag_callbacks
    usage.tag_callbacks = lambda callbacks: False
    try:
        yield
    finally:
        usage.tag_callbacks = before


def _set_callbacks(tuner: Any, callbacks: list[Callback]) -> None:
    """Give a restored Tuner this driver's callbacks (its pickled ones hold the old
    driver's catalog connection and baseline). Private: Ray has no public way."""
    tuner._local_tuner.get_run_config().callbacks = callbacks


class _EndWhenDriverGone(Callback):
    """Ends the pair's task once its driver is gone, at the start of a Tune step: the
    state saved in the last step is signed by then (``StateSigner.on_step_end``), and
    its background upload is waited for (at most ``UPLOAD_WAIT_S``), so what a resume
    reads is whole and trusted. Never mid-step: Tune deletes a superseded checkpoint
    while it handles a result, before the state that no longer names it is saved."""

    def __init__(self, gone: threading.Event, ref: DriverRef, signer: StateSigner) -> None:
        self.gone, self.ref, self.signer = gone, ref, signer

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its run config with the experiment: a restored Tuner gets fresh
        # callbacks (_set_callbacks), so the event stays here.
        return {**self.__dict__, "gone": None}

    def end(self, trials: list) -> None:
        self.signer.on_step_end(0, trials)  # anything saved since, signed
        staging = Path(trials[0].storage.experiment_driver_staging_path) if trials else None
        if not self.signer.settled(UPLOAD_WAIT_S, staging):
            log.warning("the saved experiment state did not reach storage in time")
        end_task(self.ref)

    def fenced(self, trial: Any) -> None:
        """A record refused for ``trial`` (its driver is gone): end at the next step."""
        if self.gone is not None:
            self.gone.set()

    def on_step_begin(self, iteration, trials, **info):  # noqa: ANN001
        if self.gone is not None and self.gone.is_set():
            self.end(trials)


class _OneLineTrialErrors(logging.Filter):
    """Tune logs each failed trial with its whole traceback; the sweep's summary gives
    the cause and the traceback stays in the trial's ``error.txt``."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and "Trial task failed" in str(record.msg):
            record.msg = f"{record.getMessage().splitlines()[0]} (cause in the sweep summary)"
            record.args, record.exc_info, record.exc_text = (), None, None
        return True


# --------------------------------------------------------------------------- one pair


def _baseline(plan: PairPlan) -> dict[str, float] | None:
    """Zero-shot metrics of the teacher on the trials' evaluation set (None without
    a trained teacher)."""
    cfg = plan.base
    if not cfg.train.teacher:
        return None
    from optical_ray.models.encoder import RetrievalModel
    from optical_ray.training.recipe import evaluate_dev

    pcfg = from_flat({"pair": plan.pair}, cfg)

    @ray.remote(num_cpus=cfg.scaling.cpus_per_worker, num_gpus=cfg.scaling.gpus_per_worker)
    def evaluate() -> dict[str, float]:
        return evaluate_dev(RetrievalModel.load(pcfg.train.teacher), pcfg)

    return ray.get(evaluate.remote())


def _tuner(
    plan: PairPlan,
    store: Any,
    fs: StateFileSystem,
    restore: bool,
    callbacks: list[Callback],
    coordinator: str,
    verbose: int,
    trial_fn: TrialFn | None = None,
    baseline: dict[str, float] | None = None,
    recorded: dict[str, dict[str, Any]] | None = None,
) -> Any:
    """The experiment's Tuner: restored (``restore``) from the state files ``fs`` serves,
    or new. A ``tuner.pkl`` without an ``experiment_state-*`` means its driver died before
    Tune's first snapshot: Tune's restore would then restart the experiment with
    ``num_samples=1`` (it logs the failed restore and carries on), so such a pair starts
    again instead, keeping its Optuna study."""
    from optical_ray.distributed.promotion import build_scheduler

    sw, sc = plan.base.sweep, plan.base.scaling
    trainable = _trainable(plan, trial_fn, recorded)
    if sc.workers == 1:
        resources: dict[str, float] = {"CPU": sc.cpus_per_worker}
        if sc.gpus_per_worker:
            resources["GPU"] = sc.gpus_per_worker
    else:
        # The trial driver only waits on its TorchTrainer: holding a CPU there
        # would deadlock small clusters whose workers need every CPU. Tune needs
        # a non-empty request, so the driver claims a little memory instead.
        resources = {"CPU": 0, "memory": DRIVER_MEMORY}
    trainable = tune.with_resources(trainable, resources)
    if restore:
        tuner = tune.Tuner.restore(
            plan.path, trainable, resume_unfinished=True, resume_errored=True, storage_filesystem=fs
        )
        _set_callbacks(tuner, [*callbacks, *_result_loggers()])
        return tuner
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=build_searcher(plan, coordinator, baseline),
            # noise-aware ASHA (distributed.promotion), Ray's, or FIFO for finalists
            scheduler=build_scheduler(plan),
            metric=sw.metric,
            mode=sw.mode,
            num_samples=len(plan.points) if plan.points is not None else sw.samples,
            # a single-worker trial runs in its actor: the next
            # trial reuses the warm process
            reuse_actors=sc.workers == 1,
        ),
        run_config=tune.RunConfig(
            name=plan.experiment,
            storage_path=store.ray_storage_path(),
            storage_filesystem=fs,
            callbacks=[*callbacks, *_result_loggers()],
            verbose=2 if verbose >= 2 else 0,
            # The best-scoring checkpoint (the catalog names it) and the latest (resume).
            checkpoint_config=tune.CheckpointConfig(
                num_to_keep=1, checkpoint_score_attribute="score", checkpoint_score_order=sw.mode
            ),
            # A trial whose process or node dies restarts from its last checkpoint.
            failure_config=tune.FailureConfig(max_failures=sw.max_failures),
        ),
    )


def fit_pair(
    plan: PairPlan,
    coordinator: str,
    verbose: int = 1,
    key: bytes | None = None,
    trial_fn: TrialFn | None = None,
    driver: DriverRef | None = None,
    state: VerifiedState | None = None,
    trust_storage: bool = False,
    final_state: VerifiedState | None = None,
) -> PairResult:
    """Build or restore ``plan``'s Tuner, fit it, and summarise it (runs in the pair's
    own zero-CPU Ray task; callable in-process too). ``key`` signs Tune's saved state:
    the driver's, handed over as an argument (never through the task's environment,
    which Ray logs). With ``driver``, the task ends itself when that process dies and
    writes no catalog record after it (see :mod:`optical_ray.distributed.driverwatch`).

    A resumed experiment restores from ``state`` (the search's) and ``final_state`` (its
    finalists'), the state files the driver read and verified once (without them, they
    are read and verified here, a failure being fatal unless ``trust_storage``), never
    from storage again (:mod:`optical_ray.distributed.statefs`). Trials the catalog holds
    as ended are not run again
    (:func:`~optical_ray.distributed.callbacks.recorded_results`).

    With finalists (``sweep.finalists``), a second experiment of the pair follows the
    search through the same machinery, ``<experiment>-final``
    (:mod:`optical_ray.sweeps.finalists`; resumed like the search when it is in
    storage), and the result carries the pair's answer
    (:func:`optical_ray.catalog.answers.pair_answer`)."""
    from optical_ray.catalog import Catalog
    from optical_ray.storage import resolve_storage

    if verbose < 2:
        logging.getLogger("ray.tune").addFilter(_OneLineTrialErrors())
        for name in ("ray.tune.execution.tune_controller", "ray.tune.tune"):
            logging.getLogger(name).addFilter(_OneLineTrialErrors())
    cfg = plan.base
    store = resolve_storage(cfg.storage.uri, cfg.storage.endpoint, cfg.storage.region)
    key = key or state_key()
    baseline = _baseline(plan)
    run = (key, baseline, coordinator, verbose, trial_fn, driver, trust_storage)
    # One catalog per experiment: Tune pickles the callbacks holding it, and a
    # catalog that has read (the finalists' planner does) holds unpicklable listings.
    catalog = Catalog(store)
    grid, warnings = _fit_experiment(plan, store, catalog, state, *run)
    _flush_catalog(catalog)
    result = _pair_result(grid, plan, baseline, store)
    result.warnings = warnings
    final = _finalists_plan(plan, store, Catalog(store))
    if final is not None:
        catalog = Catalog(store)
        _, more = _fit_experiment(final, store, catalog, final_state, *run)
        _flush_catalog(catalog)
        result.warnings += [w for w in more if w not in result.warnings]
        result.answer = _answer(plan, store, result)
    return result


def _finalists_plan(plan: PairPlan, store: Any, catalog: Any) -> PairPlan | None:
    """The pair's finalists experiment, planned from the search's catalog records (or
    None: no finalists, or no finished trial)."""
    from optical_ray.config.objective import finalists_of
    from optical_ray.sweeps.finalists import final_experiment, finalist_plan

    if finalists_of(plan.base.sweep) <= 0:
        return None
    records = catalog.records(plan.pair, plan.experiment)
    path = store.join(final_experiment(plan.experiment))
    exists = tune.Tuner.can_restore(path, storage_filesystem=store.ray_storage_filesystem())
    return finalist_plan(plan, records, store.join, exists)


def _answer(plan: PairPlan, store: Any, result: PairResult) -> Any:
    """The pair's answer from its records (None, with a warning, if it cannot be
    computed: e.g. every finalist run failed)."""
    from optical_ray.catalog.answers import pair_answer

    try:
        return pair_answer(plan.pair, store, experiment=plan.experiment)
    except OpticalRayError as exc:
        result.warnings.append(f"no answer: {exc}")
        return None


def _fit_experiment(
    plan: PairPlan,
    store: Any,
    catalog: Any,
    state: VerifiedState | None,
    key: bytes,
    baseline: dict[str, float] | None,
    coordinator: str,
    verbose: int,
    trial_fn: TrialFn | None,
    driver: DriverRef | None,
    trust_storage: bool,
) -> tuple[Any, list[str]]:
    """Fit one experiment of the pair (its search, or its finalists): the Tuner built
    or restored from verified state, its state signed, the task ended if the driver
    dies. Returns Tune's result grid and the tracking views' warnings."""
    cfg = plan.base
    rel = store.rel(plan.path)
    if plan.resume and state is None:
        state = verify_state(store, rel, key, trust=trust_storage)
    manifest = state.manifest if state is not None else StateManifest()
    restore = state is not None and state.snapshotted
    fs = state_filesystem(
        store.ray_storage_filesystem(), plan.path, state.files if restore else None
    )
    recorded = recorded_results(catalog, plan) if plan.resume else {}
    signer = StateSigner(store, rel, manifest, key)
    from optical_ray.distributed.tracking import tracking_callbacks

    views = tracking_callbacks(cfg.sweep.tracking, plan=plan, store=store)
    watched = local_driver(driver)
    gone = threading.Event()  # set by the watch when the driver dies
    ender = _EndWhenDriverGone(gone, watched, signer) if watched else None
    callbacks = [
        CatalogCallback(
            catalog,
            plan,
            baseline,
            fence=(lambda: process_alive(watched)) if watched else None,
            # not mid-step: Tune may have dropped checkpoints the saved state still
            # names; the task ends at the next step, the resume records the trial
            on_fenced=ender.fenced if ender else None,
            already=recorded,
        ),
        ProgressCallback(plan, coordinator),
        signer,
        *([ender] if ender else []),
        *views,
    ]
    tuner = _tuner(
        plan, store, fs, restore, callbacks, coordinator, verbose, trial_fn, baseline, recorded
    )
    written = fs.written("tuner.pkl")  # signed as Tune wrote it, never as read back
    if written is not None:
        manifest.add("tuner.pkl", written)
        signer.write()
    with (
        watch_driver(watched, on_death=gone.set, grace_s=DRIVER_GONE_GRACE_S),
        _credentials_stay_on_nodes(),
        _no_default_loggers(),
        _no_callback_telemetry(),
    ):
        grid = tuner.fit()
    return grid, [w for view in views for w in view.tracker.problems]


def _pair_result(
    grid: Any, plan: PairPlan, baseline: dict[str, float] | None, store: Any
) -> PairResult:
    sw = plan.base.sweep
    failed, stopped = [], 0
    for r in grid:
        if r.error is not None:
            failed.append((Path(r.path).name, error_reason(str(r.error))[:300]))
        elif not (r.metrics or {}).get(FINISHED_KEY):
            stopped += 1
    best_config, best_metrics, best_ckpt = None, {}, None
    try:
        best = grid.get_best_result(
            metric=sw.metric, mode=sw.mode, scope="all", filter_nan_and_inf=True
        )
    except RuntimeError:
        best = None
    if best is not None and best.metrics:
        df = best.metrics_dataframe
        if df is not None and sw.metric in df:
            values = df[sw.metric].where(df[sw.metric].abs() < 1e299)
            if values.notna().any():
                row = df.loc[values.idxmax() if sw.mode == "max" else values.idxmin()]
                best_metrics = {
                    k: float(v)
                    for k, v in row.items()
                    if isinstance(v, (int, float)) and is_metric(str(k))
                }
        reported = (best.metrics or {}).get(CONFIG_KEY)
        if isinstance(reported, str):
            best_config = json.loads(reported)
        else:
            try:
                best_config = to_flat(
                    resolve_trial_config(plan, dict(best.config), Path(best.path).name)
                )
            except OpticalRayError:
                best_config = dict(best.config)
        best_ckpt = checkpoint_uri(best_kept_checkpoint(best, sw.mode), best.metrics or {}, store)
    return PairResult(
        plan.pair,
        plan.experiment,
        plan.path,
        best_config,
        best_metrics,
        best_ckpt,
        baseline,
        len(grid),
        failed,
        searched=plan.searched,
        stopped=stopped,
        metric=sw.metric,
    )


def _flush_catalog(catalog: Any) -> None:
    """Write the records spooled while storage was down, waiting for it (about 75 s);
    if it stays down they stay spooled (and are written by the next catalog write)."""

    def flush_all() -> None:
        catalog.flush()
        if catalog.pending():
            raise StorageUnavailable(
                f"{len(catalog.pending())} catalog record part(s) spooled in {catalog.spool_dir}"
            )

    try:
        with_retries(
            flush_all,
            attempts=OUTAGE_ATTEMPTS,
            base_delay=1.0,
            max_delay=15.0,
            what="writing spooled catalog records",
        )
    except StorageUnavailable as exc:
        log.warning(
            "storage still unreachable: %s; they are written by the next catalog "
            "write (any later sweep, or Catalog(storage).flush())",
            exc,
        )
