"""Evaluation: ranking a collection (:mod:`~optical_ray.evaluation.ranking`), pytrec_eval scoring and TREC run files (:mod:`~optical_ray.evaluation.trec`), paired tests and gaps (:mod:`~optical_ray.evaluation.compare`), per-query values (:mod:`~optical_ray.evaluation.perquery`), and ``evaluate --best`` (:mod:`~optical_ray.evaluation.best`)."""

from __future__ import annotations

from optical_ray._lazy import lazy_exports

_EXPORTS = {
    "EVALUATIONS_DIR": "best",
    "ZERO_SHOT": "best",
    "BEST": "best",
    "Baseline": "best",
    "PairEvaluation": "best",
    "evaluate_best": "best",
    "parse_baselines": "best",
    "test_set_id": "best",
    "load_evaluations": "best",
    "best_vs_runner_up": "best",
    "report_section": "best",
    "gap": "compare",
    "gap_closed": "compare",
    "paired_test": "compare",
    "holm": "compare",
    "GapRow": "compare",
    "GapReport": "compare",
    "gap_report": "compare",
    "encode_per_query": "perquery",
    "decode_per_query": "perquery",
    "EvalResult": "ranking",
    "parse_metric": "ranking",
    "rank": "ranking",
    "evaluate_run": "ranking",
    "evaluate_collection": "ranking",
    "evaluate_pairs": "ranking",
    "write_trec_run": "ranking",
    "read_trec_run": "ranking",
    "load_results": "ranking",
    "format_metrics_table": "ranking",
    "METRICS_HELP": "trec",
    "PerQuery": "trec",
    "Run": "trec",
    "trec_order": "trec",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
