"""Pair templates in search spaces ({pair}, {lang}, {src}, {tgt}), the shipped real
space for any language, the method as a searched dimension, and what a language
without data gets (one line naming the languages that exist)."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from optical_ray.cli.parser import main
from optical_ray.data import real
from optical_ray.data.prepare import prepare_real
from optical_ray.errors import ConfigError, DataError
from optical_ray.sweeps.space import load_space, parse_space, trial_config
from optical_ray.sweeps.templates import expand, pair_values
from tests.fake_shared import make_fake_shared

REAL_SPACE = Path(__file__).resolve().parents[2] / "search_spaces" / "real_mafand.yaml"


def test_placeholders_fill_strings_and_keys_at_any_depth():
    value = {"en-{lang}": {"path": "/d/{src}/{tgt}", "n": 3}, "x": ["{pair}", 1]}
    assert expand(value, "yor-en") == {"en-yor": {"path": "/d/yor/en", "n": 3}, "x": ["yor-en", 1]}
    assert pair_values("en-zul")["lang"] == "zul"  # the non-English side, either way round
    assert pair_values("en-en")["lang"] == "en"
    assert "lang" not in pair_values("deu-fra")
    with pytest.raises(ConfigError, match=r"neither side is English"):
        expand("{lang}", "deu-fra")
    assert expand("{other} {pair}", "yor-en") == "{other} yor-en"  # not a placeholder


def test_real_space_runs_for_any_language():
    space = load_space(REAL_SPACE)
    for pair, lang in (("yor-en", "yor"), ("zul-en", "zul"), ("swa-en", "swa")):
        cfg = trial_config(space, pair, {"distill.method": "ot", "distill.epsilon": 0.02})
        assert set(cfg.data.bitext) == {f"en-{lang}"}
        assert cfg.data.bitext[f"en-{lang}"].format == "mafand"
        assert pair in cfg.data.eval and cfg.data.eval[pair].format == "ntrex"
        assert cfg.eval.pairs == [pair] and cfg.pair == pair
        assert cfg.distill.epsilon == 0.02


def test_pair_sections_override_the_template():
    space = parse_space(
        {
            "base": {
                "data.bitext": {"en-{lang}": {"path": "", "format": "mafand"}},
                "eval.pairs": ["{pair}"],
                "distill.steps": 10,
            },
            "pairs": {"hau-en": {"base": {"distill.steps": 99, "eval.pairs": ["{pair}", "en-en"]}}},
        }
    )
    hau = trial_config(space, "hau-en", {})
    assert hau.distill.steps == 99 and hau.eval.pairs == ["hau-en", "en-en"]
    assert "en-hau" in hau.data.bitext  # the template still names its bitext
    assert trial_config(space, "yor-en", {}).distill.steps == 10


def test_template_mistakes_are_reported_at_once():
    with pytest.raises(ConfigError) as exc:
        parse_space(
            {
                "base": {"data.bitext": {"en-{lng}": {"path": "", "format": "mafand"}}},
                "params": {
                    "distill.method": {"type": "categorical", "choices": ["{methd}", "ot"]},
                },
                "pairs": {"deu-fra": {"base": {"eval.pairs": ["{lang}-en"]}}},
            }
        )
    text = " ".join(exc.value.problems)
    assert "unknown template {lng}" in text and "unknown template {methd}" in text
    assert "pairs.deu-fra" in text and "neither side is English" in text


def test_method_is_a_dimension_with_conditional_knobs():
    space = load_space(REAL_SPACE)
    sampler = space.define_by_run("yor-en", depth=6)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen: dict[str, set[str]] = {}
    for _ in range(30):
        trial = study.ask()
        sampler(trial)
        params = trial.params
        seen.setdefault(params["distill.method"], set()).update(params)
        study.tell(trial, 0.0)
    assert set(seen) == {"ot", "mse_sentence", "contrastive"}
    assert "distill.epsilon" in seen["ot"]
    assert "distill.epsilon" not in seen["mse_sentence"] | seen["contrastive"]
    assert "distill.layers.strategy" not in seen["contrastive"]
    assert "distill.layers.strategy" in seen["mse_sentence"]


def test_a_language_without_data_lists_what_exists(tmp_path, monkeypatch):
    from optical_ray.config import from_flat
    from optical_ray.distributed.driver import _check_pairs_data

    # the space's '' paths are the default folder: point it at a fake one
    monkeypatch.setenv(real.ENV_VAR, str(make_fake_shared(tmp_path / "s", langs=("swa", "hau"))))
    base = from_flat({"sweep.pairs": ["swa-en", "yor-en"], "output_dir": str(tmp_path / "runs")})
    with pytest.raises(DataError) as exc:
        _check_pairs_data(base, load_space(REAL_SPACE))
    line = str(exc.value)
    assert "\n" not in line and "yor-en" in line and "swa-en:" not in line
    assert "'yor'" in line and "present: deu, en, hau, swa" in line


def test_prepare_real_takes_any_language_and_names_missing_ones(tmp_path, capsys):
    shared = make_fake_shared(tmp_path / "shared", langs=("zul",), reference=("deu",))
    manifest = prepare_real(tmp_path / "root", shared=shared, languages=["zul"], reference=["deu"])
    assert manifest["languages"] == ["zul"] and "zul-en" in manifest["pairs"]
    assert (tmp_path / "root" / "bitext" / "en-zul" / "train.tsv").is_file()
    code = main(
        [
            "data",
            "prepare-real",
            "--shared",
            str(shared),
            "--out",
            str(tmp_path / "r2"),
            "--languages",
            "yor",
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err
    assert (
        "yor" in err and "MAFAND-MT bitext for zul" in err and "NTREX-128 for deu, en, zul" in err
    )


def test_cli_sweep_for_a_language_without_data_is_one_line(tmp_path, monkeypatch, capsys):
    shared = make_fake_shared(tmp_path / "shared", langs=("swa",))
    monkeypatch.setenv(real.ENV_VAR, str(shared))
    code = main(
        [
            "sweep",
            "--space",
            str(REAL_SPACE),
            "--pairs",
            "yor-en",
            "--storage",
            str(tmp_path / "store"),
            f"output_dir={tmp_path / 'runs'}",
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err
    assert "yor-en" in err and "present: deu, en, swa" in err
