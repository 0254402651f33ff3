"""Local multi-node Ray clusters on one machine (``optical-ray cluster``)."""

from __future__ import annotations

from optical_ray._lazy import lazy_exports

_EXPORTS = {
    "LocalCluster": "local",
    "ClusterStatus": "nodes",
    "NodeStatus": "nodes",
}
__all__ = list(_EXPORTS)
# What the flat layout's optical_ray.cluster module held, for saved experiments.
_LEGACY = ("local", "nodes")
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, _LEGACY)
