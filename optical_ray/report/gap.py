"""The gap report: how far each low-resource pair is from the English reference, and how
much of that gap the best distillation config closes.

For every language pair in the catalog (:mod:`optical_ray.catalog`):

* **baseline** — ``baseline="zero-shot"`` (default): the best trial whose config has
  ``distill.method: none`` (the teacher applied zero-shot to the pair); if the sweep ran
  none, the ``baseline_metrics`` recorded with the trials (the teacher evaluated on the
  same set before distilling; the most recent record wins). ``baseline=<method>``
  (``mse_sentence``, ``mse_token``, ``contrastive``, ``ot``) compares against the best trial of that
  method instead.
* **best** — the best trial of any other method (mode ``max``: highest ``metric``).
* **reference** — the teacher's own pair ``<t>-<t>/<metric>`` (``t = data.teacher_lang``,
  normally ``en-en``) as evaluated with the best trial; failing that, with the baseline.
* **gap** = reference - value; **gap closed** = (best - baseline) / (reference - baseline)
  (:mod:`optical_ray.evaluation.compare`).

Outputs in ``out_dir``: ``report.md`` (links the PNGs), ``report.html`` (one file, PNGs
embedded), ``report.json`` (the numbers), ``overview.png`` (baseline / best / reference
per pair), ``params_<pair>.png`` (metric against epsilon, log x, and against the
distillation weight), ``pareto_<pair>.png`` with the front's table
(:mod:`optical_ray.report.pareto`) and ``importance_<pair>.png``: parameter importances by Optuna's
PED-ANOVA evaluator (``optuna.importance.PedAnovaImportanceEvaluator``, no fANOVA forest)
on the sweep's persisted Optuna study when the pair's trials come from one sweep that
kept one (:func:`optical_ray.tracking.trackers.study_importances`), else on a study rebuilt from
the catalog with ``optuna.create_study`` + ``add_trial``, over the config keys that
vary between the pair's trials.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import math
import re
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from optical_ray.catalog import (
    HYPERPARAMETERS,
    RANKED_STATUSES,
    Catalog,
    metric_value,
    metric_values,
    recorded_metrics,
)
from optical_ray.evaluation.compare import gap, gap_closed
from optical_ray.report.plots import (
    plot_importance,
    plot_overview,
    plot_params,
    plot_warm_vs_cold,
    slug,
)
from optical_ray.errors import ConfigError, StorageError
from optical_ray.report.pareto import pareto_section
from optical_ray.tables import html_table, markdown_table, number

__all__ = ["build_report", "PairSummary", "summarize", "parameter_importances"]

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


# --------------------------------------------------------------------------- importances


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


# --------------------------------------------------------------------------- report


def _fmt(value: float | None, pct: bool = False) -> str:
    return number(value, "{:.0%}" if pct else "{:.4f}", missing="n/a")


def _table_rows(rows: list[PairSummary]) -> tuple[list[str], list[list[str]]]:
    head = [
        "pair",
        "trials",
        "baseline",
        "best",
        "Δ",
        "reference",
        "gap (baseline)",
        "gap (best)",
        "gap closed",
        "best config",
    ]
    body = []
    for r in rows:
        knobs = ", ".join(
            f"{k}={_fmt(v) if isinstance(v, float) else v}" for k, v in r.best_config.items()
        )
        ref = f"{_fmt(r.reference)} ({r.reference_pair})" if r.reference is not None else "n/a"
        body.append(
            [
                r.pair,
                str(r.trials),
                _fmt(r.baseline),
                _fmt(r.best),
                _fmt(r.delta),
                ref,
                _fmt(r.gap_baseline),
                _fmt(r.gap_best),
                _fmt(r.gap_closed, True),
                knobs or "n/a",
            ]
        )
    return head, body


def _best_origins(df: pd.DataFrame, rows: list[PairSummary]) -> dict[str, str | None]:
    """Where each pair's best config came from (its record's ``origin``)."""
    out: dict[str, str | None] = {}
    for r in rows:
        hit = df[(df["pair"] == r.pair) & (df["trial_id"] == r.best_trial)]
        value = hit["origin"].dropna() if "origin" in hit else hit.iloc[0:0]
        out[r.pair] = str(value.iloc[0]) if len(value) else None
    return out


def build_report(
    storage: Any,
    out_dir: str | Path,
    *,
    metric: str = "map",
    baseline: str = "zero-shot",
    experiment: str | None = None,
    mode: str = "max",
) -> Path:
    """Write the gap report for every pair in the catalog of ``storage`` (local or
    ``s3://``) into the local directory ``out_dir``; returns the path of ``report.md``.

    Raises :class:`StorageError` for an empty or unreachable store or a metric no
    record has, :class:`ConfigError` for an unknown ``baseline`` or ``mode``.
    """
    if mode not in ("max", "min"):
        raise ConfigError(f"mode: got {mode!r}, expected 'max' or 'min'")
    catalog = Catalog(storage)
    df = catalog.records(experiment=experiment)
    if df.empty:
        raise StorageError(
            f"no trial records in {catalog.storage.where()}; run a sweep "
            "first or check the storage URI"
        )
    rows = summarize(df, metric, baseline, mode)
    base_method = "none" if baseline == "zero-shot" else baseline
    if all(r.best is None and r.baseline is None for r in rows):
        raise StorageError(
            f"metric {metric!r} was never recorded in "
            f"{catalog.storage.where()}; recorded metrics: "
            f"{', '.join(recorded_metrics(df))}"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plot_overview(rows, metric, out / "overview.png")
    figures: dict[str, list[tuple[str, str]]] = {}
    importances: dict[str, dict[str, float]] = {}
    fronts: dict[str, tuple[list[str], list[list[str]]]] = {}
    for r in rows:
        # The sweep's own trials: the baseline runs are not part of its search.
        group = df[(df["pair"] == r.pair) & (df["method"] != base_method)]
        figs = figures.setdefault(r.pair, [])
        name = f"params_{slug(r.pair)}.png"
        if plot_params(group, r, metric, out / name):
            figs.append((name, f"{r.pair}: {metric} vs epsilon and weight"))
        try:
            # The sweep's own persisted Optuna study when the pair has one (its real
            # search space, pruned trials included); else a study rebuilt from the catalog.
            from optical_ray.tracking.trackers import study_importances

            exps = group["experiment"].dropna().unique()
            imp = (
                study_importances(catalog.storage, str(exps[0]), metric) if len(exps) == 1 else None
            )
            if imp is None:
                imp = parameter_importances(group, metric, mode)
        except Exception as exc:  # importances are a nicety; never lose the report
            log.warning("report: no parameter importances for %s: %s", r.pair, exc)
            imp = {}
        importances[r.pair] = imp
        if imp:
            name = f"importance_{slug(r.pair)}.png"
            n = int(group["status"].isin(RANKED_STATUSES).sum())
            plot_importance(imp, r.pair, n, out / name)
            figs.append((name, f"{r.pair}: parameter importance"))
        # low-resource vs English: every trial (baseline runs too), front and teacher
        name = f"pareto_{slug(r.pair)}.png"
        ref = r.reference_pair or "en-en"
        front = pareto_section(df[df["pair"] == r.pair], r.pair, metric, ref, out / name)
        if front is not None:
            fronts[r.pair] = front
            figs.append((name, f"{r.pair}: Pareto front of {metric} against {ref}"))
    curves = plot_warm_vs_cold(df, metric, mode, out, figures)
    origins = _best_origins(df, rows)
    where = catalog.storage.where()
    head, body = _table_rows(rows)
    flagged = unconverged_trials(df)
    _write_markdown(
        out / "report.md",
        rows,
        head,
        body,
        figures,
        importances,
        metric,
        baseline,
        where,
        flagged,
        fronts,
        origins,
    )
    _write_html(
        out / "report.html",
        head,
        body,
        figures,
        importances,
        metric,
        baseline,
        where,
        out,
        flagged,
        fronts,
    )
    extra = _extra_sections(catalog.storage, out, df, metric, mode)
    (out / "report.json").write_text(
        json.dumps(
            {
                **extra,
                "storage": where,
                "metric": metric,
                "baseline": baseline,
                "mode": mode,
                "pairs": [r.to_dict() for r in rows],
                "importances": importances,
                "unconverged": flagged,
                "fronts": {p: [dict(zip(h, row)) for row in b] for p, (h, b) in fronts.items()},
                "best_origin": origins,
                "warm_vs_cold": curves,
            },
            indent=2,
            sort_keys=True,
            default=str,
        )
        + "\n",
        encoding="utf-8",
    )
    return out / "report.md"


def _extra_sections(
    storage: Any, out: Path, df: pd.DataFrame, metric: str, mode: str
) -> dict[str, Any]:
    """Sections from the per-query values (:mod:`optical_ray.evaluation.best`): best vs
    runner-up on dev, the test evaluations; appended to report.md and report.html,
    returned for report.json."""
    from optical_ray.evaluation.best import report_section

    md, data = report_section(storage, df, metric, mode)
    if not md:
        return {}
    with open(out / "report.md", "a", encoding="utf-8") as f:
        f.write("\n" + md + "\n")
    page = (out / "report.html").read_text(encoding="utf-8")
    block = f"<pre>{html.escape(md)}</pre>"
    (out / "report.html").write_text(page.replace("</body></html>", block + "</body></html>"))
    return data


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


def _convergence_line(flagged: list[dict[str, Any]]) -> str:
    shown = ", ".join(
        f"{t['trial_id']} ({t['fraction']:.0%} of steps, worst marginal error {t['max_error']:.2g})"
        for t in flagged
    )
    return (
        f"Sinkhorn did not converge in {len(flagged)} trial(s): {shown}; their metrics "
        "rest on inexact plans (raise distill.sinkhorn_iters or the lowest epsilon)"
    )


def _intro(metric: str, baseline: str, where: str) -> list[str]:
    base = (
        "zero-shot teacher (trials with distill.method=none, else the recorded baseline_metrics)"
        if baseline == "zero-shot"
        else f"best '{baseline}' trial"
    )
    return [
        f"Catalog: `{where}`. Metric: **{metric}**. Baseline: {base}. Reference: the "
        "teacher's own pair. Gap = reference − value; gap closed = (best − baseline) "
        "/ (reference − baseline)."
    ]


def _write_markdown(
    path: Path,
    rows: list[PairSummary],
    head: list[str],
    body: list[list[str]],
    figures: dict[str, list[tuple[str, str]]],
    importances: dict[str, dict[str, float]],
    metric: str,
    baseline: str,
    where: str,
    flagged: dict[str, list[dict[str, Any]]],
    fronts: dict[str, tuple[list[str], list[list[str]]]] | None = None,
    origins: dict[str, str | None] | None = None,
) -> None:
    lines = [
        "# optical-ray gap report",
        "",
        *_intro(metric, baseline, where),
        "",
        markdown_table(head, body),
        "",
        "![baseline vs best per pair](overview.png)",
        "",
    ]
    for r in rows:
        lines += [
            f"## {r.pair}",
            "",
            f"- baseline: {_fmt(r.baseline)} ({r.baseline_source})",
            f"- best: {_fmt(r.best)} (trial {r.best_trial or 'n/a'}; checkpoint "
            f"{r.checkpoint_uri or 'n/a'})",
        ]
        if (origins or {}).get(r.pair):
            lines.append(f"- best config's origin: {origins[r.pair]}")
        imp = importances.get(r.pair) or {}
        if imp:
            top = ", ".join(f"{k} {v:.2f}" for k, v in list(imp.items())[:5])
            lines.append(f"- most important parameters (PED-ANOVA): {top}")
        if flagged.get(r.pair):
            lines.append(f"- **{_convergence_line(flagged[r.pair])}**")
        lines.append("")
        lines += [f"![{alt}]({name})" for name, alt in figures.get(r.pair, [])]
        lines.append("")
        if fronts and r.pair in fronts:
            lines += ["Pareto front (non-dominated trials, best low-resource first):", ""]
            lines += [markdown_table(*fronts[r.pair]), ""]
    path.write_text("\n".join(lines), encoding="utf-8")


def _write_html(
    path: Path,
    head: list[str],
    body: list[list[str]],
    figures: dict[str, list[tuple[str, str]]],
    importances: dict[str, dict[str, float]],
    metric: str,
    baseline: str,
    where: str,
    out: Path,
    flagged: dict[str, list[dict[str, Any]]],
    fronts: dict[str, tuple[list[str], list[list[str]]]] | None = None,
) -> None:
    def img(name: str, alt: str) -> str:
        data = base64.b64encode((out / name).read_bytes()).decode()
        return f'<p><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"></p>'

    e = html.escape
    table = html_table(head, body)
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>optical-ray gap "
        "report</title><style>body{font-family:sans-serif;max-width:1100px;margin:auto}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;"
        "text-align:right}</style></head><body>",
        "<h1>optical-ray gap report</h1>",
        f"<p>{e(_intro(metric, baseline, where)[0])}</p>",
        table,
        img("overview.png", "baseline vs best per pair"),
    ]
    for pair, figs in figures.items():
        parts.append(f"<h2>{e(pair)}</h2>")
        if flagged.get(pair):
            parts.append(f"<p><b>{e(_convergence_line(flagged[pair]))}</b></p>")
        imp = importances.get(pair) or {}
        if imp:
            parts.append(
                "<p>most important parameters (PED-ANOVA): "
                + e(", ".join(f"{k} {v:.2f}" for k, v in list(imp.items())[:5]))
                + "</p>"
            )
        parts += [img(name, alt) for name, alt in figs]
        if fronts and pair in fronts:
            parts.append("<p>Pareto front (non-dominated trials, best low-resource first):</p>")
            parts.append(html_table(*fronts[pair]))
    parts.append("</body></html>")
    path.write_text("\n".join(parts), encoding="utf-8")
