"""Studies, no Ray: a design (factors with levels, seeds, test tasks, a reference) becomes
cells x seeds of runs, and their stored per-query test values become effects with
confidence intervals, paired p-values (Holm over the study), the gap to the reference
and the seed spread. :func:`optical_ray.distributed.study.run_study` runs a design."""

from __future__ import annotations

from optical_ray._lazy import lazy_exports

_EXPORTS = {
    "StudyDesign": "design",
    "Factor": "design",
    "Level": "design",
    "Cell": "design",
    "parse_design": "design",
    "load_design": "design",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
