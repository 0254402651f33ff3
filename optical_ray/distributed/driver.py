"""The sweep's driver: checks every pair before any trial starts, then runs each
pair's experiment in its own zero-CPU Ray task (pinned to the driver's node, whose local
paths and key file it uses) and prints one line per pair as its trials move. From
before it looks at an experiment's saved state to its end, the driver holds the
experiment's lease (:mod:`~optical_ray.distributed.lease`): a second one is refused.

The pairs share ``sweep.max_concurrent`` trials in flight through a named coordinator
actor that each pair's :class:`~optical_ray.distributed.slots.SharedLimiter` asks before it
samples; ``sweep.pair_order: sequential`` runs the same tasks one after another (the
baseline ``benchmarks/bench_cluster.py`` measures against).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import ray
from ray import tune

from optical_ray.config import Config
from optical_ray.errors import ConfigError, DataError, OpticalRayError
from optical_ray.distributed.pair import NAMESPACE, fit_pair
from optical_ray.redaction import SECRET_ENV_VARS
from optical_ray.storage import redact
from optical_ray.distributed.slots import SlotPool
from optical_ray.sweeps.finalists import final_experiment
from optical_ray.sweeps.space import SearchSpace, load_space, trial_config, validate_space
from optical_ray.sweeps.plan import (
    PairPlan,
    PairResult,
    SweepResult,
    check_objectives,
    error_reason,
    experiment_name,
    plan_sweep,
    sweep_config,
    unconverging_epsilon,
)
from optical_ray.distributed.lease import LeaseLostError, SweepLeases
from optical_ray.distributed.trust import VerifiedState, state_key, verify_state

__all__ = ["run", "run_sweep"]

log = logging.getLogger(__name__)


@ray.remote(num_cpus=0)
class _Coordinator:
    """The sweep's shared state: trials in flight across pairs (the global budget) and
    each pair's progress, read by the driver."""

    def __init__(self, capacity: int, owners: list[str]) -> None:
        self.slots = SlotPool(capacity, owners)
        self.progress: dict[str, dict[str, Any]] = {}

    def acquire(self, owner: str, trial_id: str) -> bool:
        return self.slots.acquire(owner, trial_id)

    def release(self, owner: str, trial_id: str) -> None:
        self.slots.release(owner, trial_id)

    def release_owner(self, owner: str) -> None:
        self.slots.release_owner(owner)

    def in_flight(self) -> int:
        return self.slots.in_flight()

    def update(self, pair: str, state: dict[str, Any]) -> None:
        self.progress[pair] = state

    def snapshot(self) -> dict[str, dict[str, Any]]:
        return dict(self.progress)


def _coordinator_name(cfg: Config) -> str:
    return f"sweep:{cfg.name}:{cfg.storage.uri}"


def _free_name(name: str, timeout: float = 30.0) -> None:
    """Kill the actor registered as ``name`` (a coordinator an earlier driver left) and
    wait until Ray has released the name: ``ray.kill`` returns before that, and an actor
    created under a name still being released has its creation cancelled."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            actor = ray.get_actor(name, namespace=NAMESPACE)
        except ValueError:
            return
        with contextlib.suppress(Exception):
            ray.kill(actor)
        time.sleep(0.2)


def _start_coordinator(name: str, here: Any, slots: int, owners: list[str]) -> Any:
    """The sweep's coordinator actor, under ``name`` once any earlier one has gone; a
    creation Ray cancels (the name not yet released) is tried again, 5 times in all."""
    from ray.exceptions import RaySystemError

    def start() -> Any:
        _free_name(name)
        options = {"name": name, "namespace": NAMESPACE, "scheduling_strategy": here}
        return _Coordinator.options(**options).remote(slots, owners)

    for attempt in range(4):
        try:
            return start()
        except (RaySystemError, ValueError) as exc:  # cancelled, or the name still taken
            log.info("starting the sweep coordinator again (%s)", exc)
            time.sleep(1.0 + attempt)
    return start()


def _check_pairs_data(cfg: Config, space: Any) -> None:
    """Every pair's evaluation data (of every task of its objective) and bitext (when
    it distils) exist, as the space names them for that pair (its templates filled
    in): one error listing every pair that lacks them, before any trial starts."""
    from optical_ray.config.objective import search_terms
    from optical_ray.data.sources import bitext_pairs, eval_collection
    from optical_ray.sweeps.plan import pair_config

    problems = []
    for pair in cfg.sweep.pairs:
        try:
            pcfg = pair_config(cfg, space, pair)
            for task in dict.fromkeys([pair, *search_terms(pcfg).tasks]):  # the objective's
                eval_collection(pcfg, task, pcfg.eval.split)
            if "distill" in pcfg.train.stages and pcfg.distill.method != "none":
                bitext_pairs(pcfg, pair)
        except (DataError, ConfigError) as exc:
            problems.append(f"{pair}: {exc}")
    if problems:
        raise DataError("sweep pairs without data: " + "; ".join(problems))


def _pair_task_env() -> dict[str, str]:
    """Settings a pair's task takes from the driver's environment (Ray Tune / Train
    switches and ours; never credentials), and this cluster's address: Ray Train's
    placement-group cleaner looks the controller up through Ray's state API, which
    without ``RAY_ADDRESS`` picks the newest cluster on the host, and when that is
    another one, takes the controller for dead and removes its workers."""
    import ray

    prefixes = ("TUNE_", "RAY_TRAIN_", "RAY_AIR_", "OPTICAL_RAY_")
    env = {
        k: v
        for k, v in os.environ.items()
        if k.startswith(prefixes)
        and k not in SECRET_ENV_VARS
        and "SECRET" not in k
        and k != "OPTICAL_RAY_STATE_KEY"
    }
    env["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address
    return env


def _progress_line(pair: str, state: Mapping[str, Any], metric: str) -> str:
    ended = state["finished"] + state["stopped"] + state["failed"]
    line = (
        f"[sweep] {pair}: {ended}/{state['samples']} done ({state['finished']} finished, "
        f"{state['stopped']} stopped, {state['failed']} failed), {state['running']} "
        "running"
    )
    if state.get("best") is not None:
        line += f"; best {metric} {state['best']:.4f} ({state['best_trial']})"
    remaining = state["samples"] - ended
    if ended and remaining > 0:
        eta = (time.time() - state["start"]) / ended * remaining
        line += f"; ETA {int(eta // 60)}m{int(eta % 60):02d}s"
    return line


def _wait(
    refs: dict[str, Any],
    coord: Any,
    metric: str,
    verbose: int,
    out: Callable[[str], None],
    lost: Callable[[], str | None] = lambda: None,
) -> dict[str, PairResult | BaseException]:
    """Wait for every pair's task, printing a pair's progress line when it changes.
    When ``lost()`` says why (another driver took an experiment's lease over), the
    pairs' tasks are cancelled and :class:`LeaseLostError` raised."""
    pending = dict(refs)
    shown: dict[str, tuple] = {}
    results: dict[str, PairResult | BaseException] = {}
    while pending:
        why = lost()
        if why:
            for ref in pending.values():
                ray.cancel(ref, force=True)
            raise LeaseLostError(why)
        ready, _ = ray.wait(list(pending.values()), num_returns=1, timeout=2.0)
        if verbose >= 1:
            with contextlib.suppress(Exception):
                for pair, state in ray.get(coord.snapshot.remote()).items():
                    key = tuple(
                        state.get(k) for k in ("running", "finished", "stopped", "failed", "best")
                    )
                    if shown.get(pair) != key:
                        shown[pair] = key
                        out(_progress_line(pair, state, metric))
        for ref in ready:
            pair = next(p for p, r in pending.items() if r == ref)
            del pending[pair]
            try:
                results[pair] = ray.get(ref)
            except Exception as exc:  # noqa: BLE001 - one pair's failure ends only it
                results[pair] = exc
            coord.release_owner.remote(pair)
    return results


def prepare_studies(plans: list[PairPlan], store: Any, resume: bool) -> None:
    """Create (or, on ``resume``, reattach to) every pair's persistent Optuna study here,
    in the driver, before any pair starts: pair tasks that each created a fresh SQLite
    file's schema at once collided, and a study that exists without ``--resume`` is
    refused before anything runs."""
    from optical_ray.catalog.pareto import search_objective
    from optical_ray.tracking.trackers import open_study_storage, optuna_storage_url, prepare_study

    if not plans:
        return
    sw = plans[0].base.sweep
    url = optuna_storage_url(sw.optuna_storage, store)
    if url is None:
        return
    storage = open_study_storage(url)  # once: each opening checks the schema
    metric, mode = search_objective(sw)  # lists for several objectives
    for plan in plans:
        prepare_study(
            url, plan.experiment, resume=resume, metric=metric, mode=mode, storage=storage
        )


def run(
    cfg: Config,
    space: Any,
    *,
    resume: bool = False,
    address: str | None = None,
    verbose: int = 1,
    trust_storage: bool = False,
    out: Callable[[str], None] | None = None,
    trial_fn: Any = None,
    check_data: bool = True,
    points: Mapping[str, Sequence[dict[str, Any]]] | None = None,
) -> SweepResult:
    """Run the sweep ``cfg.sweep`` over ``space`` (see :func:`run_sweep`).

    ``out`` receives the progress lines (default: print); ``trial_fn(sampled, plan=)``
    replaces the training trial, for benchmarks of the driver itself (which pass
    ``check_data=False``: their stand-in trials read no data) and for studies.
    ``points`` (per pair: the sampled values of every trial, in order) runs those
    instead of sampling the space, without Optuna (a study's runs,
    :func:`optical_ray.distributed.study.run_study`)."""
    from optical_ray.catalog import Catalog
    from optical_ray.data.sources import ensure_data_root
    from optical_ray.distributed.train import prepare_config
    from optical_ray.models.encoder import model_depth
    from optical_ray.storage import resolve_storage
    from optical_ray.tracking.trackers import check_study_storage

    out = out or (lambda line: print(line, flush=True))
    cfg = prepare_config(cfg)
    key = state_key()  # a short key or a corrupt key file: one line before anything starts
    sw = cfg.sweep
    store = resolve_storage(cfg.storage.uri, cfg.storage.endpoint, cfg.storage.region)
    if store.scheme == "s3":
        store.ensure_bucket()
    store.check_writable()  # a read-only store fails here, before Ray and the studies
    check_study_storage(sw.optuna_storage, store)  # so does a broken optuna.db
    Catalog(store)  # a storage the catalog cannot use fails here, not in a trial
    # The model (and its depth) as the space's fixed values name it for the first pair.
    depth = model_depth(trial_config(space, sw.pairs[0], {}, cfg))
    validate_space(space, depth)
    check_objectives(cfg, space)  # every task of each pair's objective is evaluated
    for line in unconverging_epsilon(cfg, space):
        log.warning("%s", line)
    from optical_ray.training.sizing import warn_step_memory  # torch only when it runs

    warn_step_memory(cfg, space)  # one warning per pair/stage whose largest step won't fit
    # Source pairs are read and checked before data or Ray: a bad source is one line.
    from optical_ray.sweeps.warmstart import plan_warm_starts

    warm = plan_warm_starts(cfg, space, depth, out)
    if check_data:
        if not space.templated:
            ensure_data_root(cfg)  # generated once here, not raced for by the trials
        _check_pairs_data(cfg, space)
    # One driver per experiment, from before it looks at their state to the end.
    with SweepLeases(store, [experiment_name(cfg.name, pair) for pair in sw.pairs]) as leases:
        return _run_pairs(
            cfg,
            space,
            store,
            key,
            depth,
            warm,
            leases,
            resume=resume,
            address=address,
            verbose=verbose,
            trust_storage=trust_storage,
            out=out,
            trial_fn=trial_fn,
            points=points,
        )


def _run_pairs(
    cfg: Config,
    space: Any,
    store: Any,
    key: bytes,
    depth: int,
    warm: Mapping[str, Any],
    leases: SweepLeases,
    *,
    resume: bool,
    address: str | None,
    verbose: int,
    trust_storage: bool,
    out: Callable[[str], None],
    trial_fn: Any,
    points: Mapping[str, Sequence[dict[str, Any]]] | None = None,
) -> SweepResult:
    """:func:`run` once the experiments' leases are held: start Ray, plan the pairs,
    read and verify once the saved state of those that resume (handed to their tasks,
    which restore from exactly those bytes), run every pair's task."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from optical_ray.distributed.driverwatch import this_driver
    from optical_ray.distributed.train import check_resources, init_ray, resolve_backend

    sw = cfg.sweep
    init_ray(address, log_to_driver=verbose >= 2)
    check_resources(cfg)
    cfg = resolve_backend(cfg)  # probed once here, before trials hold the GPUs
    fs = store.ray_storage_filesystem()
    exists = {
        pair: tune.Tuner.can_restore(
            store.join(experiment_name(cfg.name, pair)), storage_filesystem=fs
        )
        for pair in sw.pairs
    }
    plans = plan_sweep(cfg, space, store.join, depth, exists, resume)
    plans = [dataclasses.replace(p, warm=warm.get(p.pair)) for p in plans]
    if points is not None:
        plans = [dataclasses.replace(p, points=tuple(points.get(p.pair, ()))) for p in plans]
    # Read and verified once; each pair's task restores from exactly these bytes (its
    # search, and its finalists experiment when one is in storage).
    states: dict[str, VerifiedState] = {}
    final_states: dict[str, VerifiedState] = {}
    for plan in plans:
        if not plan.resume:
            continue
        final = store.join(final_experiment(plan.experiment))
        paths = [(states, plan.path)]
        if tune.Tuner.can_restore(final, storage_filesystem=fs):
            paths.append((final_states, final))
        for into, path in paths:
            if trust_storage:
                log.warning(
                    "resuming %s without checking its saved state (--trust-storage): "
                    "its state files as they are now are signed as this installation's",
                    redact(store.uri_of(store.rel(path))),
                )
            into[plan.pair] = verify_state(store, store.rel(path), key, trust=trust_storage)
    if points is None:  # a fixed list of runs needs no Optuna study
        prepare_studies(plans, store, resume)
    metric = plans[0].base.sweep.metric if plans else sw.metric
    name = _coordinator_name(cfg)
    # The coordinator and the pairs' tasks live on the driver's node: a worker node
    # that dies then takes only trials with it (they restart from their checkpoints).
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    # Concurrent pairs share the slots equally (a pair that ends leaves its share to
    # the others); one after another, the pair running has them all.
    owners = [p.pair for p in plans] if sw.pair_order == "concurrent" else []
    coord = _start_coordinator(name, here, sw.max_concurrent, owners)
    task = ray.remote(fit_pair).options(
        num_cpus=0,
        max_retries=0,
        runtime_env={"env_vars": _pair_task_env()},
        scheduling_strategy=here,
    )
    driver = this_driver()  # each pair task ends itself when this process dies
    results: dict[str, PairResult | BaseException] = {}
    try:
        if sw.pair_order == "sequential":
            for plan in plans:
                ref = task.remote(
                    plan,
                    name,
                    verbose,
                    key,
                    trial_fn,
                    driver,
                    states.get(plan.pair),
                    trust_storage,
                    final_states.get(plan.pair),
                )
                results.update(_wait({plan.pair: ref}, coord, metric, verbose, out, leases.lost))
        else:
            refs = {
                p.pair: task.remote(
                    p,
                    name,
                    verbose,
                    key,
                    trial_fn,
                    driver,
                    states.get(p.pair),
                    trust_storage,
                    final_states.get(p.pair),
                )
                for p in plans
            }
            results = _wait(refs, coord, metric, verbose, out, leases.lost)
    finally:
        with contextlib.suppress(Exception):
            ray.kill(coord)
        _free_name(name)  # the next sweep of this name in this process finds it free
    pairs = {}
    for plan in plans:
        r = results[plan.pair]
        if isinstance(r, BaseException):
            r = PairResult(
                plan.pair,
                plan.experiment,
                plan.path,
                None,
                {},
                None,
                None,
                0,
                searched=plan.searched,
                error=_root_cause(r),
            )
        pairs[plan.pair] = r
    return SweepResult(cfg.name, metric, store.uri, pairs)


def _root_cause(error: BaseException) -> str:
    """One line for a pair whose task failed (Ray wraps the exception)."""
    cause = getattr(error, "cause", None) or error.__cause__ or error
    if isinstance(cause, OpticalRayError):
        return str(cause)
    return error_reason(str(cause)) or type(cause).__name__


def run_sweep(
    base: Config,
    space: SearchSpace | str | Path,
    *,
    pairs: Sequence[str],
    samples: int | None = None,
    workers_per_trial: int | None = None,
    max_concurrent: int | None = None,
    scheduler: str | None = None,
    search: str | None = None,
    metric: str | None = None,
    name: str | None = None,
    resume: bool = False,
    address: str | None = None,
    verbose: int = 1,
    pair_order: str | None = None,
    max_failures: int | None = None,
    trust_storage: bool = False,
    tracking: Sequence[str] | None = None,
    optuna_storage: str | None = None,
    objectives: Sequence[str] | None = None,
    constraints: Sequence[str] | None = None,
    warm_start: str | Sequence[str] | None = None,
    warm_start_from: str | None = None,
    warm_start_top: int | None = None,
    objective: str | None = None,
    promotion: str | None = None,
    promotion_alpha: float | None = None,
    finalists: int | None = None,
    finalist_seeds: int | None = None,
) -> SweepResult:
    """Search ``space`` for each of ``pairs``; trials, checkpoints and catalog records go
    to ``base.storage``. Arguments left ``None`` come from ``base.sweep``.

    Pairs run concurrently (``sweep.pair_order: concurrent``), each its own Tune
    experiment, sharing ``sweep.max_concurrent`` trials in flight. With ``resume=True``
    an experiment already in storage is restored: finished trials are not run again,
    unfinished ones continue from their checkpoints, and the searcher keeps its history;
    Tune's saved state is checked against this installation's signed manifest first
    (``trust_storage=True`` skips that check). Without it, an existing experiment is an
    error, raised before any trial starts. ``tracking`` (``mlflow[=URI]``, ``tensorboard``,
    ``wandb``) and ``optuna_storage`` are views onto the catalog (:mod:`optical_ray.tracking.trackers`).
    ``objectives`` (``["map", "en-en/map"]``) searches several objectives with Optuna's
    multi-objective TPE under FIFO; ``constraints`` (``["retention>=0.98"]``) are told
    to Optuna with every trial and keep ASHA (:mod:`optical_ray.catalog.pareto`).
    ``warm_start`` (``"auto"``, source pairs, or ``"none"``) seeds each pair's search from
    the catalog records of related pairs (in ``warm_start_from``, default this storage):
    their ``warm_start_top`` best configs (in all, in turns across sources) run first
    and their trials form a prior for TPE (:mod:`optical_ray.sweeps.warmstart`).
    ``objective`` (``"mean({lang}-en/map, en-{lang}/map)"``) is what each pair's trials
    are searched, stopped and answered on; ``promotion`` (``paired``: a trial stops at
    an ASHA rung only when significantly below the cut-off trial at ``promotion_alpha``,
    or ``mean``) and ``finalists`` / ``finalist_seeds`` (the top configs and the base
    re-trained with new seeds; the answer is a finalist only when it beats the base
    significantly) make the answer one a user can trust (:mod:`optical_ray.catalog.answers`).
    """
    cfg = sweep_config(
        base,
        pairs=pairs,
        samples=samples,
        workers_per_trial=workers_per_trial,
        max_concurrent=max_concurrent,
        scheduler=scheduler,
        search=search,
        metric=metric,
        name=name,
        pair_order=pair_order,
        max_failures=max_failures,
        tracking=None if tracking is None else list(tracking),
        optuna_storage=optuna_storage,
        objectives=None if objectives is None else list(objectives),
        constraints=None if constraints is None else list(constraints),
        warm_start=(
            warm_start
            if warm_start is None or isinstance(warm_start, str)
            else ",".join(warm_start)
        ),
        warm_start_from=warm_start_from,
        warm_start_top=warm_start_top,
        objective=objective,
        promotion=promotion,
        promotion_alpha=promotion_alpha,
        finalists=finalists,
        finalist_seeds=finalist_seeds,
    )
    if not isinstance(space, SearchSpace):
        space = load_space(space)
    return run(
        cfg, space, resume=resume, address=address, verbose=verbose, trust_storage=trust_storage
    )
