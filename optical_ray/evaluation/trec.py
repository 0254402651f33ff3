"""Scoring runs with pytrec_eval, and TREC run files: no torch, no model.

Metrics (names as in the config): ``map`` (``map@K`` = map_cut_K), ``ndcg@K``
(ndcg_cut_K, graded gains as trec_eval), ``recall@K`` (recall_K), ``p@K`` (P_K),
``mrr@K`` (recip_rank on the run truncated to K; pytrec_eval has no cut-off for it).
A query counts in the means when it has judgements (trec_eval semantics: a judged
query whose judgements are all non-relevant scores 0; a judged query missing from the
run scores 0, as ``trec_eval -c``); queries without judgements are ranked but excluded
and counted in :attr:`EvalResult.num_skipped`.

Ties. pytrec_eval (like trec_eval) ignores the rank column of a run: it orders each
query's documents by score, descending, and breaks ties by document id, *descending*
(``strcmp``). Runs made here are ordered the same way (rank column included), and
MRR@K truncates with that order, so every number matches trec_eval on the written run
file.
"""

from __future__ import annotations

import copy
import dataclasses
import gzip
import io
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from optical_ray.config import METRIC_RE
from optical_ray.errors import ConfigError, DataError

__all__ = [
    "EvalResult",
    "METRICS_HELP",
    "PerQuery",
    "Run",
    "evaluate_run",
    "parse_metric",
    "read_trec_run",
    "trec_order",
    "write_trec_run",
]

Run = dict[str, dict[str, float]]  # {qid: {docid: score}}, as pytrec_eval takes it
PerQuery = dict[str, dict[str, float]]  # {qid: {metric: value}}

METRICS_HELP = "map, map@K, ndcg, ndcg@K, mrr, mrr@K, recall, recall@K or p@K (e.g. ndcg@10)"


# --------------------------------------------------------------------------- metrics


def parse_metric(name: str) -> tuple[str, int | None]:
    """``"ndcg@10"`` -> ``("ndcg", 10)``, ``"map"`` -> ``("map", None)``.

    Raises :class:`ConfigError` naming the metric and the allowed forms.
    """
    m = METRIC_RE.match(name) if isinstance(name, str) else None
    if not m:
        raise ConfigError(f"eval.metrics: unknown metric {name!r}; expected {METRICS_HELP}")
    family, cut = m.group(1), m.group(2)
    if family == "p" and cut is None:
        raise ConfigError(f"eval.metrics: metric {name!r} needs a cut-off; expected p@K, e.g. p@10")
    return family, int(cut[1:]) if cut else None


# trec_eval measure (parameterised by cut-offs) and result-key prefix per metric family
_TREC = {"map": "map_cut", "ndcg": "ndcg_cut", "recall": "recall", "p": "P"}
_TREC_FULL = {"map": "map", "ndcg": "ndcg"}


def trec_order(scores: Mapping[str, float]) -> list[tuple[str, float]]:
    """A query's documents in trec_eval order: score descending, then docid descending."""
    return sorted(scores.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)


def evaluate_run(
    run: Mapping[str, Mapping[str, float]],
    qrels: Mapping[str, Mapping[str, int]],
    metrics: Sequence[str],
    *,
    depth: int | None = None,
) -> tuple[dict[str, float], PerQuery]:
    """Score ``run`` against ``qrels`` with pytrec_eval.

    Returns ``(means, per_query)``: ``means[metric]`` averages ``per_query[qid][metric]``
    over the queries of ``qrels`` with at least one judgement (those missing from the
    run score 0). ``depth`` (the run depth asked for) makes metrics cut deeper than the
    run warn, naming ``eval.depth``.
    """
    import pytrec_eval

    parsed = {name: parse_metric(name) for name in dict.fromkeys(metrics)}
    if not parsed:
        raise ConfigError(f"eval.metrics: got [], expected some of {METRICS_HELP}")
    judged = {
        str(q): {str(d): int(r) for d, r in docs.items()} for q, docs in qrels.items() if docs
    }
    if not judged:
        raise DataError("qrels: no query has a relevance judgement; nothing to evaluate")
    if depth is not None:
        deep = [n for n, (_, k) in parsed.items() if k is not None and k > depth]
        if deep:
            warnings.warn(
                f"{', '.join(deep)} cut deeper than the run (eval.depth={depth}): "
                f"only the top {depth} documents count; raise eval.depth",
                UserWarning,
                stacklevel=2,
            )
    full = {q: {str(d): float(s) for d, s in run.get(q, {}).items()} for q in judged}

    cuts: dict[str, set[int]] = {}
    plain: set[str] = set()
    for family, k in parsed.values():
        if family == "mrr":
            continue
        if k is None:  # recall without a cut-off: relevant retrieved / relevant
            plain |= {"num_rel_ret", "num_rel"} if family == "recall" else {_TREC_FULL[family]}
        else:
            cuts.setdefault(_TREC[family], set()).add(k)
    measures = plain | {f"{m}.{','.join(map(str, sorted(ks)))}" for m, ks in cuts.items()}
    values = pytrec_eval.RelevanceEvaluator(judged, measures).evaluate(full) if measures else {}
    mrr = {}
    for k in {k for f, k in parsed.values() if f == "mrr"}:
        cut = {q: dict(trec_order(docs)[:k] if k else trec_order(docs)) for q, docs in full.items()}
        mrr[k] = pytrec_eval.RelevanceEvaluator(judged, {"recip_rank"}).evaluate(cut)

    per_query: PerQuery = {}
    for q in judged:
        row = {}
        for name, (family, k) in parsed.items():
            if family == "mrr":
                row[name] = mrr[k][q]["recip_rank"]
            elif family == "recall" and k is None:
                v = values[q]
                row[name] = v["num_rel_ret"] / v["num_rel"] if v["num_rel"] else 0.0
            else:
                row[name] = values[q][_TREC_FULL[family] if k is None else f"{_TREC[family]}_{k}"]
        per_query[q] = row
    means = {n: float(np.mean([per_query[q][n] for q in per_query])) for n in parsed}
    return means, per_query


# --------------------------------------------------------------------------- TREC runs


def _open_text(path: Path, mode: str) -> IO[str]:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, mode + "b"), encoding="utf-8", newline="\n")
    return open(path, mode, encoding="utf-8", newline="\n")


def _check_id(value: str, what: str) -> str:
    if not value or any(c.isspace() for c in value):
        raise DataError(
            f"{what} {value!r} is empty or holds whitespace; a TREC run needs ids without spaces"
        )
    return value


def write_trec_run(
    path: str | os.PathLike, run: Mapping[str, Mapping[str, float]], tag: str = "optical-ray"
) -> Path:
    """Write ``qid Q0 docid rank score tag`` lines (``.gz`` paths are gzipped).

    Each query's documents are written in trec_eval order (score descending, docid
    descending), ranks from 1, scores with every digit (``repr``) so that reading the
    file back gives the same evaluation. Written to a temporary file, then renamed.
    """
    _check_id(tag, "run tag")
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp" + p.suffix)
    with _open_text(tmp, "w") as f:
        for qid, docs in run.items():
            _check_id(str(qid), "query id")
            for rank_, (docid, score) in enumerate(trec_order(docs), 1):
                _check_id(str(docid), "document id")
                f.write(f"{qid} Q0 {docid} {rank_} {float(score)!r} {tag}\n")
    os.replace(tmp, p)
    return p


def read_trec_run(path: str | os.PathLike) -> Run:
    """Read a TREC run file into ``{qid: {docid: score}}`` (rank column ignored, as
    trec_eval does)."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"run file {str(p)!r} does not exist")
    run: Run = {}
    with _open_text(p, "r") as f:
        for lineno, line in enumerate(f, 1):
            cols = line.split()
            if not cols:
                continue
            if len(cols) != 6:
                raise DataError(
                    f"{p}: line {lineno}: got {len(cols)} columns, expected 6 "
                    "(qid Q0 docid rank score tag)"
                )
            qid, _, docid, _, score, _ = cols
            try:
                value = float(score)
            except ValueError:
                raise DataError(f"{p}: line {lineno}: score {score!r} is not a number") from None
            docs = run.setdefault(qid, {})
            if docid in docs:
                raise DataError(
                    f"{p}: line {lineno}: document {docid!r} listed twice for query {qid!r}"
                )
            docs[docid] = value
    return run


@dataclass
class EvalResult:
    """The evaluation of one model on one language pair.

    ``metrics``: means over the ``num_queries`` judged queries; ``per_query``: the
    values behind them (for significance tests); ``num_skipped``: ranked queries without
    judgements, left out of the means; ``run``: ``{qid: {docid: score}}`` if kept.
    """

    pair: str
    metrics: dict[str, float]
    per_query: PerQuery
    num_queries: int
    num_docs: int
    run: Run | None = None
    seconds: float = 0.0
    num_skipped: int = 0
    depth: int | None = None

    def to_dict(self, *, per_query: bool = True) -> dict[str, Any]:
        """JSON form (without the run, which goes to a TREC file)."""
        skip = {"run"} if per_query else {"run", "per_query"}
        return {
            f.name: copy.deepcopy(getattr(self, f.name))
            for f in dataclasses.fields(self)
            if f.name not in skip
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EvalResult:
        names = {f.name for f in dataclasses.fields(cls)}
        known = {k: v for k, v in data.items() if k in names and k != "run"}
        return cls(**{"per_query": {}, **known})
