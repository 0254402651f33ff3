"""The report's Pareto section: per pair, low-resource quality against English quality.

For each pair with trials that evaluated the reference pair (``<t>-<t>/<metric>``,
``t = data.teacher_lang``): a PNG with every ranked trial, the non-dominated front (both
axes maximised), the zero-shot teacher's point (the trials' ``baseline_metrics``) and
the hand-set baseline runs (trials of another ``distill.method`` than the sweep's,
e.g. ``none`` or ``mse_sentence``) by method; and a table of the front with each
trial's retention and cost (:mod:`optical_ray.catalog.pareto`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from optical_ray.catalog import RANKED_STATUSES, metric_value, non_dominated
from optical_ray.catalog.pareto import values_of
from optical_ray.catalog.records import finite
from optical_ray.tables import number

__all__ = ["pareto_section", "FRONT_HEAD"]

FRONT_HEAD = ["#", "trial", "method", "{metric}", "{ref}", "retention", "device-s", "eval s"]
_MARKERS = {"none": "s", "mse_token": "^", "mse_sentence": "v", "contrastive": "D"}


def _teacher_point(df: pd.DataFrame, pair: str, metric: str, ref: str) -> tuple | None:
    """The zero-shot teacher's (pair metric, reference metric), from the newest record
    that carries baseline metrics."""
    if "baseline_metrics" not in df:
        return None
    for text in df.sort_values("finished_at", ascending=False)["baseline_metrics"]:
        if isinstance(text, str) and text:
            base = json.loads(text)
            x, y = metric_value(base, pair, metric), base.get(f"{ref}/{metric}")
            if x is not None and y is not None:
                return float(x), float(y)
    return None


def pareto_section(
    df: pd.DataFrame, pair: str, metric: str, ref: str, path: Path
) -> tuple[list[str], list[list[str]]] | None:
    """Plot ``pair``'s front of ``metric`` against ``<ref>/<metric>`` into ``path`` and
    return the front's table (head, body); None when no trial evaluated ``ref``."""
    ranked = df[df["status"].isin(RANKED_STATUSES)]
    x = finite(values_of(ranked, metric)).to_numpy("float64")
    y = finite(values_of(ranked, f"{ref}/{metric}")).to_numpy("float64")
    ok = ~(np.isnan(x) | np.isnan(y))
    if not ok.any():
        return None
    on_front = non_dominated(np.column_stack([x, y]), [True, True])
    methods = ranked["method"].fillna("ot").to_numpy() if "method" in ranked else None
    main = pd.Series(methods).mode().iloc[0] if methods is not None else "ot"
    from optical_ray.report.plots import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.6, 4.2))
    sweep = ok & (methods == main if methods is not None else True)
    ax.scatter(x[sweep], y[sweep], s=18, alpha=0.6, color="#9aa7b4", label=f"trials ({main})")
    if methods is not None:
        for method in sorted(set(methods[ok]) - {main}):
            sel = ok & (methods == method)
            ax.scatter(
                x[sel], y[sel], s=40, marker=_MARKERS.get(method, "P"), color="#555555",
                label=f"baseline run: {method}",
            )  # fmt: skip
    order = np.flatnonzero(on_front)[np.argsort(x[on_front])]
    ax.plot(
        x[order], y[order], "-o", color="#3b75af", markersize=5, drawstyle="steps-pre",
        label=f"front ({len(order)})",
    )  # fmt: skip
    teacher = _teacher_point(ranked, pair, metric, ref)
    if teacher is not None:
        ax.scatter(
            *teacher, s=120, marker="*", color="#c0392b", label="teacher (zero-shot)", zorder=3
        )
    ax.set_xlabel(f"{pair} {metric}")
    ax.set_ylabel(f"{ref} {metric} (English)")
    ax.set_title(f"{pair}: low-resource vs English {metric} ({int(ok.sum())} trials)", fontsize=10)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

    front = ranked.iloc[order[::-1]]  # best low-resource metric first
    body = [
        [
            str(i),
            str(row["trial_id"]),
            str(row.get("method") or "ot"),
            number(xv),
            number(yv),
            number(_float(row.get("retention")), "{:.3f}"),
            number(_float(row.get("device_s")), "{:.1f}"),
            number(_float(row.get("eval_s")), "{:.1f}"),
        ]
        for i, ((_, row), xv, yv) in enumerate(
            zip(front.iterrows(), x[order[::-1]], y[order[::-1]]), start=1
        )
    ]
    head = [h.format(metric=f"{pair} {metric}", ref=f"{ref} {metric}") for h in FRONT_HEAD]
    return head, body


def _float(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return None if np.isnan(out) else out
