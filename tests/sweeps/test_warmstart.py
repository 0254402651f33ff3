"""Warm starts without Ray: translating source configs into a space, picking and
deduplicating points, choosing source pairs, the TPE prior, origins, bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from optical_ray.config import from_flat, to_flat
from optical_ray.errors import ConfigError, StorageError
from optical_ray.sweeps.space import parse_space
from optical_ray.sweeps.warmstart import (
    WarmPoint,
    build_prior,
    choose_sources,
    foreign_keys,
    origin_problems,
    parse_warm_start,
    plan_warm_starts,
    select_points,
    similarity,
    space_params,
)

SPACE = {
    "base": {"train.stages": ["distill"], "distill.steps": 4},
    "params": {
        "distill.epsilon": {"type": "loguniform", "low": 0.01, "high": 1.0},
        "distill.lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2},
        "distill.rank_batch_size": {"type": "categorical", "choices": [0, 8]},
        "distill.weight": {
            "type": "uniform",
            "low": 0.0,
            "high": 1.0,
            "when": {"distill.rank_batch_size": [8]},
        },
        "distill.layers": {"type": "layers", "strategies": ["last", "one"], "max_k": 2},
    },
}


def _space():
    return parse_space(SPACE, source="test-space")


def _flat(**over):
    """A full flat config; lr inside the test space unless given."""
    return {**to_flat(from_flat({})), "distill.lr": 1e-3, **over}


def _params(pair="en-yo"):
    return _space().for_pair(pair)


def test_a_source_config_becomes_the_parameters_define_by_run_asks_for() -> None:
    base, params = _params()
    chosen, dists, why = space_params(
        _flat(**{"distill.epsilon": 0.05, "distill.lr": 1e-3, "distill.layers": [-2, -1]}),
        base,
        params,
        depth=2,
    )
    assert why is None
    # rank_batch_size 0 (the default) leaves the conditional weight out, as the space does
    assert chosen == {
        "distill.epsilon": 0.05,
        "distill.lr": 1e-3,
        "distill.rank_batch_size": 0,
        "distill.layers.strategy": "last",
        "distill.layers.k": 2,
    }
    assert set(dists) == set(chosen)
    assert dists["distill.epsilon"].log and dists["distill.layers.k"].high == 2
    with_weight, _, _ = space_params(
        _flat(
            **{
                "distill.rank_batch_size": 8,
                "distill.weight": 0.3,
                "distill.layers": [1],
                "distill.lr": 1e-3,
            }
        ),
        base,
        params,
        depth=2,
    )
    assert with_weight["distill.weight"] == 0.3
    assert with_weight["distill.layers.strategy"] == "one"


def test_a_value_outside_the_space_is_skipped_with_a_reason() -> None:
    base, params = _params()
    for over, said in (
        ({"distill.epsilon": 5.0}, "distill.epsilon=5 is outside this space's [0.01, 1]"),
        ({"distill.layers": [1, 2]}, "distill.layers=[1, 2] is not a layer choice"),
        ({"distill.rank_batch_size": 4}, "distill.rank_batch_size=4 is not a choice"),
    ):
        chosen, dists, why = space_params(_flat(**over), base, params, depth=2)
        assert chosen is None and dists == {}
        assert said in why
    # float noise on a bound is clipped onto it, not skipped
    chosen, _, _ = space_params(_flat(**{"distill.epsilon": 1.0 + 1e-12}), base, params, 2)
    assert chosen["distill.epsilon"] == 1.0


def _ranked(pair, rows):
    import pandas as pd

    return pd.DataFrame(
        [
            {
                "pair": pair,
                "trial_id": f"t{i}",
                "status": status,
                "value": value,
                "iterations": 3,
                "config": json.dumps(_flat(**cfg)),
            }
            for i, (value, status, cfg) in enumerate(rows)
        ]
    )


def test_points_are_the_sources_top_k_in_turns_deduplicated_and_skips_are_noted() -> None:
    base, params = _params()
    a = {"distill.epsilon": 0.05, "distill.lr": 1e-3}
    b = {"distill.epsilon": 0.2, "distill.lr": 1e-3}
    c = {"distill.epsilon": 0.5, "distill.lr": 5e-3}
    ranked = {
        "en-sw": _ranked(
            "en-sw",
            [
                (0.5, "finished", a),
                (0.4, "finished", {"distill.epsilon": 9.0}),
                (0.3, "stopped", b),
                (0.1, "finished", c),
            ],
        ),
        "en-ha": _ranked("en-ha", [(0.3, "finished", a), (0.2, "finished", c)]),
    }
    points, notes = select_points(ranked, base, params, depth=2, top=4)
    # in turns: each source's best, then each one's second best
    assert [(p.pair, p.trial_id) for p in points] == [
        ("en-sw", "t0"),
        ("en-ha", "t1"),  # en-ha's best is en-sw's best: it runs once
        ("en-sw", "t2"),  # en-sw's last (t3) is en-ha's t1 again: all distinct ones ran
    ]
    # top counts configs in all, not per source: the rest of the budget is the sampler's
    two, _ = select_points(ranked, base, params, depth=2, top=2)
    assert [(p.pair, p.trial_id) for p in two] == [("en-sw", "t0"), ("en-ha", "t1")]
    assert [p.trial_id for p in select_points(ranked, base, params, depth=2, top=1)[0]] == ["t0"]
    assert points[0].origin == "warm_start:en-sw/t0"
    assert notes == ["en-sw trial t1 skipped: distill.epsilon=9 is outside this space's [0.01, 1]"]
    prior = build_prior(ranked, base, params, depth=2)
    assert len(prior) == 5  # every trial that fits: finished, and stopped as pruned
    sw = [p for p in prior if p.pair == "en-sw"]
    assert [p.quantile for p in sw] == [1.0, pytest.approx(1 / 3), 0.0]
    assert [p.pruned for p in sw] == [False, True, False]


def test_keys_a_source_searched_that_this_space_does_not_are_named() -> None:
    configs = [
        _flat(**{"distill.epsilon": e, "distill.sinkhorn_iters": n})
        for e, n in ((0.1, 50), (0.2, 100))
    ]
    assert foreign_keys(configs, ["distill.epsilon"]) == ["distill.sinkhorn_iters"]
    assert foreign_keys(configs, ["distill.epsilon", "distill.sinkhorn_iters"]) == []
    # two sweeps of the pair that fixed it differently did not search it
    assert foreign_keys(configs, ["distill.epsilon"], ["s1-en-sw", "s2-en-sw"]) == []


def test_similarity_prefers_close_language_specs_and_the_same_direction() -> None:
    near = {"cognate_rate": 0.3, "typo_rate": 0.05, "verb_final": True, "tier": "low"}
    specs = {
        "xa": near,
        "xb": {**near, "cognate_rate": 0.35},
        "xc": {"cognate_rate": 0.0, "typo_rate": 0.3, "verb_final": False, "tier": "high"},
    }
    close, why = similarity("en-xb", "en-xa", specs)
    far, _ = similarity("en-xc", "en-xa", specs)
    assert close > far and "language-spec similarity" in why
    assert similarity("xb-en", "en-xa", specs)[0] == 0.0
    assert similarity("en-zu", "en-sw")[1] == "same branch Niger-Congo/Bantu"
    assert similarity("en-yo", "en-sw")[0] == 0.5
    picks = choose_sources({"en-xb": 3, "en-xc": 9, "xb-en": 9}, "en-xa", specs, k=2)
    assert [p for p, _, _ in picks] == ["en-xb", "en-xc"]
    assert "trial(s)" in picks[0][2]


def test_warm_start_setting_is_checked() -> None:
    assert parse_warm_start(None) == "none" and parse_warm_start("auto") == "auto"
    assert parse_warm_start("en-sw, en-ha") == ["en-sw", "en-ha"]
    assert parse_warm_start(["en-sw"]) == ["en-sw"]
    with pytest.raises(ConfigError, match="sweep.warm_start: got pair 'sw'"):
        parse_warm_start("sw")
    with pytest.raises(ConfigError, match="cannot be mixed"):
        parse_warm_start("auto,en-sw")
    with pytest.raises(ConfigError, match="sweep.warm_start_top"):
        from_flat({"sweep.warm_start_top": 0})
    assert origin_problems("warm_start:en-sw/abc") == []
    assert origin_problems("sampler") == [] and origin_problems(None) == []
    assert origin_problems("warm_start:sw") and origin_problems("tpe")


# --------------------------------------------------------------------------- catalog side


def _record(pair, trial, value, status="finished", origin=None, experiment="s", **cfg):
    from optical_ray.catalog import TrialRecord

    return TrialRecord(
        experiment=f"{experiment}-{pair}",
        pair=pair,
        trial_id=trial,
        status=status,
        config=_flat(pair=pair, **cfg),
        best_metrics={"map": value},
        last_metrics={"map": value},
        iterations=3,
        origin=origin,
    )


@pytest.fixture()
def store(tmp_path: Path) -> str:
    from optical_ray.catalog import Catalog

    uri = str(tmp_path / "store")
    Catalog(uri).extend(
        [
            _record("en-sw", "a", 0.5, origin="sampler", **{"distill.epsilon": 0.05}),
            _record("en-sw", "b", 0.3, origin="random", **{"distill.epsilon": 0.5}),
            _record("en-ha", "c", 0.2, **{"distill.epsilon": 0.1}),
            _record("en-ha", "d", 0.1, status="stopped", **{"distill.epsilon": 0.9}),
        ]
    )
    return uri


def _cfg(store: str, pairs=("en-yo",), **over):
    return from_flat(
        {"storage.uri": store, "sweep.pairs": list(pairs), "data.root": "/nonexistent", **over}
    )


def test_records_carry_their_origin_and_best_shows_it(store: str) -> None:
    from optical_ray.catalog import best_config, format_records

    best = best_config("en-sw", storage=store, top=2)
    assert [b.origin for b in best] == ["sampler", "random"]
    table = format_records(best)
    assert "origin" in table.splitlines()[0] and "sampler" in table
    assert json.loads(format_records(best, "json"))[0]["origin"] == "sampler"
    with pytest.raises(ConfigError, match="origin: got 'tpe'"):
        _record("en-sw", "x", 0.1, origin="tpe").to_row()


def test_explicit_sources_give_points_and_prior(store: str) -> None:
    lines: list[str] = []
    plans = plan_warm_starts(
        _cfg(store, **{"sweep.warm_start": "en-sw,en-ha", "sweep.warm_start_top": 2}),
        _space(),
        2,
        lines.append,
    )
    plan = plans["en-yo"]
    assert plan.sources == ["en-sw", "en-ha"]
    assert [p.origin for p in plan.points] == ["warm_start:en-sw/a", "warm_start:en-ha/c"]
    assert plan.points[0].params["distill.epsilon"] == 0.05
    assert len(plan.prior) == 4 and sum(p.pruned for p in plan.prior) == 1
    assert lines[0].startswith("[warm-start] en-yo: from en-sw (given), en-ha (given); 2 config(s)")


def test_auto_picks_the_most_related_pairs_and_says_why(store: str) -> None:
    from optical_ray.catalog import Catalog

    Catalog(store).append(_record("en-de", "e", 0.9, **{"distill.epsilon": 0.3}))
    lines: list[str] = []
    plan = plan_warm_starts(_cfg(store, **{"sweep.warm_start": "auto"}), _space(), 2, lines.append)[
        "en-yo"
    ]
    # yo (Volta-Niger) shares Niger-Congo with sw; ha and de are unrelated (0.25), and
    # ha wins the tie by having more trials
    assert plan.sources == ["en-sw", "en-ha"]
    assert "same family Niger-Congo" in plan.reasons["en-sw"]
    assert "similarity 0.50" in lines[0]


@pytest.mark.parametrize(
    "over, error, said",
    [
        (
            {"sweep.warm_start": "en-zz"},
            ConfigError,
            "no records for pair en-zz in .*pairs with records: en-ha, en-sw",
        ),
        ({"sweep.warm_start": "en-yo"}, ConfigError, "en-yo is a pair of this sweep"),
    ],
)
def test_bad_sources_are_one_line_each(store: str, over, error, said) -> None:
    with pytest.raises(error, match=said):
        plan_warm_starts(_cfg(store, **over), _space(), 2)


def test_an_empty_catalog_and_another_space_are_refused(store: str, tmp_path: Path) -> None:
    from optical_ray.catalog import Catalog

    with pytest.raises(StorageError, match="warm start: no trial records in .*empty"):
        plan_warm_starts(
            _cfg(
                store,
                **{"sweep.warm_start": "en-sw", "sweep.warm_start_from": str(tmp_path / "empty")},
            ),
            _space(),
            2,
        )
    Catalog(store).extend(
        [
            _record("en-so", "f", 0.2, **{"distill.sinkhorn_iters": 50}),
            _record("en-so", "g", 0.3, **{"distill.sinkhorn_iters": 80}),
        ]
    )
    with pytest.raises(
        ConfigError,
        match="en-so: its trials searched distill.sinkhorn_iters, which test-space does not",
    ):
        plan_warm_starts(_cfg(store, **{"sweep.warm_start": "en-so"}), _space(), 2)
    # auto leaves such a pair out, with a note
    plan = plan_warm_starts(
        _cfg(store, **{"sweep.warm_start": "auto"}), _space(), 2, lambda _: None
    )
    assert "en-so" not in plan["en-yo"].sources
    assert any("en-so not used: another space" in n for n in plan["en-yo"].notes)


def test_none_plans_nothing(store: str) -> None:
    assert plan_warm_starts(_cfg(store), _space(), 2) == {}


# --------------------------------------------------------------------------- Optuna side


def _study(sampler=None):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(direction="maximize", sampler=sampler)


def test_enqueued_points_run_first_through_the_space_and_never_twice() -> None:
    from optical_ray.sweeps.warmsampler import enqueue_points

    base, params = _params()
    chosen, _, _ = space_params(
        _flat(**{"distill.epsilon": 0.05, "distill.lr": 2e-3, "distill.layers": [-1]}),
        base,
        params,
        2,
    )
    study = _study()
    points = [WarmPoint("en-sw", "a", 0.5, chosen)]
    assert enqueue_points(study, points) == 1
    assert enqueue_points(study, points) == 0  # a resumed sweep: already there
    space = _space().define_by_run("en-yo", 2)
    trial = study.ask()
    space(trial)
    assert trial.params == chosen
    assert trial.user_attrs["origin"] == "warm_start:en-sw/a"
    study.tell(trial, 0.4)
    assert enqueue_points(study, points) == 0  # nor after it ran


def _prior(n: int = 30):
    """Source trials whose quality peaks at epsilon 0.05 (log-distance ranks them)."""
    import optuna.distributions as d

    from optical_ray.sweeps.warmstart import PriorTrial

    dist = {"distill.epsilon": d.FloatDistribution(0.01, 1.0, log=True)}
    eps = [10 ** (-2 + 2 * i / (n - 1)) for i in range(n)]
    ranked = sorted(eps, key=lambda e: abs(math.log10(e) - math.log10(0.05)))
    return [
        PriorTrial("en-sw", f"t{i}", 1 - i / (n - 1), False, 1, {"distill.epsilon": e}, dist)
        for i, e in enumerate(ranked)
    ]


def _draws(sampler, n=12):
    study = _study(sampler)
    out = []
    for _ in range(n):
        t = study.ask()
        out.append(t.suggest_float("distill.epsilon", 0.01, 1.0, log=True))
        study.tell(t, state=__import__("optuna").trial.TrialState.FAIL)  # no own evidence
    return out


def test_the_prior_steers_tpe_towards_the_sources_good_region() -> None:
    import optuna

    from optical_ray.sweeps.warmsampler import TransferSampler, sampler_origin

    def tpe():
        return optuna.samplers.TPESampler(
            seed=0, n_startup_trials=5, multivariate=True, constant_liar=False
        )

    warm = _draws(TransferSampler(tpe(), _prior(), "max", fade=20))
    cold = _draws(tpe())

    def spread(xs):
        return sorted(abs(math.log10(x) - math.log10(0.05)) for x in xs)[len(xs) // 2]

    assert spread(warm) < 0.5 * spread(cold)
    sampler = TransferSampler(tpe(), _prior(), "max", fade=20)
    assert sampler_origin(sampler, _study()) == "sampler"  # warm: no random start-up
    assert sampler_origin(tpe(), _study()) == "random"
    assert sampler_origin(optuna.samplers.RandomSampler(), _study()) == "random"


def test_the_prior_fades_as_the_pairs_own_trials_arrive() -> None:
    import optuna

    from optical_ray.sweeps.warmsampler import TransferSampler

    s = TransferSampler(optuna.samplers.TPESampler(constant_liar=False), _prior(30), "max", fade=10)
    assert len(s.faded(0)) == 30 and s.faded(10) == [] and len(s.faded(5)) == 15
    half = s.faded(5)
    assert half[0].quantile == 1.0 and half[-1].quantile == 0.0  # good and bad kept
    # the view maps the prior's quantiles into the range the pair has reached
    study = _study()
    for v in (0.2, 0.3):
        t = study.ask()
        t.suggest_float("distill.epsilon", 0.01, 1.0, log=True)
        study.tell(t, v)
    view = s.view(study)
    prior = [t for t in view.trials if t.user_attrs.get("origin", "").startswith("prior:")]
    assert len(prior) == 24 and len(view.trials) == 26
    assert max(t.value for t in prior) == pytest.approx(0.3)
    assert min(t.value for t in prior) == pytest.approx(0.2)
    # with the pair's own trials, TPE samples jointly (relative) on the view
    study.sampler = s
    t = study.ask()
    assert 0.01 <= t.suggest_float("distill.epsilon", 0.01, 1.0, log=True) <= 1.0
    assert "distill.epsilon" in t.relative_params
    import pickle

    assert pickle.loads(pickle.dumps(s)).faded(0) == s.faded(0)


@pytest.mark.parametrize(
    "flags, said",
    [
        (["--warm-start", "en-zz"], "no records for pair en-zz in"),
        (["--warm-start", "en-sw", "--warm-start-from", "ftp://host/x"], "ftp://host/x"),
        (["--warm-start", "xx"], "sweep.warm_start: got pair 'xx'"),
    ],
)
def test_the_cli_refuses_bad_warm_starts_in_one_line(
    store: str, tmp_path: Path, capsys, flags, said
) -> None:
    import yaml

    from optical_ray.cli.parser import main

    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(SPACE))
    argv = ["sweep", "--space", str(space), "--pairs", "en-yo", "--storage", store, *flags]
    assert main([*argv, f"output_dir={tmp_path / 'runs'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and said in err, err


def test_the_report_plots_a_warm_sweep_against_a_cold_one(tmp_path: Path) -> None:
    from optical_ray.catalog import Catalog, TrialRecord
    from optical_ray.report.gap import build_report
    from optical_ray.sweeps.warmstart import best_so_far

    def rec(exp, trial, value, origin, start, iterations=2, status="finished"):
        return TrialRecord(
            experiment=exp,
            pair="en-yo",
            trial_id=trial,
            status=status,
            config=_flat(pair="en-yo"),
            best_metrics={"map": value},
            origin=origin,
            started_at=start,
            finished_at=start + 1,
            iterations=iterations,
        )

    store = str(tmp_path / "store")
    Catalog(store).extend(
        [
            rec("cold-en-yo", "c1", 0.1, "random", 100, iterations=3),
            rec("cold-en-yo", "c2", 0.3, "sampler", 101, iterations=2, status="stopped"),
            rec("cold-en-yo", "c3", 0.2, "sampler", 102),
            rec("cold-en-yo", "c4", 0.9, "sampler", 103, status="failed"),
            rec("warm-en-yo", "w1", 0.35, "warm_start:en-sw/a", 200),
            rec("warm-en-yo", "w2", 0.2, "sampler", 201),
        ]
    )
    df = Catalog(store).records()
    # a finished trial's last report is its summary, not an evaluation: 3 reports are
    # 2 trial-epochs; a stopped trial's reports are all evaluations; a failed one is out
    assert best_so_far(df[df["experiment"] == "cold-en-yo"], "map") == [
        (2.0, 0.1),
        (4.0, 0.3),
        (5.0, 0.3),
    ]
    path = build_report(store, tmp_path / "report")
    out = path.parent
    assert (out / "warm_en-yo.png").stat().st_size > 0
    data = json.loads((out / "report.json").read_text())
    assert data["best_origin"]["en-yo"] == "warm_start:en-sw/a"
    curves = data["warm_vs_cold"]["en-yo"]
    assert curves["warm_experiment"] == "warm-en-yo" and curves["warm"][0] == [1.0, 0.35]
    text = path.read_text()
    assert "best config's origin: warm_start:en-sw/a" in text and "warm_en-yo.png" in text


def test_auto_without_a_fitting_source_starts_cold_and_says_so(tmp_path: Path) -> None:
    from optical_ray.catalog import Catalog

    uri = str(tmp_path / "store")
    Catalog(uri).append(_record("sw-en", "a", 0.5))  # the other direction only
    lines: list[str] = []
    plan = plan_warm_starts(_cfg(uri, **{"sweep.warm_start": "auto"}), _space(), 2, lines.append)
    assert plan["en-yo"].sources == [] and plan["en-yo"].points == []
    assert lines[0] == "[warm-start] en-yo: no source pair fits this space; it starts cold"
