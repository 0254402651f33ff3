"""Comparing systems: gap and gap closed, Holm's correction and the paired randomisation
test on hand-computed examples, and the gap report built from them."""

from __future__ import annotations

import json
import math
import random

import pytest

from optical_ray.evaluation.compare import gap, gap_closed, gap_report, holm, paired_test
from optical_ray.errors import ConfigError, DataError
from optical_ray.evaluation.ranking import EvalResult


def test_gap_and_gap_closed_by_hand():
    assert gap(0.8, 0.6) == pytest.approx(0.2)
    assert gap(None, 0.6) is None and gap(0.8, None) is None
    # reference 0.8, baseline 0.4: the baseline's gap is 0.4
    assert gap_closed(0.6, 0.4, 0.8) == pytest.approx(0.5)
    assert gap_closed(0.8, 0.4, 0.8) == pytest.approx(1.0)
    assert gap_closed(0.3, 0.4, 0.8) == pytest.approx(-0.25)  # worse than the baseline
    assert gap_closed(0.9, 0.8, 0.8) is None  # the baseline already reaches the reference
    assert gap_closed(0.9, 0.85, 0.8) is None  # ... or passes it: no gap to close
    assert gap_closed(None, 0.4, 0.8) is None and gap_closed(0.6, 0.4, None) is None


def test_holm_by_hand():
    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> max(0.06, 0.04)
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    out = holm([0.2, float("nan"), 0.01])  # NaN is not counted: m = 2
    assert out[0] == pytest.approx(0.2) and math.isnan(out[1]) and out[2] == pytest.approx(0.02)
    assert holm([0.6, 0.7]) == [1.0, 1.0]  # capped at 1
    assert holm([]) == []


def test_paired_randomisation_test_by_hand():
    def per_query(values):
        return {f"q{i}": {"map": v} for i, v in enumerate(values)}

    # differences 0.1, 0.3, 0.5: of the 8 sign patterns only +++ and --- reach |sum| 0.9
    mean, p = paired_test(per_query([0.5, 0.7, 0.9]), per_query([0.4, 0.4, 0.4]), "map")
    assert mean == pytest.approx(0.3) and p == pytest.approx(2 / 8)
    # differences 0.3, -0.1, 0.2 (sum 0.4): |sum| >= 0.4 for +-+ (0.4), +++ (0.6) and
    # their mirror images: 4 of 8
    mean, p = paired_test(per_query([0.5, 0.3, 0.6]), per_query([0.2, 0.4, 0.4]), "map")
    assert mean == pytest.approx(0.4 / 3) and p == pytest.approx(4 / 8)


# --------------------------------------------------------------------------- significance


def _per_query(values):
    return {f"q{i}": {"map": float(v)} for i, v in enumerate(values)}


def test_paired_test_identical_systems_give_p_one():
    a = _per_query(random.Random(0).random() for _ in range(30))
    for method in ("randomization", "ttest"):
        assert paired_test(a, a, "map", method=method) == (0.0, 1.0)


def test_paired_test_detects_a_better_system_in_both_methods():
    rng = random.Random(1)
    base = [rng.random() * 0.5 for _ in range(40)]
    better = [b + 0.1 + rng.gauss(0, 0.05) for b in base]
    d1, p1 = paired_test(_per_query(better), _per_query(base), "map", seed=3)
    d2, p2 = paired_test(_per_query(better), _per_query(base), "map", method="ttest")
    assert d1 == pytest.approx(d2) and d1 > 0.05
    assert p1 < 0.01 and p2 < 0.01
    assert paired_test(_per_query(base), _per_query(better), "map", seed=3)[0] < 0
    assert paired_test(_per_query(better), _per_query(base), "map", seed=3) == (d1, p1)
    # a weaker effect, on a sample too big to enumerate: seeds fix the Monte Carlo p
    noisy = [b + rng.gauss(0.01, 0.1) for b in base]
    args = (_per_query(noisy), _per_query(base), "map")
    p_a = paired_test(*args, seed=7, n_resamples=2000)[1]
    assert p_a == paired_test(*args, seed=7, n_resamples=2000)[1]
    assert 0 < p_a <= 1


def test_paired_test_exact_enumeration_and_common_queries():
    a, b = _per_query([1, 1, 1, 1, 1]), _per_query([0, 0, 0, 0, 0])
    # 2^5 sign patterns, only all-plus and all-minus reach |sum| = 5
    assert paired_test(a, b, "map") == (1.0, 2 / 32)
    b["extra"] = {"map": 0.3}  # only queries present in both count
    assert paired_test(a, b, "map")[1] == 2 / 32
    with pytest.raises(ConfigError, match="randomization"):
        paired_test(a, b, "map", method="wilcoxon")
    with pytest.raises(DataError, match="ndcg@10"):
        paired_test(a, b, "ndcg@10")


# --------------------------------------------------------------------------- gap report


def _result(pair, values, metric="map"):
    pq = _per_query(values)
    return EvalResult(
        pair=pair,
        metrics={metric: sum(values) / len(values)},
        per_query=pq,
        num_queries=len(values),
        num_docs=100,
    )


def test_gap_report_numbers_and_formats():
    n = 20
    rng = random.Random(0)
    half = [rng.uniform(-0.05, 0.05) for _ in range(n // 2)]
    noise = half + [-e for e in half]  # mean 0: the means are exactly 0.4 and 0.6
    base_sw = [0.4 + e for e in noise]
    sys_sw = [0.6 + e for e in noise]
    results = {
        "zero-shot": {"en-en": _result("en-en", [0.8] * n), "en-sw": _result("en-sw", base_sw)},
        "ot eps=0.05": {"en-en": _result("en-en", [0.79] * n), "en-sw": _result("en-sw", sys_sw)},
    }
    report = gap_report(results, baseline="zero-shot")
    assert report.reference_pair == "en-en"
    row = next(r for r in report.rows if r.system == "ot eps=0.05" and r.pair == "en-sw")
    assert row.reference == pytest.approx(0.8)
    assert row.value == pytest.approx(0.6)
    assert row.gap == pytest.approx(0.2)
    assert row.delta == pytest.approx(0.2)
    assert row.closed == pytest.approx(0.5)
    assert row.p_value < 0.001 and row.p_holm >= row.p_value and row.n_queries == n
    base_row = next(r for r in report.rows if r.system == "zero-shot" and r.pair == "en-sw")
    assert base_row.gap == pytest.approx(0.4)
    assert base_row.closed is None and base_row.p_value is None
    md = report.to_markdown()
    assert "en-en" in md and "en-sw" in md and "50.0%" in md and "| system |" in md
    text = report.to_text()
    assert "en-sw" in text and "50.0%" in text and "†" in text
    rows = json.loads(json.dumps(report.to_rows()))
    assert {r["pair"] for r in rows} == {"en-en", "en-sw"} and len(rows) == 4
    with pytest.raises(ConfigError, match="baseline"):
        gap_report(results, baseline="nope")
    with pytest.raises(ConfigError, match="reference_pair"):
        gap_report({"a": {"en-sw": _result("en-sw", base_sw)}}, baseline="a")
