"""Noise-aware promotion: Ray's ASHA, except that a trial is stopped at a rung only
when its per-query dev values are significantly below the rung's cut-off trial.

Ray's ``ray.tune.schedulers.AsyncHyperBandScheduler`` records, per rung, the
metric of every trial that reached it, and stops a trial arriving there when its value
is below the cut-off, the ``1 - 1/reduction_factor`` quantile of the values recorded
(Li et al. 2020). On a dev set of a few hundred queries two configs a few thousandths
apart are a tie, yet ASHA stops the lower one: the issue's Swahili sweep cut its
eventual best by 0.0001 MAP. :class:`PairedASHA` keeps Ray's brackets, rungs and
cut-off, and reconsiders each stop: the trial's objective per-query values at the rung
(``UNITS_KEY``, :func:`~optical_ray.evaluation.perquery.encode_units`) are tested
against those of the cut-off trial (the weakest recorded trial at or above the
cut-off), one-sided, with the stratified sign-flip test of
:mod:`optical_ray.evaluation.stratified`; the trial stops only when ``p <
sweep.promotion_alpha``. A tie goes through. Without per-query values on either side
(a stand-in trial, another trial's units) the decision is Ray's.

A trial let through costs budget: ``benchmarks/bench_promotion.py`` measures how much
against plain ASHA on the same learning curves.

Private Ray API used here (``tests/distributed/test_promotion.py`` fails when Ray
changes it): the scheduler's ``_brackets``, ``_trial_info`` (trial id -> bracket) and
``_metric_op``, and ``ray.tune.schedulers.async_hyperband._Bracket``: its ``_rungs``
(``[(milestone, {trial_id: reward})]``, the highest milestone first), ``cutoff`` and
``on_result``. Like Ray's own, the scheduler's state is not saved with the experiment:
a resumed experiment's rungs fill again as its trials report.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler, TrialScheduler
from ray.tune.schedulers.async_hyperband import _Bracket

from optical_ray.evaluation.perquery import Units, decode_units
from optical_ray.evaluation.stratified import sign_flip_p
from optical_ray.sweeps.plan import PairPlan
from optical_ray.sweeps.protocol import UNITS_KEY

__all__ = [
    "PairedASHA",
    "PairedBracket",
    "paired_stop",
    "cutoff_trial",
    "build_scheduler",
    "replay",
]

#: Sign patterns drawn per decision: at p = 0.1 the Monte Carlo error is 0.004.
N_RESAMPLES = 5000


def paired_stop(
    trial: Units | None,
    cut: Units | None,
    sign: float,
    alpha: float,
    n_resamples: int = N_RESAMPLES,
) -> bool | None:
    """Whether ``trial``'s per-query values are significantly worse than ``cut``'s
    (one-sided stratified sign-flip test at ``alpha``; ``sign`` +1 when higher is
    better, -1 when lower is). None when they cannot be compared (missing, or not the
    same units)."""
    if trial is None or cut is None or trial.fingerprint != cut.fingerprint:
        return None
    d = sign * trial.coef * (trial.values - cut.values)
    return sign_flip_p(d, "less", n_resamples) < alpha


def cutoff_trial(recorded: dict[str, float], cutoff: float) -> str | None:
    """The rung's cut-off trial: the recorded trial with the lowest reward at or above
    ``cutoff`` (the weakest that passes; ties: the first recorded)."""
    above = [
        (r, t) for t, r in recorded.items() if r is not None and not math.isnan(r) and r >= cutoff
    ]
    if not above:
        return None
    low = min(r for r, _ in above)
    return next(t for r, t in above if r == low)


class PairedBracket(_Bracket):
    """A Ray ASHA bracket that keeps each trial's per-query values at each rung and
    lets a stop through only when the paired test finds the trial worse (see the
    module docstring). ``reprieved`` counts the stops it turned into continues."""

    def __init__(self, *args: Any, alpha: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.alpha = alpha
        self.units: dict[float, dict[str, Units | None]] = {}
        self.pending: dict[str, tuple[Units | None, float]] = {}
        self.reprieved = 0

    def _rung_for(self, trial_id: str, cur_iter: float) -> tuple[float, dict] | None:
        """The rung this result is recorded at (as ``_Bracket.on_result`` finds it)."""
        for milestone, recorded in self._rungs:
            if cur_iter < milestone or trial_id in recorded:
                continue
            return milestone, recorded
        return None

    def on_result(self, trial: Any, cur_iter: int, cur_rew: float | None) -> str:
        units, sign = self.pending.pop(trial.trial_id, (None, 1.0))
        rung = self._rung_for(trial.trial_id, cur_iter) if self._stop_last_trials else None
        prior = dict(rung[1]) if rung else {}
        action = super().on_result(trial, cur_iter, cur_rew)
        if rung is None:
            return action
        milestone = rung[0]
        self.units.setdefault(milestone, {})[trial.trial_id] = units
        if action != TrialScheduler.STOP:
            return action
        cutoff = self.cutoff(prior)
        cut = cutoff_trial(prior, float(cutoff)) if cutoff is not None else None
        stop = paired_stop(units, self.units[milestone].get(cut) if cut else None, sign, self.alpha)
        if stop is False:
            self.reprieved += 1
            return TrialScheduler.CONTINUE
        return action


class PairedASHA(AsyncHyperBandScheduler):
    """``ray.tune.schedulers.AsyncHyperBandScheduler`` with
    :class:`PairedBracket` s: a trial stops at a rung only when its per-query values
    are significantly below the rung's cut-off trial's (``alpha``, one-sided)."""

    def __init__(self, *, alpha: float = 0.1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.alpha = alpha
        # Private: Ray builds its brackets in __init__; the same ones, noise-aware.
        grace, max_t = kwargs.get("grace_period", 1), kwargs.get("max_t", 100)
        rf, stop_last = kwargs.get("reduction_factor", 4), kwargs.get("stop_last_trials", True)
        self._brackets = [
            PairedBracket(grace, max_t, rf, s, stop_last_trials=stop_last, alpha=alpha)
            for s in range(len(self._brackets))
        ]

    @property
    def reprieved(self) -> int:
        """Stops the paired test turned into continues, over all brackets."""
        return sum(b.reprieved for b in self._brackets)

    def _stash(self, trial: Any, result: dict) -> None:
        bracket = self._trial_info.get(trial.trial_id)  # private: trial id -> bracket
        if isinstance(bracket, PairedBracket):
            sign = self._metric_op or 1.0  # private: +1 for max, -1 for min
            bracket.pending[trial.trial_id] = (decode_units(result.get(UNITS_KEY)), sign)

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        self._stash(trial, result)
        return super().on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict) -> None:
        self._stash(trial, result)
        super().on_trial_complete(tune_controller, trial, result)


def build_scheduler(plan: PairPlan) -> TrialScheduler:
    """The scheduler of ``plan``'s experiment: FIFO for fixed runs (finalists, studies) or ``sweep.scheduler:
    none``; ASHA with noise-aware promotion (``sweep.promotion: paired``) or Ray's
    plain ASHA (``mean``)."""
    sw = plan.base.sweep
    if plan.points is not None or sw.scheduler != "asha":
        return FIFOScheduler()
    kwargs = {
        "time_attr": "training_iteration",
        "grace_period": sw.grace_period,
        "reduction_factor": sw.reduction_factor,
        "max_t": plan.max_t,
    }
    if sw.promotion == "mean":
        return AsyncHyperBandScheduler(**kwargs)
    return PairedASHA(alpha=sw.promotion_alpha, **kwargs)


class _ReplayedTrial:
    def __init__(self, trial_id: str) -> None:
        self.trial_id = trial_id


def replay(curves: Sequence[Sequence[dict]], scheduler: TrialScheduler) -> list[int]:
    """The evaluations each trial of ``curves`` (its results in order: the dev
    evaluations it reported, without its end-of-trial summary) would run under
    ``scheduler``, the trials arriving one after another: where the scheduler stops
    it, else all of them. What the benchmarks measure promotion rules with: the same
    learning curves under Ray's ASHA and under :class:`PairedASHA`."""
    spent = []
    for i, results in enumerate(curves):
        trial = _ReplayedTrial(f"replayed_{i:05d}")
        scheduler.on_trial_add(None, trial)
        ran = 0
        for result in results:
            ran += 1
            if scheduler.on_trial_result(None, trial, dict(result)) == TrialScheduler.STOP:
                break
        else:
            if results:
                scheduler.on_trial_complete(None, trial, dict(results[-1]))
        spent.append(ran)
    return spent
