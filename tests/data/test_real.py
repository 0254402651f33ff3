"""Loaders of the real data samples (../shared/data): counts, alignment, splits, layout.

Tests that read the samples skip when the folder is absent (set OPTICAL_RAY_SHARED_DATA
to point elsewhere)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from optical_ray.cli.parser import main
from optical_ray.config import from_flat
from optical_ray.data import real
from optical_ray.data.sources import bitext_pairs, eval_collection, mono_texts
from optical_ray.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def shared() -> Path:
    try:
        return real.shared_data_dir()
    except DataError as exc:
        pytest.skip(f"real data samples not available: {exc}")


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


# --------------------------------------------------------------------------- no data needed


def test_shared_dir_comes_from_argument_then_env(tmp_path, monkeypatch):
    monkeypatch.setenv(real.ENV_VAR, str(tmp_path))
    assert real.shared_data_dir() == tmp_path.resolve()
    other = tmp_path / "other"
    other.mkdir()
    assert real.shared_data_dir(other) == other.resolve()
    monkeypatch.setenv(real.ENV_VAR, str(tmp_path / "missing"))
    with pytest.raises(DataError, match=r"from \$OPTICAL_RAY_SHARED_DATA"):
        real.shared_data_dir()


def test_language_aliases():
    assert [real.canonical_lang(x) for x in ("sw", "HA", "eng", "de", "fin")] == [
        "swa",
        "hau",
        "en",
        "deu",
        "fin",
    ]


def test_split_is_by_document_and_stable():
    docs = [f"d{i // 3}" for i in range(60)]  # 20 documents of 3 lines
    split = real.ntrex_split_documents(docs, dev_fraction=0.25)
    assert len(split["dev"]) == 5 and len(split["test"]) == 15
    assert not split["dev"] & split["test"] and split["dev"] | split["test"] == set(docs)
    assert split == real.ntrex_split_documents(list(reversed(docs)), dev_fraction=0.25)
    with pytest.raises(DataError, match="dev_fraction"):
        real.ntrex_split_documents(docs, dev_fraction=1.0)


def test_cli_bad_shared_folder_is_one_line_exit_2(tmp_path, capsys):
    assert (
        main(
            [
                "data",
                "prepare-real",
                "--shared",
                str(tmp_path / "nope"),
                "--out",
                str(tmp_path / "out"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not a directory" in err[0]


def test_real_format_in_the_wrong_section_is_a_config_error():
    with pytest.raises(ConfigError, match="data.eval.swa-en.format: got 'mafand'"):
        from_flat({"data.eval": {"swa-en": {"path": "", "format": "mafand"}}})
    with pytest.raises(ConfigError, match="data.bitext.en-swa.format: got 'ntrex'"):
        from_flat({"data.bitext": {"en-swa": {"path": "", "format": "ntrex"}}})


def test_monolingual_text_comes_from_the_mafand_train_split_only(tmp_path):
    """data.mono.<lang>: {format: mafand} is the foreign side of MAFAND-MT's train
    split (stage adapt); a dev or test split is refused, and so is an evaluation format."""
    from tests.fake_shared import make_fake_shared

    fake = make_fake_shared(tmp_path / "shared", bitext=5)
    cfg = from_flat(
        {"pair": "swa-en", "data.mono": {"swa": {"path": str(fake), "format": "mafand"}}}
    )
    assert mono_texts(cfg, "swa") == [f"swa train pair {i}" for i in range(5)]
    with pytest.raises(ConfigError) as exc:
        from_flat(
            {
                "data.mono": {
                    "swa": {"path": "", "format": "mafand", "split": "test"},
                    "hau": {"path": "", "format": "ntrex"},
                }
            }
        )
    assert any("data.mono.swa.split: got 'test'" in p for p in exc.value.problems)
    assert any("data.mono.hau.format: got 'ntrex'" in p for p in exc.value.problems)
    # Any text file is a monolingual source too (one text a line).
    text = tmp_path / "swa.txt"
    text.write_text("habari ya asubuhi\nkaribu sana\n", encoding="utf-8")
    cfg = from_flat({"pair": "swa-en", "data.mono": {"swa": str(text)}})
    assert mono_texts(cfg, "swa") == ["habari ya asubuhi", "karibu sana"]


# --------------------------------------------------------------------------- MAFAND-MT


def test_mafand_counts_and_alignment(shared):
    base = shared / "mafand_mt" / "data" / "text_files"
    hau = real.mafand_bitext("hau", "train", shared)
    assert len(hau) == 3098
    assert hau[0] == (
        _lines(base / "en-hau" / "train.en")[0].strip(),
        _lines(base / "en-hau" / "train.hau")[0].strip(),
    )
    assert hau[-1][1] == _lines(base / "en-hau" / "train.hau")[-1].strip()
    assert len(real.mafand_bitext("sw", "dev", shared)) == 1791
    assert len(real.mafand_bitext("swa", "test", shared)) == 1835
    with pytest.raises(DataError, match="no pair en-xyz"):
        real.mafand_bitext("xyz", "train", shared)


# --------------------------------------------------------------------------- NTREX-128


def test_ntrex_is_line_aligned_with_document_ids(shared):
    ids = real.ntrex_document_ids(shared)
    assert len(ids) == 1997 and len(set(ids)) == 123
    for lang in ("en", "swa", "hau", "deu", "fra", "fin"):
        assert len(real.ntrex_sentences(lang, shared)) == len(ids)
    eng, swa = real.ntrex_sentences("en", shared), real.ntrex_sentences("swa", shared)
    raw = _lines(shared / "ntrex128" / "NTREX-128" / "newstest2019-ref.swa.txt")
    assert swa[1000] == raw[1000].strip() and eng[0].startswith(
        _lines(shared / "ntrex128" / "NTREX-128" / "newstest2019-src.eng.txt")[0].strip()[:20]
    )


def test_ntrex_dev_and_test_never_share_a_document(shared):
    ids = real.ntrex_document_ids(shared)
    dev = real.ntrex_collection("swa", "en", "dev", shared=shared)
    test = real.ntrex_collection("swa", "en", "test", shared=shared)
    assert dev.num_queries + test.num_queries == 1997
    line = lambda qid: int(qid[1:])  # noqa: E731  (query ids are L<line>)
    dev_docs = {ids[line(q)] for q in dev.queries}
    test_docs = {ids[line(q)] for q in test.queries}
    assert not dev_docs & test_docs and len(dev_docs | test_docs) == 123


def test_ntrex_sentence_qrels_point_at_the_same_line(shared):
    eng, swa = real.ntrex_sentences("en", shared), real.ntrex_sentences("swa", shared)
    col = real.ntrex_collection("swa", "en", "test", shared=shared)
    assert col.dropped_qrels == 0 and col.queries_without_relevant == 0
    for qid, rel in col.qrels.items():
        i = int(qid[1:])
        assert col.queries[qid] == swa[i]
        ((docid, grade),) = rel.items()
        assert grade == 1 and col.corpus.get(docid).text == eng[i]
    reverse = real.ntrex_collection("en", "hau", "dev", shared=shared)
    hau = real.ntrex_sentences("hau", shared)
    qid = next(iter(reverse.qrels))
    assert reverse.corpus.get(next(iter(reverse.qrels[qid]))).text == hau[int(qid[1:])]


def test_ntrex_document_level(shared):
    ids, eng = real.ntrex_document_ids(shared), real.ntrex_sentences("en", shared)
    col = real.ntrex_collection("hau", "en", "dev", level="document", shared=shared)
    assert col.num_docs == len({ids[int(q[1:])] for q in col.queries})
    for qid, rel in col.qrels.items():
        ((docid, _),) = rel.items()
        assert docid == f"D-{ids[int(qid[1:])]}"
        assert eng[int(qid[1:])] in col.corpus.get(docid).text


# --------------------------------------------------------------------------- AfriQA / XQuAD-R


def test_afriqa_drops_null_contexts_and_reads_files_without_final_newline(shared):
    path = (
        shared
        / "afriqa"
        / "data"
        / "gold_passages"
        / "hau"
        / "gold_span_passages.afriqa.hau.en.dev.json"
    )
    assert not path.read_bytes().endswith(b"\n")  # the case the loader must survive
    rows = [json.loads(x) for x in _lines(path) if x.strip()]
    nulls = sum(r["context"] is None for r in rows)
    assert nulls > 0
    col = real.afriqa_collection("hau", "dev", shared)
    assert col.num_queries == len(rows) - nulls
    assert col.dropped_qrels == 0 and col.queries_without_relevant == 0
    texts = [d.text for d in col.corpus]
    assert len(texts) == len(set(texts))  # the pool holds each passage once
    by_q = {
        " ".join(r["question_lang"].split()): " ".join(r["context"].split())
        for r in rows
        if r["context"]
    }
    for qid, rel in col.qrels.items():
        assert col.corpus.get(next(iter(rel))).text == by_q[col.queries[qid]]
    assert real.afriqa_collection("swa", "test", shared).num_queries == 295
    with pytest.raises(DataError, match="no English gold passages for swa dev"):
        real.afriqa_collection("swa", "dev", shared)


def test_xquad_r_qrels_hold_the_answer(shared):
    data = json.loads((shared / "xquad_r" / "xquad-r" / "en.json").read_text(encoding="utf-8"))
    answers = {
        qa["id"]: qa["answers"][0]["text"]
        for a in data["data"]
        for p in a["paragraphs"]
        for qa in p["qas"]
    }
    dev = real.xquad_r_collection("de", "en", "dev", shared=shared)
    test = real.xquad_r_collection("de", "en", "test", shared=shared)
    assert dev.num_queries + test.num_queries == 1190 and not set(dev.queries) & set(test.queries)
    hits = sum(answers[q] in test.corpus.get(next(iter(rel))).text for q, rel in test.qrels.items())
    assert hits >= 0.95 * len(test.qrels)  # a few answers straddle a sentence break


# --------------------------------------------------------------------------- layout and sources


def test_prepare_real_writes_a_valid_standard_root(shared, tmp_path, capsys):
    from optical_ray.data.validate import validate_dataset

    out = tmp_path / "real"
    assert (
        main(
            [
                "data",
                "prepare-real",
                "--shared",
                str(shared),
                "--out",
                str(out),
                "--languages",
                "hau",
                "--reference",
                "deu",
            ]
        )
        == 0
    )
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert {"hau-en", "en-hau", "hau-en_doc", "hau-en_afriqa", "deu-en", "en-en"} <= set(
        manifest["pairs"]
    )
    report = validate_dataset(out, strict=True)
    assert report.ok, report.problems
    cfg = from_flat({"data.root": str(out), "pair": "hau-en"})
    assert len(bitext_pairs(cfg)) == 3098
    assert len(bitext_pairs(cfg, split="dev")) == 1300
    assert (
        eval_collection(cfg, "hau-en", "test").num_queries
        == real.ntrex_collection("hau", "en", "test", shared=shared).num_queries
    )
    assert (
        eval_collection(cfg, "hau-en_afriqa", "dev").num_docs
        == real.afriqa_collection("hau", "dev", shared).num_docs
    )


def test_config_sources_read_the_samples_directly(shared):
    cfg = from_flat(
        {
            "pair": "swa-en",
            "data.bitext": {"en-swa": {"path": str(shared), "format": "mafand"}},
            "data.eval": {
                "swa-en": {"path": str(shared), "format": "ntrex"},
                "swa-en_doc": {"path": str(shared), "format": "ntrex_doc"},
                "hau-en_afriqa": {"path": "", "format": "afriqa"},
            },
        }
    )
    assert len(bitext_pairs(cfg)) == 30782
    assert len(bitext_pairs(cfg, split="dev")) == 1791
    assert (
        eval_collection(cfg, "swa-en", "dev").num_queries
        == real.ntrex_collection("swa", "en", "dev", shared=shared).num_queries
    )
    assert eval_collection(cfg, "swa-en_doc", "test").num_docs < 123
    assert eval_collection(cfg, "hau-en_afriqa", "test").num_queries == 300


# --------------------------------------------------------------------------- English teacher


def test_ict_pair_is_a_fixed_span_and_the_rest():
    sentence = " ".join(f"w{i}" for i in range(15))
    q, d = real.ict_pair(sentence)
    assert (q, d) == real.ict_pair(sentence)  # fixed by the sentence, not a seed
    words = q.split()
    assert len(words) == 5 and q in sentence
    if d != sentence:  # the span is cut out of the document (9 sentences in 10)
        assert sorted(d.split() + words) == sorted(sentence.split())
    assert real.ict_pair("too short to be a pair") is None
    kept = [real.ict_pair(f"{sentence} x{i}") for i in range(300)]
    n_full = sum(d == f"{sentence} x{i}" for i, (_, d) in enumerate(kept))
    assert 10 <= n_full <= 60  # about one in ten keeps its span


def _fake_shared(root: Path) -> Path:
    """A shared data folder with one AfriQA train file, one test file and MAFAND English."""
    gold = root / "afriqa" / "data" / "gold_passages" / "hau"
    gold.mkdir(parents=True)

    def row(i: int, q: str, c: str) -> str:
        return json.dumps(
            {
                "id": str(i),
                "question_lang": "x",
                "question_translated": q,
                "context": c,
                "title": "T",
            }
        )

    (gold / "gold_span_passages.afriqa.hau.en.train.json").write_text(
        "\n".join(
            [
                row(0, "Who won?", "Ann won the race."),
                row(1, "Where is X?", None),
                row(2, "When?", "In 1990 it began."),
            ]
        ),
        encoding="utf-8",
    )
    (gold / "gold_span_passages.afriqa.hau.en.test.json").write_text(
        row(9, "A test question?", "A test passage."), encoding="utf-8"
    )
    mafand = root / "mafand_mt" / "data" / "text_files" / "en-hau"
    mafand.mkdir(parents=True)
    long = [" ".join(f"s{j}w{i}" for i in range(14)) for j in range(5)]
    (mafand / "train.en").write_text("\n".join(long + ["short line"]) + "\n", encoding="utf-8")
    (mafand / "test.en").write_text(
        " ".join(f"test{i}" for i in range(20)) + "\n", encoding="utf-8"
    )
    return root


def test_english_rank_collection_reads_train_splits_only(tmp_path):
    shared = _fake_shared(tmp_path / "shared")
    col = real.english_rank_collection(shared)
    afriqa = {q: t for q, t in col.queries.items() if q.startswith("afriqa-")}
    assert afriqa == {"afriqa-hau-0": "Who won?", "afriqa-hau-2": "When?"}  # null context dropped
    ((doc, _),) = col.qrels["afriqa-hau-0"].items()
    assert col.corpus.get(doc).text == "Ann won the race." and col.corpus.get(doc).title == "T"
    ict = [q for q in col.queries if q.startswith("ict-")]
    assert len(ict) == 5  # the short line makes no pair
    texts = " ".join(list(col.queries.values()) + [d.text for d in col.corpus])
    assert "test" not in texts.lower()  # nothing from a test split
    assert len(real.english_rank_collection(shared, ict_sentences=2).queries) == 4
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no English training pairs"):
        real.english_rank_collection(tmp_path / "empty")


def test_english_train_is_a_rank_source(tmp_path):
    from optical_ray.data.sources import rank_collection

    shared = _fake_shared(tmp_path / "shared")
    cfg = from_flat({"data.rank": {"path": str(shared), "format": "english_train"}})
    assert rank_collection(cfg).num_queries == 7
    with pytest.raises(ConfigError, match="data.rank.format: got 'ntrex'"):
        from_flat({"data.rank": {"path": "", "format": "ntrex"}})
    with pytest.raises(ConfigError, match="data.bitext.en-hau.format: got 'english_train'"):
        from_flat({"data.bitext": {"en-hau": {"path": "", "format": "english_train"}}})


def test_english_rank_collection_on_the_samples(shared):
    col = real.english_rank_collection(shared, ict_sentences=100)
    n_afriqa = sum(q.startswith("afriqa-") for q in col.queries)
    assert n_afriqa == 223 and col.num_queries == 323  # hau train rows with a context
    assert col.queries_without_relevant == 0
