"""A study's report (``optical-ray report --study NAME``): per language, the gap to the
reference under each condition, the main effects and two-way interactions of each
factor on each task (mean difference, 95 % bootstrap interval, paired randomisation p,
Holm over the study, seed spread, the share of the gap closed), an interaction plot per
factor pair and a "gap closed" bar chart per language. Everything comes from the
study's stored per-query values (:func:`optical_ray.studies.effects.study_effects`).

Files in ``out``: ``study-<name>.md``, ``study-<name>.json`` and the PNG figures the
Markdown links.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np

from optical_ray.report.plots import plot_gap_closed, plot_interaction, slug
from optical_ray.studies.effects import CellRow, EffectRow, StudyEffects, study_effects
from optical_ray.tables import markdown_table, number, text_table

__all__ = [
    "build_study_report",
    "write_study_report",
    "summary_text",
    "effects_table",
    "cells_table",
]


def _p(p: float | None) -> str:
    return "<0.0001" if p is not None and p < 1e-4 else number(p)


def _interval(low: float | None, high: float | None, spec: str = "{:+.4f}") -> str:
    if low is None or high is None:
        return "-"
    return f"[{spec.format(low)}, {spec.format(high)}]"


def effects_table(rows: list[EffectRow], alpha: float = 0.05) -> tuple[list[str], list[list[str]]]:
    """Head and body of an effects table (one task's rows)."""
    head = [
        "effect",
        "estimate",
        "95% CI",
        "p",
        "p (Holm)",
        "seed sd",
        "gap closed [95% CI]",
        "note",
    ]
    body = []
    for e in rows:
        sig = e.p_holm is not None and e.p_holm < alpha
        notes = []
        if e.within_noise:
            notes.append("within seed noise")
        if e.aliases:
            notes.append("aliased with " + ", ".join(e.aliases))
        closed = (
            "-"
            if e.gap_closed is None
            else f"{e.gap_closed:.1%} {_interval(e.gap_closed_low, e.gap_closed_high, '{:.0%}')}"
        )
        body.append(
            [
                e.name,
                f"{e.estimate:+.4f}" + (" †" if sig else ""),
                _interval(e.ci_low, e.ci_high),
                _p(e.p_value),
                _p(e.p_holm),
                number(e.seed_sd),
                closed,
                "; ".join(notes),
            ]
        )
    return head, body


def cells_table(rows: list[CellRow], factors: list[str]) -> tuple[list[str], list[list[str]]]:
    """Head and body of one task's cell table: levels, mean, seed sd, gap, share closed."""
    head = [*factors, "mean", "seeds", "seed sd", "gap to ref", "zero-shot gap closed"]
    body = [
        [
            *(c.levels[f] for f in factors),
            f"{c.mean:.4f}",
            str(c.seeds),
            number(c.seed_sd),
            number(c.gap, "{:+.4f}"),
            number(c.closed, "{:.1%}"),
        ]
        for c in rows
    ]
    return head, body


def _interaction_panels(
    eff: StudyEffects, a: str, b: str
) -> dict[str, dict[str, dict[str, tuple[float, float | None]]]]:
    """Per pair (its first task): the mean and seed spread over the cells of each level
    of ``b`` (lines) and ``a`` (x)."""
    panels: dict[str, dict[str, dict[str, tuple[float, float | None]]]] = {}
    for pair in eff.doc["pairs"]:
        task = eff.doc["tasks"][pair][0]
        groups: dict[tuple[str, str], list[CellRow]] = {}
        for c in eff.cells:
            if c.pair == pair and c.task == task:
                groups.setdefault((c.levels[b], c.levels[a]), []).append(c)
        panel: dict[str, dict[str, tuple[float, float | None]]] = {}
        for (lb, la), cs in groups.items():
            sds = [c.seed_sd for c in cs if c.seed_sd is not None]
            panel.setdefault(lb, {})[la] = (
                float(np.mean([c.mean for c in cs])),
                float(np.mean(sds)) if sds else None,
            )
        panels[f"{pair}: {task}"] = panel
    return panels


def _figures(eff: StudyEffects, out: Path) -> dict[str, list[tuple[str, str]]]:
    """Write the figures; ``{section: [(file, caption)]}`` (section ``""`` = the study)."""
    figures: dict[str, list[tuple[str, str]]] = {}
    name = slug(eff.name)
    factors = [(f["name"], f["levels"]) for f in eff.doc["factors"]]
    for a, b in itertools.combinations(factors, 2):
        panels = _interaction_panels(eff, a[0], b[0])
        if not any(panels.values()):
            continue
        file = f"study-{name}-interaction-{slug(a[0])}-{slug(b[0])}.png"
        plot_interaction(panels, (a[0], list(a[1])), (b[0], list(b[1])), eff.metric, out / file)
        figures.setdefault("", []).append((file, f"interaction {a[0]} x {b[0]}"))
    for pair in eff.doc["pairs"]:
        for task, ref in eff.doc["reference"].get(pair, {}).items():
            bars = [
                (e.name, e.gap_closed, e.gap_closed_low, e.gap_closed_high)
                for e in eff.effects
                if e.pair == pair and e.task == task and e.kind == "main"
                if e.gap_closed is not None
            ]
            if not bars:
                continue
            file = f"study-{name}-gap-{slug(pair)}-{slug(task)}.png"
            plot_gap_closed(bars, f"{pair}: {task}, gap to {ref} ({eff.metric})", out / file)
            figures.setdefault(pair, []).append((file, f"{pair}: gap to {ref} closed"))
    return figures


def _markdown(eff: StudyEffects, figures: dict[str, list[tuple[str, str]]], where: str) -> str:
    doc = eff.doc
    factors = [f["name"] for f in doc["factors"]]
    levels = "; ".join(f"{f['name']}: {', '.join(f['levels'])}" for f in doc["factors"])
    lines = [
        f"# Study {eff.name}",
        "",
        f"{len(doc['cells'])} cells x {len(doc['seeds'])} seed(s) x {len(doc['pairs'])} "
        f"pair(s); {eff.runs} finished run(s) in `{where}`. Factors (first level = base): "
        f"{levels}. Metric: {eff.metric}, on the test split, evaluated once per run at its "
        "end (never used to select).",
        "",
        "How to read: an effect is the mean per-query difference it names, over the "
        "queries and pooled over seeds; its 95% interval is a bootstrap over queries, p a "
        "paired randomisation test, Holm-adjusted over every effect of the study († = "
        f"p (Holm) < {eff.alpha}). Seed sd is the effect's spread when computed on one "
        "seed at a time: an effect within it is smaller than retraining noise. An "
        "interaction `A x B: a1/a0 x b1/b0` is how much A's effect changes when B moves "
        "from b0 to b1. Gap closed: the effect over the gap to the reference left at the "
        "factor's base level.",
        "",
    ]
    if doc.get("aliases"):
        lines += [
            "Fractional design; aliases: "
            + "; ".join(f"{k} = {', '.join(v)}" for k, v in doc["aliases"].items()),
            "",
        ]
    lines += [f"![{alt}]({file})" for file, alt in figures.get("", [])] + [""]
    for pair in doc["pairs"]:
        lines += [f"## {pair}", ""]
        for task in doc["tasks"][pair]:
            base = next((b for b in eff.baselines if b.pair == pair and b.task == task), None)
            lines.append(f"### {task}")
            lines.append("")
            if base is not None:
                ref = (
                    f"; reference {base.reference_pair} zero-shot {number(base.reference)}"
                    if base.reference_pair
                    else ""
                )
                lines += [f"Teacher zero-shot {number(base.zero_shot)}{ref}.", ""]
            cells = [c for c in eff.cells if c.pair == pair and c.task == task]
            if cells:
                lines += [markdown_table(*cells_table(cells, factors)), ""]
            rows = [e for e in eff.effects if e.pair == pair and e.task == task]
            if rows:
                lines += [markdown_table(*effects_table(rows, eff.alpha)), ""]
        lines += [f"![{alt}]({file})" for file, alt in figures.get(pair, [])] + [""]
    if eff.notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in eff.notes] + [""]
    return "\n".join(lines)


def write_study_report(eff: StudyEffects, out: str | Path, where: str = "") -> Path:
    """Write ``eff`` (:func:`~optical_ray.studies.effects.study_effects`) into ``out``
    (Markdown, JSON, figures); returns the Markdown file."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    figures = _figures(eff, out)
    stem = f"study-{slug(eff.name)}"
    (out / f"{stem}.json").write_text(
        json.dumps(eff.to_dict(), indent=1, default=str) + "\n", encoding="utf-8"
    )
    path = out / f"{stem}.md"
    path.write_text(_markdown(eff, figures, where), encoding="utf-8")
    return path


def build_study_report(
    storage: Any, name: str, out: str | Path, *, metric: str = "map", seed: int = 0
) -> Path:
    """Compute study ``name``'s effects from ``storage`` (a URI or a Storage) and write
    its report into ``out``; returns the Markdown file."""
    from optical_ray.storage import as_storage

    store = as_storage(storage)
    return write_study_report(study_effects(store, name, metric, seed=seed), out, store.uri)


def summary_text(eff: StudyEffects) -> str:
    """The main effects of each pair's first task as a plain-text table (the CLI)."""
    lines = []
    for pair in eff.doc["pairs"]:
        task = eff.doc["tasks"][pair][0]
        rows = [e for e in eff.effects if e.pair == pair and e.task == task]
        head, body = effects_table(rows, eff.alpha)
        lines += [f"{pair} {task} ({eff.metric}):", text_table(head, body), ""]
    return "\n".join(lines)
