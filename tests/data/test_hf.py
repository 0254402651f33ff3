"""Hugging Face adapters: tiny local datasets through every preset, never the network."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before `datasets` is imported: no network, ever
os.environ["HF_DATASETS_OFFLINE"] = "1"

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

datasets = pytest.importorskip("datasets")

from optical_ray.data import Triple, write_qrels  # noqa: E402
from optical_ray.data.hf import load_hf_bitext, load_hf_collection  # noqa: E402
from optical_ray.errors import DataError  # noqa: E402


def passage(docid: str, text: str, title: str = "") -> dict:
    return {"docid": docid, "title": title, "text": text}


def miracl_rows() -> dict:
    return {
        "query_id": ["1", "2"],
        "query": ["habari ya dunia?", "nini ni OT?"],
        "positive_passages": [
            [passage("d1", "dunia ni kubwa", "Dunia")],
            [passage("d2", "OT ni usafirishaji")],
        ],
        "negative_passages": [[passage("d2", "OT ni usafirishaji"), passage("d3", "mvua")], []],
    }


@pytest.fixture
def saved(tmp_path: Path):
    """Save a dataset (or DatasetDict) with ``save_to_disk`` and return its folder."""

    def save(obj, name: str = "ds") -> Path:
        path = tmp_path / name
        obj.save_to_disk(str(path))
        return path

    return save


@pytest.mark.parametrize("preset", ["miracl", "mrtydi"])
def test_grouped_presets_from_disk(saved, preset: str) -> None:
    path = saved(datasets.DatasetDict({"train": datasets.Dataset.from_dict(miracl_rows())}))
    col = load_hf_collection(path, preset=preset, split="train")
    assert col.counts() == {"queries": 2, "docs": 3, "qrels": 2, "triples": 2}
    assert col.queries == {"1": "habari ya dunia?", "2": "nini ni OT?"}
    assert col.corpus.get("d1").title == "Dunia" and col.qrels == {"1": {"d1": 1}, "2": {"d2": 1}}
    assert list(col.iter_triples()) == [
        Triple("1", ("d1",), ("d2", "d3")),
        Triple("2", ("d2",), ()),
    ]


def test_xor_tydi_preset_without_query_ids(saved) -> None:
    ctx = lambda text: {"title": "T", "text": text}  # noqa: E731  DPR contexts, no passage ids
    ds = datasets.Dataset.from_dict(
        {
            "question": ["who?", "where?"],
            "answers": [["a"], ["b"]],
            "positive_ctxs": [[ctx("alpha")], [ctx("beta")]],
            "hard_negative_ctxs": [[ctx("beta")], [ctx("gamma")]],
        }
    )
    col = load_hf_collection(
        saved(ds), preset="xor-tydi", field_map={"query_id": None, "docid": None}
    )
    assert col.queries == {"q0": "who?", "q1": "where?"}
    assert col.num_docs == 3 and col.num_qrels == 2
    beta = next(d for d in col.corpus if d.text == "beta")
    assert col.qrels["q1"] == {beta.docid: 1} and list(col.iter_triples())[0].neg == (beta.docid,)


def test_mmarco_text_triples_from_jsonl(tmp_path: Path) -> None:
    path = tmp_path / "triples.jsonl"
    datasets.Dataset.from_dict(
        {
            "query": ["swali moja", "swali moja", "swali mbili"],
            "positive": ["jibu A", "jibu A", "jibu B"],
            "negative": ["si jibu", "jibu B", "si jibu"],
        }
    ).to_json(str(path))
    col = load_hf_collection(path, preset="mmarco", cache_dir=tmp_path / "cache")
    assert col.queries == {"q0": "swali moja", "q1": "swali mbili"}
    assert [d.text for d in col.corpus] == ["jibu A", "si jibu", "jibu B"]
    assert col.qrels == {"q0": {"d0": 1}, "q1": {"d2": 1}}
    assert col.num_triples == 3 and list(col.iter_triples())[1] == Triple("q0", ("d0",), ("d2",))


def test_mmarco_parts_with_trec_qrels(saved, tmp_path: Path) -> None:
    queries = saved(datasets.Dataset.from_dict({"id": [1, 2], "text": ["a?", "b?"]}), "queries")
    collection = datasets.Dataset.from_dict(
        {"id": [10, 11, 12], "text": ["ten", "eleven", "twelve"]}
    )
    write_qrels(tmp_path / "qrels.dev.tsv", {"1": {"10": 1}, "2": {"12": 1}})
    col = load_hf_collection(
        {"queries": queries, "collection": collection, "qrels": tmp_path / "qrels.dev.tsv"},
        preset="mmarco",
    )
    assert col.counts() == {"queries": 2, "docs": 3, "qrels": 2}
    assert col.corpus.get("11").text == "eleven" and col.qrels["2"] == {"12": 1}


def test_beir_parts_with_qrels_dataset(saved) -> None:
    source = {
        "queries": datasets.Dataset.from_dict({"_id": ["q1"], "text": ["what?"]}),
        "corpus": saved(
            datasets.Dataset.from_dict(
                {"_id": ["d1", "d2"], "title": ["T", None], "text": ["x", "y"]}
            )
        ),
        "qrels": datasets.Dataset.from_dict(
            {"query-id": ["q1", "q1"], "corpus-id": ["d1", "d2"], "score": [1, 0]}
        ),
    }
    col = load_hf_collection(source, preset="beir")
    assert col.qrels == {"q1": {"d1": 1, "d2": 0}} and col.corpus.get("d1").title == "T"
    with pytest.raises(DataError, match=r"preset 'beir' needs source=\{'queries'"):
        load_hf_collection(source["queries"], preset="beir")


def test_opus_bitext(saved) -> None:
    ds = datasets.Dataset.from_dict(
        {
            "translation": [
                {"en": "good morning", "sw": "habari za asubuhi"},
                {"en": "", "sw": "tupu"},
                {"en": "thanks", "sw": "asante"},
            ]
        }
    )
    pairs = load_hf_bitext(saved(ds), "en", "sw")
    assert len(pairs) == 2 and pairs[0] == ("good morning", "habari za asubuhi")
    assert (pairs.src_lang, pairs.tgt_lang) == ("en", "sw")
    reverse = load_hf_bitext(ds, "sw", "en", preset="opus")
    assert reverse[1] == ("asante", "thanks")
    with pytest.raises(
        DataError, match=r"no language 'fr' in 'translation'; languages present: en, sw"
    ):
        load_hf_bitext(ds, "en", "fr")


def test_column_bitext_presets(tmp_path: Path) -> None:
    flores = datasets.Dataset.from_dict(
        {"sentence_eng_Latn": ["one"], "sentence_swh_Latn": ["moja"]}
    )
    assert list(load_hf_bitext(flores, "eng_Latn", "swh_Latn", preset="flores")) == [
        ("one", "moja")
    ]
    cols = datasets.Dataset.from_dict({"en": ["two"], "sw": ["mbili"]})
    assert load_hf_bitext(cols, "en", "sw", preset="columns")[0] == ("two", "mbili")
    custom = datasets.Dataset.from_dict({"source": ["three"], "target": ["tatu"]})
    pairs = load_hf_bitext(
        custom, "en", "sw", preset="columns", field_map={"src": "source", "tgt": "target"}
    )
    assert pairs.take([0]) == (["three"], ["tatu"])


def test_unknown_preset_and_field_map_key() -> None:
    ds = datasets.Dataset.from_dict(miracl_rows())
    with pytest.raises(
        DataError,
        match=r"unknown preset 'msmarco'; allowed: miracl, mrtydi, xor-tydi, mmarco, beir",
    ):
        load_hf_collection(ds, preset="msmarco")
    with pytest.raises(DataError, match=r"unknown preset 'tmx'; allowed: opus, columns, flores"):
        load_hf_bitext(ds, "en", "sw", preset="tmx")
    with pytest.raises(
        DataError,
        match=r"unknown field_map key 'qid' for preset 'miracl'; allowed: query_id, query",
    ):
        load_hf_collection(ds, field_map={"qid": "id"})


def test_missing_field_names_field_and_fields_present() -> None:
    ds = datasets.Dataset.from_dict(
        {"id": ["1"], "query": ["a"], "positive_passages": [[passage("d1", "x")]]}
    )
    with pytest.raises(
        DataError,
        match=(
            r"<Dataset>: field 'query_id' \(query_id\) not found; fields present: id, query, positive_passages; "
            r"set field_map=\{'query_id': ...\}"
        ),
    ):
        load_hf_collection(ds, preset="miracl")
    assert load_hf_collection(ds, field_map={"query_id": "id"}).queries == {"1": "a"}
    bad = datasets.Dataset.from_dict(
        {"query_id": ["1"], "query": ["a"], "positive_passages": [[{"id": "d1", "text": "x"}]]}
    )
    with pytest.raises(
        DataError,
        match=r"row 0: passage field 'docid' \(docid\) not found; passage fields present: id, text",
    ):
        load_hf_collection(bad)
    with pytest.raises(
        DataError, match=r"field 'translation' \(translation\) not found; fields present: id, query"
    ):
        load_hf_bitext(ds, "en", "sw")


def test_duplicate_query_ids(saved) -> None:
    rows = miracl_rows()
    rows["query_id"] = ["1", "1"]
    with pytest.raises(DataError, match=r"row 1: duplicate query id '1'"):
        load_hf_collection(saved(datasets.Dataset.from_dict(rows)))


def test_split_selection(saved) -> None:
    ds = datasets.Dataset.from_dict(miracl_rows())
    path = saved(datasets.DatasetDict({"train": ds, "dev": ds.select([0])}))
    assert load_hf_collection(path, split="dev").num_queries == 1
    with pytest.raises(DataError, match=r"split 'test' not found; splits available: dev, train"):
        load_hf_collection(path, split="test")
    with pytest.raises(DataError, match=r"split None not found; splits available: dev, train"):
        load_hf_collection(path)


def test_unreachable_hub_name_and_missing_path(tmp_path: Path) -> None:
    with pytest.raises(
        DataError, match=r"nobody/no-such-dataset: could not load the dataset .*offline\?"
    ):
        load_hf_collection("nobody/no-such-dataset", cache_dir=tmp_path / "cache")
    with pytest.raises(DataError, match=r"gone\.jsonl: file or folder not found"):
        load_hf_bitext(tmp_path / "gone.jsonl", "en", "sw")
