"""Synthetic language families: seeded, valid, spread from close to distant relatives."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest

from optical_ray.data.family import family_specs
from optical_ray.errors import ConfigError
from optical_ray.sweeps.warmstart import similarity


def test_a_family_is_seeded_and_spans_close_and_distant_relatives() -> None:
    specs, sizes = family_specs(6, seed=3)
    again, same_sizes = family_specs(6, seed=3)
    assert specs == again and sizes == same_sizes
    assert family_specs(6, seed=4)[0] != specs
    assert [s.code for s in specs] == ["qa", "qb", "qc", "qd", "qe", "qf"]
    assert all(not s.problems() for s in specs)
    by_cognates = sorted(specs, key=lambda s: -s.cognate_rate)
    closest, farthest = by_cognates[0], by_cognates[-1]
    assert closest.cognate_rate > 0.35 and farthest.cognate_rate < 0.15
    assert closest.typo_rate < farthest.typo_rate and closest.synonym_rate < farthest.synonym_rate
    assert sizes[closest.code] > sizes[farthest.code]  # distant ones are low-resource too
    # neighbours in the family are more alike than its two ends
    table = {s.code: asdict(s) for s in specs}
    near = similarity(f"en-{by_cognates[0].code}", f"en-{by_cognates[1].code}", table)[0]
    far = similarity(f"en-{closest.code}", f"en-{farthest.code}", table)[0]
    assert near > far


@pytest.mark.parametrize("n, seed", [(0, 1), (27, 1), (3, "x")])
def test_bad_family_arguments_are_named(n, seed) -> None:
    with pytest.raises(ConfigError, match="family"):
        family_specs(n, seed)


def test_the_cli_writes_a_family_world(tmp_path: Path, capsys) -> None:
    from optical_ray.cli.parser import main

    out = tmp_path / "world"
    argv = ["data", "synth", "--out", str(out), "--scale", "tiny", "--family", "3"]
    assert main([*argv, "--family-seed", "7", "--bitext-size", "qa=77"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert sorted(manifest["languages"]) == ["qa", "qb", "qc"]
    assert manifest["languages"]["qa"]["bitext_size"] == 77
    assert "family of 3 (seed 7)" in capsys.readouterr().out
    assert main(["data", "synth", "--out", str(tmp_path / "w2"), "--family", "0"]) == 2
    assert "family: got 0" in capsys.readouterr().err
