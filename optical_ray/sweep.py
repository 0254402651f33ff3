"""Ray Tune wiring: a YAML search space → OptunaSearch (TPE) + ASHA, one experiment per
language pair, each trial a training run, every result in the catalog.

Why one experiment per pair: the best epsilon, weight and layers differ between a
high- and a low-resource language, so each pair gets its own TPE model and its own ASHA
brackets (a pair dimension would let the easy pair's scores stop the hard pair's trials
early), and a pair can be resumed, extended or deleted on its own.

Trials follow Ray's Train V2 pattern: a Tune function that, for ``workers_per_trial >
1``, builds and fits a ``TorchTrainer`` (metrics reach Tune through
``TuneReportCallback``). A single-worker trial runs the same stage functions in the
trial process itself (:class:`TuneContext`), which skips a worker-group start-up per
trial and holds exactly the CPUs it trains on.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from ray.tune import Callback
from ray.tune.search.optuna import OptunaSearch

from optical_ray.config import Config, from_flat, to_dict, to_flat
from optical_ray.errors import ConfigError, OpticalRayError
from optical_ray.space import SearchSpace, load_space, parse_space, trial_config
from optical_ray.storage import StorageUnavailable, is_transient, redact, with_retries
from optical_ray.train import TrainContext, run

__all__ = ["TuneContext", "PairResult", "SweepResult", "run_sweep", "experiment_name"]

FINISHED_KEY = "trial_finished"
# Where a multi-worker trial's checkpoints are (its own Train run, not Tune's trial
# checkpoints): a filesystem path in storage, as Ray's TuneReportCallback reports it.
CHECKPOINT_PATH_KEY = "checkpoint_path"
# Tries of a trial's report while storage is unreachable: 1+2+4+8+15*4 s, about 75 s.
REPORT_ATTEMPTS = 9
DRIVER_MEMORY = 64 * 2**20  # bytes a multi-worker trial's driver reserves (it holds no CPU)


class PruningAwareOptunaSearch(OptunaSearch):
    """OptunaSearch that tells Optuna a trial the scheduler stopped early as *pruned*.

    Ray's OptunaSearch tells every trial that ended without an error as complete, with
    its last metric; under ASHA that compares a metric after one evaluation with others
    after the full budget. Early in training the two do not rank alike (a learning rate
    that will win often dips first, while one too small to move stays at the teacher's
    zero-shot level), so TPE learns the wrong thing. A trial without our end-of-trial
    report (``FINISHED_KEY``) was stopped: told as pruned, with the intermediate values
    already reported, Optuna's TPE ranks it below every trial that ran to the end, and
    pruned trials among themselves by how far they got, then by their last value.
    """

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        if error or not result or result.get(FINISHED_KEY) or trial_id in self._completed_trials:
            super().on_trial_complete(trial_id, result=result, error=error)
            return
        import optuna

        self._ot_study.tell(self._ot_trials[trial_id], state=optuna.trial.TrialState.PRUNED)
        self._completed_trials.add(trial_id)


class TuneContext(TrainContext):
    """:class:`~optical_ray.train.TrainContext` for a single-worker trial: reports go to
    Ray Tune (checkpoints persisted to the experiment's storage), resume comes from
    ``tune.get_checkpoint()``."""

    def __init__(self, cfg: Config) -> None:
        super().__init__(rank=0, world_size=1, device=None,
                         run_dir=Path(tempfile.mkdtemp(prefix="optical-ray-trial-")))
        self.metric = cfg.sweep.metric
        self.last: dict[str, Any] = {}
        self._restored: str | None = None

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        from ray import tune

        out = dict(metrics)
        if self.metric in out:
            self.last = {k: v for k, v in out.items() if isinstance(v, (int, float))}
        else:
            # OptunaSearch and ASHA read the metric from every result.
            out[self.metric] = self.last.get(self.metric, -math.inf)
        out["score"] = out[self.metric]
        checkpoint = tune.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        # Reporting uploads the checkpoint: a storage outage is waited out (a failed
        # upload raises before the result is queued, so the report can be repeated).
        with_retries(lambda: _storage_call(tune.report, out, checkpoint=checkpoint),
                     attempts=REPORT_ATTEMPTS, base_delay=1.0, max_delay=15.0,
                     what="reporting a checkpoint to storage")
        if checkpoint_dir:
            shutil.rmtree(checkpoint_dir, ignore_errors=True)

    def latest_checkpoint(self) -> str | None:
        from ray import tune

        if self._restored is None:
            ckpt = tune.get_checkpoint()
            if ckpt is None:
                return None
            self._restored = ckpt.to_directory(str(self.run_dir / "restored"))
        return self._restored


def _storage_call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` with transient storage failures (pyarrow raises OSError:
    connection refused, timeouts, 5xx) turned into :class:`StorageUnavailable`."""
    try:
        return fn(*args, **kwargs)
    except OSError as exc:
        if is_transient(exc):
            raise StorageUnavailable(redact(" ".join(str(exc).split()))) from exc
        raise


_SECRET_VARS = frozenset({"AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN",
                          "AWS_ACCESS_KEY_ID"})


@contextlib.contextmanager
def _credentials_stay_on_nodes() -> Iterator[None]:
    """Stop Ray Tune from copying the driver's AWS keys into each trial's
    ``runtime_env`` (Ray's runtime-env agent logs runtime envs in plain text, so the
    secret would land in the cluster's logs). Trials take credentials from their node's
    own AWS chain instead: the instance role, a Kubernetes secret, or the environment
    the node was started in (a local Ray started by this process inherits it)."""
    try:
        from ray.tune.execution import class_cache
    except ImportError:  # pragma: no cover - another Ray layout: nothing to patch
        yield
        return
    before = class_cache.ENV_VARS_TO_PROPAGATE
    class_cache.ENV_VARS_TO_PROPAGATE = set(before) - _SECRET_VARS
    try:
        yield
    finally:
        class_cache.ENV_VARS_TO_PROPAGATE = before


def experiment_name(name: str, pair: str) -> str:
    """The Tune experiment (and catalog experiment) of ``pair`` in sweep ``name``."""
    return f"{name}-{pair}"


def _trial(sampled: dict[str, Any], *, base: dict[str, Any], space: dict[str, Any],
           pair: str, experiment: str) -> None:
    """The Tune trial function: build the trial's config, train, report."""
    from ray import tune

    ctx_tune = tune.get_context()
    trial_id = ctx_tune.get_trial_id()
    overrides = {"name": f"{experiment}-{trial_id}"}
    cfg = from_flat(overrides, trial_config(parse_space(space, source=experiment), pair,
                                            sampled, base))
    # Checkpoints at evaluation points only: every Tune result then carries a fresh
    # metric, and ASHA's training_iteration counts evaluations.
    if cfg.train.eval_every > 0:
        cfg = from_flat({"train.checkpoint_every": cfg.train.eval_every}, cfg)
    start = time.perf_counter()
    if cfg.scaling.workers == 1:
        ctx = TuneContext(cfg)
        try:
            history = run(cfg, ctx)
        finally:
            shutil.rmtree(ctx.run_dir, ignore_errors=True)
        # A trial restored at its final checkpoint trains nothing and reports nothing
        # in this process: its metrics are the last evaluation in its history.
        last = ctx.last or {k: v for k, v in (history.evals[-1] if history.evals else {}).items()
                            if isinstance(v, (int, float))}
    else:
        from ray.tune.integration.ray_train import TuneReportCallback

        from optical_ray.distributed import build_trainer

        trainer = build_trainer(cfg, callbacks=[TuneReportCallback()],
                                name=f"trainruns/{experiment}/{trial_id}")
        result = trainer.fit()
        if result.error is not None:
            raise result.error
        last = {k: v for k, v in (result.metrics or {}).items() if isinstance(v, (int, float))}
        if result.checkpoint is not None:
            last[CHECKPOINT_PATH_KEY] = result.checkpoint.path
    # train_s: the trial's own work (data, model, steps, evaluations, checkpoints); for
    # a TorchTrainer, as timed on its rank-0 worker (without the worker-group start-up).
    train_s = last.get("run_s", time.perf_counter() - start)
    tune.report({**last, FINISHED_KEY: 1, "train_s": train_s})


@dataclass
class PairResult:
    """The outcome of one pair's experiment."""

    pair: str
    experiment: str
    path: str
    best_config: dict[str, Any] | None
    best_metrics: dict[str, float]
    best_checkpoint: str | None
    baseline_metrics: dict[str, float] | None
    trials: int
    failed: list[tuple[str, str]] = field(default_factory=list)
    searched: list[str] = field(default_factory=list)


@dataclass
class SweepResult:
    """Every pair's outcome; ``summary()`` is what the CLI prints."""

    name: str
    metric: str
    storage: str
    pairs: dict[str, PairResult]

    def summary(self) -> str:
        lines = [f"best config per pair ({self.metric}, sweep {self.name!r}, storage "
                 f"{self.storage}):"]
        for pair, r in self.pairs.items():
            value = r.best_metrics.get(self.metric)
            base = (r.baseline_metrics or {}).get(self.metric)
            shown = "no finished trial" if value is None else f"{self.metric}={value:.4f}"
            if value is not None and base is not None:
                shown += f" (zero-shot {base:.4f}, {value - base:+.4f})"
            lines.append(f"  {pair}: {shown}; {r.trials} trials, {len(r.failed)} failed")
            if r.best_config:
                keys = list(dict.fromkeys([*r.searched, "distill.epsilon", "distill.weight",
                                           "distill.layers", "distill.lr",
                                           "distill.rank_batch_size"]))
                hp = {k: r.best_config.get(k) for k in keys}
                lines.append("    " + ", ".join(f"{k.split('.')[-1]}={_fmt(v)}"
                                                for k, v in hp.items()))
            if r.best_checkpoint:
                lines.append(f"    checkpoint: {r.best_checkpoint}")
            for trial_id, reason in r.failed:
                lines.append(f"    failed {trial_id}: {reason}")
        return "\n".join(lines)


def _fmt(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


class CatalogCallback(Callback):
    """Appends one catalog record per finished or failed trial, as it happens (a
    driver that dies loses no finished trial's record). Records are keyed by
    experiment and trial, so a trial recorded twice (e.g. around a resume) is one
    record."""

    def __init__(self, catalog: Any, experiment: str, pair: str, metric: str, mode: str,
                 baseline: dict[str, float] | None, base: dict[str, Any],
                 space: dict[str, Any]) -> None:
        self.catalog, self.experiment, self.pair = catalog, experiment, pair
        self.metric, self.mode, self.baseline = metric, mode, baseline
        self.base, self.space = base, space
        self.started: dict[str, float] = {}

    def on_trial_start(self, iteration, trials, trial, **info):  # noqa: ANN001
        self.started[trial.trial_id] = time.time()

    def on_trial_complete(self, iteration, trials, trial, **info):  # noqa: ANN001
        self._record(trial, "finished", None)

    def on_trial_error(self, iteration, trials, trial, **info):  # noqa: ANN001
        self._record(trial, "failed", _error_line(trial))

    def _record(self, trial: Any, status: str, error: str | None) -> None:
        from optical_ray.catalog import TrialRecord

        result = trial.last_result or {}
        analysis = trial.metric_analysis or {}
        best_key = "max" if self.mode == "max" else "min"
        best = {k: v[best_key] for k, v in analysis.items()
                if isinstance(v, Mapping) and best_key in v and _is_metric(k)}
        last = {k: v for k, v in result.items()
                if isinstance(v, (int, float)) and _is_metric(k)}
        if status == "finished" and not result.get(FINISHED_KEY):
            status = "stopped"  # ASHA ended it early
        try:
            config: dict[str, Any] = to_flat(trial_config(
                parse_space(self.space), self.pair, dict(trial.config), self.base))
        except OpticalRayError:
            config = dict(trial.config)  # a sampled combination that cannot work
        ckpt = trial.checkpoint
        self.catalog.append(TrialRecord(
            experiment=self.experiment, pair=self.pair, trial_id=trial.trial_id,
            status=status, config=config, best_metrics=best, last_metrics=last,
            metric=self.metric, mode=self.mode, error=error,
            baseline_metrics=self.baseline,
            checkpoint_uri=_checkpoint_uri(ckpt, result, self.catalog.storage),
            started_at=self.started.get(trial.trial_id), finished_at=time.time(),
            training_s=result.get("train_s"), iterations=result.get("training_iteration"),
            record_id=f"{self.experiment}--{trial.trial_id}"))


def _is_metric(key: str) -> bool:
    name = key.split("/")[-1].split("@")[0]
    return name in ("map", "ndcg", "mrr", "recall", "p", "score") or "/" in key


def _checkpoint_uri(ckpt: Any, result: Mapping[str, Any], store: Any) -> str | None:
    """The URI of a trial's latest checkpoint: Tune's (single-worker trials) or its
    Train run's (multi-worker trials report it as ``checkpoint_path``)."""
    if ckpt is not None:
        return _uri(ckpt.path, ckpt.filesystem)
    path = result.get(CHECKPOINT_PATH_KEY)
    return store.uri_of(store.rel(path)) if isinstance(path, str) and path else None


def _uri(path: str, filesystem: Any) -> str:
    kind = getattr(filesystem, "type_name", "local")
    return f"s3://{path}" if kind == "s3" else path


_EXC_LINE = re.compile(r"^(?:[\w.]+\.)?\w*(?:Error|Exception|Interrupt)\b: \S")


def error_reason(text: str) -> str:
    """The user-facing line of an error text: the last ``SomeError: message`` line
    (Ray wraps a trial's exception in several layers of its own)."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    found = [line for line in lines if _EXC_LINE.match(line)]
    return ((found or lines or ["unknown error"])[-1])[:500]


def _error_line(trial: Any) -> str:
    """The reason a trial failed, from its error file or its error object."""
    text = ""
    path = getattr(trial, "error_file", None)
    try:
        if path and Path(path).is_file():
            text = Path(path).read_text(errors="replace")
        if not text:
            text = str(trial.get_error() or "")
    except Exception:  # noqa: BLE001 - reporting must not break the sweep
        pass
    return error_reason(text or "unknown error")


def _model_depth(cfg: Config) -> int:
    """Encoder layers of the model the trials distill (for layer choices): the trained
    teacher's, else the configured model's (a preset, a local directory or the tiny
    builder's)."""
    from optical_ray.model import PRESETS, preset_dir

    name = cfg.model.name_or_path
    where = cfg.train.teacher or (str(preset_dir(name)) if name in PRESETS else
                                  (name if name != "tiny" else None))
    if where and (Path(where) / "config.json").is_file():
        data = json.loads((Path(where) / "config.json").read_text())
        return int(data.get("num_hidden_layers", cfg.model.tiny.num_layers))
    return cfg.model.tiny.num_layers


def _baseline(cfg: Config, pair: str) -> dict[str, float] | None:
    """Zero-shot metrics of the teacher on the trials' evaluation set (None without
    a trained teacher)."""
    if not cfg.train.teacher:
        return None
    import ray

    from optical_ray.model import RetrievalModel
    from optical_ray.train import evaluate_dev

    pcfg = from_flat({"pair": pair}, cfg)

    @ray.remote(num_cpus=cfg.scaling.cpus_per_worker, num_gpus=cfg.scaling.gpus_per_worker)
    def evaluate() -> dict[str, float]:
        return evaluate_dev(RetrievalModel.load(pcfg.train.teacher), pcfg)

    return ray.get(evaluate.remote())


def run_sweep(base: Config, space: SearchSpace | str | Path, *, pairs: Sequence[str],
              samples: int | None = None, workers_per_trial: int | None = None,
              max_concurrent: int | None = None, scheduler: str | None = None,
              search: str | None = None, metric: str | None = None, name: str | None = None, resume: bool = False,
              address: str | None = None, verbose: int = 1,
              tracking: Sequence[str] | None = None,
              optuna_storage: str | None = None) -> SweepResult:
    """Search ``space`` for each of ``pairs``; trials, checkpoints and catalog records go
    to ``base.storage``. Arguments left ``None`` come from ``base.sweep``.

    With ``resume=True`` an experiment already in storage is restored: finished trials
    are not run again, unfinished ones continue from their checkpoints, and the
    searcher keeps its history. Without it, an existing experiment is an error.
    """
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search import ConcurrencyLimiter

    from optical_ray.catalog import Catalog
    from optical_ray.data.sources import ensure_data_root
    from optical_ray.distributed import init_ray, prepare_config
    from optical_ray.storage import resolve_storage
    from optical_ray.tracking import optuna_storage_url, prepare_study
    from optical_ray.tracking_tune import tracking_callbacks

    sw = base.sweep
    over = {"sweep.samples": samples, "scaling.workers": workers_per_trial,
            "sweep.max_concurrent": max_concurrent, "sweep.scheduler": scheduler,
            "sweep.search": search,
            "sweep.metric": metric, "name": name, "sweep.pairs": list(pairs),
            # tracking (optical_ray.tracking): views onto the catalog
            "sweep.tracking": None if tracking is None else list(tracking),
            "sweep.optuna_storage": optuna_storage}
    cfg = prepare_config(from_flat({k: v for k, v in over.items() if v is not None}, base))
    sw = cfg.sweep
    if not sw.pairs:
        raise ConfigError("sweep.pairs: got [], expected at least one pair such as en-sw")
    if not isinstance(space, SearchSpace):
        space = load_space(space)
    space_raw = _space_raw(space)
    store = resolve_storage(cfg.storage.uri, cfg.storage.endpoint, cfg.storage.region)
    if store.scheme == "s3":
        store.ensure_bucket()
    catalog = Catalog(store)
    ensure_data_root(cfg)
    init_ray(address)
    results: dict[str, PairResult] = {}
    for pair in sw.pairs:
        exp = experiment_name(cfg.name, pair)
        path = store.join(exp)
        fs = store.ray_storage_filesystem()
        exists = tune.Tuner.can_restore(path, storage_filesystem=fs)
        if exists and not resume:
            raise ConfigError(f"sweep {cfg.name!r}: experiment {exp!r} already exists in "
                              f"{store.uri}; pass --resume to continue it, or another --name")
        baseline = _baseline(cfg, pair)
        trainable = tune.with_parameters(_trial, base=to_dict(cfg), space=space_raw,
                                         pair=pair, experiment=exp)
        sc = cfg.scaling
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
        callback = CatalogCallback(catalog, exp, pair, sw.metric, sw.mode, baseline,
                                   to_dict(cfg), space_raw)
        # tracking: MLflow / TensorBoard / W&B callbacks on the Tuner (Train V2)
        views = tracking_callbacks(sw.tracking, sweep=cfg.name, experiment=exp, pair=pair,
                                   base=to_dict(cfg), space=space_raw, store=store,
                                   space_file=space.source, output_dir=cfg.output_dir)
        if exists:
            tuner = tune.Tuner.restore(path, trainable, resume_unfinished=True,
                                       resume_errored=False, storage_filesystem=fs)
            # The restored run config is the pickled one; give it a fresh callback
            # (this driver's catalog connection and baseline).
            tuner._local_tuner.get_run_config().callbacks = [callback, *views]
        else:
            import optuna

            depth = _model_depth(cfg)
            # Multivariate TPE models the parameters jointly (epsilon and learning rate
            # interact); Optuna recommends it over independent TPE.
            sampler = optuna.samplers.RandomSampler(seed=sw.seed) if sw.search == "random" \
                else optuna.samplers.TPESampler(seed=sw.seed, multivariate=True,
                                                n_startup_trials=max(2, min(5, sw.samples // 3)))
            # tracking: the pair's persistent Optuna study (<name>-<pair>), if any
            study_url = optuna_storage_url(sw.optuna_storage, store)
            study = {"storage": prepare_study(study_url, exp, resume=resume, metric=sw.metric,
                                              mode=sw.mode), "study_name": exp} \
                if study_url else {}
            searcher = ConcurrencyLimiter(
                PruningAwareOptunaSearch(space=space.define_by_run(pair, depth),
                                         metric=sw.metric, mode=sw.mode, sampler=sampler,
                                         **study),
                max_concurrent=sw.max_concurrent)
            sched = ASHAScheduler(time_attr="training_iteration", grace_period=sw.grace_period,
                                  reduction_factor=sw.reduction_factor,
                                  max_t=_asha_max_t(cfg, space, pair)) \
                if sw.scheduler == "asha" else FIFOScheduler()
            tuner = tune.Tuner(
                trainable,
                tune_config=tune.TuneConfig(search_alg=searcher, scheduler=sched,
                                            metric=sw.metric, mode=sw.mode,
                                            num_samples=sw.samples,
                                            # a single-worker trial runs in its actor:
                                            # the next trial reuses the warm process
                                            reuse_actors=sc.workers == 1),
                run_config=tune.RunConfig(
                    name=exp, storage_path=store.ray_storage_path(), storage_filesystem=fs,
                    callbacks=[callback, *views], verbose=verbose,
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
                    failure_config=tune.FailureConfig(max_failures=0)))
        with _credentials_stay_on_nodes():
            grid = tuner.fit()
        _flush_catalog(catalog)
        results[pair] = _pair_result(grid, pair, exp, path, sw.metric, sw.mode, baseline,
                                     space, cfg, store)
    return SweepResult(cfg.name, sw.metric, store.uri, results)


def _evaluations_per_trial(cfg: Config, space: SearchSpace, pair: str) -> int | None:
    """How many evaluations (Tune results, ASHA's time unit) a full trial makes, when
    every trial makes the same number: one distill stage with fixed steps and
    ``train.eval_every``. ASHA then places its rungs inside the trial's real length
    (the last evaluation is the end, not a rung). None when it varies or is unknown."""
    base, params = space.for_pair(pair)
    varying = {p.key for p in params}
    keys = ("train.stages", "distill.steps", "train.eval_every")
    if varying & set(keys):
        return None
    flat = {**to_flat(cfg), **base}
    steps, every = int(flat["distill.steps"]), int(flat["train.eval_every"])
    if list(flat["train.stages"]) != ["distill"] or steps <= 0:
        return None
    return max(1, math.ceil(steps / every)) if every > 0 else 1


def _asha_max_t(cfg: Config, space: SearchSpace, pair: str) -> int:
    """ASHA's ``max_t`` in Tune results: a full trial's evaluations plus its end-of-trial
    summary (so a trial is never cut before that summary), or unbounded when unknown."""
    evaluations = _evaluations_per_trial(cfg, space, pair)
    return evaluations + 1 if evaluations else 10_000


def _flush_catalog(catalog: Any) -> None:
    """Write the records spooled while storage was down, waiting for it (about 75 s);
    if it stays down they stay spooled (and are written by the next catalog write)."""
    import logging

    def flush_all() -> None:
        catalog.flush()
        if catalog.pending():
            raise StorageUnavailable(f"{len(catalog.pending())} catalog record part(s) "
                                     f"spooled in {catalog.spool_dir}")

    try:
        with_retries(flush_all, attempts=REPORT_ATTEMPTS, base_delay=1.0, max_delay=15.0,
                     what="writing spooled catalog records")
    except StorageUnavailable as exc:
        logging.getLogger(__name__).warning(
            "storage still unreachable: %s; they are written by the next catalog write "
            "(any later sweep, or Catalog(storage).flush())", exc)


def _space_raw(space: SearchSpace) -> dict[str, Any]:
    """A search space as plain data (shipped to trials, re-parsed there)."""
    def params(ps: Any) -> dict[str, Any]:
        return {p.key: {**p.spec, **({"when": p.when} if p.when else {})} for p in ps}

    return {"base": space.base, "params": params(space.params),
            "pairs": {pair: {"base": b, "params": params(ps)}
                      for pair, (b, ps) in space.pairs.items()}}


def _pair_result(grid: Any, pair: str, exp: str, path: str, metric: str, mode: str,
                 baseline: dict[str, float] | None, space: SearchSpace,
                 base: Config, store: Any) -> PairResult:
    failed = []
    for r in grid:
        if r.error is not None:
            failed.append((Path(r.path).name, error_reason(str(r.error))[:300]))
    best_config, best_metrics, best_ckpt = None, {}, None
    try:
        best = grid.get_best_result(metric=metric, mode=mode, scope="all",
                                    filter_nan_and_inf=True)
    except RuntimeError:
        best = None
    if best is not None and best.metrics:
        df = best.metrics_dataframe
        if df is not None and metric in df:
            row = df.loc[df[metric].idxmax() if mode == "max" else df[metric].idxmin()]
            best_metrics = {k: float(v) for k, v in row.items()
                            if isinstance(v, (int, float)) and _is_metric(str(k))}
        try:  # the full resolved config (layer strategies become layer lists)
            best_config = to_flat(trial_config(space, pair, dict(best.config), base))
        except OpticalRayError:
            best_config = dict(best.config)
        ckpt = best.checkpoint
        best_ckpt = _checkpoint_uri(ckpt, best.metrics or {}, store)
    return PairResult(pair, exp, path, best_config, best_metrics, best_ckpt, baseline,
                      len(grid), failed, searched=[p.key for p in space.for_pair(pair)[1]])
