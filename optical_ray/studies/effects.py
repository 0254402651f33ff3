r"""A study's effects from its stored per-query test values, no Ray, no re-run.

Per pair, task and metric, with ``y[r, q]`` the value of run ``r`` on query ``q`` and
``M[c, q]`` its mean over the seeds of cell ``c``:

* an **effect** is a contrast over cells, ``d_q = sum_c w_c M[c, q]`` and estimate
  ``mean_q d_q``, with weights summing to 0:

  - **main effect** of factor F, level l against its base l0: ``+1/n`` on the ``n``
    cells with F = l, ``-1/n0`` on the ``n0`` with F = l0 (the other factors averaged
    over, as the design balances them);
  - **two-way interaction** of F (l vs l0) and G (k vs k0): the difference of
    differences ``(M_lk - M_l0k) - (M_lk0 - M_l0k0)``, each combination averaged over
    the other factors: how much F's effect changes when G moves from k0 to k;

* its **95 % confidence interval** is the percentile bootstrap over queries (``d_q``
  resampled with replacement; each ``d_q`` already pools the seeds, so the interval
  carries the query noise of the seed-averaged estimate);
* its **p-value** is the paired randomisation test of ``d_q`` (sign flips: swapping
  the contrast's positive and negative cells on a query;
  :func:`~optical_ray.evaluation.compare.paired_test`), Holm-adjusted over every
  effect of the study for that metric (all pairs and tasks);
* its **seed spread** is the standard deviation over seeds of the same contrast
  computed on one seed's runs alone: an effect smaller than it is within the noise of
  retraining;
* on a task with a reference (the teacher zero-shot on e.g. ``deu-en``, mean ``R``),
  each cell's **gap** is ``R - mean(M_c)``, and the **fraction of the gap a main effect
  closes** is ``effect / (R - B)`` with ``B`` the mean of the factor's base cells: the
  share of the gap left at the base level that the level closes (its interval from the
  same bootstrap, the reference's queries resampled on their own).

In a fraction (``fraction:`` in the design) each effect is estimated the same way and
carries the effects it is aliased with.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from optical_ray.evaluation.compare import gap_closed, holm, paired_test
from optical_ray.studies.store import StoredRun, load_runs, read_design, read_values, zero_shot_path

__all__ = [
    "Contrast",
    "EffectRow",
    "CellRow",
    "StudyEffects",
    "contrasts",
    "study_effects",
    "effects_of",
    "N_BOOT",
    "N_RESAMPLES",
]

N_BOOT = 2000
N_RESAMPLES = 10_000


@dataclass(frozen=True)
class Contrast:
    """An effect as cell weights (``weights[i]`` for ``cells[i]``), with the cells its
    factor's base level holds (``base``: main effects, for the gap closed)."""

    kind: str  # "main" | "interaction"
    factors: tuple[str, ...]
    levels: tuple[str, ...]
    bases: tuple[str, ...]
    weights: tuple[float, ...]
    base: tuple[float, ...] = ()

    @property
    def name(self) -> str:
        if self.kind == "main":
            return f"{self.factors[0]}: {self.levels[0]} vs {self.bases[0]}"
        (a, b), (la, lb), (ba, bb) = self.factors, self.levels, self.bases
        return f"{a} x {b}: {la}/{ba} x {lb}/{bb}"


def contrasts(
    factors: Sequence[tuple[str, Sequence[str]]], cells: Sequence[Mapping[str, str]]
) -> list[Contrast]:
    """Every main effect (each level against the first) and two-way interaction of
    ``factors`` (``(name, labels)``) over ``cells`` (``{factor: label}``); an
    interaction one of whose four combinations no cell holds is left out."""

    def mean_of(match: Mapping[str, str]) -> np.ndarray:
        hit = np.array([all(c[f] == v for f, v in match.items()) for c in cells], dtype=float)
        return hit / hit.sum() if hit.sum() else hit

    out = []
    for name, labels in factors:
        base = mean_of({name: labels[0]})
        for lv in labels[1:]:
            w = mean_of({name: lv}) - base
            out.append(Contrast("main", (name,), (lv,), (labels[0],), tuple(w), tuple(base)))
    for (a, la), (b, lb) in itertools.combinations(factors, 2):
        for x, y in itertools.product(la[1:], lb[1:]):
            parts = [
                mean_of({a: i, b: j}) for i, j in ((x, y), (la[0], y), (x, lb[0]), (la[0], lb[0]))
            ]
            if any(not p.any() for p in parts):
                continue
            w = parts[0] - parts[1] - parts[2] + parts[3]
            out.append(Contrast("interaction", (a, b), (x, y), (la[0], lb[0]), tuple(w)))
    return out


@dataclass
class EffectRow:
    """One effect on one pair's task and metric (see the module docstring)."""

    pair: str
    task: str
    metric: str
    kind: str
    name: str
    factors: list[str]
    levels: list[str]
    bases: list[str]
    estimate: float
    ci_low: float
    ci_high: float
    p_value: float
    n_queries: int
    per_seed: list[float] = field(default_factory=list)
    seed_sd: float | None = None
    p_holm: float | None = None
    aliases: list[str] = field(default_factory=list)
    gap_closed: float | None = None
    gap_closed_low: float | None = None
    gap_closed_high: float | None = None

    @property
    def within_noise(self) -> bool:
        """Whether the effect is no larger than the spread between seeds."""
        return self.seed_sd is not None and abs(self.estimate) <= self.seed_sd


@dataclass
class CellRow:
    """One cell on one pair's task: its mean (seeds and queries), the spread of its
    per-seed means, its gap to the reference and the share of the zero-shot gap it
    closes."""

    pair: str
    task: str
    metric: str
    cell: str
    levels: dict[str, str]
    mean: float
    seeds: int
    seed_sd: float | None
    gap: float | None = None
    closed: float | None = None


@dataclass
class TaskBaseline:
    """The teacher zero-shot on a pair's task, and the reference it is measured to."""

    pair: str
    task: str
    metric: str
    zero_shot: float | None
    reference_pair: str | None = None
    reference: float | None = None


@dataclass
class StudyEffects:
    """Everything the report shows for one metric: effects, cells, baselines, notes."""

    name: str
    metric: str
    doc: dict[str, Any]
    effects: list[EffectRow]
    cells: list[CellRow]
    baselines: list[TaskBaseline]
    runs: int
    notes: list[str] = field(default_factory=list)
    alpha: float = 0.05
    n_boot: int = N_BOOT

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "metric": self.metric,
            "runs": self.runs,
            "alpha": self.alpha,
            "n_boot": self.n_boot,
            "effects": [asdict(e) for e in self.effects],
            "cells": [asdict(c) for c in self.cells],
            "baselines": [asdict(b) for b in self.baselines],
            "notes": list(self.notes),
            "design": self.doc,
        }


# --------------------------------------------------------------------------- computing


def _matrix(
    runs: Sequence[StoredRun], task: str, metric: str, cells: Sequence[str]
) -> tuple[list[str], dict[str, dict[int, np.ndarray]]]:
    """The queries every run of ``task`` has ``metric`` for, and per cell and seed the
    run's values in that query order."""
    have = [r for r in runs if task in r.values]
    qids = (
        sorted(
            set.intersection(*({q for q, v in r.values[task].items() if metric in v} for r in have))
        )
        if have
        else []
    )
    by: dict[str, dict[int, np.ndarray]] = {c: {} for c in cells}
    for r in have:
        vals = r.values[task]
        by.setdefault(r.cell, {})[r.seed] = np.array([vals[q][metric] for q in qids], dtype=float)
    return qids, by


def _ci(values: np.ndarray, alpha: float) -> tuple[float, float]:
    lo, hi = np.percentile(values, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(lo), float(hi)


def effects_of(
    pair: str,
    task: str,
    metric: str,
    factors: Sequence[tuple[str, Sequence[str]]],
    cell_levels: Mapping[str, Mapping[str, str]],
    values: Mapping[str, Mapping[int, np.ndarray]],
    *,
    reference: np.ndarray | None = None,
    n_boot: int = N_BOOT,
    n_resamples: int = N_RESAMPLES,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[list[EffectRow], list[str]]:
    """Every contrast of ``factors`` on one task: ``values[cell][seed]`` is a run's
    per-query vector (the same queries in every run), ``reference`` the reference
    system's per-query values (its own queries). Contrasts touching a cell without
    runs are left out, with a note."""
    names = list(cell_levels)
    present = [c for c in names if values.get(c)]
    rows: list[EffectRow] = []
    notes: list[str] = []
    if not present:
        return rows, [f"{pair} {task}: no finished run"]
    n = len(next(iter(values[present[0]].values())))
    if n == 0:
        return rows, [f"{pair} {task}: the runs share no query with {metric}"]
    M = np.zeros((len(names), n))
    for i, c in enumerate(names):
        if values.get(c):
            M[i] = np.mean(list(values[c].values()), axis=0)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    ref_boot = None
    if reference is not None and len(reference):
        ridx = rng.integers(0, len(reference), size=(n_boot, len(reference)))
        ref_boot = reference[ridx].mean(axis=1)
    seeds = sorted(set.intersection(*(set(values[c]) for c in present)))
    skipped: set[str] = set()
    for con in contrasts(factors, [cell_levels[c] for c in names]):
        w = np.array(con.weights)
        used = [names[i] for i in np.flatnonzero(w)]
        missing = [c for c in used if not values.get(c)]
        if missing:
            skipped.add(con.name)
            continue
        d = w @ M
        boot = d[idx].mean(axis=1)
        lo, hi = _ci(boot, alpha)
        _, p = paired_test(
            {q: {"v": float(x)} for q, x in enumerate(d)},
            {q: {"v": 0.0} for q in range(n)},
            "v",
            n_resamples=n_resamples,
            seed=seed,
        )
        # the same contrast on each seed's runs alone
        per_seed = [
            float(
                (w @ np.array([values[c][s] if c in used else np.zeros(n) for c in names])).mean()
            )
            for s in seeds
        ]
        row = EffectRow(
            pair=pair,
            task=task,
            metric=metric,
            kind=con.kind,
            name=con.name,
            factors=list(con.factors),
            levels=list(con.levels),
            bases=list(con.bases),
            estimate=float(d.mean()),
            ci_low=lo,
            ci_high=hi,
            p_value=float(p),
            n_queries=n,
            per_seed=per_seed,
            seed_sd=float(np.std(per_seed, ddof=1)) if len(per_seed) > 1 else None,
        )
        if con.kind == "main" and reference is not None and ref_boot is not None:
            b = np.array(con.base) @ M
            room = float(reference.mean() - b.mean())
            if room > 1e-12:
                row.gap_closed = row.estimate / room
                rooms = ref_boot - b[idx].mean(axis=1)
                ok = rooms > 1e-12  # resamples where the base still has a gap
                if ok.sum() >= 0.9 * n_boot:
                    row.gap_closed_low, row.gap_closed_high = _ci(boot[ok] / rooms[ok], alpha)
        rows.append(row)
    if skipped:
        notes.append(
            f"{pair} {task}: not estimated (a cell without a finished run): "
            + ", ".join(sorted(skipped))
        )
    return rows, notes


def study_effects(
    storage: Any,
    name: str,
    metric: str = "map",
    *,
    n_boot: int = N_BOOT,
    n_resamples: int = N_RESAMPLES,
    alpha: float = 0.05,
    seed: int = 0,
) -> StudyEffects:
    """The effects of study ``name`` in ``storage`` (a URI or a Storage) on ``metric``,
    computed from the stored per-query test values of its finished runs (nothing is
    re-run): main effects and two-way interactions with bootstrap CIs, paired p-values
    Holm-adjusted over the study, seed spreads, gaps to the references and the fraction
    of them each factor closes. See the module docstring for the definitions."""
    from optical_ray.storage import as_storage

    store = as_storage(storage)
    doc = read_design(store, name)
    if metric not in doc["metrics"]:
        from optical_ray.errors import ConfigError

        raise ConfigError(
            f"metric: got {metric!r}; study {name!r} stored {', '.join(doc['metrics'])}"
        )
    runs, notes = load_runs(store, doc)
    factors = [(f["name"], f["levels"]) for f in doc["factors"]]
    cell_levels = {c: dict(kv.split("=", 1) for kv in c.split(",")) for c in doc["cells"]}
    aliases = doc.get("aliases") or {}
    effects: list[EffectRow] = []
    cells: list[CellRow] = []
    baselines: list[TaskBaseline] = []
    for pair in doc["pairs"]:
        zrel = zero_shot_path(doc["name"], pair)
        zero = read_values(store, zrel)[1] if store.exists(zrel) else {}
        if not zero:
            notes.append(f"{pair}: no zero-shot evaluation stored; gaps not computed")
        refs = doc["reference"].get(pair, {})
        pruns = [r for r in runs if r.pair == pair]
        for t, task in enumerate(doc["tasks"][pair]):
            qids, values = _matrix(pruns, task, metric, doc["cells"])
            ref_pair = refs.get(task)
            ref = zero.get(ref_pair) if ref_pair else None
            ref_vec = np.array([v[metric] for v in ref.values() if metric in v]) if ref else None
            z = zero.get(task)
            z_mean = float(np.mean([v[metric] for v in z.values() if metric in v])) if z else None
            r_mean = float(ref_vec.mean()) if ref_vec is not None and len(ref_vec) else None
            baselines.append(TaskBaseline(pair, task, metric, z_mean, ref_pair, r_mean))
            rows, more = effects_of(
                pair,
                task,
                metric,
                factors,
                cell_levels,
                values,
                reference=ref_vec,
                n_boot=n_boot,
                n_resamples=n_resamples,
                alpha=alpha,
                seed=seed + 1000 * t,
            )
            for r in rows:
                key = ":".join(r.factors)
                r.aliases = list(aliases.get(key, []))
            effects += rows
            notes += more
            for c in doc["cells"] if qids else []:
                per_seed = [float(v.mean()) for v in values.get(c, {}).values()]
                if not per_seed:
                    continue
                mean = float(np.mean(per_seed))
                cells.append(
                    CellRow(
                        pair,
                        task,
                        metric,
                        c,
                        cell_levels[c],
                        mean,
                        len(per_seed),
                        float(np.std(per_seed, ddof=1)) if len(per_seed) > 1 else None,
                        None if r_mean is None else r_mean - mean,
                        gap_closed(mean, z_mean, r_mean),
                    )
                )
    adjusted = holm([e.p_value for e in effects])
    for e, p in zip(effects, adjusted):
        e.p_holm = None if math.isnan(p) else p
    return StudyEffects(
        name, metric, doc, effects, cells, baselines, len(runs), notes, alpha, n_boot
    )
