"""The searchers of a pair's Tune experiment: Ray's OptunaSearch, told which trials the
scheduler stopped (:class:`PruningAwareOptunaSearch`), extended to several objectives
and constraints (:class:`ObjectivesOptunaSearch`), on the pair's persistent Optuna
study, behind the sweep's shared trial budget (:func:`build_searcher`).

Private Ray API used here (each with a test that fails when Ray changes it): the
Optuna study and ask-and-tell trials inside ``OptunaSearch`` (``_ot_study``,
``_ot_trials``, ``_completed_trials``).
"""

from __future__ import annotations

import contextlib
import logging
import pickle
from typing import Any

from ray.tune.search import ConcurrencyLimiter, Searcher
from ray.tune.search.optuna import OptunaSearch

from optical_ray.distributed.slots import SharedLimiter
from optical_ray.sweeps.plan import PairPlan
from optical_ray.sweeps.protocol import FINISHED_KEY, ORIGIN_KEY, RUN_KEY

__all__ = [
    "PruningAwareOptunaSearch",
    "ObjectivesOptunaSearch",
    "FixedRuns",
    "make_sampler",
    "build_searcher",
]

log = logging.getLogger(__name__)


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

    def suggest(self, trial_id: str) -> dict | None:
        """The sampled config, with where it came from under ``ORIGIN_KEY``: the
        enqueued warm-start point's origin, else the sampler's (``random`` or
        ``sampler``), for the trial's catalog record."""
        from optical_ray.sweeps.warmsampler import sampler_origin

        config = super().suggest(trial_id)
        if config is None or config == Searcher.FINISHED:
            return config
        ot_trial = self._ot_trials[trial_id]  # private, as in on_trial_complete
        origin = ot_trial.user_attrs.get("origin")
        config[ORIGIN_KEY] = origin or sampler_origin(self._sampler, self._ot_study)
        return config

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        import optuna

        # After a resume, a trial the persisted study saw end may report again.
        with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
            super().on_trial_result(trial_id, result)

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        import optuna

        try:
            if (
                error
                or not result
                or result.get(FINISHED_KEY)
                or trial_id in self._completed_trials
            ):
                super().on_trial_complete(trial_id, result=result, error=error)
                return
            # Private: OptunaSearch keeps its study and ask-and-tell trials here.
            self._ot_study.tell(self._ot_trials[trial_id], state=optuna.trial.TrialState.PRUNED)
        except optuna.exceptions.UpdateFinishedTrialError:
            # A resumed experiment: the persisted study saw this trial end before the
            # driver died, Tune's older snapshot did not. The study has its result.
            log.info("trial %s was already told to Optuna before the resume", trial_id)
        self._completed_trials.add(trial_id)


class ObjectivesOptunaSearch(PruningAwareOptunaSearch):
    """OptunaSearch for several objectives and for constraints (:mod:`optical_ray.catalog.pareto`).

    Objectives and constraints may name what the driver derives from a trial's result
    (``retention`` over the teacher's ``baseline``, ``cost`` = device-seconds), so they
    are added to the result before Optuna is told. Each constraint goes to the trial
    as ``Trial.set_constraint`` (feasible when <= 0): Optuna 5 reads constraints from
    there (its ``constraints_func`` argument is deprecated), and TPE then draws its
    "good" group from feasible trials first, ranking infeasible ones by total violation.
    """

    def __init__(
        self, *args: Any, cfg: Any, baseline: dict[str, float] | None, conditions: list, **kw: Any
    ) -> None:
        self.cfg, self.baseline, self.conditions = cfg, baseline, conditions
        super().__init__(*args, **kw)

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        import optuna

        from optical_ray.catalog.pareto import constraint_values, trial_costs

        if result and not error and trial_id not in self._completed_trials:
            derived = trial_costs(result, self.cfg, self.baseline)
            result = {**result, **{k: v for k, v in derived.items() if v is not None}}
            ot_trial = self._ot_trials.get(trial_id)
            if ot_trial is not None:
                with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
                    for name, value in constraint_values(self.conditions, result).items():
                        ot_trial.set_constraint(name, value)
        super().on_trial_complete(trial_id, result=result, error=error)


class FixedRuns(Searcher):
    """The searcher of a finalists experiment: suggests its plan's runs in order (each
    sampled config carries the run's flat config and origin), then finishes. Its
    position and runs are saved with the experiment (``save``/``restore``: a plain
    pickle in the experiment's signed state), so a resumed finalists experiment
    suggests only the runs it had not started."""

    def __init__(self, runs: Any, metric: str, mode: str) -> None:
        super().__init__(metric=metric, mode=mode)
        self.runs = [(r.origin, r.config) for r in runs]
        self.next = 0

    def suggest(self, trial_id: str) -> dict | None:
        if self.next >= len(self.runs):
            return Searcher.FINISHED
        origin, config = self.runs[self.next]
        self.next += 1
        return {RUN_KEY: config, ORIGIN_KEY: origin}

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        """Nothing to learn: the runs are fixed."""

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump({"runs": self.runs, "next": self.next}, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            state = pickle.load(f)
        self.runs, self.next = list(state["runs"]), int(state["next"])


def make_sampler(sw: Any, constant_liar: bool = True) -> Any:
    """The Optuna sampler of ``sw`` (a :class:`~optical_ray.config.build.SweepConfig`), for one
    objective or several.

    Multivariate TPE models the parameters jointly (epsilon and learning rate
    interact); Optuna recommends it over independent TPE. With several objectives the
    same TPESampler is multi-objective TPE (MOTPE, Ozaki et al. 2020): its "good" group
    is the trials of the best non-dominated ranks, split by hypervolume contribution.
    NSGA-II is the other choice Optuna offers; it evolves generations of
    ``population_size`` (50 by default) and is random search until the first one is
    complete, which a sweep of 8-50 trials per pair never gets past. MOTPE models
    from the first few trials on, which is the budget sweeps here have.
    """
    import optuna

    if sw.search == "random":
        return optuna.samplers.RandomSampler(seed=sw.seed)
    return optuna.samplers.TPESampler(
        seed=sw.seed,
        multivariate=True,
        n_startup_trials=max(2, min(5, sw.samples // 3)),
        constant_liar=constant_liar,
    )


def build_searcher(
    plan: PairPlan, coordinator: str, baseline: dict[str, float] | None = None
) -> Searcher:
    from optical_ray.catalog.pareto import parse_where, search_objective
    from optical_ray.storage import resolve_storage
    from optical_ray.tracking.trackers import open_study_storage, optuna_storage_url

    sw = plan.base.sweep
    if plan.runs:  # a finalists experiment: its runs, in the sweep's shared budget
        fixed = FixedRuns(plan.runs, sw.metric, sw.mode)
        return SharedLimiter(fixed, coordinator, plan.pair, samples=len(plan.runs))
    warm = plan.warm
    objectives = sw.objectives
    conditions = parse_where(sw.constraints)
    # The transfer prior models one objective (the source trials' quantiles of it);
    # with several objectives a warm start only enqueues its points.
    prior = warm.prior if warm and sw.search == "tpe" and not objectives else []
    # The transfer sampler samples on a view of the study (see warmsampler), where
    # the constant liar cannot mark the running trial.
    sampler = make_sampler(sw, constant_liar=not prior)
    if prior:
        from optical_ray.sweeps.warmsampler import TransferSampler

        sampler = TransferSampler(sampler, prior, sw.mode, fade=sw.samples)
    metric, mode = search_objective(sw)
    # The pair's study persists (sweep.optuna_storage, by default SQLite beside local
    # storage) as <sweep>-<pair>, so optuna-dashboard shows every pair as it runs.
    store = resolve_storage(
        plan.base.storage.uri, plan.base.storage.endpoint, plan.base.storage.region
    )
    url = optuna_storage_url(sw.optuna_storage, store)
    # The driver created the study and checked it (launch.prepare_studies); here it is
    # only opened (OptunaSearch loads it).
    study = {"storage": open_study_storage(url), "study_name": plan.experiment} if url else {}
    searcher: Searcher = (
        ObjectivesOptunaSearch(
            space=plan.space.define_by_run(plan.pair, plan.depth),
            metric=metric,
            mode=mode,
            sampler=sampler,
            cfg=plan.base,
            baseline=baseline,
            conditions=conditions,
            **study,
        )
        if objectives or conditions
        else PruningAwareOptunaSearch(
            space=plan.space.define_by_run(plan.pair, plan.depth),
            metric=sw.metric,
            mode=sw.mode,
            sampler=sampler,
            **study,
        )
    )
    if warm and warm.points:
        from optical_ray.sweeps.warmsampler import enqueue_points

        # Private: the searcher's study (persistent or in memory). Skips points the
        # study already holds, so a re-planned resumed pair does not run them twice.
        enqueue_points(searcher._ot_study, warm.points)
    limited: Searcher = searcher
    if sw.max_concurrent_per_pair:
        limited = ConcurrencyLimiter(searcher, max_concurrent=sw.max_concurrent_per_pair)
    return SharedLimiter(limited, coordinator, plan.pair, samples=sw.samples)
