"""Sweeps, Ray-free: a search space and a base config become one plan per language
pair, each trial's config is resolved once, and the outcome is summarised.

Why one experiment per pair: the best epsilon, weight and layers differ between a
high- and a low-resource language, so each pair gets its own TPE model and its own ASHA
brackets (a pair dimension would let the easy pair's scores stop the hard pair's trials
early), and a pair can be resumed, extended or deleted on its own. The pairs of a sweep
run at the same time and share one trial budget (``sweep.max_concurrent``), so the
cluster never idles while one pair finishes its stragglers.

Everything Ray Tune lives in :mod:`optical_ray.distributed.pair` (per pair) and
:mod:`optical_ray.distributed.driver` (the driver); this module decides *what* runs
(plans, trial configs, pre-flight checks, the summary) and is testable without Ray.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from optical_ray.config import MAIN_HYPERPARAMETERS, Config, from_flat, to_flat
from optical_ray.config.objective import OBJECTIVE_KEY, objective_task_problems
from optical_ray.errors import ConfigError
from optical_ray.sweeps.protocol import RUN_KEY
from optical_ray.sweeps.space import SearchSpace, trial_config
from optical_ray.sweeps.templates import expand

__all__ = [
    "PairPlan",
    "FinalistRun",
    "PairResult",
    "pair_base",
    "pair_config",
    "check_objectives",
    "SweepResult",
    "plan_sweep",
    "resolve_trial_config",
    "experiment_name",
    "error_reason",
    "asha_max_t",
    "evaluations_per_trial",
]

#: Keys the sweep summary shows after the space's searched keys.
SUMMARY_KEYS = (*MAIN_HYPERPARAMETERS, "distill.rank_batch_size")


def experiment_name(name: str, pair: str) -> str:
    """The Tune experiment (and catalog experiment) of ``pair`` in sweep ``name``."""
    return f"{name}-{pair}"


@dataclass(frozen=True)
class FinalistRun:
    """One run of a pair's finalists experiment: the flat config it trains (a search
    trial's recorded config, or the space's base, with its seed) and where the config
    came from (``finalist:<trial>`` or ``finalist:base``)."""

    origin: str
    seed: int
    config: str  # flat config JSON


@dataclass(frozen=True)
class PairPlan:
    """Everything one pair's experiment needs; built once by the driver and shipped to
    the process that runs the pair's Tuner (and, inside it, to every trial).

    ``base`` is the sweep's validated base config (storage, data, model, sweep
    settings); ``space`` the parsed search space; ``depth`` the encoder depth layer
    choices are sampled against; ``max_t`` ASHA's horizon in Tune results. ``points``,
    when given, are the sampled values of every trial to run, in order, instead of
    sampling the space (a study's runs, :mod:`optical_ray.studies`).
    """

    pair: str
    experiment: str
    path: str
    base: Config
    space: SearchSpace
    depth: int
    max_t: int
    resume: bool = False
    space_file: str | None = None
    warm: Any = None  # a warmstart.WarmStart: points to enqueue and TPE's prior
    #: fixed runs instead of a search (a study's cells x seeds, or the pair's finalists,
    #: whose ``<experiment>`` is then ``<search>-final``): each a sampled dict with its
    #: origin under ``ORIGIN_KEY``; None for a search
    points: tuple[dict[str, Any], ...] | None = None

    @property
    def searched(self) -> list[str]:
        """The config keys this pair's trials sample."""
        return [p.key for p in self.space.for_pair(self.pair)[1]]


def pair_base(cfg: Config, space: SearchSpace, pair: str) -> Config:
    """The sweep's base config as ``pair``'s experiments run it: ``sweep.objective``
    (the config's, else the space's fixed one: a space names its own data) with its
    pair templates filled in, and ``sweep.metric`` its result key ``objective``. Without
    an objective, ``cfg`` itself."""
    objective = cfg.sweep.objective.strip() or str(
        space.for_pair(pair)[0].get("sweep.objective") or ""
    )
    if not objective.strip():
        return cfg
    sweep = dataclasses.replace(cfg.sweep, objective=expand(objective, pair), metric=OBJECTIVE_KEY)
    return dataclasses.replace(cfg, sweep=sweep)


def pair_config(cfg: Config, space: SearchSpace, pair: str) -> Config:
    """The config a trial of ``pair`` starts from before sampling: the space's fixed
    values over :func:`pair_base`, with the pair's objective."""
    base = pair_base(cfg, space, pair)
    out = trial_config(space, pair, {}, base)
    sweep = dataclasses.replace(out.sweep, objective=base.sweep.objective)
    return dataclasses.replace(out, sweep=sweep)


def check_objectives(cfg: Config, space: SearchSpace) -> None:
    """Before any trial: every pair's objective names only tasks its trials evaluate
    (one :class:`ConfigError` listing each pair's problem and the tasks it has)."""
    problems = []
    for pair in cfg.sweep.pairs:
        problems += objective_task_problems(pair_config(cfg, space, pair))
    if problems:
        raise ConfigError(problems)


def resolve_trial_config(plan: PairPlan, sampled: Mapping[str, Any], trial_id: str) -> Config:
    """The one place a trial's :class:`Config` is built: defaults ← the sweep's base ←
    the space's fixed values ← the sampled values, named ``<experiment>-<trial>``, with
    checkpoints at evaluation points only (every Tune result then carries a fresh metric,
    and ASHA's ``training_iteration`` counts evaluations). The trial trains on it and
    reports ``to_flat`` of it; the catalog stores exactly that. A finalist run trains
    the flat config it carries (``sampled[RUN_KEY]``, JSON: Tune saves it with the
    trial, so a resumed run trains what it started with); either way the objective is
    the pair's (:func:`pair_base`)."""
    if RUN_KEY in sampled:
        cfg = from_flat(json.loads(sampled[RUN_KEY]))
    else:
        cfg = trial_config(plan.space, plan.pair, sampled, plan.base)
    sw = plan.base.sweep
    cfg = dataclasses.replace(
        cfg, sweep=dataclasses.replace(cfg.sweep, objective=sw.objective, metric=sw.metric)
    )
    train = cfg.train
    if train.eval_every > 0:
        train = dataclasses.replace(train, checkpoint_every=train.eval_every)
    return dataclasses.replace(cfg, name=f"{plan.experiment}-{trial_id}", train=train)


def evaluations_per_trial(cfg: Config, space: SearchSpace, pair: str) -> int | None:
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


def asha_max_t(cfg: Config, space: SearchSpace, pair: str) -> int:
    """ASHA's ``max_t`` in Tune results: a full trial's evaluations plus its end-of-trial
    summary (so a trial is never cut before that summary), or unbounded when unknown."""
    evaluations = evaluations_per_trial(cfg, space, pair)
    return evaluations + 1 if evaluations else 10_000


def _lowest(flat: Mapping[str, Any], params: Sequence[Any], key: str, pick: Any) -> Any:
    """The extreme (``pick``: min or max) value ``key`` can take in a pair's trials."""
    for p in params:
        if p.key != key:
            continue
        if p.type in ("loguniform", "uniform", "int"):
            return pick(float(p.spec["low"]), float(p.spec["high"]))
        if p.type == "categorical":
            return pick(float(c) for c in p.spec["choices"])
        if p.type == "fixed":
            return p.spec["value"]
    return flat[key]


def unconverging_epsilon(cfg: Config, space: SearchSpace) -> list[str]:
    """One warning line per pair whose space can sample an epsilon at which Sinkhorn
    cannot reach ``distill.sinkhorn_tol`` within ``distill.sinkhorn_iters`` (those trials
    would train on plans far from converged, and TPE would learn that small epsilon is
    bad for the wrong reason); see :func:`optical_ray.ot.converges_within`."""
    from optical_ray.ot import converges_within, iterations_needed

    lines = []
    for pair in cfg.sweep.pairs:
        fixed, params = space.for_pair(pair)
        flat = {**to_flat(cfg), **fixed}
        eps = _lowest(flat, params, "distill.epsilon", min)
        iters = int(_lowest(flat, params, "distill.sinkhorn_iters", min))
        tol = float(_lowest(flat, params, "distill.sinkhorn_tol", min))
        methods = {flat["distill.method"]} | {
            c
            for p in params
            if p.key == "distill.method" and p.type == "categorical"
            for c in p.spec["choices"]
        }
        if "ot" in methods and not converges_within(float(eps), iters, tol):
            lines.append(
                f"{pair}: the space samples distill.epsilon down to {eps:g}, where "
                f"Sinkhorn needs up to {iterations_needed(float(eps), tol)} "
                f"iterations to reach distill.sinkhorn_tol={tol:g}; "
                f"distill.sinkhorn_iters={iters} stops those trials on unconverged "
                "plans (raise distill.sinkhorn_iters or the lowest epsilon)"
            )
    return lines


def sweep_config(base: Config, *, pairs: Sequence[str], **over: Any) -> Config:
    """``base`` with the sweep arguments that were given (not None) applied.

    ``over`` keys: samples, workers_per_trial, max_concurrent, scheduler, search, metric,
    name, pair_order, max_failures, tracking, optuna_storage, objectives, constraints,
    warm_start, warm_start_from, warm_start_top, objective, promotion, promotion_alpha,
    finalists, finalist_seeds. Several ``objectives`` without a
    ``scheduler`` run under FIFO (``none``): ASHA cannot rank trials on several
    objectives."""
    keys = {
        "samples": "sweep.samples",
        "workers_per_trial": "scaling.workers",
        "max_concurrent": "sweep.max_concurrent",
        "scheduler": "sweep.scheduler",
        "search": "sweep.search",
        "metric": "sweep.metric",
        "name": "name",
        "pair_order": "sweep.pair_order",
        "max_failures": "sweep.max_failures",
        "tracking": "sweep.tracking",
        "optuna_storage": "sweep.optuna_storage",
        "objectives": "sweep.objectives",
        "constraints": "sweep.constraints",
        "warm_start": "sweep.warm_start",
        "warm_start_from": "sweep.warm_start_from",
        "warm_start_top": "sweep.warm_start_top",
        "objective": "sweep.objective",
        "promotion": "sweep.promotion",
        "promotion_alpha": "sweep.promotion_alpha",
        "finalists": "sweep.finalists",
        "finalist_seeds": "sweep.finalist_seeds",
    }
    unknown = set(over) - set(keys)
    if unknown:
        raise TypeError(f"unknown sweep arguments: {sorted(unknown)}")
    values = {keys[k]: v for k, v in over.items() if v is not None}
    values["sweep.pairs"] = list(pairs)
    objectives = over.get("objectives")
    if objectives is not None and len(objectives) > 1 and over.get("scheduler") is None:
        values["sweep.scheduler"] = "none"
    cfg = from_flat(values, base)
    if not cfg.sweep.pairs:
        raise ConfigError("sweep.pairs: got [], expected at least one pair such as en-sw")
    duplicated = sorted({p for p in cfg.sweep.pairs if cfg.sweep.pairs.count(p) > 1})
    if duplicated:
        raise ConfigError(f"sweep.pairs: {', '.join(duplicated)} given more than once")
    return cfg


def plan_sweep(
    cfg: Config,
    space: SearchSpace,
    path_of: Any,
    depth: int,
    exists: Mapping[str, bool],
    resume: bool,
) -> list[PairPlan]:
    """One :class:`PairPlan` per pair of ``cfg.sweep.pairs``.

    ``path_of(experiment)`` is the experiment's storage path; ``exists[pair]`` whether
    that experiment is already in storage. Every pair is checked before any trial runs:
    without ``resume`` an existing experiment is refused (all of them named at once)."""
    names = {pair: experiment_name(cfg.name, pair) for pair in cfg.sweep.pairs}
    found = [names[p] for p in cfg.sweep.pairs if exists.get(p)]
    if found and not resume:
        raise ConfigError(
            f"sweep {cfg.name!r}: experiment(s) {', '.join(found)} already "
            "exist in storage; pass --resume to continue, or another --name"
        )
    return [
        PairPlan(
            pair=pair,
            experiment=names[pair],
            path=path_of(names[pair]),
            base=pair_base(cfg, space, pair),
            space=space,
            depth=depth,
            max_t=asha_max_t(cfg, space, pair),
            resume=bool(exists.get(pair)),
            space_file=space.source,
        )
        for pair in cfg.sweep.pairs
    ]


@dataclass
class PairResult:
    """The outcome of one pair's experiment. ``error`` is set when the pair's experiment
    itself failed (not one of its trials)."""

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
    stopped: int = 0
    error: str | None = None
    warnings: list[str] = field(default_factory=list)  # e.g. an unreachable tracking server
    #: the pair's answer after its finalists (an optical_ray.catalog.answers.Answer)
    answer: Any = None
    metric: str = ""  # what its trials were ranked on (sweep.metric, or objective)

    @property
    def finished(self) -> bool:
        """Whether at least one trial of this pair produced a result."""
        return self.error is None and bool(self.best_metrics)


@dataclass
class SweepResult:
    """Every pair's outcome; ``summary()`` is what the CLI prints, ``exit_code`` what it
    exits with (1 when some pair has no finished trial)."""

    name: str
    metric: str
    storage: str
    pairs: dict[str, PairResult]

    @property
    def exit_code(self) -> int:
        return 0 if self.pairs and all(r.finished for r in self.pairs.values()) else 1

    def summary(self) -> str:
        lines = [
            f"best config per pair ({self.metric}, sweep {self.name!r}, storage {self.storage}):"
        ]
        for pair, r in self.pairs.items():
            if r.error is not None:
                lines.append(f"  {pair}: experiment failed: {r.error}")
                continue
            metric = r.metric or self.metric
            value = r.best_metrics.get(metric)
            base = (r.baseline_metrics or {}).get(metric)
            shown = "no finished trial" if value is None else f"{metric}={value:.4f}"
            if value is not None and base is not None:
                shown += f" (zero-shot {base:.4f}, {value - base:+.4f})"
            lines.append(f"  {pair}: {shown}; {r.trials} trials, {len(r.failed)} failed")
            if r.best_config:
                keys = list(dict.fromkeys([*r.searched, *SUMMARY_KEYS]))
                hp = {k: r.best_config[k] for k in keys if r.best_config.get(k) is not None}
                lines.append(
                    "    " + ", ".join(f"{k.split('.')[-1]}={_fmt(v)}" for k, v in hp.items())
                )
            if r.best_checkpoint:
                lines.append(f"    checkpoint: {r.best_checkpoint}")
            if r.answer is not None:
                lines.append(f"    answer: {r.answer.statement}")
            for trial_id, reason in r.failed:
                lines.append(f"    failed {trial_id}: {reason}")
            for warning in r.warnings:
                lines.append(f"    warning: {warning}")
        bad = [p for p, r in self.pairs.items() if not r.finished]
        if bad:
            lines.append(
                f"error: no finished trial for {', '.join(bad)}; the causes are "
                "above, full tracebacks in each trial's error.txt under the "
                "experiment's storage"
            )
        return "\n".join(lines)


def _fmt(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


_EXC_LINE = re.compile(r"^(?:[\w.]+\.)?\w*(?:Error|Exception|Interrupt)\b: \S")


def error_reason(text: str) -> str:
    """The user-facing line of an error text: the last ``SomeError: message`` line
    (Ray wraps a trial's exception in several layers of its own)."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    found = [line for line in lines if _EXC_LINE.match(line)]
    return ((found or lines or ["unknown error"])[-1])[:500]
