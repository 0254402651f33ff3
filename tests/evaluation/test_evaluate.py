"""Evaluation: pytrec_eval metrics against hand computations, streaming ranking,
candidate reranking, TREC runs (paired tests and the gap report: test_compare.py).

The model is a bag-of-words fake with the RetrievalModel contract (``encode_texts``,
``score``, ``score_pairs``): one-hot token vectors weighted by powers of two, so every
score is exact in float32 and rankings can be compared with ``==``.
"""

from __future__ import annotations

import math
import random
from types import SimpleNamespace

import pytest
import torch

from optical_ray.config import from_dict
from optical_ray.data.collection import Collection, Corpus
from optical_ray.data.formats import Doc
from optical_ray.errors import ConfigError, DataError, TrainingError
from optical_ray.evaluation.ranking import (
    evaluate_collection,
    evaluate_pairs,
    evaluate_run,
    format_metrics_table,
    load_results,
    parse_metric,
    rank,
    read_trec_run,
    write_trec_run,
)
from optical_ray.models.encoder import Encoded, maxsim

VOCAB = [f"w{i}" for i in range(16)]


class BagOfWords:
    """Token i of the vocabulary -> weight * e_i (weights 1, 1/2, 1/4, 1/8)."""

    def __init__(self, scoring: str = "late_interaction") -> None:
        self.cfg = SimpleNamespace(scoring=scoring)
        self.weights = torch.tensor([2.0 ** -(i % 4) for i in range(len(VOCAB))])
        self.encoded_docs = 0

    def encode_texts(self, texts, kind, *, batch_size=64, device=None) -> Encoded:
        ids = [[VOCAB.index(w) for w in t.split()] for t in texts]
        if kind == "doc":
            self.encoded_docs += len(texts)
        width = max([len(x) for x in ids] + [1])
        vectors = torch.zeros(len(ids), width, len(VOCAB))
        mask = torch.zeros(len(ids), width, dtype=torch.bool)
        for b, row in enumerate(ids):
            for j, tok in enumerate(row):
                vectors[b, j, tok] = self.weights[tok]
                mask[b, j] = True
        if self.cfg.scoring == "pooled":
            return Encoded(vectors.sum(1), mask)
        return Encoded(vectors, mask)

    def score(self, q: Encoded, d: Encoded) -> torch.Tensor:
        if q.late:
            return maxsim(q.vectors, q.mask, d.vectors, d.mask)
        return q.vectors @ d.vectors.T

    def score_pairs(self, q: Encoded, d: Encoded) -> torch.Tensor:
        if q.late:
            return maxsim(q.vectors, q.mask, d.vectors, d.mask, pairs=True)
        return (q.vectors * d.vectors).sum(-1)


def _world(n_docs: int = 40, n_queries: int = 6, seed: int = 0):
    rng = random.Random(seed)
    docs = {f"d{i:02d}": " ".join(rng.choices(VOCAB, k=rng.randint(2, 7))) for i in range(n_docs)}
    queries = {f"q{i}": " ".join(rng.choices(VOCAB, k=rng.randint(1, 3))) for i in range(n_queries)}
    ids = list(docs)
    qrels = {q: {rng.choice(ids): 1, rng.choice(ids): 2} for q in queries}
    return queries, docs, qrels


def _collection(queries, docs, qrels) -> Collection:
    corpus = Corpus.from_docs(Doc(i, t) for i, t in docs.items())
    return Collection(queries=queries, corpus=corpus, qrels=qrels)


# --------------------------------------------------------------------------- metrics

QRELS = {
    "q1": {"d1": 1, "d3": 1, "d9": 0},
    "q2": {"d5": 2, "d2": 1},
    "q3": {"d4": 1},
    "q4": {"d7": 0},  # judged, nothing relevant: counts with 0, as in trec_eval
}
RUN = {
    "q1": {"d1": 0.9, "d2": 0.8, "d3": 0.7, "d4": 0.6},
    "q2": {"d2": 0.9, "d5": 0.8, "d6": 0.1},
    "q3": {"d1": 0.9, "d2": 0.8, "d4": 0.7},
    "q4": {"d7": 0.5},
    "q5": {"d1": 0.5},  # no judgements: not evaluated
}


def test_metrics_equal_hand_computation():
    lg = math.log2
    expect = {
        "q1": {
            "map": (1 + 2 / 3) / 2,
            "ndcg@10": (1 + 1 / lg(4)) / (1 + 1 / lg(3)),
            "mrr@2": 1.0,
            "mrr": 1.0,
            "recall@2": 0.5,
            "p@2": 0.5,
            "recall": 1.0,
        },
        "q2": {
            "map": 1.0,
            "ndcg@10": (1 + 2 / lg(3)) / (2 + 1 / lg(3)),  # graded gains
            "mrr@2": 1.0,
            "mrr": 1.0,
            "recall@2": 1.0,
            "p@2": 1.0,
            "recall": 1.0,
        },
        "q3": {
            "map": 1 / 3,
            "ndcg@10": 1 / lg(4),
            "mrr@2": 0.0,
            "mrr": 1 / 3,
            "recall@2": 0.0,
            "p@2": 0.0,
            "recall": 1.0,
        },
        "q4": {
            "map": 0.0,
            "ndcg@10": 0.0,
            "mrr@2": 0.0,
            "mrr": 0.0,
            "recall@2": 0.0,
            "p@2": 0.0,
            "recall": 0.0,
        },
    }
    metrics = ["map", "ndcg@10", "mrr@2", "mrr", "recall@2", "p@2", "recall"]
    means, per_query = evaluate_run(RUN, QRELS, metrics)
    assert set(per_query) == {"q1", "q2", "q3", "q4"}
    for q, row in expect.items():
        for m, v in row.items():
            assert per_query[q][m] == pytest.approx(v, abs=1e-9), (q, m)
    for m in metrics:
        assert means[m] == pytest.approx(sum(r[m] for r in expect.values()) / 4, abs=1e-9)


def test_judged_query_missing_from_run_scores_zero():
    run = {q: d for q, d in RUN.items() if q != "q2"}
    means, per_query = evaluate_run(run, QRELS, ["map"])
    assert per_query["q2"]["map"] == 0.0
    assert means["map"] == pytest.approx((5 / 6 + 1 / 3) / 4)


def test_ties_are_broken_like_trec_eval(tmp_path):
    # trec_eval orders equal scores by docid descending: dB before dA
    run = {"q": {"dA": 1.0, "dB": 1.0, "dC": 0.5}}
    qrels = {"q": {"dA": 1}}
    _, per_query = evaluate_run(run, qrels, ["mrr", "mrr@1"])
    assert per_query["q"] == {"mrr": 0.5, "mrr@1": 0.0}
    path = write_trec_run(tmp_path / "tie.trec", run, "tag")
    lines = [line.split() for line in path.read_text().splitlines()]
    assert [(c[2], c[3]) for c in lines] == [("dB", "1"), ("dA", "2"), ("dC", "3")]


def test_unknown_metric_names_the_allowed_ones():
    with pytest.raises(ConfigError, match=r"'bleu'.*ndcg@K.*recall@K"):
        evaluate_run(RUN, QRELS, ["bleu"])
    with pytest.raises(ConfigError, match="p@K"):
        parse_metric("p")
    assert parse_metric("ndcg@10") == ("ndcg", 10)
    assert parse_metric("map") == ("map", None)


def test_metric_deeper_than_the_run_warns_naming_the_knob():
    with pytest.warns(UserWarning, match=r"recall@1000.*eval\.depth=100"):
        evaluate_run(RUN, QRELS, ["map", "recall@1000"], depth=100)


# --------------------------------------------------------------------------- ranking


def test_streaming_topk_equals_one_batch_and_respects_depth():
    queries, docs, _ = _world()
    model = BagOfWords()
    one, n = rank(model, queries, docs, depth=7, batch_size=1000)
    streamed, n2 = rank(model, queries, docs, depth=7, batch_size=3)
    assert n == n2 == len(docs)
    assert streamed == one
    for qid, ranked in one.items():
        assert len(ranked) == 7
        # brute force: every doc scored at once, trec_eval order, same cut-off scores
        q = model.encode_texts([queries[qid]], "query")
        d = model.encode_texts(list(docs.values()), "doc")
        full = sorted(model.score(q, d)[0].tolist(), reverse=True)
        assert list(ranked.values()) == full[:7]
        items = list(ranked.items())
        assert all((s1, i1) >= (s2, i2) for (i1, s1), (i2, s2) in zip(items, items[1:]))


def test_depth_larger_than_corpus_ranks_everything_pooled():
    queries, docs, _ = _world(n_docs=9)
    run, _ = rank(BagOfWords("pooled"), queries, docs, depth=50, batch_size=4)
    assert all(set(r) == set(docs) for r in run.values())


def test_candidates_covering_the_corpus_equal_exact_ranking():
    queries, docs, _ = _world()
    model = BagOfWords()
    exact, _ = rank(model, queries, docs, depth=10, batch_size=5)
    for c in (len(docs), len(docs) + 5):
        approx, _ = rank(model, queries, docs, depth=10, batch_size=5, candidates=c)
        assert approx == exact


def test_candidate_ranking_reranks_with_exact_scores():
    queries, docs, _ = _world(n_docs=60)
    model = BagOfWords()
    every, _ = rank(model, queries, docs, depth=60, batch_size=8)
    model.encoded_docs = 0
    with pytest.warns(UserWarning, match=r"eval\.candidates=5 < eval\.depth=10"):
        approx, _ = rank(model, queries, docs, depth=10, batch_size=8, candidates=5)
    # pass 1 encodes the corpus, pass 2 only the candidates
    assert len(docs) < model.encoded_docs <= len(docs) + 5 * len(queries)
    for qid, ranked in approx.items():
        assert 0 < len(ranked) <= 5
        assert all(every[qid][d] == s for d, s in ranked.items())


def test_trec_run_round_trip(tmp_path):
    queries, docs, qrels = _world()
    run, _ = rank(BagOfWords(), queries, docs, depth=5, batch_size=8)
    for name in ("run.trec", "run.trec.gz"):
        path = write_trec_run(tmp_path / name, run, "optical")
        assert read_trec_run(path) == run
    first = (tmp_path / "run.trec").read_text().splitlines()[0].split()
    assert first[1] == "Q0" and first[3] == "1" and first[5] == "optical"
    assert evaluate_run(read_trec_run(path), qrels, ["map"]) == evaluate_run(run, qrels, ["map"])
    bad = tmp_path / "bad.trec"
    bad.write_text("q1 Q0 d1 1 0.5 tag\nq1 Q0 d2 2\n")
    with pytest.raises(DataError, match="line 2: got 4 columns"):
        read_trec_run(bad)
    with pytest.raises(DataError, match="whitespace"):
        write_trec_run(tmp_path / "x.trec", run, "my tag")


def test_evaluate_collection_excludes_and_counts_unjudged_queries(tmp_path):
    queries, docs, qrels = _world()
    queries["unjudged"] = "w1 w2"
    col = _collection(queries, docs, qrels)
    res = evaluate_collection(
        BagOfWords(),
        col,
        metrics=["map", "ndcg@10", "mrr@10"],
        depth=10,
        batch_size=8,
        run_path=tmp_path / "r.trec",
        pair="en-xa",
    )
    assert (res.num_queries, res.num_skipped, res.num_docs) == (len(qrels), 1, len(docs))
    assert "unjudged" not in res.per_query and "unjudged" in res.run
    assert read_trec_run(tmp_path / "r.trec") == res.run
    means, _ = evaluate_run(res.run, qrels, ["map", "ndcg@10", "mrr@10"])
    assert res.metrics == means
    assert 0 < res.metrics["map"] <= 1
    with pytest.raises(DataError, match="no query has relevance judgements"):
        evaluate_collection(
            BagOfWords(), _collection(queries, docs, {}), metrics=["map"], depth=5, batch_size=8
        )


def test_nan_scores_fail_loudly():
    class Broken(BagOfWords):
        def score(self, q, d):
            return torch.full((len(q), len(d)), float("nan"))

    queries, docs, _ = _world(n_docs=4)
    with pytest.raises(TrainingError, match="NaN"):
        rank(Broken(), queries, docs, depth=3)


def test_evaluate_pairs_defaults_and_outputs(tmp_path):
    cfg = from_dict(
        {
            "name": "exp1",
            "pair": "en-xa",
            "eval": {"metrics": ["map", "ndcg@10"], "depth": 10, "batch_size": 8},
        }
    )
    worlds = {"en-en": _world(seed=1), "en-xa": _world(seed=2)}
    loaded = []

    def load(cfg_, pair, split):
        loaded.append((pair, split))
        return _collection(*worlds[pair])

    results = evaluate_pairs(BagOfWords(), cfg, out_dir=tmp_path, load_collection=load)
    assert loaded == [("en-en", "dev"), ("en-xa", "dev")]
    assert list(results) == ["en-en", "en-xa"]
    assert (tmp_path / "run.en-xa.dev.trec").read_text().split("\n")[0].endswith(" exp1")
    back = load_results(tmp_path)
    assert {p: r.metrics for p, r in back.items()} == {p: r.metrics for p, r in results.items()}
    assert back["en-en"].per_query == results["en-en"].per_query
    table = format_metrics_table(results)
    assert "en-xa" in table and "ndcg@10" in table
    with pytest.raises(ConfigError, match="eval.pairs"):
        evaluate_pairs(BagOfWords(), cfg, pairs=["english"], load_collection=load)


def test_comparisons_stay_importable_from_evaluate():
    import optical_ray.evaluation.compare as compare
    import optical_ray.evaluation.ranking as evaluate

    assert evaluate.paired_test is compare.paired_test
    assert evaluate.gap_report is compare.gap_report


def test_scoring_a_run_needs_no_torch() -> None:
    """``optical_ray.evaluation.trec`` scores runs and reads/writes run files without importing
    torch (a report or a benchmark that only scores runs stays light)."""
    import subprocess
    import sys

    code = (
        "import sys, optical_ray.evaluation.trec as t; "
        "m, _ = t.evaluate_run({'q': {'a': 1.0, 'b': 0.5}}, {'q': {'b': 1}}, ['map']); "
        "print(m['map'], 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["0.5", "False"]
