"""Tables as text: aligned plain text for terminals, Markdown and HTML for reports.

One formatter for every table optical-ray prints: ``optical-ray best`` (catalog
records), ``optical-ray evaluate`` (metrics per pair), the gap report of
:mod:`optical_ray.evaluation.compare` and the catalog report of :mod:`optical_ray.report.gap`.
Cells are strings by the time they reach a table; :func:`number` and :func:`cell`
turn values into them.
"""

from __future__ import annotations

import html
import math
from typing import Any, Mapping, Sequence

__all__ = ["number", "cell", "text_table", "markdown_table", "html_table", "records_table"]


def number(value: float | None, spec: str = "{:.4f}", missing: str = "-") -> str:
    """``value`` formatted with ``spec``; ``missing`` for None and NaN.

    >>> number(0.31234), number(None), number(0.5, "{:.0%}"), number(None, missing="n/a")
    ('0.3123', '-', '50%', 'n/a')
    """
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return missing
    return spec.format(value)


def cell(value: Any) -> str:
    """Any value as a table cell: floats to 4 significant digits, lists comma-joined,
    None as ``-``."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value)


def text_table(
    head: Sequence[str], body: Sequence[Sequence[str]], right: Sequence[bool] | None = None
) -> str:
    """An aligned plain-text table: the header, a rule of dashes, one line per row.

    ``right[i]`` right-aligns column ``i`` (numbers read best that way); by default every
    column is left-aligned. Trailing spaces are stripped from each line.
    """
    right = list(right) if right is not None else [False] * len(head)
    if len(right) != len(head) or any(len(row) != len(head) for row in body):
        raise ValueError(
            f"text_table: {len(head)} columns, but rows of "
            f"{sorted({len(row) for row in body})} cells and {len(right)} "
            "alignments"
        )
    widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head))]

    def line(row: Sequence[str]) -> str:
        return "  ".join(
            c.rjust(w) if r else c.ljust(w) for c, w, r in zip(row, widths, right)
        ).rstrip()

    return "\n".join([line(head), line(["-" * w for w in widths])] + [line(r) for r in body])


def records_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """``rows`` (dicts) as an aligned table of ``columns``; cells by :func:`cell`,
    columns holding only numbers (or nothing) right-aligned."""
    body = [[cell(r.get(c)) for c in columns] for r in rows]
    numeric = [
        all(isinstance(r.get(c), (int, float)) or r.get(c) is None for r in rows) for c in columns
    ]
    return text_table(list(columns), body, numeric)


def markdown_table(head: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    """A GitHub-flavoured Markdown table (cells as given)."""
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in body])


def html_table(head: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    """An HTML ``<table>`` (cells escaped)."""
    e = html.escape
    return (
        "<table><tr>"
        + "".join(f"<th>{e(h)}</th>" for h in head)
        + "</tr>"
        + "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in body)
        + "</table>"
    )
