"""The command line: every bad input is one line on stderr and exit code 2; train and
evaluate work from the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from optical_ray.cli.parser import main


def _err_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err  # one line, no traceback
    assert err.startswith("optical-ray: error:") or "error:" in err
    return err


@pytest.fixture
def broken_world(tiny_world, tmp_path) -> Path:
    """A copy of the tiny world, to break one file at a time."""
    root = tmp_path / "w"
    shutil.copytree(tiny_world.root, root)
    return root


def test_help_lists_the_commands(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for cmd in ("demo", "data", "train", "evaluate", "sweep", "best", "report"):
        assert cmd in out


def test_synth_and_validate(tmp_path, capsys) -> None:
    out = tmp_path / "world"
    assert (
        main(["data", "synth", "--out", str(out), "--scale", "tiny", "--bitext-size", "xc=100"])
        == 0
    )
    assert "xc: low-resource, 100 bitext pairs" in capsys.readouterr().out
    assert main(["data", "validate", str(out)]) == 0
    assert "OK" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["data", "synth", "--out", "x", "--languages", "zz"], "language 'zz' is unknown"),
        (["data", "synth", "--out", "x", "--bitext-size", "xc=many"], "expected LANG=N"),
        (["data", "synth", "--out", "x", "--scale", "huge"], "invalid choice: 'huge'"),
        (["config", "distill.epsilon=-1"], "distill.epsilon: got -1.0, must be > 0"),
        (["train", "model.scoring=bm25"], "model.scoring: got 'bm25'"),
        (["evaluate", "--checkpoint", "/nonexistent"], "is not a saved model directory"),
        (["best", "--storage", "/nonexistent-store", "--all"], "no trial records"),
        (["best", "--storage", "/nonexistent-store"], "exactly one of --pair PAIR or --all"),
        (["sweep", "--space", "/nope.yaml", "--pairs", "en-xa"], "does not exist"),
        (
            [
                "sweep",
                "--space",
                "search_spaces/default.yaml",
                "--pairs",
                "en-xa",
                "distill.epsilon=0.1",
            ],
            "searches distill.epsilon; drop the override",
        ),
    ],
)
def test_bad_input_is_one_line_and_exit_2(argv, needle, capsys) -> None:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
        err = capsys.readouterr().err.strip().splitlines()[-1]
    else:
        err = _err_line(capsys)
    assert code == 2
    assert needle in err


@pytest.mark.parametrize(
    "file, content, needle",
    [
        ("eval/en-xc/dev/queries.tsv", "q1\tfine\nq2\ttoo\tmany\tcolumns\n", "line 2"),
        ("eval/en-xc/dev/qrels.txt", "", "empty"),
        (
            "eval/en-xc/dev/corpus.jsonl",
            '{"docid": "d1", "text": "a"}\n{"docid": "d1", "text": "b"}\n',
            "duplicate",
        ),
        ("bitext/en-xc/dev.tsv", "only one column\n", "line 1"),
        ("mono/xc.txt", b"ok\n\xff\xfe broken\n", "UTF-8"),
    ],
)
def test_validate_names_the_bad_file_and_line(broken_world, file, content, needle, capsys) -> None:
    path = broken_world / file
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    assert main(["data", "validate", str(broken_world)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and needle in err and Path(file).name in err


def test_unknown_qrels_ids_are_reported_and_strict_fails(broken_world, capsys) -> None:
    qrels = broken_world / "eval/en-xc/dev/qrels.txt"
    qrels.write_text(qrels.read_text() + "ghost 0 nodoc 1\n")
    assert main(["data", "validate", str(broken_world)]) == 0  # lenient: dropped, counted
    out = capsys.readouterr().out
    assert "query id 'ghost'" in out and "1 unknown queries" in out and "dropped" in out
    assert main(["data", "validate", str(broken_world), "--strict"]) == 2
    assert "unknown" in capsys.readouterr().err


def test_train_then_evaluate_from_the_cli(tiny_world, tmp_path, capsys) -> None:
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"""
name: cli
pair: en-xc
output_dir: {tmp_path / "runs"}
data: {{root: {tiny_world.root}}}
train: {{stages: [rank, distill], log_every: 1000, warmup_ratio: 0.0}}
rank: {{steps: 3, batch_size: 8, lr: 1.0e-3}}
distill: {{steps: 3, batch_size: 8, lr: 1.0e-3}}
eval: {{metrics: [map, mrr@10], pairs: [en-en, en-xc]}}
""")
    assert main(["train", "--config", str(cfg), "distill.epsilon=0.1"]) == 0
    model = tmp_path / "runs" / "cli" / "model"
    assert (model / "optical_ray.json").is_file()
    saved = json.loads((tmp_path / "runs" / "cli" / "config.json").read_text())
    assert saved["distill"]["epsilon"] == 0.1  # the resolved config beside the output
    capsys.readouterr()
    out_dir = tmp_path / "eval"
    assert (
        main(
            [
                "evaluate",
                "--checkpoint",
                str(model),
                "--pairs",
                "en-en,xc-en",
                "--split",
                "test",
                "--out",
                str(out_dir),
            ]
        )
        == 0
    )
    table = capsys.readouterr().out
    assert "en-en" in table and "xc-en" in table
    metrics = json.loads((out_dir / "metrics.json").read_text())
    assert metrics["split"] == "test"
    assert set(metrics["results"]) == {"en-en", "xc-en"}
    assert list(out_dir.glob("run.*.trec"))


def test_synth_overwrite_replaces_a_world(tmp_path, capsys) -> None:
    out = tmp_path / "world"
    args = ["data", "synth", "--out", str(out), "--scale", "tiny", "--languages", "xc"]
    assert main(args + ["--bitext-size", "xc=50"]) == 0
    assert main(args + ["--bitext-size", "xc=60"]) == 2  # refused without the flag
    assert "--overwrite" in capsys.readouterr().err
    assert main(args + ["--bitext-size", "xc=60", "--overwrite"]) == 0
    assert json.loads((out / "manifest.json").read_text())["languages"]["xc"]["bitext_size"] == 60


def test_search_spaces_the_code_names_exist() -> None:
    import re

    import optical_ray

    package = Path(optical_ray.__file__).parent
    named = {
        n
        for f in package.rglob("*.py")
        for n in re.findall(r"search_spaces/[\w.-]+\.yaml", f.read_text(encoding="utf-8"))
    }
    assert "search_spaces/default.yaml" in named
    assert [n for n in sorted(named) if not (package.parent / n).is_file()] == []
