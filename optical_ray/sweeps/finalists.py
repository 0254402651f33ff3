"""Finalists, Ray-free: after a pair's search, which configs are re-trained, with which
seeds, in a second Tune experiment of the pair (``<experiment>-final``).

Why: the search ranks each config by one training run (one seed) on the dev set it is
selected on, so its winner is partly seed luck (the issue's Swahili sweep picked a
config that lost 0.043 MAP to the hand-set base on test). The top
``sweep.finalists`` finished trials and the space's base config (what a user runs
without a sweep) are trained again with ``sweep.finalist_seeds`` new seeds each
(``train.seed + 1 .. + N``: the same seeds for every config, so the comparison is paired
by seed too). The search's own run of a finalist is not pooled with them: it was
selected for being high, and counting it would favour the finalists over the base
(the winner's curse); so the base gets exactly the finalists' number of runs. The
answer (:mod:`optical_ray.catalog.answers`) tests each finalist against the base on
the objective pooled over these runs.

Runs are ordered seed by seed (base first, then the finalists in rank order), so a
finalists experiment cut short still compares like with like.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Callable, Sequence

from optical_ray.catalog.identity import config_identity, final_experiment
from optical_ray.config import to_flat
from optical_ray.config.objective import finalists_of
from optical_ray.config.rules import BASE_ORIGIN, finalist_origin
from optical_ray.sweeps.plan import FinalistRun, PairPlan, resolve_trial_config
from optical_ray.sweeps.protocol import ORIGIN_KEY, RUN_KEY

__all__ = [
    "final_experiment",
    "choose_finalists",
    "finalist_runs",
    "finalist_plan",
]


def choose_finalists(
    records: Any, metric: str, mode: str, k: int, exclude: Sequence[str] = ()
) -> list[tuple[str, dict[str, Any]]]:
    """The ``k`` best finished trials of a search's catalog ``records`` by ``metric``
    (ties: the earlier finish), one per distinct config and none whose config is in
    ``exclude`` (identities: the base); ``[(trial_id, flat config)]``. Trials ASHA
    stopped are out: their value is an early rung's, not a full run's."""
    from optical_ray.catalog import metric_values

    done = records[records["status"] == "finished"]
    if done.empty or k <= 0:
        return []
    done = done.assign(value=metric_values(done, metric)).dropna(subset=["value"])
    done = done.sort_values(["value", "finished_at"], ascending=[mode == "min", True])
    out: list[tuple[str, dict[str, Any]]] = []
    seen = set(exclude)
    for row in done.to_dict("records"):
        flat = json.loads(row["config"])
        ident = config_identity(flat)
        if ident in seen:
            continue
        seen.add(ident)
        out.append((str(row["trial_id"]), flat))
        if len(out) == k:
            break
    return out


def finalist_runs(plan: PairPlan, records: Any) -> tuple[FinalistRun, ...]:
    """The runs of ``plan``'s finalists: for each new seed, the base, then each
    finalist (:func:`choose_finalists` on the search's ``records``). Empty when the
    sweep has no finalists or no trial finished."""
    sw = plan.base.sweep
    base = to_flat(resolve_trial_config(plan, {}, "base"))
    chosen = choose_finalists(
        records, sw.metric, sw.mode, finalists_of(sw), exclude=[config_identity(base)]
    )
    if not chosen:
        return ()
    first = int(base["train.seed"])
    runs = []
    for seed in range(first + 1, first + 1 + sw.finalist_seeds):
        for origin, flat in [(BASE_ORIGIN, base), *((finalist_origin(t), f) for t, f in chosen)]:
            config = json.dumps({**flat, "train.seed": seed}, sort_keys=True, default=str)
            runs.append(FinalistRun(origin, seed, config))
    return tuple(runs)


def finalist_plan(
    plan: PairPlan, records: Any, path_of: Callable[[str], str], exists: bool
) -> PairPlan | None:
    """``plan``'s finalists experiment (``<experiment>-final`` at ``path_of(name)``;
    ``exists``: it is in storage, so it resumes), or None when it has no runs."""
    runs = finalist_runs(plan, records)
    if not runs:
        return None
    name = final_experiment(plan.experiment)
    # Each run a fixed point (distributed.searchers.FixedSearcher): its full config and
    # its seed, under its origin.
    points = tuple({RUN_KEY: r.config, ORIGIN_KEY: r.origin, "train.seed": r.seed} for r in runs)
    return dataclasses.replace(
        plan, experiment=name, path=path_of(name), points=points, resume=exists, warm=None
    )
