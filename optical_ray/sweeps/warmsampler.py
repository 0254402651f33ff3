"""The Optuna side of a warm start (:mod:`optical_ray.sweeps.warmstart` decides what): the
points enqueued on a pair's study, the transfer-aware TPE sampler, and the origin of a
sampled config. Imported where Optuna runs (the pair's Tune driver), never by the CLI."""

from __future__ import annotations

from typing import Any, Sequence

import optuna
from optuna.trial import TrialState, create_trial

from optical_ray.sweeps.warmstart import ORIGIN_RANDOM, ORIGIN_SAMPLER, PriorTrial, WarmPoint

__all__ = ["TransferSampler", "enqueue_points", "sampler_origin"]

_FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def enqueue_points(study: optuna.Study, points: Sequence[WarmPoint]) -> int:
    """Enqueue ``points`` on ``study`` (they run before any sampled trial), each tagged
    with its origin (user attribute ``origin``); skip an origin the study already holds
    (a resumed sweep). Returns how many were enqueued."""
    held = {t.user_attrs.get("origin") for t in study.get_trials(deepcopy=False)}
    n = 0
    for p in points:
        if p.origin in held:
            continue
        study.enqueue_trial(p.params, user_attrs={"origin": p.origin})
        held.add(p.origin)
        n += 1
    return n


class TransferSampler(optuna.samplers.BaseSampler):
    """TPE whose model also sees a down-weighted prior of source trials.

    Wraps ``inner`` (a :class:`optuna.samplers.TPESampler`). The relative search space
    comes from the pair's own study; sampling runs on a *view*: an in-memory study
    holding the faded prior (:meth:`faded`) and the pair's finished trials, rebuilt
    when those change. Prior values are quantiles (1 best) mapped into the range the
    pair's own complete trials span (``[0, 1]`` before any), so a source language with
    higher MAP does not outrank every trial of this one; TPE only uses the order.
    ``fade``: after that many of the pair's own trials the prior is gone.

    ``inner`` must not use the constant liar (``constant_liar=False``): the liar writes
    to the sampled trial through the study it is given, and the view is another study.
    """

    def __init__(
        self, inner: optuna.samplers.BaseSampler, prior: Sequence[PriorTrial], mode: str, fade: int
    ) -> None:
        if getattr(inner, "_constant_liar", False):  # private: TPESampler's setting
            raise ValueError(
                "TransferSampler: give it a TPESampler(constant_liar=False); the constant "
                "liar writes to the sampled trial through the view, another study"
            )
        self.inner, self.prior, self.mode, self.fade = inner, list(prior), mode, max(1, fade)
        self._cache: tuple[tuple[int, ...], optuna.Study] | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_cache"] = None  # rebuilt on demand; a view is not worth pickling
        return state

    def faded(self, n_own: int) -> list[PriorTrial]:
        """The prior trials still in the model after ``n_own`` of the pair's own
        trials finished: ``1 - n_own / fade`` of them, spread evenly over quantiles
        (good and bad examples alike, so TPE's split keeps its shape)."""
        keep = round(len(self.prior) * max(0.0, 1.0 - n_own / self.fade))
        ordered = sorted(self.prior, key=lambda t: -t.quantile)
        if keep >= len(ordered) or keep <= 0:
            return ordered if keep > 0 else []
        step = (len(ordered) - 1) / max(1, keep - 1)
        return [ordered[round(i * step)] for i in range(keep)]

    def view(self, study: optuna.Study) -> optuna.Study:
        """The study TPE samples from: faded prior + ``study``'s finished trials."""
        own = study.get_trials(deepcopy=False, states=_FINISHED)
        key = tuple(t.number for t in own)
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        values = [t.value for t in own if t.state == TrialState.COMPLETE and t.value is not None]
        lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
        if hi - lo <= 0:  # one value (or ties): the prior spreads around it
            half = max(abs(hi) * 0.5, 1e-6)
            lo, hi = lo - half, hi + half

        def mapped(q: float) -> float:
            return lo + q * (hi - lo) if self.mode == "max" else hi - q * (hi - lo)

        verbosity = optuna.logging.get_verbosity()
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        try:
            view = optuna.create_study(
                direction="maximize" if self.mode == "max" else "minimize",
                sampler=optuna.samplers.RandomSampler(),
            )
            prior = [
                create_trial(
                    state=TrialState.PRUNED if t.pruned else TrialState.COMPLETE,
                    value=None if t.pruned else mapped(t.quantile),
                    params=t.params,
                    distributions=t.distributions,
                    intermediate_values={t.step: mapped(t.quantile)} if t.pruned else None,
                    user_attrs={"origin": f"prior:{t.pair}/{t.trial_id}"},
                )
                for t in self.faded(len(own))
            ]
            view.add_trials([*prior, *own])
        finally:
            optuna.logging.set_verbosity(verbosity)
        self._cache = (key, view)
        return view

    # BaseSampler's interface: the search space from the pair's study, samples from the view.
    def infer_relative_search_space(self, study: optuna.Study, trial: Any) -> dict[str, Any]:
        return self.inner.infer_relative_search_space(study, trial)

    def sample_relative(
        self, study: optuna.Study, trial: Any, search_space: dict[str, Any]
    ) -> dict[str, Any]:
        return self.inner.sample_relative(self.view(study), trial, search_space)

    def sample_independent(
        self, study: optuna.Study, trial: Any, param_name: str, param_distribution: Any
    ) -> Any:
        return self.inner.sample_independent(
            self.view(study), trial, param_name, param_distribution
        )

    def before_trial(self, study: optuna.Study, trial: Any) -> None:
        self.inner.before_trial(study, trial)

    def after_trial(self, study: optuna.Study, trial: Any, state: Any, values: Any) -> None:
        self.inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.inner.reseed_rng()


def sampler_origin(sampler: optuna.samplers.BaseSampler, study: optuna.Study) -> str:
    """Where a sampled (not enqueued) trial's config comes from: ``random`` for random
    search and for TPE's random start-up, else ``sampler``."""
    if isinstance(sampler, optuna.samplers.RandomSampler):
        return ORIGIN_RANDOM
    tpe = sampler.inner if isinstance(sampler, TransferSampler) else sampler
    startup = getattr(tpe, "_n_startup_trials", 0)  # private: TPE's random start-up
    own = study.get_trials(deepcopy=False, states=_FINISHED)
    n = len(own)
    if isinstance(sampler, TransferSampler):
        n += len(sampler.faded(len(own)))
    return ORIGIN_RANDOM if n < startup else ORIGIN_SAMPLER
