"""Per-pair summaries of the catalog, as the report shows them: each pair's baseline,
best trial and reference (:func:`summarize`), the parameters that mattered
(:func:`parameter_importances`), and the trials that trained on unconverged Sinkhorn
plans (:func:`unconverged_trials`). See :mod:`optical_ray.report.gap` for what the
baseline, best and reference are."""

from __future__ import annotations

import json
import logging
import math
import re
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

import pandas as pd

from optical_ray.catalog import (
    HYPERPARAMETERS,
    RANKED_STATUSES,
    metric_value,
    metric_values,
)
from optical_ray.errors import ConfigError
from optical_ray.evaluation.compare import gap, gap_closed

__all__ = ["PairSummary", "summarize", "parameter_importances", "unconverged_trials", "METHODS"]

log = logging.getLogger(__name__)

METHODS = ("none", "mse_token", "mse_sentence", "contrastive", "ot")


# Keys that name places or runs rather than searched knobs.
_NOT_PARAMS = re.compile(r"^(name|output_dir|pair|storage\..*|data\..*|sweep\..*|eval\..*)$")


@dataclass
class PairSummary:
    """One row of the gap table."""

    pair: str
    trials: int
    baseline: float | None
    baseline_source: str  # how the baseline was found, for the reader
    best: float | None
    best_trial: str | None
    best_config: dict[str, Any] = field(default_factory=dict)  # the main knobs
    reference: float | None = None
    reference_pair: str | None = None
    checkpoint_uri: str | None = None

    @property
    def delta(self) -> float | None:
        return None if self.best is None or self.baseline is None else self.best - self.baseline

    @property
    def gap_baseline(self) -> float | None:
        return gap(self.reference, self.baseline)

    @property
    def gap_best(self) -> float | None:
        return gap(self.reference, self.best)

    @property
    def gap_closed(self) -> float | None:
        return gap_closed(self.best, self.baseline, self.reference)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(
            delta=self.delta,
            gap_baseline=self.gap_baseline,
            gap_best=self.gap_best,
            gap_closed=self.gap_closed,
        )
        return out


def _json(text: Any) -> dict[str, Any]:
    return json.loads(text) if isinstance(text, str) and text else {}


def _teacher_pair(flat: dict[str, Any]) -> str:
    lang = flat.get("data.teacher_lang") or "en"
    return f"{lang}-{lang}"


def _pick(df: pd.DataFrame, values: pd.Series, mode: str) -> pd.Series | None:
    ok = values.dropna()
    if ok.empty:
        return None
    return df.loc[ok.idxmax() if mode == "max" else ok.idxmin()]


def summarize(
    df: pd.DataFrame, metric: str = "map", baseline: str = "zero-shot", mode: str = "max"
) -> list[PairSummary]:
    """The gap table from catalog records ``df`` (see the module docstring)."""
    if baseline != "zero-shot" and baseline not in METHODS:
        raise ConfigError(
            f"baseline: got {baseline!r}, expected 'zero-shot' or a "
            f"distill.method ({', '.join(METHODS)})"
        )
    base_method = "none" if baseline == "zero-shot" else baseline
    out = []
    for pair, group in df.groupby("pair", sort=True):
        ranked = group[group["status"].isin(RANKED_STATUSES)]
        values = metric_values(ranked, metric)
        is_base = ranked["method"] == base_method
        base_row = _pick(ranked[is_base], values[is_base], mode)
        best_row = _pick(ranked[~is_base], values[~is_base], mode)
        base_value: float | None = None
        base_metrics: dict[str, Any] = {}
        if base_row is not None:
            base_value = float(values[base_row.name])
            base_metrics = _json(base_row["best_metrics"])
            source = f"best '{base_method}' trial {base_row['trial_id']}"
        else:
            recorded = ranked[ranked["baseline_metrics"].notna()]
            source = "none recorded"
            if baseline == "zero-shot" and len(recorded):
                row = recorded.sort_values("finished_at").iloc[-1]
                base_metrics = _json(row["baseline_metrics"])
                base_value = metric_value(base_metrics, str(pair), metric)
                source = f"baseline_metrics of trial {row['trial_id']}"
        best_metrics = _json(best_row["best_metrics"]) if best_row is not None else {}
        flat = (
            _json(best_row["config"])
            if best_row is not None
            else (_json(base_row["config"]) if base_row is not None else {})
        )
        ref_pair = _teacher_pair(flat)
        reference = None
        if ref_pair != pair:
            reference = best_metrics.get(
                f"{ref_pair}/{metric}", base_metrics.get(f"{ref_pair}/{metric}")
            )
        out.append(
            PairSummary(
                pair=str(pair),
                trials=int(len(ranked)),
                baseline=base_value,
                baseline_source=source,
                best=None if best_row is None else float(values[best_row.name]),
                best_trial=None if best_row is None else str(best_row["trial_id"]),
                best_config={}
                if best_row is None
                else {
                    k: best_row[k]
                    for k in HYPERPARAMETERS
                    if k in best_row and not _missing(best_row[k])
                },
                reference=None if reference is None else float(reference),
                reference_pair=ref_pair if reference is not None else None,
                checkpoint_uri=None
                if best_row is None or _missing(best_row["checkpoint_uri"])
                else str(best_row["checkpoint_uri"]),
            )
        )
    return out


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def parameter_importances(
    df: pd.DataFrame, metric: str = "map", mode: str = "max"
) -> dict[str, float]:
    """Optuna PED-ANOVA importances of the config keys that vary across ``df`` (one
    pair's records), from a study rebuilt out of the catalog. {} if fewer than 3 ranked
    trials or nothing varies."""
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    ranked = df[df["status"].isin(RANKED_STATUSES)]
    values = metric_values(ranked, metric)
    rows = [(_json(c), v) for c, v in zip(ranked["config"], values) if not _missing(v)]
    if len(rows) < 3:
        return {}
    keys = sorted({k for flat, _ in rows for k in flat if not _NOT_PARAMS.match(k)})
    distributions: dict[str, Any] = {}
    encode: dict[str, Any] = {}
    for key in keys:
        seen = [flat.get(key) for flat, _ in rows]
        numeric = all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            for v in seen
        )
        if numeric:
            low, high = min(seen), max(seen)
            if low == high:
                continue
            if all(isinstance(v, int) for v in seen):
                distributions[key] = IntDistribution(int(low), int(high))
            else:  # epsilon and learning rates span decades: compare them in log space
                distributions[key] = FloatDistribution(
                    float(low), float(high), log=low > 0 and high / low >= 100
                )
            encode[key] = lambda v, ints=isinstance(distributions[key], IntDistribution): (
                int(v) if ints else float(v)
            )
        else:
            choices = sorted({json.dumps(v, sort_keys=True) for v in seen})
            if len(choices) < 2 or len(choices) == len(rows) > 3:
                continue  # constant, or unique per trial (a name, a path): not a knob
            distributions[key] = CategoricalDistribution(choices)
            encode[key] = lambda v: json.dumps(v, sort_keys=True)
    if not distributions:
        return {}
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "new study created" lines
    try:
        study = optuna.create_study(direction="maximize" if mode == "max" else "minimize")
    finally:
        optuna.logging.set_verbosity(verbosity)
    for flat, value in rows:
        study.add_trial(
            optuna.trial.create_trial(
                params={k: encode[k](flat.get(k)) for k in distributions},
                distributions=distributions,
                value=float(value),
            )
        )
    evaluator = optuna.importance.PedAnovaImportanceEvaluator()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ExperimentalWarning
        result = optuna.importance.get_param_importances(study, evaluator=evaluator)
    return {k: float(v) for k, v in result.items()}


def unconverged_trials(df: pd.DataFrame) -> dict[str, list[dict[str, Any]]]:
    """Per pair, the trials some of whose distill steps trained on a Sinkhorn plan that
    had not reached ``distill.sinkhorn_tol`` (their metrics rest on inexact plans):
    ``{"trial_id", "fraction", "max_error"}`` from each record's last metrics."""
    out: dict[str, list[dict[str, Any]]] = {}
    for row in df.itertuples():
        last = _json(row.last_metrics)
        frac = last.get("sinkhorn_unconverged")
        if isinstance(frac, (int, float)) and frac > 0:
            out.setdefault(row.pair, []).append(
                {
                    "trial_id": row.trial_id,
                    "fraction": float(frac),
                    "max_error": float(last.get("sinkhorn_max_error", float("nan"))),
                }
            )
    return out
