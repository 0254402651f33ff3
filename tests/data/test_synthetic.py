"""The synthetic CLIR world: layout, determinism, consistency, and that it is learnable
with a gap (checked with lexical retrieval, no neural model)."""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest

from optical_ray.data.formats import (
    iter_bitext,
    iter_corpus,
    iter_triples,
    read_lines,
    read_qrels,
    read_queries,
)
from optical_ray.data.synthetic import LANGUAGE_PRESETS, SCALES, load_manifest, synthesize_world
from optical_ray.errors import ConfigError, DataError

TINY = SCALES["tiny"]


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def _corpus(path: Path) -> dict[str, str]:
    return {d.docid: d.text for d in iter_corpus(path)}


# ------------------------------------------------------------------------------ layout


def test_layout_manifest_and_sizes(tiny_world):
    root = tiny_world.root
    m = load_manifest(root)
    assert m == tiny_world
    assert m.kind == "synthetic" and m.version == 1 and m.seed == 0 and m.scale == "tiny"
    assert list(m.languages) == ["xa", "xb", "xc"]
    assert set(m.pairs) == {"en-en", "en-xa", "xa-en", "en-xb", "xb-en", "en-xc", "xc-en"}
    for code, info in m.languages.items():
        assert (
            info["code"] == code and info["bitext_size"] == TINY.bitext[LANGUAGE_PRESETS[code].tier]
        )
    assert m.languages_by_resource("high") == ["xa", "xb"]
    assert m.languages_by_resource("low") == ["xc"]
    assert (root / "README.md").read_text().startswith("# Synthetic multilingual CLIR world")

    t = m.train_dir
    assert len(read_queries(t / "queries.tsv")) == m.sizes["train"]["queries"] == TINY.train_queries
    assert len(_corpus(t / "corpus.jsonl")) == m.sizes["train"]["corpus"] == TINY.train_corpus
    assert len(read_qrels(t / "qrels.txt")) == TINY.train_queries
    assert len(list(iter_triples(t / "triples.jsonl"))) == m.sizes["train"]["triples"]
    for pair in m.pairs:
        for split in ("dev", "test"):
            d = m.eval_dir(pair, split)
            assert (
                len(read_queries(d / "queries.tsv"))
                == m.sizes["eval"][split]["queries"]
                == TINY.eval_queries
            )
            assert (
                len(_corpus(d / "corpus.jsonl"))
                == m.sizes["eval"][split]["corpus"]
                == TINY.eval_corpus
            )
    for code in m.languages:
        assert (
            len(list(iter_bitext(m.bitext_path(code, "train")))) == m.sizes["bitext"][code]["train"]
        )
        assert len(list(iter_bitext(m.bitext_path(code, "dev")))) == TINY.bitext_dev
    for code in ["en", *m.languages]:
        assert len(read_lines(m.mono_path(code))) == m.sizes["mono"][code] == TINY.mono
    assert (m.tokenizer_dir / "tokenizer.json").is_file()
    with pytest.raises(DataError, match="'en-zz'"):
        m.eval_dir("en-zz", "dev")


def test_eval_pairs_share_queries_docs_and_qrels(tiny_world):
    m = tiny_world
    for split in ("dev", "test"):
        ref = m.eval_dir("en-en", split)
        qrels = read_qrels(ref / "qrels.txt")
        queries, docs = read_queries(ref / "queries.tsv"), _corpus(ref / "corpus.jsonl")
        assert set(qrels) == set(queries)
        assert all(
            set(rel) <= set(docs) and rel and all(r == 1 for r in rel.values())
            for rel in qrels.values()
        )
        for code in m.languages:
            for pair, same in ((f"en-{code}", "queries"), (f"{code}-en", "docs")):
                d = m.eval_dir(pair, split)
                q2, docs2 = read_queries(d / "queries.tsv"), _corpus(d / "corpus.jsonl")
                assert read_qrels(d / "qrels.txt") == qrels
                assert list(q2) == list(queries) and list(docs2) == list(docs)
                # The English side is the English collection itself; the other is translated.
                assert (q2 == queries) == (same == "queries")
                assert (docs2 == docs) == (same == "docs")
    dev, test = (read_queries(m.eval_dir("en-en", s) / "queries.tsv") for s in ("dev", "test"))
    assert not set(dev) & set(test)
    dev_docs, test_docs = (
        _corpus(m.eval_dir("en-en", s) / "corpus.jsonl") for s in ("dev", "test")
    )
    assert not set(dev_docs.values()) & set(test_docs.values())


def test_names_and_numbers_survive_translation_and_words_do_not(tiny_world):
    m = tiny_world
    en = _corpus(m.eval_dir("en-en", "dev") / "corpus.jsonl")
    entity = re.compile(r"\b(?:[A-Z][a-z]+|\d+)\b")
    for code, cognates in (("xa", 0.5), ("xc", 0.0)):
        foreign = _corpus(m.eval_dir(f"en-{code}", "dev") / "corpus.jsonl")
        shared = total = 0
        for docid, text in en.items():
            assert Counter(entity.findall(text)) == Counter(entity.findall(foreign[docid]))
            words = set(re.findall(r"\b[a-z]+\b", text))
            shared += len(words & set(re.findall(r"\b[a-z]+\b", foreign[docid])))
            total += len(words)
        # xa keeps about half of the words as cognates; xc shares nothing but entities.
        assert (shared / total > 0.3) if cognates else shared == 0


def test_training_data_and_bitext(tiny_world):
    m = tiny_world
    t = m.train_dir
    corpus, qrels = _corpus(t / "corpus.jsonl"), read_qrels(t / "qrels.txt")
    for tr in iter_triples(t / "triples.jsonl"):
        assert len(tr.pos) == 1 and tr.pos[0] in qrels[tr.query]
        assert len(tr.neg) == TINY.negatives and not set(tr.neg) & set(qrels[tr.query])
        assert set(tr.neg) <= set(corpus)
    eval_texts = {
        text
        for s in ("dev", "test")
        for text in _corpus(m.eval_dir("en-en", s) / "corpus.jsonl").values()
    }
    for code in m.languages:
        pairs = list(iter_bitext(m.bitext_path(code)))
        assert not {src for src, _ in pairs} & eval_texts
    assert all(src != tgt for src, tgt in iter_bitext(m.bitext_path("xc")))


def test_same_seed_same_bytes_other_seed_other_world(tiny_world, tmp_path):
    again = synthesize_world(tmp_path / "again", seed=0, scale="tiny")
    assert _files(again.root) == _files(tiny_world.root)
    other = synthesize_world(tmp_path / "other", seed=1, scale="tiny")
    a, b = _files(tiny_world.root), _files(other.root)
    assert a.keys() == b.keys()
    differ = [k for k in a if k.endswith((".tsv", ".jsonl", ".txt")) and a[k] != b[k]]
    assert len(differ) == sum(k.endswith((".tsv", ".jsonl", ".txt")) for k in a)


def test_language_subset_and_bitext_sizes(tiny_world, tmp_path):
    m = synthesize_world(
        tmp_path / "w", seed=0, scale="tiny", languages=["xc"], bitext_sizes={"xc": 123}
    )
    assert m.pairs == ("en-en", "en-xc", "xc-en")
    assert m.languages["xc"]["bitext_size"] == 123 and m.languages["xc"]["resource"] == "low"
    assert len(list(iter_bitext(m.bitext_path("xc", "train")))) == 123
    assert not (m.root / "eval" / "en-xa").exists() and not (m.root / "bitext" / "en-xa").exists()
    # Each language has its own random streams: dropping xa and xb changes nothing of xc.
    for pair in m.pairs:
        for split in ("dev", "test"):
            assert _files(m.eval_dir(pair, split)) == _files(tiny_world.eval_dir(pair, split))
    # A custom language: all cognates, English order, no morphology or noise = English.
    same = replace(
        LANGUAGE_PRESETS["xa"],
        code="xd",
        cognate_rate=1.0,
        adjective_after_noun=False,
        drop_rate=0.0,
        typo_rate=0.0,
    )
    m = synthesize_world(tmp_path / "custom", seed=0, scale="tiny", languages=[same])
    for pair in ("en-xd", "xd-en"):
        assert _files(m.eval_dir(pair, "dev")) == _files(tiny_world.eval_dir("en-en", "dev"))
    big = synthesize_world(
        tmp_path / "big",
        seed=0,
        scale="tiny",
        languages=["xa"],
        bitext_sizes={"xa": TINY.high_resource_min},
    )
    assert big.languages["xa"]["resource"] == "high"


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"languages": ["xz"]}, ConfigError, r"'xz' is unknown; presets: \['xa', 'xb', 'xc'\]"),
        ({"languages": ["xa", "xa"]}, ConfigError, "'xa' is given twice"),
        ({"bitext_sizes": {"xq": 5}}, ConfigError, r"bitext_sizes\['xq'\]"),
        ({"bitext_sizes": {"xa": 0}}, ConfigError, r"bitext_sizes\['xa'\]=0: must be a positive"),
        (
            {"scale": "huge"},
            ConfigError,
            r"scale='huge' is unknown; allowed: \['default', 'tiny'\]",
        ),
        ({"seed": "0"}, ConfigError, "seed='0'"),
        (
            {"languages": [replace(LANGUAGE_PRESETS["xc"], code="en", typo_rate=2.0)]},
            ConfigError,
            r"2 errors: language code 'en': is English itself.*en.typo_rate=2.0: must be in \[0, 1\]",
        ),
    ],
)
def test_bad_arguments_raise_one_clear_error(tmp_path, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        synthesize_world(tmp_path / "w", **{"scale": "tiny", **kwargs})
    assert not (tmp_path / "w").exists()


def test_existing_world_needs_overwrite_and_manifest_errors(tmp_path):
    root = tmp_path / "w"
    synthesize_world(root, scale="tiny", languages=["xa"], seed=3)
    with pytest.raises(DataError, match="already holds a world"):
        synthesize_world(root, scale="tiny", languages=[])
    (root / "notes.txt").write_text("mine")
    m = synthesize_world(root, scale="tiny", languages=[], overwrite=True)
    assert m.pairs == ("en-en",) and not (root / "bitext" / "en-xa").exists()
    assert (root / "notes.txt").read_text() == "mine"  # overwrite removes only world entries
    with pytest.raises(DataError, match="not found"):
        load_manifest(tmp_path / "nowhere")
    (root / "manifest.json").write_text('{"kind": "beir", "version": 1}')
    with pytest.raises(DataError, match="kind='beir', expected 'synthetic'"):
        load_manifest(root)


# ----------------------------------------------------------- learnable, with a gap
# A BM25 run over whitespace tokens stands in for a retrieval model: English queries find
# their passages, an easy language keeps some of that through cognates, the hard one falls
# to what names and numbers give, and a word-translation table learnt from its bitext
# alone (Dice over aligned pairs) brings most of it back: the signal OT distillation uses.

_WORD = re.compile(r"\w+")


def _bag(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _mrr_at_10(
    queries: dict[str, Counter], docs: dict[str, list[str]], qrels, k1=1.2, b=0.75
) -> float:
    n = len(docs)
    df = Counter(w for toks in docs.values() for w in set(toks))
    idf = {w: math.log(1 + (n - c + 0.5) / (c + 0.5)) for w, c in df.items()}
    avg = sum(map(len, docs.values())) / n
    tfs = {d: (Counter(toks), len(toks)) for d, toks in docs.items()}
    total = 0.0
    for qid, terms in queries.items():
        scores = {}
        for d, (tf, length) in tfs.items():
            s = sum(
                wt * idf[w] * tf[w] * (k1 + 1) / (tf[w] + k1 * (1 - b + b * length / avg))
                for w, wt in terms.items()
                if w in tf
            )
            if s > 0:
                scores[d] = s
        ranked = sorted(scores, key=lambda d: (-scores[d], d))[:10]
        total += next((1 / (r + 1) for r, d in enumerate(ranked) if qrels[qid].get(d)), 0.0)
    return total / len(queries)


def _lexical_mrr(m, pair: str, *, table=None, keep=None) -> float:
    """MRR@10 over dev+test; ``table`` maps a query word to weighted translations,
    ``keep`` restricts query and documents to a set of words."""
    out = []
    for split in ("dev", "test"):
        d = m.eval_dir(pair, split)
        docs = {
            i: [w for w in _bag(t) if keep is None or w in keep]
            for i, t in _corpus(d / "corpus.jsonl").items()
        }
        queries = {}
        for qid, text in read_queries(d / "queries.tsv").items():
            terms: Counter = Counter()
            for w in _bag(text):
                if keep is not None and w not in keep:
                    continue
                for t, wt in (table.get(w, {w: 1.0}) if table else {w: 1.0}).items():
                    terms[t] += wt
            queries[qid] = terms
        out.append(_mrr_at_10(queries, docs, read_qrels(d / "qrels.txt")))
    return sum(out) / len(out)


def _dice_table(pairs, top: int = 4) -> dict[str, dict[str, float]]:
    """English word -> its ``top`` foreign words by Dice coefficient over sentence pairs,
    weights normalised to 1 (several because nouns inflect and some words have synonyms)."""
    ce, cf, co = Counter(), Counter(), Counter()
    for src, tgt in pairs:
        e, f = set(_bag(src)), set(_bag(tgt))
        ce.update(e)
        cf.update(f)
        co.update((a, b) for a in e for b in f)
    cands: dict[str, list[tuple[float, str]]] = {}
    for (a, b), n in co.items():
        cands.setdefault(a, []).append((2 * n / (ce[a] + cf[b]), b))
    table = {}
    for a, lst in cands.items():
        best = sorted(lst, key=lambda x: (-x[0], x[1]))[:top]
        z = sum(s for s, _ in best)
        table[a] = {b: s / z for s, b in best}
    return table


def _gap_figures(m) -> dict[str, float]:
    en_words = {
        w
        for s in ("dev", "test")
        for t in _corpus(m.eval_dir("en-en", s) / "corpus.jsonl").values()
        for w in _bag(t)
    }
    xc_words = {
        w
        for s in ("dev", "test")
        for t in _corpus(m.eval_dir("en-xc", s) / "corpus.jsonl").values()
        for w in _bag(t)
    }
    return {
        "en-en": _lexical_mrr(m, "en-en"),
        "en-xa": _lexical_mrr(m, "en-xa"),
        "en-xc": _lexical_mrr(m, "en-xc"),
        "xc-en": _lexical_mrr(m, "xc-en"),
        # English retrieval with only the words English and xc share: names and numbers.
        "floor-xc": _lexical_mrr(m, "en-en", keep=en_words & xc_words),
        "en-xc+dict": _lexical_mrr(m, "en-xc", table=_dice_table(iter_bitext(m.bitext_path("xc")))),
    }


def _assert_learnable_with_gap(f: dict[str, float]) -> None:
    assert f["en-en"] > 0.85, f
    assert f["en-xa"] < f["en-en"] - 0.1, f
    assert f["en-xc"] < f["en-xa"] - 0.2, f
    assert abs(f["xc-en"] - f["en-xc"]) < 0.1, f
    assert abs(f["en-xc"] - f["floor-xc"]) < 0.1, f
    # The bitext-learnt dictionary closes at least 60% of the en-en / en-xc gap.
    assert f["en-xc+dict"] - f["en-xc"] > 0.6 * (f["en-en"] - f["en-xc"]), f


def test_world_is_learnable_with_a_gap_that_bitext_closes(tiny_world):
    _assert_learnable_with_gap(_gap_figures(tiny_world))


@pytest.mark.slow
def test_default_world_is_learnable_with_a_gap(tmp_path):
    m = synthesize_world(tmp_path / "w", seed=0)
    assert m.sizes["bitext"] == {
        "xa": {"train": 20000, "dev": 500},
        "xb": {"train": 5000, "dev": 500},
        "xc": {"train": 1000, "dev": 500},
    }
    _assert_learnable_with_gap(_gap_figures(m))
