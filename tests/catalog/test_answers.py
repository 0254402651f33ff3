"""A pair's answer after its finalists, and one config across pairs, from hand-made
catalog records (no Ray): the answer is a finalist only when it beats the base
significantly after Holm, else the base, and says so; ``best`` prints the evidence."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from optical_ray.catalog import Catalog, TrialRecord, pair_answer, robust_config
from optical_ray.config import from_flat, to_flat
from optical_ray.errors import StorageError
from optical_ray.evaluation.perquery import encode_per_query

OBJECTIVE = "mean(swa-en/map, en-swa/map)"
PAIR = "swa-en"


def _config(pair: str = PAIR, seed: int = 0, **over) -> dict:
    flat = {
        "pair": pair,
        "eval.pairs": [pair, "en-swa"],
        "sweep.objective": OBJECTIVE,
        "sweep.metric": "objective",
        "train.seed": seed,
        "distill.lr": 5e-5,
        **over,
    }
    return to_flat(from_flat(flat))


def _per_query(base: np.ndarray, shift: float, rng: np.random.Generator) -> dict:
    values = np.clip(base + shift + rng.normal(0, 0.08, base.shape), 0, 1)
    half = len(values) // 2
    return {
        PAIR: {f"q{i}": {"map": float(v)} for i, v in enumerate(values[:half])},
        "en-swa": {f"r{i}": {"map": float(v)} for i, v in enumerate(values[half:])},
    }


def _record(experiment, trial, config, value, origin=None, per_query=None, pair=PAIR):
    text = None
    if per_query is not None:
        text = encode_per_query(
            pair, per_query[pair], {k: v for k, v in per_query.items() if k != pair}
        )
    return TrialRecord(
        experiment=experiment,
        pair=pair,
        trial_id=trial,
        status="finished",
        config=config,
        best_metrics={"objective": value},
        metric="objective",
        origin=origin,
        dev_per_query=text,
        checkpoint_uri=f"/ckpt/{experiment}/{trial}",
    )


def _sweep(storage, shifts: dict[str, float], trials: int = 4) -> Catalog:
    """A search of ``trials`` trials and its finalists: the base and the configs in
    ``shifts`` (trial id -> per-query shift over the base), 2 seeds each."""
    catalog = Catalog(storage, spool_dir=storage / "spool")
    rng = np.random.default_rng(0)
    base = rng.uniform(0.1, 0.9, 400)
    for i in range(trials):
        lr = 1e-4 * (i + 1)
        catalog.append(_record("s-swa-en", f"t{i}", _config(**{"distill.lr": lr}), 0.5 + i / 100))
    for seed in (1, 2):
        pq = _per_query(base, 0.0, rng)
        value = float(np.mean([np.mean([m["map"] for m in t.values()]) for t in pq.values()]))
        catalog.append(
            _record("s-swa-en-final", f"b{seed}", _config(seed=seed), value, "finalist:base", pq)
        )
        for trial, shift in shifts.items():
            pq = _per_query(base, shift, rng)
            value = float(np.mean([np.mean([m["map"] for m in t.values()]) for t in pq.values()]))
            lr = 1e-4 * (int(trial[1:]) + 1)
            catalog.append(
                _record(
                    "s-swa-en-final",
                    f"{trial}-{seed}",
                    _config(seed=seed, **{"distill.lr": lr}),
                    value,
                    f"finalist:{trial}",
                    pq,
                )
            )
    return catalog


def test_a_finalist_that_beats_the_base_is_the_answer_with_its_evidence(tmp_path) -> None:
    _sweep(tmp_path / "store", {"t3": 0.04, "t2": 0.001})
    answer = pair_answer(PAIR, str(tmp_path / "store"))
    assert not answer.is_base and answer.chosen.trial_id == "t3"
    assert answer.chosen.seeds == [1, 2] and len(answer.chosen.seed_values) == 2
    assert answer.chosen.delta == pytest.approx(0.04, abs=0.005)
    assert answer.chosen.p_holm < 0.01 and answer.candidates[1].p_holm > 0.05
    assert answer.trials == 4 and answer.finalist_runs == 6
    assert answer.objective == OBJECTIVE and answer.experiment == "s-swa-en"
    assert answer.statement.startswith("trial t3 beats the base by +0.04")
    d = answer.to_dict()
    assert d["answer"] == "t3" and d["advantage"] == pytest.approx(answer.chosen.delta)
    assert d["seed_spread"] == pytest.approx(answer.chosen.seed_spread)
    assert d["hyperparameters"]["distill.lr"] == pytest.approx(4e-4)
    assert d["checkpoint_uri"].startswith("/ckpt/s-swa-en-final/t3-")
    # evaluate --best evaluates the answer's best run (its checkpoint, its config)
    from optical_ray.catalog.answers import answer_record

    record = answer_record(answer, Catalog(tmp_path / "store", spool_dir=tmp_path / "spool"))
    assert record.checkpoint_uri == answer.chosen.checkpoint_uri
    assert record.origin == "finalist:t3" and record.value == max(answer.chosen.seed_values)


def test_without_a_significant_finalist_the_answer_is_the_base_and_says_so(tmp_path) -> None:
    _sweep(tmp_path / "store", {"t3": 0.002, "t1": -0.001})
    answer = pair_answer(PAIR, str(tmp_path / "store"), experiment="s-swa-en")
    assert answer.is_base and answer.chosen is answer.base
    best = answer.best_candidate
    assert best.trial_id == "t3"
    assert answer.statement == (
        f"no config significantly better than the base (best candidate {best.delta:+.4f}, "
        f"p = {best.p_holm:.4f}".rstrip("0").rstrip(".")
        + ")"
    )
    assert answer.to_dict()["advantage"] is None and answer.to_dict()["answer"] == "base"


def test_best_prints_the_answer_and_falls_back_for_a_sweep_without_finalists(
    tmp_path, capsys
) -> None:
    from optical_ray.cli.parser import main

    store = tmp_path / "store"
    catalog = _sweep(store, {"t3": 0.04})
    args = ["best", "--storage", str(store), "--pair", PAIR]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "answer for swa-en: trial t3 (a finalist)" in text
    assert "seed spread" in text and "behind it: 4 search trials and 4 finalist runs" in text
    assert main([*args, "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["answer"] == "t3"
    assert main([*args, "--format", "yaml"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# answer for swa-en: trial t3 beats the base")
    assert from_flat({}) != from_flat(to_flat(from_flat(yaml.safe_load(out))))
    assert yaml.safe_load(out)["pair"] == PAIR
    # a pair whose sweep ran no finalists: its best trial, and a note saying why
    catalog.append(_record("plain-hau-en", "t0", _config("hau-en"), 0.3, pair="hau-en"))
    assert main(["best", "--storage", str(store), "--pair", "hau-en"]) == 0
    out = capsys.readouterr().out
    assert "plain-hau-en" in out and "no comparison with the base" in out
    # --metric ranks every record as before (finalist runs are ordinary records)
    assert main([*args, "--metric", "objective", "--top", "2", "--format", "json"]) == 0
    ranked = json.loads(capsys.readouterr().out)
    assert [r["origin"] for r in ranked] == ["finalist:t3", "finalist:t3"]


def test_an_answer_needs_a_finished_base_run(tmp_path) -> None:
    catalog = Catalog(tmp_path / "store", spool_dir=tmp_path / "spool")
    catalog.append(_record("s-swa-en", "t0", _config(), 0.5))
    catalog.append(_record("s-swa-en-final", "f", _config(seed=1), 0.5, "finalist:t0"))
    with pytest.raises(StorageError, match="no finished run of the base config"):
        pair_answer(PAIR, str(tmp_path / "store"))


# --------------------------------------------------------------------------- across pairs


def _across(storage, values: dict[str, dict[str, float]]) -> Catalog:
    """``values[pair][config name]``: one finished record per pair and config (config
    names a learning rate, the same across pairs)."""
    catalog = Catalog(storage, spool_dir=storage / "spool")
    lrs = {"X": 1e-4, "Y": 2e-4, "Z": 3e-4, "W": 4e-4, "V": 5e-4}
    for pair, per in values.items():
        for name, v in per.items():
            cfg = to_flat(from_flat({"pair": pair, "eval.pairs": [pair], "distill.lr": lrs[name]}))
            catalog.append(
                TrialRecord(
                    experiment=f"e-{pair}",
                    pair=pair,
                    trial_id=f"{pair}-{name}",
                    config=cfg,
                    best_metrics={"map": v},
                )
            )
    return catalog


def test_one_config_across_pairs_by_worst_shortfall_or_mean_rank(tmp_path, capsys) -> None:
    store = tmp_path / "store"
    _across(
        store,
        {
            "swa-en": {"X": 0.50, "Y": 0.60, "Z": 0.59},
            "hau-en": {"X": 0.40, "Y": 0.30, "Z": 0.39, "W": 0.395},
            "yor-en": {"V": 0.2},
        },
    )
    worst = robust_config(["swa-en", "hau-en"], str(store))
    assert worst.flat_config["distill.lr"] == pytest.approx(3e-4)  # Z: 0.01 short on each
    assert worst.worst_shortfall == pytest.approx(0.01) and worst.shared == 3
    swa, hau = worst.standings
    assert (swa.own_best, swa.shortfall, swa.rank) == pytest.approx((0.60, 0.01, 2))
    assert (hau.own_best, hau.rank, hau.configs) == pytest.approx((0.40, 3, 4))
    ranked = robust_config(["swa-en", "hau-en"], str(store), rule="mean-rank")
    assert ranked.flat_config["distill.lr"] == pytest.approx(1e-4)  # X: ranks 3 and 1
    assert ranked.mean_rank == pytest.approx(2.0)
    from optical_ray.cli.parser import main

    args = ["best", "--storage", str(store), "--across-pairs", "swa-en,hau-en"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "one config for swa-en, hau-en (rule worst" in text and "hau-en: 0.3900" in text
    assert main([*args, "--rule", "mean-rank", "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["rule"] == "mean-rank" and [p["pair"] for p in out["per_pair"]] == [
        "swa-en",
        "hau-en",
    ]
    with pytest.raises(StorageError, match="swa-en, yor-en share no config"):
        robust_config(["swa-en", "yor-en"], str(store))
