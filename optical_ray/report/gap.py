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
from pathlib import Path
from typing import Any

import pandas as pd

from optical_ray.catalog import (
    RANKED_STATUSES,
    Catalog,
    recorded_metrics,
)
from optical_ray.report.plots import (
    plot_importance,
    plot_overview,
    plot_params,
    plot_warm_vs_cold,
    slug,
)
from optical_ray.errors import ConfigError, StorageError
from optical_ray.report.pareto import pareto_section
from optical_ray.report.sections import report_section
from optical_ray.report.summary import (
    PairSummary,
    parameter_importances,
    summarize,
    unconverged_trials,
)
from optical_ray.tables import html_table, markdown_table, number

__all__ = ["build_report"]

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- importances


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
    """Sections from the per-query values (:mod:`optical_ray.report.sections`): best vs
    runner-up on dev, the test evaluations; appended to report.md and report.html,
    returned for report.json."""
    md, data = report_section(storage, df, metric, mode)
    if not md:
        return {}
    with open(out / "report.md", "a", encoding="utf-8") as f:
        f.write("\n" + md + "\n")
    page = (out / "report.html").read_text(encoding="utf-8")
    block = f"<pre>{html.escape(md)}</pre>"
    (out / "report.html").write_text(page.replace("</body></html>", block + "</body></html>"))
    return data


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
