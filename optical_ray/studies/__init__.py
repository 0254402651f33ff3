"""Studies, no Ray: a design (factors with levels, seeds, test tasks, a reference) becomes
cells x seeds of runs, checked against the config and the data before anything runs,
and the runs' stored per-query test values become effects with confidence intervals,
paired p-values (Holm over the study), seed spreads and the gap to the reference.
:func:`optical_ray.distributed.study.run_study` runs a design on Ray;
:func:`optical_ray.report.study.build_study_report` writes its report."""

from __future__ import annotations

from optical_ray._lazy import lazy_exports

_EXPORTS = {
    "StudyDesign": "design",
    "Factor": "design",
    "Level": "design",
    "Cell": "design",
    "parse_design": "design",
    "load_design": "design",
    "StudyPlan": "plan",
    "plan_study": "plan",
    "check_study_data": "checks",
    "study_effects": "effects",
    "StudyEffects": "effects",
    "EffectRow": "effects",
    "CellRow": "effects",
    "list_studies": "store",
    "read_design": "store",
    "load_runs": "store",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
