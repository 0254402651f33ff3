"""Per-query dev values: the compact encoding, what a trial sends (its best
evaluation's values, matched by value), and the report's paired test of the best trial
against the runner-up."""

from __future__ import annotations

import json

import numpy as np
import pytest

from optical_ray.catalog import Catalog, TrialRecord
from optical_ray.config import from_flat
from optical_ray.errors import DataError
from optical_ray.report.sections import best_vs_runner_up
from optical_ray.evaluation.perquery import decode_per_query, encode_per_query


def test_encoding_round_trips_compactly():
    per_query = {f"q{i}": {"map": i / 7, "ndcg@10": 1 - i / 7} for i in range(50)}
    per_query["q3"] = {"map": 0.5}  # a metric a query lacks stays missing
    text = encode_per_query("swa-en", per_query)
    pair, back = decode_per_query(text)
    assert pair == "swa-en" and set(back) == set(per_query)
    assert back["q3"] == {"map": 0.5}
    for q, values in per_query.items():
        for m, v in values.items():
            assert back[q][m] == pytest.approx(v, abs=1e-6)
    assert len(text) < len(json.dumps(per_query))
    assert decode_per_query(None) == ("", {})
    with pytest.raises(DataError, match="dev_per_query"):
        decode_per_query('{"qids": ["a"], "metrics": {"map": [1, 2]}}')


def test_a_trial_sends_its_best_evaluation_matched_by_value():
    from optical_ray.sweeps.protocol import PER_QUERY_KEY, UNITS_KEY
    from optical_ray.distributed.trial import TuneContext
    from optical_ray.evaluation.perquery import decode_units

    ctx = TuneContext(from_flat({"pair": "swa-en"}))
    start = {"q1": {"map": 0.9}}
    later = {"q1": {"map": 0.1}}
    # step 0 (the starting model) is evaluated but not reported; step 40 is worse
    ctx.dev_per_query["evals"] = [
        ({"map": 0.9}, {"swa-en": start}),
        ({"map": 0.1}, {"swa-en": later}),
    ]
    out: dict = {}
    ctx._attach_per_query({"map": 0.1}, out)
    assert decode_per_query(out[PER_QUERY_KEY])[1] == later
    # every evaluation's report carries its objective's per-query values (promotion)
    assert decode_units(out[UNITS_KEY]).values.tolist() == [0.1]
    # keep_best: the last report carries the starting model's evaluation
    out = {}
    ctx._attach_per_query({"map": 0.9}, out)
    assert decode_per_query(out[PER_QUERY_KEY])[1] == start
    out = {}
    ctx._attach_per_query({"map": 0.9}, out)  # not better than what was sent: nothing
    assert PER_QUERY_KEY not in out and decode_units(out[UNITS_KEY]).objective == 0.9


def test_a_trial_judged_on_several_tasks_sends_them_all():
    """With ``sweep.objective`` the catalog's per-query values hold every task of the
    objective, and the per-evaluation units weigh each task by its weight over its
    number of queries (their weighted sum is the objective)."""
    from optical_ray.distributed.trial import TuneContext
    from optical_ray.evaluation.perquery import decode_tasks, decode_units
    from optical_ray.sweeps.protocol import PER_QUERY_KEY, UNITS_KEY

    cfg = from_flat(
        {
            "pair": "swa-en",
            "eval.pairs": ["swa-en", "en-swa", "en-en"],
            "sweep.objective": "mean(3*swa-en/map, en-swa/map)",
            "sweep.metric": "objective",
        }
    )
    ctx = TuneContext(cfg)
    evaluation = {
        "swa-en": {"q1": {"map": 1.0}, "q2": {"map": 0.0}},
        "en-swa": {"r1": {"map": 0.2}},
        "en-en": {"e1": {"map": 0.7}},  # evaluated, but not part of the objective
    }
    value = 0.75 * 0.5 + 0.25 * 0.2
    ctx.dev_per_query["evals"] = [({"objective": value}, evaluation)]
    out: dict = {}
    ctx._attach_per_query({"objective": value}, out)
    assert set(decode_tasks(out[PER_QUERY_KEY])) == {"swa-en", "en-swa"}
    assert decode_tasks(out[PER_QUERY_KEY])["en-swa"] == {"r1": {"map": 0.2}}
    units = decode_units(out[UNITS_KEY])
    assert units.coef.tolist() == [0.375, 0.375, 0.25] and units.objective == pytest.approx(value)


def _records(storage, rng, deltas):
    catalog = Catalog(storage, spool_dir=storage / "spool")
    for pair, delta in deltas.items():
        base = rng.uniform(0.2, 0.6, 200)
        for tid, shift, method in (
            ("a", delta, "ot"),
            ("b", 0.0, "mse_sentence"),
            ("c", -0.2, "ot"),
        ):
            values = np.clip(base + shift + rng.normal(0, 0.01, 200), 0, 1)
            per_query = {f"q{i}": {"map": float(v)} for i, v in enumerate(values)}
            catalog.append(
                TrialRecord(
                    experiment=f"s-{pair}",
                    pair=pair,
                    trial_id=tid,
                    config={"distill.method": method},
                    best_metrics={"map": float(values.mean())},
                    dev_per_query=encode_per_query(pair, per_query),
                )
            )
    catalog.append(  # an old record without per-query values never counts
        TrialRecord(experiment="old", pair="hau-en", trial_id="z", best_metrics={"map": 0.99})
    )


def test_best_is_tested_against_the_runner_up(tmp_path):
    from optical_ray.report.gap import build_report

    storage = tmp_path / "store"
    _records(storage, np.random.default_rng(0), {"swa-en": 0.05, "hau-en": 0.0})
    rows = {r["pair"]: r for r in best_vs_runner_up(Catalog(storage).records(), "map")}
    assert set(rows) == {"swa-en", "hau-en"}
    swa = rows["swa-en"]
    assert (swa["best_trial"], swa["runner_up_trial"]) == ("a", "b")
    assert swa["best_method"] == "ot" and swa["runner_up_method"] == "mse_sentence"
    assert swa["delta"] == pytest.approx(0.05, abs=0.01)
    assert swa["p_value"] < 0.01 and swa["p_holm"] >= swa["p_value"] and swa["queries"] == 200
    assert rows["hau-en"]["p_value"] > 0.01  # the same system up to noise
    path = build_report(storage, tmp_path / "report")
    md = path.read_text()
    assert "Is the winner really better?" in md and "a (ot)" in md
    doc = json.loads((tmp_path / "report" / "report.json").read_text())
    assert {r["pair"] for r in doc["best_vs_runner_up"]} == {"swa-en", "hau-en"}
