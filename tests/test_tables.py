"""The one table formatter: alignment, cell formatting, Markdown and HTML."""

from __future__ import annotations

import pytest

from optical_ray.tables import cell, html_table, markdown_table, number, records_table, text_table


def test_text_table_aligns_columns_and_strips_trailing_spaces():
    text = text_table(["a", "bb"], [["x", "1"], ["yyy", "22"]], right=[False, True])
    assert text == "a    bb\n---  --\nx     1\nyyy  22"
    assert text_table(["name", "v"], [["a", "1"]]) == "name  v\n----  -\na     1"
    assert text_table(["h"], []) == "h\n-"
    with pytest.raises(ValueError, match="2 columns"):
        text_table(["a", "b"], [["only one"]])


def test_numbers_and_cells():
    assert number(0.31234) == "0.3123" and number(None) == "-"
    assert number(float("nan"), missing="n/a") == "n/a"
    assert number(0.5, "{:.0%}") == "50%" and number(-0.25, "{:+.1%}") == "-25.0%"
    assert [cell(v) for v in (None, 0.000123456, [-1, -2], 3, "ot")] == [
        "-",
        "0.0001235",
        "-1,-2",
        "3",
        "ot",
    ]


def test_records_table_right_aligns_numeric_columns():
    rows = [
        {"pair": "en-sw", "map": 0.31234, "layers": [-1, -2], "ckpt": None},
        {"pair": "en-x", "map": 0.5, "layers": [-1], "ckpt": "s3://b/c"},
    ]
    lines = records_table(rows, ["pair", "map", "layers", "ckpt"]).splitlines()
    assert lines == [
        "pair      map  layers  ckpt",  # the header aligns as its column
        "-----  ------  ------  --------",
        "en-sw  0.3123  -1,-2   -",
        "en-x      0.5  -1      s3://b/c",
    ]


def test_markdown_and_html_tables():
    assert markdown_table(["a", "b"], [["1", "2"]]) == "| a | b |\n|---|---|\n| 1 | 2 |"
    html = html_table(["x<y"], [["a&b"]])
    assert html == "<table><tr><th>x&lt;y</th></tr><tr><td>a&amp;b</td></tr></table>"
