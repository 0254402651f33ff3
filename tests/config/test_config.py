"""Typed configs: YAML + overrides, all problems at once, flat round-trip for Tune."""

from __future__ import annotations

import json

import pytest

from optical_ray.cli.parser import main
from optical_ray.config import (
    Config,
    DistillConfig,
    from_dict,
    from_flat,
    load_config,
    parse_overrides,
    save_config,
    to_dict,
    to_flat,
)
from optical_ray.errors import ConfigError


def test_defaults_are_valid_and_typed() -> None:
    cfg = from_dict({})
    assert isinstance(cfg, Config)
    assert isinstance(cfg.distill, DistillConfig)
    assert cfg.model.scoring == "late_interaction"
    assert cfg.distill.layers == [-1]


def test_yaml_and_overrides(tmp_path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        "pair: en-sw\ndistill:\n  epsilon: 0.1\n  layers: [-1, -2]\n"
        "data:\n  bitext:\n    en-sw: /data/en-sw.tsv\n"
    )
    cfg = load_config(path, ["distill.epsilon=1e-3", "rank.steps=10", "train.stages=[distill]"])
    assert cfg.pair == "en-sw" and cfg.foreign_lang == "sw"
    # YAML 1.1 reads 1e-3 as a string; a float field still accepts it.
    assert cfg.distill.epsilon == pytest.approx(1e-3)
    assert cfg.distill.layers == [-1, -2]
    assert cfg.rank.steps == 10
    assert cfg.train.stages == ["distill"]
    assert cfg.data.bitext["en-sw"].path == "/data/en-sw.tsv"


def test_reverse_pair_foreign_lang() -> None:
    assert from_dict({"pair": "sw-en"}).foreign_lang == "sw"


def test_every_problem_reported_at_once() -> None:
    with pytest.raises(ConfigError) as info:
        from_dict(
            {
                "distill": {"epsilonn": 1, "cost": "l1", "epsilon": -1},
                "rank": {"lr": 0},
                "pair": "ensw",
                "train": {"stages": ["rank", "fly"]},
                "bogus": 1,
            }
        )
    problems = info.value.problems
    text = str(info.value)
    assert len(problems) == 7, problems
    assert "distill.epsilonn: unknown key; did you mean 'epsilon'?" in text
    assert "distill.cost: got 'l1', expected one of 'cosine', 'sqeuclidean'" in text
    assert "distill.epsilon: got -1.0, must be > 0" in text
    assert "rank.lr: got 0.0, must be > 0" in text
    assert "pair: got 'ensw'" in text
    assert "train.stages[1]: got 'fly'" in text
    assert "bogus: unknown key" in text
    assert "\n" not in text  # one line


def test_cross_field_rules() -> None:
    with pytest.raises(ConfigError, match="layer_weights: got 1 weights for 2 layers"):
        from_dict({"distill": {"layers": [-1, -2], "layer_weights": [1.0]}})
    with pytest.raises(ConfigError, match="num_heads: got 3, must divide"):
        from_dict({"model": {"tiny": {"hidden_size": 64, "num_heads": 3}}})
    with pytest.raises(ConfigError, match="eval.metrics\\[0\\]: got 'bleu'"):
        from_dict({"eval": {"metrics": ["bleu"]}})
    with pytest.raises(ConfigError, match="storage.uri: got 'gs://b'"):
        from_dict({"storage": {"uri": "gs://b"}})
    with pytest.raises(
        ConfigError, match="distill.contrastive: got 0 with distill.method=contrastive"
    ):
        from_dict({"distill": {"method": "contrastive"}})
    assert (
        from_dict({"distill": {"method": "contrastive", "contrastive": 1.0}}).distill.contrastive
        == 1.0
    )


def test_flat_round_trip() -> None:
    cfg = load_config(None, ["data.bitext={en-sw: a.tsv}", "distill.layers=[1,2]"])
    flat = to_flat(cfg)
    assert flat["distill.epsilon"] == 0.05
    assert "data.bitext" in flat  # user-keyed mappings stay whole
    assert from_flat(flat) == cfg
    changed = from_flat({"distill.epsilon": 0.2}, base=cfg)
    assert changed.distill.epsilon == 0.2 and changed.distill.layers == [1, 2]


def test_save_config_json(tmp_path) -> None:
    cfg = from_dict({"pair": "en-xc"})
    path = save_config(cfg, tmp_path / "sub" / "config.json")
    assert from_dict(json.loads(path.read_text())) == cfg
    assert to_dict(cfg)["pair"] == "en-xc"


def test_bad_yaml_and_missing_file(tmp_path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("distill: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML at line"):
        load_config(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    top = tmp_path / "list.yaml"
    top.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(top)


def test_override_syntax() -> None:
    assert parse_overrides(["a.b=[1, 2]", "c=x"]) == {"a.b": [1, 2], "c": "x"}
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_overrides(["novalue"])


def test_cli_config_error_is_one_line_exit_2(capsys) -> None:
    assert main(["config", "distill.cost=l1", "distill.epsilon=0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert "distill.cost: got 'l1'" in err and "distill.epsilon: got 0.0" in err


def test_cli_config_prints_resolved(capsys) -> None:
    assert main(["config", "pair=en-sw"]) == 0
    assert json.loads(capsys.readouterr().out)["pair"] == "en-sw"


def _alias_bomb(levels: int, flow: bool = False) -> str:
    """Nine aliases of nine aliases, ``levels`` deep: 9**levels nodes once expanded."""
    items = ["&a0 [" + ", ".join(["x"] * 9) + "]"]
    items += [f"&a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, levels + 1)]
    if flow:
        return "[" + ", ".join(items) + "]"
    return "".join(f"a{i}: {item}\n" for i, item in enumerate(items)) + f"name: *a{levels}\n"


def test_yaml_alias_bombs_are_refused_before_they_expand(tmp_path) -> None:
    """8 levels (43 million nodes from 400 bytes) ran 25 s and raised MemoryError: now one
    line, from the node graph, before anything is built."""
    from optical_ray.config.loader import MAX_YAML_NODES, read_yaml
    from optical_ray.sweeps.space import load_space

    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(_alias_bomb(8))
    assert len(bomb.read_bytes()) < 500
    for load in (read_yaml, load_config, load_space):
        with pytest.raises(ConfigError, match=f"more than {MAX_YAML_NODES} nodes.*alias bomb"):
            load(bomb)
    with pytest.raises(ConfigError, match="name: YAML aliases expand"):
        load_config(None, [f"name={_alias_bomb(8, flow=True)}"])
    loop = tmp_path / "loop.yaml"
    loop.write_text("a: &a [1, *a]\n")
    with pytest.raises(ConfigError, match="alias inside its own anchor at line 1"):
        read_yaml(loop)
    # aliases that stay small are fine, merge keys included
    ok = tmp_path / "ok.yaml"
    ok.write_text(
        "defaults: &d {epsilon: 0.05, weight: 0.5}\n"
        "distill: {<<: *d, weight: 0.7}\n" + _alias_bomb(3).replace("name: *a3", "tags: *a3")
    )
    data = read_yaml(ok)
    assert data["distill"] == {"epsilon": 0.05, "weight": 0.7} and len(data["tags"]) == 9
