"""File formats: every writer round-trips through its reader; bad input names file/line."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from optical_ray.data import (
    Corpus,
    Doc,
    TextPairs,
    Triple,
    detect_format,
    iter_bitext,
    iter_corpus,
    iter_lines,
    iter_queries,
    iter_triples,
    parse_pair,
    read_bitext,
    read_corpus,
    read_lines,
    read_qrels,
    read_queries,
    write_bitext,
    write_corpus,
    write_lines,
    write_qrels,
    write_queries,
    write_triples,
)
from optical_ray.errors import DataError

QUERIES = {"q1": "what is ot?", "q2": "ni nini\tsinkhorn", "q3": "ünïcødé ✓"}
DOCS = [
    {"docid": "d1", "text": "optimal transport", "title": "OT"},
    {"docid": "d2", "text": "line\nbreak inside"},
    {"docid": "d3", "text": "maandishi ya Kiswahili", "title": ""},
]


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return path


# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize("name", ["queries.tsv", "queries.tsv.gz", "sub/dir/queries.tsv"])
def test_queries_round_trip(tmp_path: Path, name: str) -> None:
    write_queries(tmp_path / name, QUERIES)
    got = read_queries(tmp_path / name)
    assert got == {"q1": "what is ot?", "q2": "ni nini sinkhorn", "q3": "ünïcødé ✓"}
    assert list(iter_queries(tmp_path / name)) == list(got.items())


def test_queries_jsonl_variants_and_header(tmp_path: Path) -> None:
    jsonl = write(
        tmp_path / "q.jsonl", '{"_id": 1, "text": "a"}\n{"query_id": "2", "query": "b"}\n'
    )
    assert read_queries(jsonl) == {"1": "a", "2": "b"}
    tsv = write(tmp_path / "q.tsv", "qid\ttext\nq1\thello\r\n\n")
    assert read_queries(tsv) == {"q1": "hello"}


@pytest.mark.parametrize("name", ["corpus.jsonl", "corpus.jsonl.gz"])
def test_corpus_round_trip(tmp_path: Path, name: str) -> None:
    assert write_corpus(tmp_path / name, DOCS) == 3
    docs = list(iter_corpus(tmp_path / name))
    assert docs == [
        Doc("d1", "optimal transport", "OT"),
        Doc("d2", "line break inside", ""),
        Doc("d3", "maandishi ya Kiswahili", ""),
    ]
    corpus = read_corpus(tmp_path / name)
    assert isinstance(corpus, Corpus) and len(corpus) == 3
    assert corpus[0] == docs[0] and corpus[-1] == docs[2]
    assert corpus.get("d2") == docs[1] and corpus.get("nope") is None
    assert "d3" in corpus and list(corpus) == docs


def test_corpus_batches_and_tsv(tmp_path: Path) -> None:
    path = write(tmp_path / "c.tsv", "d1\tfirst\tT1\nd2\tsecond\nd3\tthird\n")
    batches = list(iter_corpus(path, batch_size=2))
    assert [len(b) for b in batches] == [2, 1]
    assert batches[0][0] == Doc("d1", "first", "T1") and batches[1][0].docid == "d3"
    assert [len(b) for b in read_corpus(path).batches(2)] == [2, 1]
    pyserini = write(tmp_path / "p.jsonl", '{"id": 7, "contents": "x"}\n')
    assert list(iter_corpus(pyserini)) == [Doc("7", "x", "")]


def test_corpus_is_columnar(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    write_corpus(path, ({"docid": f"d{i}", "text": f"text {i}"} for i in range(1000)))
    corpus = read_corpus(path)
    assert corpus.table.num_rows == 1000 and corpus.table.column_names == ["docid", "text", "title"]
    assert corpus[999] == Doc("d999", "text 999", "") and corpus.index["d500"] == 500


@pytest.mark.parametrize("name", ["qrels.txt", "qrels.txt.gz"])
def test_qrels_round_trip(tmp_path: Path, name: str) -> None:
    qrels = {"q1": {"d1": 1, "d2": 0}, "q2": {"d3": 2}}
    write_qrels(tmp_path / name, qrels)
    assert read_qrels(tmp_path / name) == qrels


def test_qrels_beir_tsv_with_header(tmp_path: Path) -> None:
    path = write(tmp_path / "test.tsv", "query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td2\t0\n")
    assert read_qrels(path) == {"q1": {"d1": 1, "d2": 0}}


def test_triples_round_trip(tmp_path: Path) -> None:
    rows = [{"qid": "q1", "pos": "d1", "neg": ["d2", "d3"]}, Triple("q2", ("d3",), ())]
    assert write_triples(tmp_path / "t.jsonl", rows) == 2
    assert list(iter_triples(tmp_path / "t.jsonl")) == [
        Triple("q1", ("d1",), ("d2", "d3")),
        Triple("q2", ("d3",), ()),
    ]


def test_triples_tsv_ids_and_texts(tmp_path: Path) -> None:
    path = write(tmp_path / "t.tsv", "q1\td1\td2\td3\n")
    assert list(iter_triples(path)) == [Triple("q1", ("d1",), ("d2", "d3"))]
    texts = write(tmp_path / "tt.tsv", "a query\ta good passage\ta bad one\n")
    assert list(iter_triples(texts, texts=True)) == [
        Triple("a query", ("a good passage",), ("a bad one",), True)
    ]
    js = write(
        tmp_path / "tt.jsonl", '{"query": "q", "positive": "p", "negatives": ["n1", "n2"]}\n'
    )
    assert list(iter_triples(js)) == [Triple("q", ("p",), ("n1", "n2"), True)]


@pytest.mark.parametrize("name", ["b.tsv", "b.tsv.gz"])
def test_bitext_round_trip(tmp_path: Path, name: str) -> None:
    pairs = [("hello", "habari"), ("tab\there", "mstari\nmpya")]
    assert write_bitext(tmp_path / name, pairs) == 2
    assert list(iter_bitext(tmp_path / name)) == [("hello", "habari"), ("tab here", "mstari mpya")]
    loaded = read_bitext(tmp_path / name)
    assert isinstance(loaded, TextPairs) and len(loaded) == 2
    assert loaded[1] == ("tab here", "mstari mpya") and loaded[-1] == loaded[1]
    assert loaded.take([1, 0]) == (["tab here", "hello"], ["mstari mpya", "habari"])
    assert list(loaded[:1]) == [("hello", "habari")]


def test_bitext_jsonl_forms(tmp_path: Path) -> None:
    plain = write(tmp_path / "p.jsonl", '{"src": "a", "tgt": "b"}\n')
    assert list(iter_bitext(plain)) == [("a", "b")]
    opus = '{"translation": {"en": "good", "sw": "nzuri"}}\n'
    keyed = write(tmp_path / "x.jsonl", opus)
    assert list(iter_bitext(keyed, src_lang="sw", tgt_lang="en")) == [("nzuri", "good")]
    in_pair_dir = write(tmp_path / "en-sw" / "train.jsonl", opus)
    assert list(iter_bitext(in_pair_dir)) == [("good", "nzuri")]
    with pytest.raises(DataError, match=r"x\.jsonl.*pass src_lang"):
        list(iter_bitext(keyed))
    with pytest.raises(DataError, match=r"line 1: no text for language 'fr'; keys present: en, sw"):
        list(iter_bitext(keyed, src_lang="en", tgt_lang="fr"))


def test_bitext_two_aligned_files(tmp_path: Path) -> None:
    src = write(tmp_path / "train.en", "one\n\nthree\n")
    tgt = write(tmp_path / "train.sw", "moja\nmbili\ntatu\n")
    assert list(iter_bitext((src, tgt))) == [
        ("one", "moja"),
        ("three", "tatu"),
    ]  # empty side skipped
    assert len(list(iter_bitext((src, tgt), skip_empty=False))) == 3
    assert read_bitext((src, tgt))[1] == ("three", "tatu")


def test_lines_round_trip(tmp_path: Path) -> None:
    assert write_lines(tmp_path / "mono" / "sw.txt", ["a b", "c\nd", "e"]) == 3
    assert read_lines(tmp_path / "mono" / "sw.txt") == ["a b", "c d", "e"]
    js = write(tmp_path / "m.jsonl", '{"text": "x"}\n{"text": "y"}\n')
    assert list(iter_lines(js)) == ["x", "y"]


def test_gzip_detected_from_magic_bytes(tmp_path: Path) -> None:
    path = tmp_path / "queries.tsv"
    path.write_bytes(gzip.compress(b"q1\thello\n"))
    assert read_queries(path) == {"q1": "hello"}


def test_detect_format() -> None:
    assert detect_format("a/b.tsv.gz") == "tsv"
    assert detect_format("x.json") == "jsonl"
    assert detect_format("x.bin", fmt="tsv") == "tsv"
    with pytest.raises(
        DataError, match=r"x\.bin: cannot tell the format from the extension '\.bin'"
    ):
        detect_format("x.bin")
    with pytest.raises(DataError, match=r"unknown format 'csv'; allowed: jsonl, trec, tsv, txt"):
        detect_format("x.tsv", fmt="csv")


def test_fmt_overrides_extension(tmp_path: Path) -> None:
    path = write(tmp_path / "queries.dat", '{"qid": "q1", "text": "hi"}\n')
    assert read_queries(path, fmt="jsonl") == {"q1": "hi"}


@pytest.mark.parametrize(
    ("pair", "expected"),
    [
        ("en-sw", ("en", "sw")),
        ("sw-en", ("sw", "en")),
        ("eng_Latn-swh_Latn", ("eng_Latn", "swh_Latn")),
    ],
)
def test_parse_pair(pair: str, expected: tuple[str, str]) -> None:
    assert parse_pair(pair) == expected


@pytest.mark.parametrize("bad", ["en", "en-", "en_sw", "en-sw-fr", "en sw", "en-s.w"])
def test_parse_pair_rejects(bad: str) -> None:
    with pytest.raises(
        DataError, match=f"invalid language pair '{bad}'; expected <query_lang>-<doc_lang>"
    ):
        parse_pair(bad)


def test_writers_reject_ids_with_whitespace(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"qrels\.txt: cannot write document id 'd 1'"):
        write_qrels(tmp_path / "qrels.txt", {"q1": {"d 1": 1}})


# ---------------------------------------------------------------- bad input


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nope\.tsv: file not found"):
        read_queries(tmp_path / "nope.tsv")


@pytest.mark.parametrize(
    "reader", [read_queries, read_qrels, read_lines, lambda p: list(iter_corpus(p))]
)
def test_empty_file(tmp_path: Path, reader) -> None:
    path = write(tmp_path / "empty.txt", "\n\n")
    with pytest.raises(DataError, match=r"empty\.txt: file is empty"):
        reader(path)


def test_header_only_file(tmp_path: Path) -> None:
    path = write(tmp_path / "q.tsv", "qid\ttext\n")
    with pytest.raises(DataError, match=r"q\.tsv: holds no queries, only a header"):
        read_queries(path)


def test_wrong_column_count(tmp_path: Path) -> None:
    path = write(tmp_path / "queries.tsv", "q1\tok\nq2\tok\nq3 no tab here\n")
    with pytest.raises(
        DataError,
        match=r"queries\.tsv: line 3: expected 2 columns: qid, text \(tab-separated\), found 1 column: 'q3 no tab here'",
    ):
        read_queries(path)
    corpus = write(tmp_path / "corpus.tsv", "d1\ta\nd2\tb\tc\td\n")
    with pytest.raises(DataError, match=r"corpus\.tsv: line 2: expected 2 or 3 columns.*found 4"):
        read_corpus(corpus)
    bitext = write(tmp_path / "b.tsv", "a\tb\na\tb\tc\n")
    with pytest.raises(
        DataError, match=r"b\.tsv: line 2: expected 2 columns: source, target.*found 3"
    ):
        list(iter_bitext(bitext))
    triples = write(tmp_path / "t.tsv", "q1\td1\n")
    with pytest.raises(
        DataError, match=r"t\.tsv: line 1: expected 3\+ columns: qid, pos docid, neg docid.*found 2"
    ):
        list(iter_triples(triples))
    qrels = write(tmp_path / "qrels.txt", "q1 0 d1 1\nq1 0 d2\n")
    with pytest.raises(
        DataError, match=r"qrels\.txt: line 2: expected 4 columns: qid 0 docid rel, found 3"
    ):
        read_qrels(qrels)


def test_invalid_json(tmp_path: Path) -> None:
    path = write(
        tmp_path / "corpus.jsonl", '{"docid": "d1", "text": "a"}\n{"docid": "d2", "text": }\n'
    )
    with pytest.raises(
        DataError, match=r"corpus\.jsonl: line 2: invalid JSON \(Expecting value, column 25\)"
    ):
        read_corpus(path)
    array = write(tmp_path / "q.json", '[\n{"qid": "q1", "text": "a"}\n]\n')
    with pytest.raises(DataError, match=r"q\.json: line 1: invalid JSON.*convert.*JSON Lines"):
        read_queries(array)
    not_obj = write(tmp_path / "q.jsonl", '["q1", "a"]\n')
    with pytest.raises(DataError, match=r"q\.jsonl: line 1: expected a JSON object, found list"):
        read_queries(not_obj)


def test_missing_required_field(tmp_path: Path) -> None:
    path = write(
        tmp_path / "corpus.jsonl", '{"docid": "d1", "text": "a"}\n{"docid": "d2", "body": "b"}\n'
    )
    with pytest.raises(
        DataError,
        match=r"corpus\.jsonl: line 2: missing text field \(one of text, contents\); fields present: docid, body",
    ):
        read_corpus(path)
    q = write(tmp_path / "q.jsonl", '{"text": "a"}\n')
    with pytest.raises(
        DataError,
        match=r"q\.jsonl: line 1: missing query id field \(one of qid, _id, query_id, id\)",
    ):
        read_queries(q)
    t = write(tmp_path / "t.jsonl", '{"qid": "q1", "neg": ["d2"]}\n')
    with pytest.raises(DataError, match=r"t\.jsonl: line 1: missing pos field"):
        list(iter_triples(t))


def test_wrong_field_types(tmp_path: Path) -> None:
    path = write(tmp_path / "c.jsonl", '{"docid": ["d1"], "text": "a"}\n')
    with pytest.raises(
        DataError, match=r"c\.jsonl: line 1: document id must be a string, found \['d1'\]"
    ):
        read_corpus(path)
    t = write(tmp_path / "t.jsonl", '{"qid": "q1", "pos": [], "neg": ["d2"]}\n')
    with pytest.raises(DataError, match=r"t\.jsonl: line 1: no positive document"):
        list(iter_triples(t))
    mixed = write(
        tmp_path / "m.jsonl", '{"qid": "q1", "pos": "d1"}\n{"query": "x", "positive": "y"}\n'
    )
    with pytest.raises(DataError, match=r"m\.jsonl: line 2: mixes id triples"):
        list(iter_triples(mixed))


def test_duplicate_ids(tmp_path: Path) -> None:
    q = write(tmp_path / "queries.tsv", "q1\ta\nq2\tb\nq1\tc\n")
    with pytest.raises(DataError, match=r"queries\.tsv: line 3: duplicate query id 'q1'"):
        read_queries(q)
    c = write(
        tmp_path / "corpus.jsonl", '{"docid": "d1", "text": "a"}\n\n{"docid": "d1", "text": "b"}\n'
    )
    with pytest.raises(DataError, match=r"corpus\.jsonl: line 3: duplicate document id 'd1'"):
        read_corpus(c)
    with pytest.raises(DataError, match=r"line 3: duplicate document id 'd1'"):
        list(iter_corpus(c))
    assert len(list(iter_corpus(c, check_duplicates=False))) == 2


def test_conflicting_qrels(tmp_path: Path) -> None:
    path = write(tmp_path / "qrels.txt", "q1 0 d1 1\nq1 0 d1 2\n")
    with pytest.raises(
        DataError,
        match=r"qrels\.txt: line 2: \('q1', 'd1'\) judged again with relevance 2, earlier 1",
    ):
        read_qrels(path)


@pytest.mark.parametrize("rel", ["x", "1.0", "high"])
def test_rel_not_int(tmp_path: Path, rel: str) -> None:
    path = write(tmp_path / "qrels.txt", f"q1 0 d1 1\nq1 0 d2 0\nq2 0 d3 {rel}\n")
    with pytest.raises(
        DataError, match=rf"qrels\.txt: line 3: relevance '{rel}' is not an integer"
    ):
        read_qrels(path)


def test_bitext_files_of_different_lengths(tmp_path: Path) -> None:
    src = write(tmp_path / "train.en", "a\nb\nc\n")
    tgt = write(tmp_path / "train.sw", "x\ny\n")
    with pytest.raises(
        DataError, match=r"train\.en has 3 lines but .*train\.sw has 2; line-aligned"
    ):
        read_bitext((src, tgt))


def test_undecodable_text(tmp_path: Path) -> None:
    path = write(tmp_path / "queries.tsv", b"q1\tok\nq2\tfine\nq3\tcaf\xe9\n")
    with pytest.raises(
        DataError, match=r"queries\.tsv: line 3 \(byte offset 20\) is not valid UTF-8: b'\\xe9';"
    ):
        read_queries(path)


def test_corrupt_gzip(tmp_path: Path) -> None:
    path = tmp_path / "q.tsv.gz"
    path.write_bytes(gzip.compress(b"".join(b"q%d\thello\n" % i for i in range(100)))[:40])
    with pytest.raises(DataError, match=r"q\.tsv\.gz: cannot read the file"):
        read_queries(path)


def test_format_cannot_hold(tmp_path: Path) -> None:
    path = write(tmp_path / "q.trec", "q1 0 d1 1\n")
    with pytest.raises(
        DataError, match=r"q\.trec: format 'trec' cannot hold queries; allowed: tsv, txt, jsonl"
    ):
        read_queries(path)


def test_written_jsonl_is_valid_json(tmp_path: Path) -> None:
    write_corpus(tmp_path / "c.jsonl", DOCS)
    lines = (tmp_path / "c.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["docid"] for line in lines] == ["d1", "d2", "d3"]
    assert "title" not in json.loads(lines[2])  # empty titles are left out
