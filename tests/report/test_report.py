"""Gap report from a synthetic catalog: numbers match the records, plots are real PNGs."""

from __future__ import annotations

import json
import math
import random

import pytest

from optical_ray.catalog import Catalog, TrialRecord
from optical_ray.config import from_dict, to_flat
from optical_ray.errors import ConfigError, StorageError
from optical_ray.report.gap import build_report, parameter_importances, summarize

REFERENCE = 0.62  # en-en MAP of the teacher
# pair -> (zero-shot MAP, best MAP reached by the sweep)
PAIRS = {"en-de": (0.48, 0.57), "en-sw": (0.21, 0.43), "en-yo": (0.12, 0.33)}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _flat(pair: str, **overrides) -> dict:
    flat = to_flat(from_dict({"pair": pair}))
    flat.update(overrides)
    return flat


def _metrics(pair: str, value: float) -> dict:
    return {
        "map": value,
        f"{pair}/map": value,
        f"{pair}/ndcg@10": value + 0.05,
        "en-en/map": REFERENCE,
    }


def synthetic_catalog(catalog: Catalog, *, zero_shot_trials: bool = True, trials: int = 12) -> None:
    """Per pair: one zero-shot trial (distill.method none) or, without it, the teacher's
    zero-shot metrics recorded as baseline_metrics; a sweep over epsilon/weight whose
    MAP peaks at epsilon = 0.03 and reaches exactly the best value of PAIRS."""
    rng = random.Random(0)
    for pair, (zero, best) in PAIRS.items():
        if zero_shot_trials:
            catalog.append(
                TrialRecord(
                    "sweep",
                    pair,
                    f"{pair}-zs",
                    config=_flat(pair, **{"distill.method": "none"}),
                    best_metrics=_metrics(pair, zero),
                )
            )
        for i in range(trials):
            eps = 0.03 if i == 0 else 10 ** rng.uniform(-3, 0)
            weight = 0.5 if i == 0 else rng.uniform(0.1, 1.0)
            value = best - 0.1 * abs(math.log10(eps / 0.03)) - (0 if i == 0 else 0.01)
            catalog.append(
                TrialRecord(
                    "sweep",
                    pair,
                    f"{pair}-{i}",
                    config=_flat(pair, **{"distill.epsilon": eps, "distill.weight": weight}),
                    best_metrics=_metrics(pair, value),
                    baseline_metrics=None if zero_shot_trials else _metrics(pair, zero),
                    checkpoint_uri=f"s3://b/{pair}/{i}",
                )
            )
        catalog.append(
            TrialRecord(
                "sweep",
                pair,
                f"{pair}-dead",
                status="failed",
                config=_flat(pair),
                error="worker lost",
            )
        )


@pytest.fixture
def catalog(tmp_path) -> Catalog:
    return Catalog(tmp_path / "store", spool_dir=tmp_path / "spool", auto_compact=None)


def _check_pngs(out, names) -> None:
    import matplotlib.image

    for name in names:
        data = (out / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 2000, name
        image = matplotlib.image.imread(out / name)
        assert image.shape[0] > 100 and image.shape[1] > 100


@pytest.mark.slow  # ~5 s: matplotlib, optuna and ten PNGs
def test_report_from_synthetic_catalog(catalog, tmp_path) -> None:
    synthetic_catalog(catalog)
    out = tmp_path / "report"
    md_path = build_report(catalog.storage, out)
    assert md_path == out / "report.md"
    md = md_path.read_text()
    pngs = ["overview.png"] + [
        f"{kind}_{p}.png" for p in PAIRS for kind in ("params", "importance", "pareto")
    ]
    _check_pngs(out, pngs)
    for name in pngs:
        assert f"]({name})" in md  # the markdown links every plot
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == len(pngs)
    table = {
        line.split(" | ")[0].strip("| "): line
        for line in md.splitlines()
        if line.startswith("| en-")
    }
    assert sorted(table) == sorted(PAIRS)
    for pair, (zero, best) in PAIRS.items():
        cells = [c.strip() for c in table[pair].strip("|").split("|")]
        assert cells[1] == "13"  # ranked trials: the zero-shot + 12, not the failed one
        assert cells[2] == f"{zero:.4f}" and cells[3] == f"{best:.4f}"
        assert cells[4] == f"{best - zero:.4f}"
        assert cells[5] == f"{REFERENCE:.4f} (en-en)"
        assert cells[6] == f"{REFERENCE - zero:.4f}" and cells[7] == f"{REFERENCE - best:.4f}"
        assert cells[8] == f"{100 * (best - zero) / (REFERENCE - zero):.0f}%"
        assert "epsilon=0.0300" in cells[9] and "method=ot" in cells[9]
        assert f"## {pair}" in md and f"trial {pair}-0" in md
    data = json.loads((out / "report.json").read_text())
    sw = next(p for p in data["pairs"] if p["pair"] == "en-sw")
    assert sw["gap_closed"] == pytest.approx((0.43 - 0.21) / (REFERENCE - 0.21))
    assert sw["checkpoint_uri"] == "s3://b/en-sw/0"
    # epsilon drives MAP in this world; the importances must say so (PED-ANOVA needs a
    # dozen trials: it compares the top 10% against the rest)
    assert max(data["importances"]["en-sw"], key=data["importances"]["en-sw"].get) == (
        "distill.epsilon"
    )


def test_baseline_from_recorded_baseline_metrics(catalog) -> None:
    synthetic_catalog(catalog, zero_shot_trials=False, trials=4)
    rows = {r.pair: r for r in summarize(catalog.records())}
    for pair, (zero, best) in PAIRS.items():
        assert rows[pair].baseline == pytest.approx(zero)
        assert rows[pair].baseline_source.startswith("baseline_metrics of trial")
        assert rows[pair].best == pytest.approx(best) and rows[pair].trials == 4


def test_baseline_can_be_another_method(catalog) -> None:
    synthetic_catalog(catalog, trials=3)
    catalog.append(
        TrialRecord(
            "sweep",
            "en-sw",
            "mse",
            best_metrics=_metrics("en-sw", 0.3),
            config=_flat("en-sw", **{"distill.method": "mse_sentence"}),
        )
    )
    row = {r.pair: r for r in summarize(catalog.records(), baseline="mse_sentence")}["en-sw"]
    assert row.baseline == pytest.approx(0.3) and row.best == pytest.approx(0.43)
    assert row.gap_closed == pytest.approx(0.13 / (REFERENCE - 0.3))
    with pytest.raises(ConfigError, match="baseline: got 'teacher'"):
        summarize(catalog.records(), baseline="teacher")


def test_importances_from_a_rebuilt_study(catalog) -> None:
    synthetic_catalog(catalog, trials=12)
    df = catalog.records(pair="en-yo")
    imp = parameter_importances(df[df["method"] != "none"])
    assert set(imp) == {"distill.epsilon", "distill.weight"}
    assert imp["distill.epsilon"] > imp["distill.weight"]
    assert parameter_importances(df.head(2)) == {}  # too few trials to say anything


def test_report_errors(tmp_path, catalog) -> None:
    with pytest.raises(StorageError, match="no trial records"):
        build_report(tmp_path / "nothing", tmp_path / "out")
    synthetic_catalog(catalog, trials=2)
    with pytest.raises(StorageError, match="'recall@5' was never recorded.*map, ndcg@10"):
        build_report(catalog.storage, tmp_path / "out", metric="recall@5")
    with pytest.raises(ConfigError, match="mode: got 'up'"):
        build_report(catalog.storage, tmp_path / "out", mode="up")


@pytest.mark.slow
def test_report_from_s3(s3_storage_uri, tmp_path) -> None:
    catalog = Catalog(s3_storage_uri, spool_dir=tmp_path / "spool")
    synthetic_catalog(catalog, trials=3)
    md = build_report(s3_storage_uri, tmp_path / "out").read_text()
    assert s3_storage_uri in md and all(f"| {p} |" in md for p in PAIRS)
    _check_pngs(tmp_path / "out", ["overview.png", "params_en-sw.png"])


def test_an_unreadable_part_hides_no_pair(catalog, caplog) -> None:
    synthetic_catalog(catalog, trials=2)
    torn = catalog.storage.path + "/catalog/sweep/en-sw/part-torn.parquet"
    with open(torn, "wb") as f:
        f.write(b"PAR1 not really")
    caplog.set_level("WARNING", logger="optical_ray.catalog")
    rows = {r.pair: r for r in summarize(Catalog(catalog.storage).records())}
    assert sorted(rows) == sorted(PAIRS) and rows["en-sw"].best == pytest.approx(0.43)
    assert any(torn in r.getMessage() for r in caplog.records)


def test_report_flags_trials_whose_sinkhorn_plans_did_not_converge(catalog, tmp_path) -> None:
    synthetic_catalog(catalog, trials=3)
    catalog.append(
        TrialRecord(
            "sweep",
            "en-sw",
            "en-sw-starved",
            config=_flat("en-sw", **{"distill.epsilon": 1e-3}),
            best_metrics=_metrics("en-sw", 0.3),
            last_metrics={
                **_metrics("en-sw", 0.3),
                "sinkhorn_unconverged": 0.4,
                "sinkhorn_max_error": 0.25,
            },
        )
    )
    catalog.append(
        TrialRecord(
            "sweep",
            "en-yo",
            "en-yo-fine",
            config=_flat("en-yo"),
            best_metrics=_metrics("en-yo", 0.3),
            last_metrics={"sinkhorn_unconverged": 0.0, "sinkhorn_max_error": 0.0},
        )
    )
    path = build_report(catalog.storage, tmp_path / "report")
    text = path.read_text()
    assert (
        "Sinkhorn did not converge in 1 trial(s): en-sw-starved (40% of steps, worst "
        "marginal error 0.25)"
    ) in text
    assert text.count("Sinkhorn did not converge") == 1
    data = json.loads((tmp_path / "report" / "report.json").read_text())
    assert data["unconverged"] == {
        "en-sw": [{"trial_id": "en-sw-starved", "fraction": 0.4, "max_error": 0.25}]
    }
    assert "Sinkhorn did not converge" in (tmp_path / "report" / "report.html").read_text()


@pytest.mark.slow  # ~5 s: matplotlib draws every plot
def test_a_planted_infinite_metric_is_neither_best_nor_plotted(catalog, tmp_path) -> None:
    """A record carrying +inf (written past the validation) was ranked first and crashed
    the plots ("Axis limits cannot be NaN or Inf"): it is now a value not recorded."""
    from tests.catalog.test_catalog import plant

    synthetic_catalog(catalog, trials=3)
    inf = float("inf")
    planted = TrialRecord(
        "sweep",
        "en-sw",
        "en-sw-inf",
        config=_flat("en-sw", **{"distill.epsilon": 0.05}),
        best_metrics=_metrics("en-sw", 0.3),
        baseline_metrics=_metrics("en-sw", 0.2),
    )
    plant(
        catalog,
        planted,
        best_value=inf,
        best_metrics=json.dumps({**_metrics("en-sw", inf), "en-en/map": inf}),
        epsilon=inf,
    )
    out = tmp_path / "report"
    build_report(catalog.storage, out)
    sw = next(
        p for p in json.loads((out / "report.json").read_text())["pairs"] if p["pair"] == "en-sw"
    )
    assert sw["best"] == pytest.approx(0.43) and sw["best_trial"] == "en-sw-0"
    _check_pngs(out, ["overview.png", "params_en-sw.png", "pareto_en-sw.png"])
