"""Several objectives over the catalog: Pareto fronts, constraints, hypervolume.

A trial is judged on more than one number: its low-resource quality (``map``), what it
keeps of the teacher's English quality (``en-en/map``, or ``retention``, its ratio to
the zero-shot teacher's) and what it cost (``cost``: device-seconds). Here:

* :func:`parse_objectives` — ``"map,en-en/map,cost"`` → :class:`Objective` s, each with
  its direction. Metrics and ``retention`` are maximised; ``cost`` and every ``*_s``
  column (seconds) are minimised; ``name:min`` / ``name:max`` overrides.
* :func:`parse_where` — ``"retention>=0.98"`` → :class:`Condition`; comparisons
  ``>= <= > < == !=`` on any recorded metric, catalog column or config key.
* :func:`non_dominated` and :func:`hypervolume` — pure numpy on a value matrix.
* :func:`filter_where` / :func:`closest_miss`, which :func:`best_config` uses for its
  ``where=``.

Names a query may use (:func:`values_of`): a metric (``map``, ``ndcg@10``,
``en-en/map``), a catalog column (``retention``, ``training_s``, ``device_s``,
``eval_s``, ``duration_s``, ``iterations``, ``epsilon``, ``weight``, ``lr``), ``cost``
(= ``device_s``), or a flat config key (``distill.l2sp``, ``scaling.workers``).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Sequence

import numpy as np
import pandas as pd

from optical_ray.errors import StorageError
from optical_ray.catalog.records import finite, metric_values
from optical_ray.config.rules import (
    ALLOWED_NAMES,
    ASHA_OBJECTIVES,
    COST_COLUMNS,
    NAME_ALIASES,
    Condition,
    Objective,
    name_kind,
    parse_objectives,
    parse_where,
    reference_pair,
    search_objective,
    search_problems,
)

__all__ = [
    "Objective",
    "Condition",
    "COST_COLUMNS",
    "parse_objectives",
    "parse_where",
    "values_of",
    "columns_for",
    "non_dominated",
    "hypervolume",
    "filter_where",
    "closest_miss",
    "reference_pair",
    "trial_costs",
    "search_problems",
    "search_objective",
    "ASHA_OBJECTIVES",
]


# --------------------------------------------------------------------------- values


def columns_for(names: Sequence[str]) -> list[str]:
    """Catalog columns a query needs beyond the ranking ones to resolve ``names``."""
    cols: list[str] = []
    for name in names:
        kind, base = name_kind(name), NAME_ALIASES.get(name, name)
        if kind == "column":
            cols.append(base)
        elif kind == "config":
            cols.append("config")
    return list(dict.fromkeys(cols))


def values_of(df: pd.DataFrame, name: str) -> pd.Series:
    """``name`` per catalog record of ``df`` (NaN where it was not recorded)."""
    kind, base = name_kind(name), NAME_ALIASES.get(name, name)
    if kind == "column":
        if base not in df:
            return pd.Series(np.nan, index=df.index)
        col = df[base]
        return col if base in ("layers", "method") else finite(col)
    if kind == "config":
        if "config" not in df:
            return pd.Series(np.nan, index=df.index)
        return pd.Series(
            [json.loads(c).get(base) if isinstance(c, str) and c else None for c in df["config"]],
            index=df.index,
            dtype="object",
        )
    if "/" in base and "best_metrics" in df:
        return finite(_json_number(df["best_metrics"], base))
    return metric_values(df, base)


def _json_number(texts: pd.Series, key: str) -> pd.Series:
    """``key``'s number in each JSON object of ``texts`` (as the catalog writes them:
    ``json.dumps(..., sort_keys=True)``), by one vectorised match instead of a parse per
    record: a front over 10,000 records reads one metric of each."""
    import pyarrow as pa
    import pyarrow.compute as pc

    # RE2 in Arrow, over the whole column at once (non-finite values stay NaN)
    pattern = '"' + re.escape(key) + r'": (?P<v>-?[0-9][0-9.eE+-]*)'
    arr = pa.array(texts.to_numpy(dtype=object), type=pa.string(), from_pandas=True)
    found = pc.struct_field(pc.extract_regex(arr, pattern=pattern), "v")
    values = pc.cast(found, pa.float64()).to_numpy(zero_copy_only=False)
    return pd.Series(values, index=texts.index, dtype="float64")


def objective_matrix(df: pd.DataFrame, objectives: Sequence[Objective]) -> np.ndarray:
    """``[n_records, n_objectives]`` float matrix of the objectives' values."""
    if df.empty:
        return np.zeros((0, len(objectives)))
    # non-finite values (a planted +inf) are NaN: never on a front, never ranked first
    return np.column_stack([finite(values_of(df, o.name)).to_numpy("float64") for o in objectives])


# --------------------------------------------------------------------------- fronts


def non_dominated(values: np.ndarray, maximize: Sequence[bool]) -> np.ndarray:
    """Boolean mask of the rows of ``values`` that no other row dominates.

    ``values``: shape ``[n_points, n_objectives]``; ``maximize[j]`` says whether
    objective ``j`` is maximised. Row ``a`` dominates ``b`` when it is at least as good
    in every objective and strictly better in one; equal rows do not dominate each
    other (both stay on the front). Rows with a NaN are never on the front.

    Two objectives: one pass over the rows sorted best-first (O(n log n)); more: one
    vectorised pass per front point (O(n * |front|)).
    """
    values = np.asarray(values, dtype="float64")
    if values.ndim != 2 or values.shape[1] != len(maximize):
        raise ValueError(f"values: shape {values.shape}, expected [n, {len(maximize)}]")
    signs = np.where(np.asarray(maximize, dtype=bool), 1.0, -1.0)
    v = values * signs  # now every objective is maximised
    ok = ~np.isnan(v).any(axis=1)
    mask = np.zeros(len(v), dtype=bool)
    idx = np.flatnonzero(ok)
    if not len(idx):
        return mask
    order = idx[np.lexsort([-v[idx, j] for j in reversed(range(v.shape[1]))])]
    if v.shape[1] == 2:
        # two objectives: on the front iff better in the second than every row before
        # it (ties in both objectives stay)
        best2, last = -np.inf, None
        for i in order:
            row = (v[i, 0], v[i, 1])
            if row[1] > best2 or row == last:
                mask[i] = True
                best2, last = max(best2, row[1]), row
        return mask
    # more objectives: the remaining row with the largest sum is never dominated by
    # another remaining row (a row dominating it has a larger sum, and a row removed
    # earlier was dominated by one on the front, which would dominate it too); take it,
    # drop every row it dominates, repeat: one vectorised pass per front point
    rest = order[np.argsort(-v[order].sum(axis=1), kind="stable")]
    while len(rest):
        p = v[rest[0]]
        mask[rest[0]] = True
        w = v[rest[1:]]
        rest = rest[1:][~(np.all(p >= w, axis=1) & np.any(p > w, axis=1))]
    return mask


def hypervolume(points: np.ndarray, reference: Sequence[float], maximize: Sequence[bool]) -> float:
    """The hypervolume of ``points`` (shape ``[n, k]``) up to ``reference``.

    The measure of the region dominated by at least one point and dominating the
    reference point: for ``k = 2`` the area between the front's staircase and the
    reference. Points no better than the reference in every objective add nothing.
    Exact: a sweep for two objectives, slicing along the last one beyond (fine for the
    fronts of a sweep, tens of points).
    """
    pts = np.asarray(points, dtype="float64").reshape(-1, len(maximize))
    signs = np.where(np.asarray(maximize, dtype=bool), -1.0, 1.0)  # minimise everything
    p = pts * signs
    r = np.asarray(reference, dtype="float64") * signs
    p = p[~np.isnan(p).any(axis=1)]
    p = p[np.all(p < r, axis=1)]
    if not len(p):
        return 0.0
    p = p[non_dominated(p, [False] * p.shape[1])]
    return float(_hv_min(p, r))


def _hv_min(p: np.ndarray, r: np.ndarray) -> float:
    """Hypervolume of the minimisation front ``p`` (all rows strictly below ``r``)."""
    k = p.shape[1]
    if k == 1:
        return float(r[0] - p[:, 0].min())
    if k == 2:
        p = p[np.lexsort((p[:, 1], p[:, 0]))]
        area, y = 0.0, r[1]
        for x0, x1 in p:
            if x1 < y:
                area += (r[0] - x0) * (y - x1)
                y = x1
        return area
    p = p[np.argsort(p[:, -1])]
    volume = 0.0
    for i in range(len(p)):
        upper = p[i + 1, -1] if i + 1 < len(p) else r[-1]
        if upper > p[i, -1]:
            head = p[: i + 1, :-1]
            head = head[non_dominated(head, [False] * (k - 1))]
            volume += _hv_min(head, r[:-1]) * (upper - p[i, -1])
    return volume


# --------------------------------------------------------------------------- constraints


def filter_where(df: pd.DataFrame, conditions: Sequence[Condition]) -> pd.DataFrame:
    """The records of ``df`` that satisfy every condition."""
    keep = pd.Series(True, index=df.index)
    for c in conditions:
        keep &= c.holds(values_of(df, c.key))
    return df[keep]


def closest_miss(df: pd.DataFrame, conditions: Sequence[Condition], pair: str) -> StorageError:
    """The one-line error for constraints no record of ``pair`` meets: the closest trial
    (smallest summed relative shortfall) and by how much it misses each condition."""
    conds = ", ".join(str(c) for c in conditions)
    cols = {c.key: values_of(df, c.key) for c in conditions}
    never = [c.key for c in conditions if cols[c.key].isna().all()]
    if never:
        return StorageError(
            f"no trial of {pair!r} satisfies {conds}: {', '.join(sorted(set(never)))} "
            f"never recorded for this pair ({len(df)} trials); recorded names: {ALLOWED_NAMES}"
        )
    gaps = np.array(
        [[c.shortfall(cols[c.key].iloc[i]) for c in conditions] for i in range(len(df))]
    )
    best = int(np.argmin(gaps.sum(axis=1)))
    row = df.iloc[best]
    misses = []
    for j, c in enumerate(conditions):
        value = cols[c.key].iloc[best]
        if gaps[best, j] == 0:
            continue
        if isinstance(c.value, float) and value is not None and not pd.isna(value):
            misses.append(f"{c.key}={float(value):.4g}, {abs(float(value) - c.value):.4g} off {c}")
        else:
            misses.append(f"{c.key}={value!r}, not {c}")
    return StorageError(
        f"no trial of {pair!r} satisfies {conds} ({len(df)} trials); closest: trial "
        f"{row['trial_id']!r} of {row['experiment']!r} with {'; '.join(misses)}"
    )


# --------------------------------------------------------------------------- sweeps


def trial_costs(
    result: dict[str, Any],
    cfg: Any,
    baseline: dict[str, float] | None,
    at_best: dict[str, Any] | None = None,
) -> dict[str, float | None]:
    """Retention and cost of a trial from its result (what the trial reported):
    ``retention`` = the reference pair's ``sweep.metric`` (at the trial's best
    evaluation, ``at_best``, else in ``result``) over the teacher's (``baseline``);
    ``training_s``; ``device_s`` = devices per worker x workers x training_s (``cost``);
    ``eval_s``. None where not measured."""
    key = f"{reference_pair(cfg)}/{cfg.sweep.metric}"
    mine = (at_best or {}).get(key, result.get(key))
    teacher = (baseline or {}).get(key)
    retention = None
    if cfg.eval.retention and isinstance(mine, (int, float)) and teacher:
        retention = float(mine) / float(teacher)
    train_s = result.get("train_s")
    sc = cfg.scaling
    devices = sc.gpus_per_worker if sc.gpus_per_worker > 0 else sc.cpus_per_worker
    device_s = None if train_s is None else float(train_s) * sc.workers * devices
    eval_s = result.get("eval_s")
    return {
        "retention": retention,
        "training_s": None if train_s is None else float(train_s),
        "device_s": device_s,
        "cost": device_s,
        "eval_s": None if eval_s is None else float(eval_s),
    }


def constraint_values(conds: Sequence[Condition], values: dict[str, Any]) -> dict[str, float]:
    """Optuna's constraint values (feasible when <= 0) of ``conds`` on a trial's
    ``values``; a value not measured counts as infeasible (1.0)."""
    out = {}
    for c in conds:
        v = values.get(c.key)
        if not isinstance(v, (int, float)) or math.isnan(float(v)):
            out[str(c)] = 1.0
            continue
        v, t = float(v), float(c.value)
        gap = {">=": t - v, ">": t - v, "<=": v - t, "<": v - t}.get(c.op)
        if gap is None:  # == and !=
            gap = (0.0 if v == t else 1.0) if c.op == "==" else (1.0 if v == t else 0.0)
        elif c.op in (">", "<") and gap == 0:
            gap = 1e-12  # strict: equality is not feasible
        out[str(c)] = gap
    return out


# --------------------------------------------------------------------------- catalog query
