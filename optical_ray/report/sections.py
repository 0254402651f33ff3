"""The report's sections drawn from per-query values: is each pair's winner really
better than its runner-up on dev (:func:`best_vs_runner_up`, from the per-query values
the catalog keeps), and the latest ``evaluate --best`` gap tables on held-out data
(:func:`report_section`)."""

from __future__ import annotations

from typing import Any

from optical_ray.catalog import RANKED_STATUSES, metric_values
from optical_ray.errors import DataError
from optical_ray.evaluation.best import load_evaluations
from optical_ray.evaluation.compare import holm, paired_test
from optical_ray.evaluation.perquery import decode_per_query
from optical_ray.tables import markdown_table, number

__all__ = ["best_vs_runner_up", "report_section"]


def best_vs_runner_up(df: Any, metric: str = "map", mode: str = "max") -> list[dict[str, Any]]:
    """Is the winner really better? Per pair of the catalog records ``df``
    (:meth:`~optical_ray.catalog.Catalog.records`), the best and the runner-up trial
    by dev ``metric``, tested against each other on their best dev evaluations'
    per-query values (paired randomisation test; Holm-adjusted over the pairs). Pairs
    with fewer than two trials holding per-query values are left out."""
    if df is None or df.empty or "dev_per_query" not in df:
        return []
    rows = []
    for pair, group in df.groupby("pair", sort=True):
        group = group[group["status"].isin(RANKED_STATUSES) & group["dev_per_query"].notna()]
        values = metric_values(group, metric).dropna()
        if len(values) < 2:
            continue
        order = values.sort_values(ascending=(mode == "min"), kind="stable").index[:2]
        (a, b) = (group.loc[i] for i in order)
        _, qa = decode_per_query(a["dev_per_query"])
        _, qb = decode_per_query(b["dev_per_query"])
        try:
            delta, p = paired_test(qa, qb, metric)
        except DataError:
            continue
        rows.append(
            {
                "pair": str(pair),
                "best_trial": str(a["trial_id"]),
                "best_method": a.get("method"),
                "best": float(values[order[0]]),
                "runner_up_trial": str(b["trial_id"]),
                "runner_up_method": b.get("method"),
                "runner_up": float(values[order[1]]),
                "delta": float(delta),
                "p_value": float(p),
                "queries": len(set(qa) & set(qb)),
            }
        )
    for row, adj in zip(rows, holm([r["p_value"] for r in rows])):
        row["p_holm"] = adj
    return rows


def _runner_up_markdown(rows: list[dict[str, Any]], metric: str) -> str:
    head = ["pair", "best", metric, "runner-up", metric, "Δ (paired)", "p", "p (Holm)", "queries"]
    body = [
        [
            r["pair"],
            f"{r['best_trial']} ({r['best_method']})",
            f"{r['best']:.4f}",
            f"{r['runner_up_trial']} ({r['runner_up_method']})",
            f"{r['runner_up']:.4f}",
            f"{r['delta']:+.4f}",
            number(r["p_value"]),
            number(r["p_holm"]),
            str(r["queries"]),
        ]
        for r in rows
    ]
    return "\n".join(
        [
            "## Is the winner really better? (dev, best vs runner-up)",
            "",
            "The two best trials of each pair, on the per-query values of their best dev "
            "evaluations (kept in the catalog); paired randomisation test, Holm over pairs. "
            "Dev is what the sweep selected on: a small p here says the ranking is not "
            "noise, not how the winner does on test.",
            "",
            markdown_table(head, body),
            "",
        ]
    )


def report_section(
    storage: Any, df: Any = None, metric: str = "map", mode: str = "max"
) -> tuple[str, dict[str, Any]]:
    """The report's sections from the per-query stores: best vs runner-up on dev
    (from the records ``df``) and each pair's latest ``evaluate --best`` gap tables;
    as Markdown and as JSON. Empty when there is nothing to show."""
    parts: list[str] = []
    data: dict[str, Any] = {}
    duel = best_vs_runner_up(df, metric, mode)
    if duel:
        parts.append(_runner_up_markdown(duel, metric))
        data["best_vs_runner_up"] = duel
    evaluations = load_evaluations(storage)
    if evaluations:
        parts += [
            "## The best on held-out data (`optical-ray evaluate --best`)",
            "",
            "Each pair's best trial evaluated on the split shown, next to the zero-shot "
            "teacher and the named baselines, on the same queries; p from a paired "
            "randomisation test over queries, Holm-adjusted within each table.",
            "",
        ]
        data["evaluations"] = []
        for ev in evaluations:
            parts.append(ev.to_markdown())
            data["evaluations"].append(
                {
                    "pair": ev.pair,
                    "split": ev.split,
                    "test_set": ev.test_set,
                    "record": ev.record,
                    "per_query": ev.uri,
                    "reports": [{"baseline": r.baseline, "rows": r.to_rows()} for r in ev.reports],
                }
            )
    return "\n".join(parts), data
