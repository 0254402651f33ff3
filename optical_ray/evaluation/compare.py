"""Comparing systems: the gap to a reference, the share of it closed, paired tests.

The numbers every comparison in optical-ray uses, in one place: the evaluation's gap
report (:func:`gap_report`, systems side by side per pair with significance), the
catalog report (:mod:`optical_ray.report.gap`) and the demo.

* **gap** = reference - value: how far a system is from the reference (the teacher on
  its own language pair, normally ``en-en``).
* **gap closed** = (value - baseline) / (reference - baseline): the fraction of the
  baseline's gap a system closes (``ref 0.8, base 0.4, value 0.6 -> 0.5``). Undefined
  (None) when the baseline has no gap to close, i.e. it reaches the reference.
* **paired test** over queries (:func:`paired_test`): a sign-flip randomisation test of
  the mean per-query difference, or a paired t-test.
* **Holm-Bonferroni** (:func:`holm`): adjusted p-values over a family of tests.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from optical_ray.errors import ConfigError, DataError
from optical_ray.evaluation.trec import EvalResult, parse_metric
from optical_ray.tables import markdown_table, number, text_table


__all__ = ["gap", "gap_closed", "paired_test", "holm", "GapRow", "GapReport", "gap_report"]

_NO_GAP = 1e-12  # a baseline this close to the reference has no gap left to close


def gap(reference: float | None, value: float | None) -> float | None:
    """``reference - value`` (None if either is unknown)."""
    return None if reference is None or value is None else reference - value


def gap_closed(
    value: float | None, baseline: float | None, reference: float | None
) -> float | None:
    """``(value - baseline) / (reference - baseline)``: the share of the baseline's gap to
    the reference that ``value`` closes (1 reaches the reference, negative is worse
    than the baseline). None if a number is unknown or the baseline has no gap (it is
    at or above the reference)."""
    room = gap(reference, baseline)
    if room is None or value is None or room <= _NO_GAP:
        return None
    return (value - baseline) / room


# --------------------------------------------------------------------------- significance


def paired_test(
    a_per_query: Mapping[str, Mapping[str, float]],
    b_per_query: Mapping[str, Mapping[str, float]],
    metric: str,
    *,
    method: str = "randomization",
    n_resamples: int = 10_000,
    seed: int = 0,
) -> tuple[float, float]:
    """Two-sided paired test of ``metric`` between systems a and b over their common
    queries; returns ``(mean(a - b), p_value)``.

    ``randomization``: sign-flip permutation test of the mean difference (Fisher;
    Smucker, Allan & Carterette, CIKM 2007). With ``2**n <= n_resamples`` all sign
    patterns are enumerated (exact p); otherwise ``n_resamples`` random patterns from
    ``seed`` give ``p = (1 + #{|T*| >= |T|}) / (1 + n_resamples)`` (never 0; Phipson &
    Smyth 2010). ``ttest``: ``scipy.stats.ttest_rel``. Identical systems give p = 1.
    """
    if method not in ("randomization", "ttest"):
        raise ConfigError(f"method: got {method!r}, expected 'randomization' or 'ttest'")
    if not isinstance(n_resamples, int) or n_resamples < 1:
        raise ConfigError(f"n_resamples: got {n_resamples!r}, expected an integer >= 1")
    common = [
        q
        for q in a_per_query
        if q in b_per_query and metric in a_per_query[q] and metric in b_per_query[q]
    ]
    if not common:
        raise DataError(f"paired_test: no query has {metric!r} in both systems")
    a = np.array([a_per_query[q][metric] for q in common], dtype=np.float64)
    b = np.array([b_per_query[q][metric] for q in common], dtype=np.float64)
    diff = a - b
    n, mean = len(diff), float(diff.mean())
    if not diff.any():
        return mean, 1.0
    if method == "ttest":
        if n < 2:
            return mean, float("nan")
        if np.ptp(diff) == 0:  # constant non-zero difference: no variance, certain sign
            return mean, 0.0
        from scipy.stats import ttest_rel

        return mean, float(ttest_rel(a, b).pvalue)
    observed = abs(diff.sum())
    tol = 1e-9 * np.abs(diff).sum()  # equal sums that differ only by rounding count as equal
    if n <= 62 and 2**n <= n_resamples:
        bits = (np.arange(2**n)[:, None] >> np.arange(n)) & 1
        sums = np.abs((1 - 2 * bits) @ diff)
        return mean, float(np.mean(sums >= observed - tol))
    rng = np.random.default_rng(seed)
    hits, chunk = 0, max(1, (1 << 22) // n)
    for s in range(0, n_resamples, chunk):
        signs = rng.integers(0, 2, size=(min(chunk, n_resamples - s), n)) * 2 - 1
        hits += int(np.count_nonzero(np.abs(signs @ diff) >= observed - tol))
    return mean, (1 + hits) / (1 + n_resamples)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the order given (Holm 1979): the i-th
    smallest of m p-values becomes ``max_{j <= i} min(1, (m - j + 1) p_(j))``. NaN stays
    NaN and is not counted in m."""
    idx = sorted(
        (i for i, p in enumerate(p_values) if not math.isnan(p)), key=lambda i: p_values[i]
    )
    out = [float("nan")] * len(p_values)
    running = 0.0
    for rank, i in enumerate(idx):
        running = max(running, min(1.0, (len(idx) - rank) * p_values[i]))
        out[i] = running
    return out


# --------------------------------------------------------------------------- gap report


@dataclass
class GapRow:
    """One (metric, pair, system) cell of a gap report.

    ``gap = reference - value``; ``delta = value - baseline`` on the same pair;
    ``closed``: :func:`gap_closed` (None on the reference pair or when the baseline has
    no gap).
    """

    metric: str
    pair: str
    system: str
    value: float
    reference: float
    gap: float
    delta: float | None = None
    closed: float | None = None
    p_value: float | None = None
    p_holm: float | None = None
    n_queries: int | None = None


def _p(p: float | None) -> str:
    return "<0.0001" if p is not None and p < 1e-4 else number(p)


@dataclass
class GapReport:
    """Systems side by side per pair, against a baseline and a reference pair."""

    rows: list[GapRow]
    baseline: str
    reference_pair: str
    reference_system: str
    metrics: list[str]
    method: str
    alpha: float = 0.05
    notes: list[str] = field(default_factory=list)

    def to_rows(self) -> list[dict[str, Any]]:
        """Plain dicts (JSON)."""
        return [dataclasses.asdict(r) for r in self.rows]

    def _table(self, metric: str) -> tuple[list[str], list[list[str]]]:
        head = [
            "system",
            "pair",
            metric,
            "gap to ref",
            "delta vs base",
            "gap closed",
            f"p ({self.method})",
            "p (Holm)",
        ]
        body = []
        for r in (r for r in self.rows if r.metric == metric):
            sig = r.p_holm is not None and not math.isnan(r.p_holm) and r.p_holm < self.alpha
            body.append(
                [
                    r.system,
                    r.pair,
                    f"{r.value:.4f}" + (" †" if sig else ""),
                    f"{r.gap:+.4f}",
                    number(r.delta, "{:+.4f}"),
                    number(r.closed, "{:.1%}"),
                    _p(r.p_value),
                    _p(r.p_holm),
                ]
            )
        return head, body

    def _caption(self, metric: str) -> str:
        ref = next(r.reference for r in self.rows if r.metric == metric)
        return f"{metric}: reference {self.reference_system} on {self.reference_pair} = {ref:.4f}"

    def _footer(self) -> list[str]:
        return [
            f"baseline: {self.baseline}; p: paired {self.method} test over queries vs the "
            f"baseline on the same pair; Holm: adjusted over all tests in this report; "
            f"† p (Holm) < {self.alpha}",
            *self.notes,
        ]

    def to_markdown(self) -> str:
        parts = [
            f"### {self._caption(m)}\n\n" + markdown_table(*self._table(m)) for m in self.metrics
        ]
        return "\n\n".join(parts + ["\n".join(self._footer())]) + "\n"

    def to_text(self) -> str:
        parts = []
        for metric in self.metrics:
            head, body = self._table(metric)
            right = [i >= 2 for i in range(len(head))]  # system and pair are names
            parts.append(self._caption(metric) + "\n" + text_table(head, body, right))
        return "\n\n".join(parts + ["\n".join(self._footer())])

    __str__ = to_text


def _pick_reference(
    results: Mapping[str, Mapping[str, EvalResult]], system: str, metric: str
) -> str:
    """``en-en`` if present, else the best monolingual pair of ``system`` on ``metric``."""
    pairs = list(results[system])
    if "en-en" in pairs:
        return "en-en"
    mono = [p for p in pairs if p.split("-", 1)[0] == p.split("-", 1)[1]]
    if not mono:
        raise ConfigError(
            f"reference_pair: none given and {system!r} has no monolingual pair "
            f"such as en-en (pairs: {', '.join(pairs)}); pass reference_pair"
        )
    return max(mono, key=lambda p: results[system][p].metrics.get(metric, float("-inf")))


def gap_report(
    results: Mapping[str, Mapping[str, EvalResult]],
    *,
    baseline: str,
    reference_pair: str | None = None,
    metrics: Sequence[str] | None = None,
    reference_system: str | None = None,
    method: str = "randomization",
    n_resamples: int = 10_000,
    seed: int = 0,
    alpha: float = 0.05,
) -> GapReport:
    """Compare systems (outer key, e.g. ``"zero-shot"``, ``"ot eps=0.05"``) per pair.

    ``results`` maps each system to its :class:`~optical_ray.evaluation.trec.EvalResult` per
    pair. The reference value of a metric is ``reference_system`` (default: the
    baseline) on ``reference_pair`` (default ``en-en``, else the best monolingual pair).
    For each system and pair: the value, :func:`gap`, ``delta = value - baseline`` and
    :func:`gap_closed`, with a paired test over queries against the baseline on the
    same pair; p-values are Holm-adjusted over all tests of the report.
    """
    if baseline not in results:
        raise ConfigError(
            f"baseline: got {baseline!r}, expected one of the systems: "
            f"{', '.join(results) or 'none'}"
        )
    ref_sys = reference_system or baseline
    if ref_sys not in results:
        raise ConfigError(
            f"reference_system: got {ref_sys!r}, expected one of the systems: {', '.join(results)}"
        )
    if metrics is None:
        found = [set(r.metrics) for pairs in results.values() for r in pairs.values()]
        first = next((r for pairs in results.values() for r in pairs.values()), None)
        metrics = [m for m in (first.metrics if first else []) if all(m in f for f in found)]
    metrics = list(metrics)
    if not metrics:
        raise ConfigError("metrics: no metric is shared by all results; pass metrics")
    for m in metrics:
        parse_metric(m)
    ref_pair = reference_pair or _pick_reference(results, ref_sys, metrics[0])
    if ref_pair not in results[ref_sys]:
        raise ConfigError(
            f"reference_pair: got {ref_pair!r}, but {ref_sys!r} has only "
            f"{', '.join(results[ref_sys])}"
        )
    pairs = list(dict.fromkeys([ref_pair] + [p for s in results.values() for p in s]))
    systems = [baseline] + [s for s in results if s != baseline]
    rows: list[GapRow] = []
    notes: list[str] = []
    for metric in metrics:
        ref_metrics = results[ref_sys][ref_pair].metrics
        if metric not in ref_metrics:
            raise ConfigError(
                f"metrics: {metric!r} is not in the results of {ref_sys!r} on "
                f"{ref_pair} (have: {', '.join(ref_metrics)})"
            )
        ref = ref_metrics[metric]
        for pair in pairs:
            base = results[baseline].get(pair)
            for system in systems:
                res = results[system].get(pair)
                if res is None or metric not in res.metrics:
                    continue
                value = res.metrics[metric]
                row = GapRow(metric, pair, system, value, ref, gap(ref, value))
                if base is not None and metric in base.metrics and system != baseline:
                    row.delta = value - base.metrics[metric]
                    if pair != ref_pair:
                        row.closed = gap_closed(value, base.metrics[metric], ref)
                    try:
                        _, row.p_value = paired_test(
                            res.per_query,
                            base.per_query,
                            metric,
                            method=method,
                            n_resamples=n_resamples,
                            seed=seed,
                        )
                        row.n_queries = len(set(res.per_query) & set(base.per_query))
                    except DataError:
                        notes.append(
                            f"{system} vs {baseline} on {pair}: no per-query "
                            f"{metric} in common, no test"
                        )
                rows.append(row)
    tested = [r for r in rows if r.p_value is not None]
    for r, p in zip(tested, holm([r.p_value for r in tested])):
        r.p_holm = p
    return GapReport(rows, baseline, ref_pair, ref_sys, metrics, method, alpha, notes)
