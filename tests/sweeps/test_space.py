"""Search spaces: the YAML format, validation of every shipped file, sampling."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import yaml

from optical_ray.errors import ConfigError
from optical_ray.sweeps.space import (
    load_space,
    parse_space,
    pin_overrides,
    trial_config,
    validate_space,
)

SHIPPED = sorted((Path(__file__).resolve().parents[2] / "search_spaces").glob("*.yaml"))


def test_some_spaces_are_shipped() -> None:
    names = {p.name for p in SHIPPED}
    assert "default.yaml" in names
    assert len(names) >= 2  # default plus a per-pair example


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_space_is_valid_and_samples(path: Path) -> None:
    space = load_space(path)
    pairs = ["en-xa", *space.pairs]
    for pair in pairs:
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
        fn = space.define_by_run(pair, depth=2)
        for _ in range(8):
            trial = study.ask()
            fixed = fn(trial)
            cfg = trial_config(space, pair, {**trial.params, **fixed})
            assert cfg.pair == pair
            for layer in cfg.distill.layers:
                assert -2 <= layer <= 2
            study.tell(trial, 0.0)


def _raw(**params):
    return {"base": {"train.stages": ["distill"]}, "params": params}


def test_all_problems_reported_at_once() -> None:
    raw = {
        "base": {"distill.epsilonn": 0.1},
        "params": {
            "distill.epsilon": {"type": "loguniform", "low": 0, "high": 1},
            "distill.weight": {"type": "uniform", "low": 1, "high": 0},
            "rank.lr": {"type": "gaussian"},
            "distill.nope": {"type": "uniform", "low": 0, "high": 1},
            "distill.layers": {"type": "layers", "strategies": ["top"]},
            "distill.method": {"type": "categorical", "choices": []},
        },
        "pairs": {"ensw": {"base": {}}},
        "extra": 1,
    }
    with pytest.raises(ConfigError) as info:
        parse_space(raw, source="x.yaml")
    text = str(info.value)
    for needle in [
        "base.distill.epsilonn: not a config key",
        "params.distill.epsilon: loguniform needs low > 0",
        "params.distill.weight: need low < high",
        "params.rank.lr.type: got 'gaussian'",
        "params.distill.nope: not a config key",
        "params.distill.layers.strategies: got ['top']",
        "params.distill.method.choices: expected a non-empty list",
        "pairs.ensw: expected <query_lang>-<doc_lang>",
        "unknown section(s) ['extra']",
    ]:
        assert needle in text, needle
    assert len(info.value.problems) == 9
    assert "x.yaml" in text


def test_fixed_values_must_make_a_valid_config() -> None:
    with pytest.raises(ConfigError, match="base: distill.cost: got 'l1'"):
        parse_space({"base": {"distill.cost": "l1"}})


def test_condition_and_pair_override() -> None:
    space = parse_space(
        {
            "base": {"distill.steps": 10},
            "params": {
                "distill.rank_batch_size": {"type": "categorical", "choices": [0, 4]},
                "distill.weight": {
                    "type": "uniform",
                    "low": 0.1,
                    "high": 0.9,
                    "when": {"distill.rank_batch_size": [4]},
                },
                "distill.epsilon": {"type": "loguniform", "low": 0.01, "high": 0.1},
            },
            "pairs": {
                "en-xc": {
                    "base": {"distill.steps": 30},
                    "params": {"distill.epsilon": {"type": "fixed", "value": 0.5}},
                }
            },
        }
    )
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    fn = space.define_by_run("en-xa", depth=2)
    seen_weight = {True: 0, False: 0}
    for _ in range(20):
        trial = study.ask()
        fixed = fn(trial)
        has_weight = "distill.weight" in trial.params
        assert has_weight == (trial.params["distill.rank_batch_size"] == 4)
        seen_weight[has_weight] += 1
        cfg = trial_config(space, "en-xa", {**trial.params, **fixed})
        assert cfg.distill.steps == 10
        assert 0.01 <= cfg.distill.epsilon <= 0.1
        study.tell(trial, 0.0)
    assert seen_weight[True] and seen_weight[False]
    trial = optuna.create_study().ask()
    fixed = space.define_by_run("en-xc", depth=2)(trial)
    cfg = trial_config(space, "en-xc", {**trial.params, **fixed})
    assert cfg.distill.steps == 30 and cfg.distill.epsilon == 0.5


def test_a_sampled_key_overrides_its_base_value() -> None:
    # A base may carry a default for a key that params also search (the benchmark reads
    # the base); the trial must get the sample, merged the way Ray's OptunaSearch does.
    raw = _raw(
        **{
            "distill.epsilon": {"type": "loguniform", "low": 0.2, "high": 0.9},
            "distill.layers": {"type": "layers", "strategies": ["one"]},
        }
    )
    raw["base"].update({"distill.epsilon": 0.01, "distill.layers": [-1, -2]})
    space = parse_space(raw)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    fn = space.define_by_run("en-xa", depth=2)
    for _ in range(5):
        trial = study.ask()
        fixed = fn(trial)
        assert "distill.epsilon" not in fixed and "distill.layers" not in fixed
        cfg = trial_config(space, "en-xa", {**trial.params, **fixed})
        assert cfg.distill.epsilon == trial.params["distill.epsilon"] != 0.01
        assert cfg.distill.layers == [trial.params["distill.layers.layer"]]
        study.tell(trial, 0.0)


def test_layer_strategies_map_to_layer_lists() -> None:
    space = parse_space(
        _raw(
            **{
                "distill.layers": {
                    "type": "layers",
                    "strategies": ["last", "one", "set"],
                    "max_k": 2,
                    "sets": [[1, 2]],
                }
            }
        )
    )
    sampled = {
        ("last", 2): [-2, -1],
        ("one", 1): [1],
        ("set", 0): [1, 2],
    }
    for (strategy, value), expected in sampled.items():
        extra = {"last": "k", "one": "layer", "set": "set"}[strategy]
        cfg = trial_config(
            space, "en-xa", {"distill.layers.strategy": strategy, f"distill.layers.{extra}": value}
        )
        assert cfg.distill.layers == expected


def test_missing_file_lists_shipped(tmp_path) -> None:
    with pytest.raises(ConfigError, match="default.yaml"):
        load_space(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"params": {"distill.epsilon": {"type": "uniform"}}}))
    with pytest.raises(ConfigError, match="needs \\['high', 'low'\\]"):
        load_space(bad)


def test_command_line_overrides_win_over_fixed_values() -> None:
    """`optical-ray sweep ... distill.steps=40` replaces the space's fixed steps (in
    base and per pair); a key the space searches cannot be overridden."""
    space = parse_space(
        {
            "base": {"distill.steps": 10, "distill.batch_size": 8},
            "params": {"distill.epsilon": {"type": "loguniform", "low": 0.01, "high": 0.1}},
            "pairs": {"en-xc": {"base": {"distill.steps": 30}}},
        }
    )
    pinned = pin_overrides(space, {"distill.steps": 40, "distill.lr": 1e-3})
    for pair in ("en-xa", "en-xc"):
        cfg = trial_config(pinned, pair, {"distill.epsilon": 0.05})
        assert cfg.distill.steps == 40 and cfg.distill.batch_size == 8
    assert trial_config(space, "en-xc", {"distill.epsilon": 0.05}).distill.steps == 30
    with pytest.raises(ConfigError, match="searches distill.epsilon"):
        pin_overrides(space, {"distill.epsilon": 0.2})


# --------------------------------------------------------------------------- limits and depth


def test_every_distribution_support_is_checked_against_the_config_limits() -> None:
    raw = _raw(
        **{
            "distill.epsilon": {"type": "uniform", "low": -1.0, "high": 1.0},
            "distill.steps": {"type": "int", "low": -5, "high": 10},
            "distill.method": {"type": "categorical", "choices": ["ot", "bogus"]},
            "distill.weight": {"type": "uniform", "low": 0.0, "high": 2.0},
            "distill.batch_size": {"type": "uniform", "low": 4, "high": 16},
            "distill.cost": {"type": "int", "low": 1, "high": 3},
            "distill.lr": {"type": "fixed", "value": 0},
        }
    )
    raw["pairs"] = {
        "en-xc": {"params": {"distill.sinkhorn_iters": {"type": "int", "low": 0, "high": 10}}}
    }
    with pytest.raises(ConfigError) as info:
        parse_space(raw, source="x.yaml")
    problems = info.value.problems
    for needle in [
        "params.distill.epsilon: low: got -1.0, must be > 0",
        "params.distill.steps: low: got -5, must be >= 0",
        "params.distill.method: choice 'bogus': got 'bogus', expected one of",
        "params.distill.weight: high: got 2.0, must be <= 1",
        "params.distill.batch_size: type uniform samples fractions",
        "params.distill.cost: type int samples numbers, but distill.cost is not",
        "params.distill.lr: value: got 0.0, must be > 0",
        "pairs.en-xc.params.distill.sinkhorn_iters: low: got 0, must be >= 1",
    ]:
        assert sum(needle in p for p in problems) == 1, (needle, problems)
    assert len(problems) == 8


def test_layers_beyond_the_model_depth_are_refused_once_the_depth_is_known() -> None:
    raw = _raw(
        **{
            "distill.layers": {
                "type": "layers",
                "strategies": ["last", "set"],
                "max_k": 2,
                "sets": [[1, 2], [1, 7]],
            }
        }
    )
    raw["pairs"] = {
        "en-xc": {
            "base": {"distill.layers": [-3]},
            "params": {"distill.layers": {"type": "categorical", "choices": [[1], [9]]}},
        }
    }
    space = parse_space(raw)  # the depth is unknown here: fine
    assert validate_space(space, depth=12) is space
    with pytest.raises(ConfigError) as info:
        validate_space(space, depth=2)
    assert info.value.problems == [
        "params.distill.layers: sets[1]: layer 7 is beyond the model depth 2 (allowed: 1..2, "
        "-2..-1 from the top, 0 = embeddings)",
        "pairs.en-xc.base.distill.layers: layer -3 is beyond the model depth 2 (allowed: "
        "1..2, -2..-1 from the top, 0 = embeddings)",
        "pairs.en-xc.params.distill.layers: choice [9]: layer 9 is beyond the model depth 2 "
        "(allowed: 1..2, -2..-1 from the top, 0 = embeddings)",
    ]


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_spaces_fit_a_two_layer_model(path: Path) -> None:
    validate_space(load_space(path), depth=2)


def test_duplicate_keys_in_a_space_file_are_refused(tmp_path: Path) -> None:
    p = tmp_path / "s.yaml"
    p.write_text(
        "params:\n  distill.lr: {type: fixed, value: 0.1}\n"
        "  distill.lr: {type: fixed, value: 0.2}\n",
        encoding="utf-8",
    )
    with pytest.raises(ConfigError, match=r"duplicate key 'distill.lr' \(first at line 2\)"):
        load_space(p)
