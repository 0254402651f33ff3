"""The report: gap tables, figures and Pareto fronts from the catalog."""

from __future__ import annotations

from optical_ray._lazy import lazy_exports

_EXPORTS = {
    "build_report": "gap",
    "PairSummary": "gap",
    "summarize": "gap",
    "parameter_importances": "gap",
    "pareto_section": "pareto",
    "FRONT_HEAD": "pareto",
    "pyplot": "plots",
    "plot_overview": "plots",
    "plot_params": "plots",
    "plot_importance": "plots",
    "plot_warm_vs_cold": "plots",
    "slug": "plots",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
