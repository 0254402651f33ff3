"""Paired tests of a weighted dev objective over several tasks (stratified sign-flip).

A sweep's objective (``sweep.objective``, :class:`~optical_ray.config.objective.WeightedObjective`)
is a weighted mean over terms t (a metric on a task) of the mean over the task's
queries q:

.. math:: O = \\sum_t w_t \\frac{1}{n_t} \\sum_q v_{tq}, \\qquad \\sum_t w_t = 1.

The difference of two configs a and b on it is a sum over (term, query) units,

.. math:: \\Delta = \\sum_t \\frac{w_t}{n_t} \\sum_q (a_{tq} - b_{tq}) = \\sum_u d_u,

so a paired randomisation test flips the sign of each unit's difference
independently (a sign-flip test stratified by task: each stratum keeps its weight
:math:`w_t / n_t`). Exact over all :math:`2^n` sign patterns when they fit in
``n_resamples``, else ``p = (1 + hits) / (1 + n_resamples)`` from random patterns
(Phipson & Smyth 2010), as :func:`~optical_ray.evaluation.compare.paired_test` does for
one metric. Pooled over seeds, a config's per-query values are averaged over its
seeds first (:func:`pool_seeds`), then tested as one system.

Values are ``{term key: {qid: value}}`` (term key ``<task>/<metric>``, as a dev
evaluation reports it). Plain numpy: the trial, the scheduler and the catalog use it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from optical_ray.errors import ConfigError, DataError

__all__ = [
    "ALTERNATIVES",
    "TermValues",
    "pool_seeds",
    "objective_value",
    "unit_differences",
    "sign_flip_p",
    "paired_objective_test",
    "term_values",
]

#: ``two-sided``: a != b; ``greater``: a > b; ``less``: a < b.
ALTERNATIVES = ("two-sided", "greater", "less")
TermValues = Mapping[str, Mapping[str, float]]


def term_values(
    per_task: Mapping[str, Mapping[str, Mapping[str, float]]], weights: Mapping[str, float]
) -> dict[str, dict[str, float]]:
    """``{term key: {qid: value}}`` from per-task per-query metrics ``{task: {qid:
    {metric: value}}}`` for the terms of ``weights`` (keyed ``<task>/<metric>``); a
    term whose task is missing is left out."""
    out: dict[str, dict[str, float]] = {}
    for key in weights:
        task, _, metric = key.rpartition("/")
        if task in per_task:
            out[key] = {
                q: float(m[metric]) for q, m in per_task[task].items() if m.get(metric) is not None
            }
    return out


def pool_seeds(runs: Sequence[TermValues]) -> dict[str, dict[str, float]]:
    """Per term and query, the mean over ``runs`` (a config's seeds) of its value;
    only the units every run holds. ``[]`` gives ``{}``."""
    if not runs:
        return {}
    out: dict[str, dict[str, float]] = {}
    for key in set.intersection(*(set(r) for r in runs)):
        qids = set.intersection(*(set(r[key]) for r in runs))
        out[key] = {q: float(np.mean([r[key][q] for r in runs])) for q in sorted(qids)}
    return out


def objective_value(values: TermValues, weights: Mapping[str, float]) -> float:
    """:math:`\\sum_t w_t \\mathrm{mean}_q v_{tq}` (weights renormalised over the terms
    present); DataError when no term has values."""
    have = {k: w for k, w in weights.items() if values.get(k)}
    if not have:
        raise DataError(f"no per-query values for any term of {sorted(weights)}")
    total = sum(have.values())
    return float(sum(w / total * np.mean(list(values[k].values())) for k, w in have.items()))


def unit_differences(
    a: TermValues, b: TermValues, weights: Mapping[str, float]
) -> tuple[np.ndarray, int]:
    """The weighted per-unit differences :math:`d_u = w_t / n_t (a_{tq} - b_{tq})` over
    the units a and b share (:math:`n_t` = shared queries of term t; weights
    renormalised over the terms both hold), and the number of units. Their sum is
    the objective difference on the shared units."""
    parts, total = [], 0.0
    shared = {}
    for key, w in weights.items():
        qids = sorted(set(a.get(key, {})) & set(b.get(key, {})))
        if qids:
            shared[key] = qids
            total += w
    if not shared:
        raise DataError(f"paired test: no query of {sorted(weights)} is in both systems")
    for key, qids in shared.items():
        x = np.array([a[key][q] for q in qids], dtype=np.float64)
        y = np.array([b[key][q] for q in qids], dtype=np.float64)
        parts.append(weights[key] / total / len(qids) * (x - y))
    d = np.concatenate(parts)
    return d, len(d)


def sign_flip_p(
    d: np.ndarray, alternative: str = "two-sided", n_resamples: int = 10_000, seed: int = 0
) -> float:
    """p-value of :math:`T = \\sum_u d_u` under independent sign flips of each
    :math:`d_u` (H0: each difference is symmetric around 0).

    ``greater``: :math:`P(T^* \\ge T)`; ``less``: :math:`P(T^* \\le T)`; ``two-sided``:
    :math:`P(|T^*| \\ge |T|)`. Exact when :math:`2^n \\le` ``n_resamples``. No
    difference at all gives 1.
    """
    if alternative not in ALTERNATIVES:
        raise ConfigError(f"alternative: got {alternative!r}, expected one of {ALTERNATIVES}")
    if not isinstance(n_resamples, int) or n_resamples < 1:
        raise ConfigError(f"n_resamples: got {n_resamples!r}, expected an integer >= 1")
    d = np.asarray(d, dtype=np.float64)
    n = len(d)
    if n == 0 or not d.any():
        return 1.0
    observed = float(d.sum())
    tol = 1e-9 * float(np.abs(d).sum())  # sums equal up to rounding count as equal

    def hits(sums: np.ndarray) -> int:
        if alternative == "greater":
            return int(np.count_nonzero(sums >= observed - tol))
        if alternative == "less":
            return int(np.count_nonzero(sums <= observed + tol))
        return int(np.count_nonzero(np.abs(sums) >= abs(observed) - tol))

    if n <= 62 and 2**n <= n_resamples:
        bits = (np.arange(2**n)[:, None] >> np.arange(n)) & 1
        return hits((1 - 2 * bits) @ d) / 2**n
    rng = np.random.default_rng(seed)
    count, chunk = 0, max(1, (1 << 22) // n)
    for s in range(0, n_resamples, chunk):
        signs = rng.integers(0, 2, size=(min(chunk, n_resamples - s), n)) * 2 - 1
        count += hits(signs @ d)
    return (1 + count) / (1 + n_resamples)


def paired_objective_test(
    a: TermValues,
    b: TermValues,
    weights: Mapping[str, float],
    *,
    alternative: str = "two-sided",
    n_resamples: int = 10_000,
    seed: int = 0,
) -> tuple[float, float, int]:
    """Stratified sign-flip test of the weighted objective between systems a and b
    (``{term key: {qid: value}}``, pooled over seeds already if they have several):
    ``(delta, p, units)`` with ``delta`` = objective(a) - objective(b) on the shared
    units. ``alternative='greater'`` tests a > b."""
    d, n = unit_differences(a, b, weights)
    return float(d.sum()), sign_flip_p(d, alternative, n_resamples, seed), n
