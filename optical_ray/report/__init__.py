"""The report: gap tables, figures and Pareto fronts from the catalog; a study's effects, interaction plots and gap closed."""

from __future__ import annotations

from optical_ray._lazy import lazy_exports

_EXPORTS = {
    "build_report": "gap",
    "summarize": "summary",
    "PairSummary": "summary",
    "parameter_importances": "summary",
    "best_vs_runner_up": "sections",
    "report_section": "sections",
    "pareto_section": "pareto",
    "build_study_report": "study",
    "write_study_report": "study",
}
__all__ = list(_EXPORTS)
# What the flat layout's optical_ray.report module held, for saved experiments.
_LEGACY = ("gap", "summary", "plots")
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, _LEGACY)
