"""The report's figures: the per-pair overview, each pair's metric against its searched
parameters, parameter importances, a warm-started sweep against a cold one, and a
study's interaction plots and "gap closed" bars (:mod:`optical_ray.report.pareto`
draws the Pareto fronts). Matplotlib, headless."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pandas as pd

from optical_ray.catalog import RANKED_STATUSES, metric_values
from optical_ray.catalog.records import finite
from optical_ray.report.summary import PairSummary


__all__ = [
    "pyplot",
    "plot_overview",
    "plot_params",
    "plot_importance",
    "plot_warm_vs_cold",
    "plot_interaction",
    "plot_gap_closed",
    "slug",
]


def pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_overview(rows: list[PairSummary], metric: str, path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(rows) + 2), 3.8))
    xs = range(len(rows))
    width = 0.38
    base = [r.baseline if r.baseline is not None else 0.0 for r in rows]
    best = [r.best if r.best is not None else 0.0 for r in rows]
    ax.bar([x - width / 2 for x in xs], base, width, label="baseline", color="#bbbbbb")
    ax.bar([x + width / 2 for x in xs], best, width, label="best config", color="#3b75af")
    for x, r in zip(xs, rows):
        if r.reference is not None:
            ax.hlines(
                r.reference,
                x - 0.45,
                x + 0.45,
                colors="#c0392b",
                linestyles="--",
                label=f"reference ({r.reference_pair})" if x == 0 else None,
            )
    ax.set_xticks(list(xs), [r.pair for r in rows], rotation=30 if len(rows) > 6 else 0)
    tops = base + best + [r.reference for r in rows if r.reference is not None]
    ax.set_ylim(0, 1.3 * max(tops + [1e-9]))  # head room for the legend
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} per language pair: baseline vs best config")
    handles, labels = ax.get_legend_handles_labels()
    ax.legend(handles, labels, fontsize=8, loc="upper right", ncol=3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_params(df: pd.DataFrame, row: PairSummary, metric: str, path: Path) -> bool:
    ranked = df[df["status"].isin(RANKED_STATUSES)]
    values = metric_values(ranked, metric)
    if values.notna().sum() == 0:
        return False
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(8.5, 3.4), sharey=True)
    for ax, column, label, log_x in (
        (axes[0], "epsilon", "Sinkhorn epsilon", True),
        (axes[1], "weight", "distillation weight", False),
    ):
        x = finite(ranked[column])
        ok = x.notna() & values.notna() & (x > 0 if log_x else True)
        ax.scatter(x[ok], values[ok], s=18, alpha=0.75, color="#3b75af", label="trials")
        best = ranked["trial_id"] == row.best_trial
        if (ok & best).any():
            ax.scatter(
                x[ok & best],
                values[ok & best],
                s=70,
                marker="*",
                color="#e67e22",
                label="best",
                zorder=3,
            )
        if row.baseline is not None:
            ax.axhline(row.baseline, color="#7f7f7f", linestyle=":", label="baseline")
        if log_x and ok.any():
            ax.set_xscale("log")
        ax.set_xlabel(label)
    axes[0].set_ylabel(metric)
    axes[0].legend(fontsize=7, loc="best")
    fig.suptitle(
        f"{row.pair}: {metric} against the OT knobs ({int(values.notna().sum())} trials)",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_importance(importances: dict[str, float], pair: str, n: int, path: Path) -> None:
    plt = pyplot()
    items = sorted(importances.items(), key=lambda kv: kv[1])[-12:]
    fig, ax = plt.subplots(figsize=(6.0, 0.45 * len(items) + 1.4))
    ax.barh([k for k, _ in items], [v for _, v in items], color="#3b75af")
    ax.set_xlabel("importance (PED-ANOVA)")
    ax.set_title(f"{pair}: parameter importance ({n} trials)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_warm_vs_cold(
    df: pd.DataFrame,
    metric: str,
    mode: str,
    out: Path,
    figures: dict[str, list[tuple[str, str]]],
) -> dict[str, dict[str, Any]]:
    """For each pair with a warm-started and a cold sweep: their best-so-far curves
    against trial-epochs, plotted as ``warm_<pair>.png``."""
    from optical_ray.sweeps.warmstart import best_so_far, warm_and_cold

    curves: dict[str, dict[str, Any]] = {}
    for pair, (warm, cold) in warm_and_cold(df).items():
        data = {
            name: best_so_far(df[(df["pair"] == pair) & (df["experiment"] == exp)], metric, mode)
            for name, exp in (("warm", warm), ("cold", cold))
        }
        curves[pair] = {"warm_experiment": warm, "cold_experiment": cold, **data}
        plt = pyplot()
        fig, ax = plt.subplots(figsize=(6, 3.6))
        for name, points in data.items():
            if points:
                xs, ys = zip(*points)
                ax.step(
                    xs,
                    ys,
                    where="post",
                    marker="o",
                    label=f"{name} ({curves[pair][name + '_experiment']})",
                )
        ax.set_xlabel("trial-epochs (evaluations, all trials)")
        ax.set_ylabel(f"best {metric} so far")
        ax.set_title(f"{pair}: warm-started vs cold sweep")
        ax.legend()
        fig.tight_layout()
        name = f"warm_{slug(pair)}.png"
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        figures.setdefault(pair, []).append((name, f"{pair}: warm vs cold best-so-far"))
    return curves


def plot_interaction(
    panels: dict[str, dict[str, dict[str, tuple[float, float | None]]]],
    a: tuple[str, list[str]],
    b: tuple[str, list[str]],
    metric: str,
    path: Path,
) -> None:
    """An interaction plot of factors ``a`` and ``b`` (``(name, levels)``): one panel per
    title in ``panels`` (a pair's task), x = the levels of ``a``, one line per level of
    ``b``, y = ``panels[title][b_level][a_level]`` = (mean, seed spread) over the cells
    with those levels. Parallel lines: no interaction."""
    plt = pyplot()
    fig, axes = plt.subplots(
        1, len(panels), figsize=(3.6 * len(panels) + 0.6, 3.4), squeeze=False, sharey=False
    )
    for ax, (title, lines) in zip(axes[0], panels.items()):
        xs = list(range(len(a[1])))
        for lb in b[1]:
            points = lines.get(lb, {})
            ys = [points.get(la, (float("nan"), None))[0] for la in a[1]]
            err = [points.get(la, (0.0, None))[1] or 0.0 for la in a[1]]
            ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=f"{b[0]}={lb}")
        ax.set_xticks(xs, a[1])
        ax.set_xlabel(a[0])
        ax.set_title(title, fontsize=9)
    axes[0][0].set_ylabel(f"{metric} (mean over seeds; bars: seed sd)")
    axes[0][-1].legend(fontsize=7, loc="best")
    fig.suptitle(f"interaction: {a[0]} x {b[0]}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_gap_closed(
    bars: list[tuple[str, float, float | None, float | None]], title: str, path: Path
) -> None:
    """Horizontal bars: the fraction of the gap to the reference each factor's level
    closes (``(label, value, ci_low, ci_high)``), with its 95 % interval."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 0.55 * len(bars) + 1.5))
    ys = list(range(len(bars)))
    values = [v for _, v, _, _ in bars]
    lo = [v - (low if low is not None else v) for _, v, low, _ in bars]
    hi = [(high if high is not None else v) - v for _, v, _, high in bars]
    colors = ["#3b75af" if v >= 0 else "#c0392b" for v in values]
    ax.barh(ys, values, xerr=[lo, hi], color=colors, capsize=3)
    ax.set_yticks(ys, [label for label, *_ in bars])
    ax.axvline(0, color="#555555", linewidth=0.8)
    ax.set_xlabel("fraction of the gap to the reference closed (95% CI)")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def slug(pair: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", pair)
