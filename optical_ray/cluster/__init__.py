"""Local multi-node Ray clusters on one machine (``optical-ray cluster``)."""

from __future__ import annotations

from optical_ray._lazy import lazy_exports

_EXPORTS = {
    "LocalCluster": "local",
    "ClusterError": "local",
    "NodeStatus": "local",
    "ClusterStatus": "local",
    "parse_bytes": "local",
    "default_state_dir": "local",
    "MARKER_ENV": "local",
    "fmt_bytes": "nodes",
    "physical_memory": "nodes",
    "free_ports": "nodes",
    "environ_has": "nodes",
    "marked_pids": "nodes",
    "session_of": "nodes",
    "reap": "nodes",
    "signal_all": "nodes",
    "Node": "nodes",
    "State": "nodes",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
