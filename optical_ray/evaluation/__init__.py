"""Evaluation: ranking a collection (:mod:`~optical_ray.evaluation.ranking`), pytrec_eval scoring and TREC run files (:mod:`~optical_ray.evaluation.trec`), paired tests and gaps (:mod:`~optical_ray.evaluation.compare`), paired tests of a weighted objective over several tasks and seeds (:mod:`~optical_ray.evaluation.stratified`), per-query values (:mod:`~optical_ray.evaluation.perquery`), and ``evaluate --best`` (:mod:`~optical_ray.evaluation.best`)."""

from __future__ import annotations

from optical_ray._lazy import lazy_exports

_EXPORTS = {
    "EvalResult": "trec",
    "evaluate_run": "trec",
    "parse_metric": "trec",
    "read_trec_run": "trec",
    "write_trec_run": "trec",
    "rank": "ranking",
    "evaluate_collection": "ranking",
    "evaluate_pairs": "ranking",
    "load_results": "ranking",
    "paired_test": "compare",
    "holm": "compare",
    "gap": "compare",
    "gap_closed": "compare",
    "gap_report": "compare",
    "GapReport": "compare",
    "paired_objective_test": "stratified",
    "pool_seeds": "stratified",
    "sign_flip_p": "stratified",
    "encode_per_query": "perquery",
    "decode_per_query": "perquery",
    "decode_tasks": "perquery",
    "encode_units": "perquery",
    "decode_units": "perquery",
    "evaluate_best": "best",
    "load_evaluations": "best",
    "parse_baselines": "best",
    "Baseline": "best",
    "PairEvaluation": "best",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
