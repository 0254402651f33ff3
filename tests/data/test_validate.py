"""Collections and dataset validation: consistency checks, strict/lenient, reports."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

from optical_ray.data import (
    Collection,
    Triple,
    load_collection,
    validate_dataset,
    write_bitext,
    write_corpus,
    write_lines,
    write_qrels,
    write_queries,
    write_triples,
)
from optical_ray.errors import DataError


def make_collection(path: Path, *, qrels: dict | None = None, triples: list | None = None) -> Path:
    write_queries(path / "queries.tsv", {"q1": "first", "q2": "second", "q3": "third"})
    write_corpus(
        path / "corpus.jsonl", [{"docid": f"d{i}", "text": f"doc {i}"} for i in range(1, 5)]
    )
    write_qrels(
        path / "qrels.txt", qrels or {"q1": {"d1": 1, "d2": 0}, "q2": {"d3": 2}, "q3": {"d4": 0}}
    )
    if triples is not None:
        write_triples(path / "triples.jsonl", triples)
    return path


def make_dataset(root: Path) -> Path:
    (root / "manifest.json").parent.mkdir(parents=True, exist_ok=True)
    (root / "manifest.json").write_text(
        json.dumps({"kind": "synthetic", "seed": 0, "pairs": ["en-sw", "sw-en"]})
    )
    (root / "tokenizer").mkdir()
    (root / "tokenizer" / "tokenizer.json").write_text("{}")
    make_collection(root / "train" / "en", triples=[{"qid": "q1", "pos": "d1", "neg": ["d2"]}])
    make_collection(root / "eval" / "en-sw" / "dev")
    make_collection(root / "eval" / "en-sw" / "test")
    make_collection(root / "eval" / "sw-en" / "test")
    write_bitext(root / "bitext" / "en-sw" / "train.tsv", [("hello", "habari"), ("one", "moja")])
    write_bitext(root / "bitext" / "en-sw" / "dev.tsv", [("two", "mbili")])
    write_lines(root / "mono" / "sw.txt", ["habari ya asubuhi", "moja mbili tatu"])
    return root


# ---------------------------------------------------------------- load_collection


def test_load_collection_counts(tmp_path: Path) -> None:
    col = load_collection(
        make_collection(tmp_path, triples=[{"qid": "q1", "pos": "d1", "neg": ["d2", "d3"]}])
    )
    assert isinstance(col, Collection)
    assert col.counts() == {"queries": 3, "docs": 4, "qrels": 4, "triples": 1}
    assert col.queries["q2"] == "second" and col.corpus.get("d3").text == "doc 3"
    assert col.qrels == {"q1": {"d1": 1, "d2": 0}, "q2": {"d3": 2}, "q3": {"d4": 0}}
    assert list(col.iter_triples()) == [Triple("q1", ("d1",), ("d2", "d3"))]
    assert col.queries_without_relevant == 1  # q3 is judged, but only non-relevant
    assert any("1 of 3 queries have no relevant document" in w for w in col.warnings)


def test_load_collection_alternative_files(tmp_path: Path) -> None:
    (tmp_path / "queries.jsonl").write_text('{"_id": "q1", "text": "a"}\n')
    (tmp_path / "corpus.tsv").write_text("d1\tdoc one\tTitle\n")
    (tmp_path / "qrels").mkdir()
    (tmp_path / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    col = load_collection(tmp_path, qrels=tmp_path / "qrels" / "test.tsv")
    assert col.counts() == {"queries": 1, "docs": 1, "qrels": 1} and col.corpus[0].title == "Title"


def test_load_collection_missing_files(tmp_path: Path) -> None:
    write_queries(tmp_path / "queries.tsv", {"q1": "a"})
    with pytest.raises(
        DataError,
        match=r"not a collection directory, missing corpus: corpus\.jsonl or .*; qrels: qrels\.txt",
    ):
        load_collection(tmp_path)
    with pytest.raises(DataError, match=r"nope: collection directory not found"):
        load_collection(tmp_path / "nope")


def test_load_collection_two_queries_files(tmp_path: Path) -> None:
    make_collection(tmp_path)
    (tmp_path / "queries.jsonl").write_text('{"qid": "q1", "text": "a"}\n')
    with pytest.raises(
        DataError, match=r"several queries files \(queries\.tsv, queries\.jsonl\); keep one"
    ):
        load_collection(tmp_path)


def test_qrels_unknown_ids_strict(tmp_path: Path) -> None:
    make_collection(tmp_path, qrels={"q1": {"d1": 1}, "q9": {"d1": 1}, "q2": {"d99": 1, "d3": 1}})
    with pytest.raises(
        DataError,
        match=(
            r"qrels\.txt: line 2: query id 'q9' is not in .*queries\.tsv \(2 of 4 judgements name unknown ids: "
            r"1 unknown queries, 1 unknown documents\); fix the ids or load with strict=False"
        ),
    ):
        load_collection(tmp_path)


def test_qrels_unknown_ids_lenient(tmp_path: Path) -> None:
    make_collection(tmp_path, qrels={"q1": {"d1": 1}, "q9": {"d1": 1}, "q2": {"d99": 1, "d3": 1}})
    with pytest.warns(UserWarning, match=r"qrels\.txt: line 2: query id 'q9'.*dropped"):
        col = load_collection(tmp_path, strict=False)
    assert col.dropped_qrels == 2 and col.qrels == {"q1": {"d1": 1}, "q2": {"d3": 1}}
    assert col.queries_without_relevant == 1  # q3


def test_qrels_with_no_known_ids(tmp_path: Path) -> None:
    make_collection(tmp_path, qrels={"x": {"y": 1}})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(
            DataError, match=r"qrels\.txt: no judgement names a known query and document"
        ):
            load_collection(tmp_path, strict=False)


def test_triples_unknown_ids(tmp_path: Path) -> None:
    make_collection(
        tmp_path,
        triples=[
            {"qid": "q1", "pos": "d1", "neg": ["d2"]},
            {"qid": "q2", "pos": "d3", "neg": ["d77"]},
        ],
    )
    with pytest.raises(
        DataError,
        match=r"triples\.jsonl: line 2: id 'd77' is in neither queries nor corpus \(1 of 2 triples",
    ):
        load_collection(tmp_path)
    with pytest.warns(UserWarning, match=r"1 of 2 triples name unknown ids"):
        col = load_collection(tmp_path, strict=False)
    assert col.dropped_triples == 1
    assert list(col.iter_triples()) == [Triple("q1", ("d1",), ("d2",)), Triple("q2", ("d3",), ())]


def test_corpus_errors_surface_with_line(tmp_path: Path) -> None:
    make_collection(tmp_path)
    with (tmp_path / "corpus.jsonl").open("a") as f:
        f.write('{"docid": "d2", "text": "again"}\n')
    with pytest.raises(DataError, match=r"corpus\.jsonl: line 5: duplicate document id 'd2'"):
        load_collection(tmp_path)


# ---------------------------------------------------------------- validate_dataset


def test_validate_dataset_standard_layout(tmp_path: Path) -> None:
    report = validate_dataset(make_dataset(tmp_path / "data"))
    assert report.ok, report.format()
    by_path = {e.path: e for e in report.entries}
    assert set(by_path) == {
        "manifest.json",
        "tokenizer",
        "train/en",
        "eval/en-sw/dev",
        "eval/en-sw/test",
        "eval/sw-en/test",
        "bitext/en-sw/dev.tsv",
        "bitext/en-sw/train.tsv",
        "mono/sw.txt",
    }
    assert by_path["train/en"].counts == {"queries": 3, "docs": 4, "qrels": 4, "triples": 1}
    assert by_path["bitext/en-sw/train.tsv"].counts == {"pairs": 2}
    assert by_path["mono/sw.txt"].counts == {"lines": 2}
    table = report.format()
    assert table.splitlines()[0].endswith(": OK")
    assert "train/en" in table and "queries" in table and "pairs" in table
    row = next(line for line in table.splitlines() if line.startswith("bitext/en-sw/train.tsv"))
    assert row.split()[-3:] == ["2", "-", "ok"]  # pairs, lines, status


def test_validate_dataset_collects_every_problem(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "data")
    (root / "eval" / "en-sw" / "dev" / "queries.tsv").write_bytes(b"q1\tok\nq2\tbad \xff\n")
    write_lines(root / "bitext" / "en-sw" / "extra.en", ["a", "b", "c"])
    write_lines(root / "bitext" / "en-sw" / "extra.sw", ["x", "y"])
    (root / "bitext" / "en_sw").mkdir()
    (root / "mono" / "en.txt").write_text("")
    (root / "notes").mkdir()
    report = validate_dataset(root)
    assert not report.ok and len(report.problems) == 4, report.problems
    problems = "\n".join(report.problems)
    assert "queries.tsv: line 2 (byte offset 13) is not valid UTF-8" in problems
    assert "extra.en has 3 lines but" in problems and "extra.sw has 2" in problems
    assert "invalid language pair 'en_sw'" in problems
    assert "en.txt: file is empty" in problems
    assert any("notes: not part of the standard layout" in w for w in report.warnings)
    assert "4 problem(s)" in report.format() and "ERROR" in report.format()
    with pytest.raises(DataError, match=r"not valid UTF-8.*\(and 3 more problems\)"):
        report.raise_if_failed()


def test_validate_dataset_strict_vs_lenient(tmp_path: Path) -> None:
    root = tmp_path / "data"
    make_collection(root / "eval" / "en-sw" / "test", qrels={"q1": {"d1": 1}, "q1x": {"d1": 1}})
    lenient = validate_dataset(root)
    assert lenient.ok and any("query id 'q1x'" in w for w in lenient.warnings)
    assert lenient.entries[0].counts["qrels"] == 1
    strict = validate_dataset(root, strict=True)
    assert not strict.ok and "query id 'q1x'" in strict.problems[0]


def test_validate_single_collection_dir(tmp_path: Path) -> None:
    report = validate_dataset(make_collection(tmp_path))
    assert report.ok and report.entries[0].counts == {"queries": 3, "docs": 4, "qrels": 4}


def test_validate_bitext_aligned_files_and_empty_sides(tmp_path: Path) -> None:
    root = tmp_path / "data"
    write_lines(root / "bitext" / "sw-en" / "train.sw", ["moja", "", "tatu"])
    write_lines(root / "bitext" / "sw-en" / "train.en", ["one", "two", "three"])
    report = validate_dataset(root)
    assert report.ok and report.entries[0].counts == {"pairs": 2}
    assert any("1 of 3 pairs have an empty side" in w for w in report.warnings)


def test_validate_bad_manifest(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "data")
    (root / "manifest.json").write_text('{"pairs": ["en-sw", "english"]}')
    report = validate_dataset(root)
    assert report.problems == [
        f"{root / 'manifest.json'}: 'pairs': invalid language pair 'english'; "
        "expected <query_lang>-<doc_lang> with letters, digits or underscores "
        "on each side, e.g. en-sw or eng_Latn-swh_Latn"
    ]


def test_validate_empty_root_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "tokenizer").mkdir()
    with pytest.raises(
        DataError, match=r"no dataset found; expected a collection directory .* mono/<lang>\.txt"
    ):
        validate_dataset(tmp_path)
    with pytest.raises(DataError, match=r"missing: dataset directory not found"):
        validate_dataset(tmp_path / "missing")


# --------------------------------------------------------------------------- bitext layout in train


@pytest.mark.parametrize(
    "files, pair",
    [
        ({"bitext/en-xc/train.en": "a b\nc d\n", "bitext/en-xc/train.xc": "x y\nz w\n"}, "en-xc"),
        ({"bitext/xc-en/train.xc": "x y\nz w\n", "bitext/xc-en/train.en": "a b\nc d\n"}, "en-xc"),
        ({"bitext/xc-en/train.tsv": "x y\ta b\nz w\tc d\n"}, "xc-en"),
    ],
)
def test_train_reads_bitext_in_any_layout_that_validate_accepts(
    tmp_path: Path, files, pair
) -> None:
    from optical_ray.config import from_flat
    from optical_ray.data.sources import bitext_pairs

    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text, encoding="utf-8")
    assert validate_dataset(tmp_path).ok
    cfg = from_flat({"data.root": str(tmp_path), "pair": pair})
    assert bitext_pairs(cfg) == [("a b", "x y"), ("c d", "z w")]  # English side first


def test_train_bitext_one_aligned_side_missing_is_named(tmp_path: Path) -> None:
    from optical_ray.config import from_flat
    from optical_ray.data.sources import bitext_pairs

    (tmp_path / "bitext" / "en-xc").mkdir(parents=True)
    (tmp_path / "bitext" / "en-xc" / "train.en").write_text("a\n", encoding="utf-8")
    with pytest.raises(
        DataError,
        match=r"train\.en: line-aligned bitext needs both train\.en "
        r"and train\.xc",
    ):
        bitext_pairs(from_flat({"data.root": str(tmp_path), "pair": "en-xc"}))


def test_validate_lists_every_problem_of_one_collection(tmp_path: Path) -> None:
    """A bad queries file does not hide a bad corpus or qrels file; in strict mode the
    qrels' and the triples' unknown ids are both problems."""
    col = make_collection(tmp_path / "eval" / "en-sw" / "test")
    (col / "queries.tsv").write_bytes(b"q1\tfirst\nq2\tsec\xffond\n")
    (col / "corpus.jsonl").write_text('{"docid": "d1", "text": "doc 1"}\n{"docid": \n')
    (col / "qrels.txt").write_text("q1 0 d1\n")
    report = validate_dataset(tmp_path)
    assert len(report.problems) == 3, report.problems
    for name in ("queries.tsv", "corpus.jsonl", "qrels.txt"):
        assert sum(name in p for p in report.problems) == 1, (name, report.problems)
    (entry,) = report.entries
    assert entry.error == report.problems[0] and entry.errors == report.problems
    assert report.format().count("ERROR ") == 3

    both = make_collection(
        tmp_path / "strict",
        qrels={"q1": {"d1": 1}, "qx": {"d1": 1}},
        triples=[{"qid": "q1", "pos": "d1", "neg": ["dx"]}],
    )
    strict = validate_dataset(both, strict=True)
    assert len(strict.problems) == 2, strict.problems
    assert "query id 'qx'" in strict.problems[0] and "'dx'" in strict.problems[1]
    assert all(p.endswith("load with strict=False to drop them") for p in strict.problems)
    lenient = validate_dataset(both)
    assert lenient.ok and sum(w.endswith("; dropped") for w in lenient.warnings) == 2
