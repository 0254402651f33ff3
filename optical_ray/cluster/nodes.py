"""The parts of a local Ray cluster below :class:`optical_ray.cluster.local.LocalCluster`:
sizes and limits, free ports, the processes a cluster started (found by the environment
marker every one of them inherits), and the state file that lets ``down`` and ``status``
work from any process.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from optical_ray.config.rules import parse_bytes
from optical_ray.errors import ClusterError, ConfigError

__all__ = [
    "ClusterSize",
    "check_size",
    "MARKER_ENV",
    "NodeStatus",
    "ClusterStatus",
    "parse_bytes",
    "pinned_env",
    "default_state_dir",
    "fmt_bytes",
    "physical_memory",
    "free_ports",
    "environ_has",
    "marked_pids",
    "session_of",
    "reap",
    "signal_all",
    "Node",
    "State",
]

MARKER_ENV = "OPTICAL_RAY_CLUSTER_ID"
MAX_NODES = 16
MAX_CPUS_PER_NODE = 64
DEFAULT_OBJECT_STORE = 200 * 2**20
MIN_OBJECT_STORE = 75 * 2**20  # Ray refuses a smaller object store
MIN_MEMORY = 256 * 2**20
CLUSTER_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,39}$")
STARTED_LINE = "Ray runtime started"
# A node start that failed for a passing reason is tried again: a port taken in the
# moment between picking and binding it, or a raylet that missed Ray's fixed 30 s
# registration window on an overloaded machine.
RETRYABLE = re.compile(
    r"already in use|address in use|failed to bind|timed out during startup", re.IGNORECASE
)


def fmt_bytes(n: int) -> str:
    for unit, size in (("G", 2**30), ("M", 2**20)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return f"{n}B"


def default_state_dir() -> Path:
    """Where cluster state files live unless told otherwise: ``~/.optical-ray/clusters``."""
    return Path.home() / ".optical-ray" / "clusters"


def physical_memory() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def free_ports(n: int) -> list[int]:
    """``n`` distinct TCP ports free on every interface right now, chosen by the OS.

    All sockets stay open until every port is picked, so the ports are distinct; Ray
    binds them a moment later (a node that loses that race is started again)."""
    socks: list[socket.socket] = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


# --------------------------------------------------------------------------- processes


def environ_has(pid: int, needle: bytes) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return needle in f.read().split(b"\0")
    except OSError:  # gone, a zombie, or another user's process: not ours
        return False


def marked_pids(cluster_id: str) -> list[int]:
    """Every live process whose environment carries this cluster's marker."""
    if not os.path.isdir("/proc"):
        raise ClusterError(
            "local clusters find their processes in /proc; this platform "
            "has none (run the cluster on Linux)"
        )
    needle = f"{MARKER_ENV}={cluster_id}".encode()
    me = os.getpid()
    return sorted(
        int(e.name)
        for e in os.scandir("/proc")
        if e.name.isdigit() and int(e.name) != me and environ_has(int(e.name), needle)
    )


def session_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return int(fields[3])  # after "pid (comm)": state ppid pgrp session ...
    except (OSError, IndexError, ValueError):
        return None


def reap(pid: int) -> None:
    """Collect ``pid``'s exit status if it is our child (so it is no zombie)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


# --------------------------------------------------------------------------- state


@dataclass
class NodeStatus:
    """One node of a local cluster, as :meth:`~optical_ray.cluster.local.LocalCluster.status` sees it."""

    role: str  # "head" or "worker"
    index: int
    pid: int
    alive: bool
    node_manager_port: int
    log: str


@dataclass
class ClusterStatus:
    """What :meth:`~optical_ray.cluster.local.LocalCluster.status` reports; ``format()`` is what the CLI prints."""

    name: str
    address: str
    dashboard_url: str
    temp_dir: str
    cpus_per_node: int
    started_at: float
    nodes: list[NodeStatus]
    processes: int
    registered: int | None  # alive nodes as Ray's state API sees them (None: no answer)

    @property
    def up(self) -> bool:
        """Every node's launcher is alive."""
        return all(n.alive for n in self.nodes)

    def format(self) -> str:
        alive = sum(n.alive for n in self.nodes)
        state = "up" if self.up else ("down" if alive == 0 else "degraded")
        lines = [
            f"local Ray cluster {self.name!r}: {state}, {alive}/{len(self.nodes)} node "
            f"launchers alive, {self.processes} processes"
            + ("" if self.registered is None else f", {self.registered} nodes registered with Ray")
            + f" (started {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(self.started_at))})",
            f"  address:   {self.address}",
            f"  dashboard: {self.dashboard_url}",
            f"  logs:      {self.temp_dir}",
        ]
        for n in self.nodes:
            lines.append(
                f"  {n.role:6s} {n.index}: pid {n.pid} "
                f"{'alive' if n.alive else 'gone'}, {self.cpus_per_node} CPUs, "
                f"node manager port {n.node_manager_port}"
            )
        return "\n".join(lines)


@dataclass
class Node:
    role: str
    index: int
    pid: int
    ports: dict[str, int]
    log: str


@dataclass
class State:
    name: str
    cluster_id: str
    temp_dir: str
    auth_mode: str
    nodes: int
    cpus_per_node: int
    gpus_per_node: int
    memory: int
    object_store_memory: int
    started_at: float
    launched: list[Node] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> State:
        data = json.loads(text)
        data["launched"] = [Node(**n) for n in data.get("launched", [])]
        return cls(**data)


@dataclass(frozen=True)
class ClusterSize:
    """A checked cluster size: worker nodes, and what each node advertises."""

    nodes: int
    cpus: int
    gpus: int
    memory: int | None
    object_store_memory: int | None


def check_size(
    nodes: Any,
    cpus_per_node: Any,
    gpus_per_node: Any,
    memory: Any,
    object_store_memory: Any,
    name: Any,
) -> ClusterSize:
    """The arguments of a :class:`~optical_ray.cluster.local.LocalCluster`, checked: one
    :class:`ConfigError` listing every bad one, each named by its CLI flag."""
    problems: list[str] = []

    def integer(flag: str, value: Any, low: int, high: int, what: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            problems.append(f"{flag}: got {value!r}, expected {what}")
            return low
        return value

    def size(flag: str, value: Any, minimum: int, why: str = "") -> int | None:
        if value is None:
            return None
        try:
            n = parse_bytes(value, flag)
        except ConfigError as exc:
            problems.extend(exc.problems)
            return None
        if n < minimum:
            problems.append(
                f"{flag}: got {value!r} ({n} bytes), expected at least "
                f"{fmt_bytes(minimum)}{f' ({why})' if why else ''}"
            )
        return n

    out = ClusterSize(
        nodes=integer(
            "--nodes",
            nodes,
            1,
            MAX_NODES,
            f"an integer from 1 to {MAX_NODES} (worker nodes; the head is started in addition)",
        ),
        cpus=integer(
            "--cpus-per-node",
            cpus_per_node,
            1,
            MAX_CPUS_PER_NODE,
            f"an integer from 1 to {MAX_CPUS_PER_NODE}",
        ),
        gpus=integer("--gpus-per-node", gpus_per_node, 0, 64, "an integer from 0 to 64"),
        memory=size("--memory", memory, MIN_MEMORY),
        object_store_memory=size(
            "--object-store-memory", object_store_memory, MIN_OBJECT_STORE, "Ray's minimum"
        ),
    )
    if not isinstance(name, str) or not CLUSTER_NAME_RE.match(name):
        problems.append(
            f"--name: got {name!r}, expected 1 to 40 letters, digits, '-', "
            "'_' or '.' (starting with a letter or digit)"
        )
    if problems:
        raise ConfigError(problems)
    return out


def pinned_env(address: str, runtime_env: dict[str, Any] | None = None) -> dict[str, Any]:
    """``runtime_env`` (a job's) with ``RAY_ADDRESS`` set to ``address`` for every worker
    of the job: Ray Train's placement-group cleaner finds its controller through Ray's
    state API, which without it picks the newest cluster on the host; when that is
    another cluster, it takes the controller for dead and removes the trial's workers."""
    env = dict(runtime_env or {})
    env["env_vars"] = {**env.get("env_vars", {}), "RAY_ADDRESS": address}
    return env
