"""The searchers of a pair's Tune experiment: Ray's OptunaSearch, told which trials the
scheduler stopped (:class:`PruningAwareOptunaSearch`), extended to several objectives
and constraints (:class:`ObjectivesOptunaSearch`), on the pair's persistent Optuna
study, or a fixed list of runs (:class:`FixedSearcher`, a study's cells x seeds), behind
the sweep's shared trial budget (:func:`build_searcher`).

Private Ray API used here (each with a test that fails when Ray changes it): the
Optuna study and ask-and-tell trials inside ``OptunaSearch`` (``_ot_study``,
``_ot_trials``, ``_completed_trials``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import pickle
from typing import Any, Sequence

from ray.tune.search import ConcurrencyLimiter, Searcher
from ray.tune.search.optuna import OptunaSearch

from optical_ray.distributed.slots import SharedLimiter
from optical_ray.sweeps.plan import PairPlan
from optical_ray.sweeps.protocol import FINISHED_KEY, ORIGIN_KEY, RUN_KEY

__all__ = [
    "PruningAwareOptunaSearch",
    "ObjectivesOptunaSearch",
    "FixedSearcher",
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


class FixedSearcher(Searcher):
    """Suggests a fixed list of runs in order, then ``FINISHED``: a study's cells x
    seeds, or a pair's finalists (each a full flat config under ``RUN_KEY``). Each run
    carries its origin (``study:<cell>/<seed>``, ``finalist:<trial>``) under
    ``ORIGIN_KEY`` for its catalog record.

    A run whose origin and seed already have a finished record of this experiment in
    the catalog is skipped, so no run is trained twice: not when a pair starts again
    (its driver died before Tune's first snapshot), nor when Tune's last snapshot
    predates a run that finished and was recorded (the restored searcher would
    otherwise suggest it again). The catalog is read once per process, on the first
    suggestion; the set read is not saved with the experiment.
    """

    def __init__(
        self,
        points: Sequence[dict[str, Any]],
        storage: tuple[str, str | None, str | None],
        experiment: str,
        pair: str,
        metric: str | None = None,
        mode: str | None = None,
    ) -> None:
        super().__init__(metric=metric, mode=mode)
        self.points = [dict(p) for p in points]
        self.next = 0  # index of the next point to suggest (saved with the experiment)
        self.storage, self.experiment, self.pair = storage, experiment, pair
        self._done: set[tuple[str, int | None]] | None = None

    def _recorded(self) -> set[tuple[str, int | None]]:
        from optical_ray.catalog import Catalog
        from optical_ray.storage import resolve_storage

        try:
            df = Catalog(resolve_storage(*self.storage)).records(
                self.pair,
                self.experiment,
                columns=["origin", "status", "config"],
                status="finished",
            )
        except Exception as exc:  # noqa: BLE001 - storage down: run what the state says
            log.warning("%s: could not read the catalog (%s); no run skipped", self.pair, exc)
            return set()
        done = set()
        for origin, config in zip(df["origin"], df["config"]) if len(df) else ():
            if isinstance(origin, str):
                seed = json.loads(config).get("train.seed") if isinstance(config, str) else None
                done.add((origin, seed))
        return done

    def set_search_properties(
        self, metric: str | None, mode: str | None, config: dict, **spec: Any
    ) -> bool:
        self._metric = self._metric or metric
        self._mode = self._mode or mode
        return True

    def suggest(self, trial_id: str) -> dict | None:
        if self._done is None:
            self._done = self._recorded()
        while self.next < len(self.points):
            point = self.points[self.next]
            self.next += 1
            if (point.get(ORIGIN_KEY), run_seed(point)) in self._done:
                log.info("%s: %s is in the catalog already", self.pair, point.get(ORIGIN_KEY))
                continue
            return dict(point)
        return Searcher.FINISHED

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        """Nothing to learn: the list is fixed."""

    def save(self, checkpoint_path: str) -> None:
        state = {k: v for k, v in self.__dict__.items() if k != "_done"}
        with open(checkpoint_path, "wb") as f:
            pickle.dump(state, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(pickle.load(f))
        self._done = None


def run_seed(point: dict[str, Any]) -> int | None:
    """The ``train.seed`` a fixed run trains with: its own, or its full config's
    (``RUN_KEY``); None when it sets none."""
    if RUN_KEY in point:
        return json.loads(point[RUN_KEY]).get("train.seed")
    return point.get("train.seed")


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
    if plan.points is not None:  # a study's runs or a pair's finalists, in the shared budget
        st = plan.base.storage
        fixed = FixedSearcher(
            plan.points,
            (st.uri, st.endpoint, st.region),
            plan.experiment,
            plan.pair,
            metric=sw.metric,
            mode=sw.mode,
        )
        runs: Searcher = fixed
        if sw.max_concurrent_per_pair:
            runs = ConcurrencyLimiter(fixed, max_concurrent=sw.max_concurrent_per_pair)
        return SharedLimiter(runs, coordinator, plan.pair, samples=len(plan.points))
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
