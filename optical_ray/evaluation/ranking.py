"""Evaluation: rank a collection, score it with pytrec_eval, compare systems per pair.

Ranking (:func:`rank`) streams the corpus in batches, encodes every document once,
scores all queries against each batch and keeps a running top-``depth`` per query, so
memory is O(queries x depth), never O(queries x corpus).

*Exact* ranking (``candidates=0``) scores every (query, document) pair with
``model.score`` (ColBERT MaxSim or pooled dot product).

*Candidate* ranking (``candidates=C > 0``, late interaction only) is the usual
two-stage approximation for large corpora:

1. first stage, one pass over the corpus: every document is scored by the dot product
   of the mean of its token vectors with the mean of the query's token vectors, i.e.
   the *average* token similarity ``(1/(Lq Ld)) sum_ij q_i . d_j``, a cheap lower
   bound of ``MaxSim / Lq``; the top ``C`` per query are its candidates;
2. second pass over the corpus: only candidate documents are encoded again, and each
   query's candidates are reranked by exact MaxSim.

A relevant document missed by the first stage is not retrieved, so candidate runs can
score lower than exact ones; with ``C >= corpus size`` they are identical. Pooled
models ignore ``candidates``: their exact scoring is already one matrix product.

Ties, metric names and the scoring of a run (pytrec_eval, trec_eval semantics) are
:mod:`optical_ray.evaluation.trec`, which has no torch; runs made here are ordered as trec_eval
orders them, so every number matches trec_eval on the written run file. Which of several
documents tied at the depth cut-off enter the run is decided by corpus order (earlier
documents win), independent of the batch size.

Comparing systems (gap, gap closed, paired tests, the gap report) is
:mod:`optical_ray.evaluation.compare`; ``paired_test`` and ``gap_report`` stay importable from here.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from optical_ray.evaluation.compare import GapReport, GapRow, gap_report, paired_test  # noqa: F401 (re-exported)
from optical_ray.config import PAIR_RE
from optical_ray.errors import ConfigError, DataError, TrainingError
from optical_ray.tables import number, text_table
from optical_ray.evaluation.trec import (  # evaluate_run, parse_metric and the run files: re-exported
    METRICS_HELP,
    EvalResult,
    Run,
    evaluate_run,
    parse_metric,
    read_trec_run,
    trec_order,
    write_trec_run,
)

__all__ = [
    "EvalResult",
    "parse_metric",
    "rank",
    "evaluate_run",
    "evaluate_collection",
    "evaluate_pairs",
    "write_trec_run",
    "read_trec_run",
    "load_results",
    "format_metrics_table",
]

_PAIR_BUDGET = 1 << 24  # floats of one [pairs, Lq, Ld] similarity block in reranking


# --------------------------------------------------------------------------- ranking


def _doc_text(doc: Any) -> tuple[str, str]:
    """``(docid, text)`` of a corpus item: a ``Doc`` (title prepended, as in BEIR) or a
    ``(docid, text)`` pair."""
    if hasattr(doc, "docid"):
        title = getattr(doc, "title", "") or ""
        return str(doc.docid), f"{title} {doc.text}" if title else str(doc.text)
    docid, text = doc
    return str(docid), str(text)


Batches = Callable[[], Iterator[tuple[list[str], list[str]]]]


def _batches_of(corpus: Any, batch_size: int) -> Batches:
    """A function that streams ``corpus`` as ``(docids, texts)`` batches, once per call.

    ``corpus``: a :class:`~optical_ray.data.collection.Corpus` (anything with
    ``batches(n)``), a ``{docid: text}`` mapping, or a sequence of docs / pairs.
    """

    def chunked(items: Iterable[Any]) -> Iterator[tuple[list[str], list[str]]]:
        ids: list[str] = []
        texts: list[str] = []
        for item in items:
            docid, text = _doc_text(item)
            ids.append(docid)
            texts.append(text)
            if len(ids) == batch_size:
                yield ids, texts
                ids, texts = [], []
        if ids:
            yield ids, texts

    if hasattr(corpus, "batches"):
        return lambda: chunked(doc for batch in corpus.batches(batch_size) for doc in batch)
    if isinstance(corpus, Mapping):
        return lambda: chunked(corpus.items())
    return lambda: chunked(corpus)


class _TopK:
    """Running top-``k`` per query over documents arriving in batches.

    Keeps scores ``[Q, k]`` and global document indices ``[Q, k]``. New batches are
    buffered and merged by a stable descending sort, so among equal scores the earlier
    document wins and the result does not depend on how the corpus was batched.
    """

    def __init__(self, n_queries: int, k: int) -> None:
        self.k = k
        self.scores = torch.empty(n_queries, 0)
        self.index = torch.empty(n_queries, 0, dtype=torch.long)
        self._scores: list[torch.Tensor] = []
        self._index: list[torch.Tensor] = []
        self._buffered = 0

    def add(self, scores: torch.Tensor, index: torch.Tensor) -> None:
        """``scores`` ``[Q, B]``; ``index`` ``[B]`` global document indices, increasing."""
        self._scores.append(scores)
        self._index.append(index.expand(scores.shape[0], -1))
        self._buffered += scores.shape[1]
        if self._buffered >= max(self.k, 1024):  # amortise the sort over many batches
            self._merge()

    def _merge(self) -> None:
        if not self._scores:
            return
        scores = torch.cat([self.scores, *self._scores], dim=1)
        index = torch.cat([self.index, *self._index], dim=1)
        order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, : self.k]
        self.scores, self.index = scores.gather(1, order), index.gather(1, order)
        self._scores, self._index, self._buffered = [], [], 0

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        self._merge()
        return self.scores, self.index


def _check_finite(scores: torch.Tensor, first_doc: int) -> torch.Tensor:
    if torch.isnan(scores).any():
        raise TrainingError(
            f"the model scored NaN against documents {first_doc}.."
            f"{first_doc + scores.shape[1] - 1}; the checkpoint has diverged"
        )
    return scores


def _centroids(enc: Any) -> torch.Tensor:
    """Mean of the real token vectors ``[B, D]`` (pooled vectors pass through)."""
    v = enc.vectors
    if v.dim() == 2:
        return v
    m = enc.mask.to(v.dtype).unsqueeze(-1)  # shape [B, L, 1]
    return (v * m).sum(1) / m.sum(1).clamp(min=1.0)


def _score_pairs(
    model: Any, q: Any, d: Any, q_rows: torch.Tensor, d_rows: torch.Tensor
) -> torch.Tensor:
    """Exact scores ``[P]`` of the pairs ``(q[q_rows[p]], d[d_rows[p]])``, in chunks."""
    if not hasattr(model, "score_pairs"):  # only the all-pairs scorer: take the diagonal
        return (
            torch.stack(
                [
                    model.score(q[q_rows[p : p + 1]], d[d_rows[p : p + 1]])[0, 0]
                    for p in range(len(q_rows))
                ]
            )
            if len(q_rows)
            else torch.empty(0)
        )
    per_pair = max(1, q.vectors.shape[1] * d.vectors.shape[1])
    chunk = max(1, _PAIR_BUDGET // per_pair)
    out = [
        model.score_pairs(q[q_rows[s : s + chunk]], d[d_rows[s : s + chunk]]).float().cpu()
        for s in range(0, len(q_rows), chunk)
    ]
    return torch.cat(out) if out else torch.empty(0)


def rank(
    model: Any,
    queries: Mapping[str, str],
    corpus: Any,
    *,
    depth: int,
    batch_size: int = 64,
    candidates: int = 0,
) -> tuple[Run, int]:
    """Rank ``corpus`` for every query; returns ``(run, num_docs)``.

    ``model``: ``encode_texts(texts, kind, batch_size=...) -> Encoded`` and
    ``score(q, d) -> [Bq, Bd]`` (``score_pairs`` used for reranking when present).
    ``run[qid]`` holds the top ``depth`` documents in trec_eval order (module docstring).
    ``candidates > 0`` selects the two-stage approximation for late interaction.
    """
    for key, value, low in (
        ("eval.depth", depth, 1),
        ("eval.batch_size", batch_size, 1),
        ("eval.candidates", candidates, 0),
    ):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ConfigError(f"{key}: got {value!r}, expected an integer >= {low}")
    qids = list(queries)
    if not qids:
        raise DataError("no queries to rank")
    stream = _batches_of(corpus, batch_size)
    docids: list[str] = []
    with torch.inference_mode():
        q = model.encode_texts([queries[i] for i in qids], "query", batch_size=batch_size)
        two_stage = candidates > 0 and q.vectors.dim() == 3
        if two_stage and candidates < depth:
            warnings.warn(
                f"eval.candidates={candidates} < eval.depth={depth}: runs hold at "
                f"most {candidates} documents per query; raise eval.candidates",
                UserWarning,
                stacklevel=2,
            )
        top = _TopK(len(qids), candidates if two_stage else depth)
        q_cent = _centroids(q) if two_stage else None
        for ids, texts in stream():
            first = len(docids)
            docids.extend(ids)
            d = model.encode_texts(texts, "doc", batch_size=batch_size)
            if two_stage:
                scores = q_cent @ _centroids(d).T  # shape [Q, B]
            else:
                scores = model.score(q, d)
            top.add(_check_finite(scores.float().cpu(), first), torch.arange(first, len(docids)))
        if not docids:
            raise DataError("the corpus holds no documents")
        scores, index = top.result()
        if two_stage:
            scores, index = _rerank(model, q, index, stream, docids, depth, batch_size)
    run: Run = {}
    for row, qid in enumerate(qids):
        docs: dict[str, float] = {}
        for s, i in zip(scores[row].tolist(), index[row].tolist()):
            if s == float("-inf"):
                continue  # a padding slot of the candidate reranker, not a document
            docid = docids[i]
            if docid in docs:
                raise DataError(
                    f"document id {docid!r} occurs twice in the corpus; ids must be unique"
                )
            docs[docid] = s
        run[qid] = dict(trec_order(docs))
    return run, len(docids)


def _rerank(
    model: Any,
    q: Any,
    cand: torch.Tensor,
    stream: Batches,
    docids: list[str],
    depth: int,
    batch_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Second stage: re-encode the candidate documents, score each query's candidates
    exactly, keep the top ``depth``. ``cand``: ``[Q, C]`` global document indices."""
    n_q, n_c = cand.shape
    flat_d = cand.reshape(-1)
    order = torch.sort(flat_d, stable=True).indices
    by_doc, by_doc_q = flat_d[order], torch.arange(n_q).repeat_interleave(n_c)[order]
    wanted = torch.zeros(len(docids), dtype=torch.bool)
    wanted[flat_d] = True
    top = _TopK(n_q, depth)
    pending: list[tuple[int, str]] = []

    def flush() -> None:
        idx = torch.tensor([i for i, _ in pending], dtype=torch.long)
        d = model.encode_texts([t for _, t in pending], "doc", batch_size=batch_size)
        # the (query, doc) pairs of this batch: doc j's nominators are by_doc_q[lo_j:hi_j]
        lo = torch.searchsorted(by_doc, idx)
        counts = torch.searchsorted(by_doc, idx, right=True) - lo
        col = torch.arange(len(idx)).repeat_interleave(counts)  # pair -> doc in this batch
        offset = torch.arange(int(counts.sum())) - (torch.cumsum(counts, 0) - counts)[col]
        rows = by_doc_q[lo[col] + offset]  # pair -> query
        exact = _score_pairs(model, q, d, rows, col)
        scores = torch.full((n_q, len(idx)), float("-inf"))  # -inf: not a candidate
        scores[rows, col] = _check_finite(exact[None], int(idx[0]))[0]
        top.add(scores, idx)
        pending.clear()

    seen = 0
    for ids, texts in stream():
        keep = wanted[seen : seen + len(ids)].tolist()
        for docid, text, k in zip(ids, texts, keep + [False] * (len(ids) - len(keep))):
            if seen >= len(docids) or docids[seen] != docid:
                raise DataError(
                    "the corpus changed between the two passes of candidate "
                    f"ranking (document {seen}: {docid!r}); use eval.candidates=0"
                )
            if k:
                pending.append((seen, text))
            seen += 1
        if len(pending) >= batch_size:
            flush()
    if seen != len(docids):
        raise DataError(
            f"the corpus changed between the two passes of candidate ranking "
            f"({len(docids)} then {seen} documents); use eval.candidates=0"
        )
    if pending:
        flush()
    return top.result()


# --------------------------------------------------------------------------- results


def evaluate_collection(
    model: Any,
    collection: Any,
    *,
    metrics: Sequence[str],
    depth: int,
    batch_size: int = 64,
    candidates: int = 0,
    run_path: str | os.PathLike | None = None,
    pair: str = "",
    run_tag: str = "optical-ray",
    keep_run: bool = True,
) -> EvalResult:
    """Rank ``collection`` (``queries``, ``qrels``, ``corpus``) and score it.

    Every query is ranked (the run file is complete); the metrics average over queries
    with judgements. ``run_path`` writes the TREC run there.
    """
    for name in metrics:
        parse_metric(name)  # fail before the slow part
    if not metrics:
        raise ConfigError(f"eval.metrics: got [], expected some of {METRICS_HELP}")
    start = time.perf_counter()
    queries = collection.queries
    qrels = {q: docs for q, docs in collection.qrels.items() if docs and q in queries}
    if not qrels:
        raise DataError(f"{pair or 'collection'}: no query has relevance judgements")
    run, num_docs = rank(
        model, queries, collection.corpus, depth=depth, batch_size=batch_size, candidates=candidates
    )
    if run_path is not None:
        write_trec_run(run_path, run, run_tag)
    means, per_query = evaluate_run(run, qrels, metrics, depth=depth if depth < num_docs else None)
    return EvalResult(
        pair=pair,
        metrics=means,
        per_query=per_query,
        num_queries=len(per_query),
        num_docs=num_docs,
        run=run if keep_run else None,
        seconds=time.perf_counter() - start,
        num_skipped=len(queries) - len(per_query),
        depth=depth,
    )


def evaluate_pairs(
    model: Any,
    cfg: Any,
    pairs: Sequence[str] | None = None,
    split: str | None = None,
    out_dir: str | os.PathLike | None = None,
    *,
    load_collection: Callable[[Any, str, str], Any] | None = None,
) -> dict[str, EvalResult]:
    """Evaluate ``model`` on each pair's collection (``cfg.eval`` knobs).

    Pairs default to ``cfg.eval.pairs`` or, when empty, the teacher pair (``en-en``)
    and ``cfg.pair``. ``out_dir`` receives ``run.<pair>.<split>.trec`` per pair and
    ``metrics.json`` (means and per-query values; :func:`load_results` reads it).
    ``load_collection(cfg, pair, split)`` defaults to
    :func:`optical_ray.data.sources.eval_collection`.
    """
    ev = cfg.eval
    split = split or ev.split
    if pairs is None or not list(pairs):
        teacher = cfg.data.teacher_lang
        pairs = list(ev.pairs) or [f"{teacher}-{teacher}", cfg.pair]
    pairs = list(dict.fromkeys(pairs))
    bad = [p for p in pairs if not isinstance(p, str) or not PAIR_RE.match(p)]
    if bad:
        raise ConfigError(
            f"eval.pairs: got {bad!r}, expected <query_lang>-<doc_lang> such as en-sw"
        )
    if load_collection is None:
        from optical_ray.data.sources import eval_collection as load_collection
    out = Path(out_dir) if out_dir is not None else None
    results: dict[str, EvalResult] = {}
    for pair in pairs:
        collection = load_collection(cfg, pair, split)
        run_path = out / f"run.{pair}.{split}.trec" if out is not None else None
        results[pair] = evaluate_collection(
            model,
            collection,
            metrics=ev.metrics,
            depth=ev.depth,
            batch_size=ev.batch_size,
            candidates=ev.candidates,
            run_path=run_path,
            pair=pair,
            run_tag=cfg.name,
        )
    if out is not None:
        doc = {
            "split": split,
            "metrics": list(ev.metrics),
            "depth": ev.depth,
            "candidates": ev.candidates,
            "results": {p: r.to_dict() for p, r in results.items()},
        }
        tmp = out / "metrics.json.tmp"
        tmp.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, out / "metrics.json")
    return results


def load_results(path: str | os.PathLike) -> dict[str, EvalResult]:
    """Read the ``metrics.json`` written by :func:`evaluate_pairs` (``{pair: result}``)."""
    p = Path(path)
    if p.is_dir():
        p = p / "metrics.json"
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
        return {pair: EvalResult.from_dict(r) for pair, r in doc["results"].items()}
    except FileNotFoundError:
        raise DataError(f"metrics file {str(p)!r} does not exist") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{p}: not a metrics.json written by evaluate_pairs ({exc})") from None


def format_metrics_table(results: Mapping[str, EvalResult]) -> str:
    """A plain-text table: one row per pair, one column per metric."""
    if not results:
        return "(no results)"
    metrics = list(dict.fromkeys(m for r in results.values() for m in r.metrics))
    head = ["pair", "queries", "docs", *metrics, "seconds"]
    body = [
        [
            pair,
            str(r.num_queries) + (f" (+{r.num_skipped} unjudged)" if r.num_skipped else ""),
            str(r.num_docs),
            *(number(r.metrics.get(m)) for m in metrics),
            f"{r.seconds:.1f}",
        ]
        for pair, r in results.items()
    ]
    return text_table(head, body, right=[i >= 2 for i in range(len(head))])
