"""A local multi-node Ray cluster: a head and K worker nodes on this one machine.

Each node is one ``ray start --block`` process (the *launcher*) with capped resources
(logical CPUs, the ``memory`` resource, the object store) and ports picked free at
start, so it never collides with another Ray cluster on the same machine. What was
started is written to a state file (``<state_dir>/<name>.json``), so ``down`` and
``status`` work from any process::

    optical-ray cluster up --nodes 2 --cpus-per-node 2     # head + 2 worker nodes
    optical-ray cluster status
    optical-ray cluster down

    with LocalCluster(nodes=1, cpus_per_node=1) as cluster:   # Python / tests
        cluster.connect()                                    # ray.init(address=...)

Why launchers with ``--block``: a blocking ``ray start`` stays the parent of its node's
processes and, on SIGTERM, stops them itself (the graceful path ``ray stop`` would
take, scoped to one node). Why an environment marker: every process of the cluster
(GCS, raylets, dashboard, Ray workers, job drivers) inherits ``OPTICAL_RAY_CLUSTER_ID``
from its launcher, so ``down`` finds exactly this cluster's processes in ``/proc`` and
nothing else — never ``ray stop``, never a kill by name, never a process another user
or test started. Ray 2.5x+ token auth stays on: nodes, drivers and job clients on this
machine share ``~/.ray/auth_token`` and need ``RAY_AUTH_MODE=token`` (see :meth:`LocalCluster.env`).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from optical_ray.errors import ClusterError
from optical_ray.cluster.nodes import (
    ClusterStatus,
    check_size,
    DEFAULT_OBJECT_STORE,
    MARKER_ENV,
    NodeStatus,
    Node,
    RETRYABLE,
    STARTED_LINE,
    State,
    environ_has,
    fmt_bytes,
    free_ports,
    marked_pids,
    physical_memory,
    pinned_env,
    reap,
    session_of,
    signal_all,
    default_state_dir,
    parse_bytes,
)

__all__ = [
    "LocalCluster",
    "ClusterError",
    "NodeStatus",
    "ClusterStatus",
    "parse_bytes",
    "default_state_dir",
    "MARKER_ENV",
]

# --------------------------------------------------------------------------- the cluster


class LocalCluster:
    """A head and ``nodes`` worker nodes on this machine (see the module docstring).

    Parameters
    ----------
    nodes : worker nodes besides the head (1 to 16); the cluster has ``nodes + 1``.
    cpus_per_node : logical CPUs each node advertises (may exceed the physical cores).
    memory : Ray's ``memory`` resource per node (bytes or ``"4G"``); default: this
        machine's RAM divided by the number of nodes, so the nodes never promise more
        than the machine has.
    object_store_memory : object store per node (bytes or ``"200M"``, at least 75M).
    gpus_per_node : GPUs each node advertises (default 0: every node on one machine
        would otherwise count every GPU).
    name, state_dir : the state file is ``<state_dir>/<name>.json``.
    timeout : seconds to wait for the nodes to start.
    """

    def __init__(
        self,
        nodes: int = 1,
        *,
        cpus_per_node: int = 2,
        memory: int | str | None = None,
        object_store_memory: int | str = DEFAULT_OBJECT_STORE,
        gpus_per_node: int = 0,
        name: str = "local",
        state_dir: str | Path | None = None,
        timeout: float = 180.0,
    ) -> None:
        size = check_size(nodes, cpus_per_node, gpus_per_node, memory, object_store_memory, name)
        self.nodes, self.cpus_per_node, self.gpus_per_node = size.nodes, size.cpus, size.gpus
        self.memory, self.object_store_memory = size.memory, size.object_store_memory
        self.name = name
        self.state_dir = Path(state_dir).expanduser() if state_dir else default_state_dir()
        self.timeout = timeout
        self._state: State | None = None
        self._procs: dict[int, subprocess.Popen] = {}

    # ------------------------------------------------------------------ attach / state

    @property
    def state_path(self) -> Path:
        """The state file that records what :meth:`up` started."""
        return self.state_dir / f"{self.name}.json"

    @classmethod
    def attach(cls, name: str = "local", state_dir: str | Path | None = None) -> LocalCluster:
        """The cluster that ``up`` (in any process) recorded under ``name``."""
        cluster = cls(name=name, state_dir=state_dir)
        state = cluster._read_state()
        if state is None:
            raise ClusterError(
                f"no local cluster named {name!r} (no state file "
                f"{cluster.state_path}); start one with "
                f"`optical-ray cluster up --name {name}`"
            )
        cluster._state = state
        cluster.nodes, cluster.cpus_per_node = state.nodes, state.cpus_per_node
        cluster.gpus_per_node, cluster.memory = state.gpus_per_node, state.memory
        cluster.object_store_memory = state.object_store_memory
        return cluster

    def _read_state(self) -> State | None:
        try:
            return State.from_json(self.state_path.read_text())
        except FileNotFoundError:
            return None
        except (ValueError, TypeError, KeyError) as exc:
            raise ClusterError(
                f"cluster state file {self.state_path} is unreadable ({exc}); "
                "stop any processes it started by hand, then delete it"
            ) from None

    def _write_state(self) -> None:
        assert self._state is not None
        tmp = self.state_path.with_suffix(".json.tmp")
        tmp.write_text(self._state.to_json())
        os.replace(tmp, self.state_path)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Serialise up/down of one cluster name across processes."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with open(self.state_dir / f"{self.name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _require_state(self) -> State:
        if self._state is None:
            raise ClusterError(f"local cluster {self.name!r} is not up; call up() first")
        return self._state

    # ------------------------------------------------------------------ addresses

    def _head(self) -> Node:
        return self._require_state().launched[0]

    @property
    def address(self) -> str:
        """The GCS address for ``ray.init(address=...)`` / ``--address``."""
        return f"127.0.0.1:{self._head().ports['gcs']}"

    @property
    def dashboard_url(self) -> str:
        """The dashboard (and Jobs API) URL for ``ray job submit --address``."""
        return f"http://127.0.0.1:{self._head().ports['dashboard']}"

    @property
    def cluster_id(self) -> str:
        """The marker every process of this cluster carries (``OPTICAL_RAY_CLUSTER_ID``)."""
        return self._require_state().cluster_id

    @property
    def temp_dir(self) -> str:
        """Ray's temp dir for this cluster's nodes (sessions, logs, sockets)."""
        return self._require_state().temp_dir

    def env(self) -> dict[str, str]:
        """Environment variables for a driver or ``ray job`` client of this cluster."""
        return {
            "RAY_ADDRESS": self.address,
            "RAY_API_SERVER_ADDRESS": self.dashboard_url,
            "RAY_AUTH_MODE": self._require_state().auth_mode,
        }

    def use_auth(self) -> None:
        """Make this process speak the cluster's auth mode (``RAY_AUTH_MODE``).

        Ray reads the mode once per process and caches it, so after setting the
        variable its config is re-read (what Ray itself does when ``ray.init`` turns
        token auth on)."""
        mode = self._require_state().auth_mode
        if os.environ.get("RAY_AUTH_MODE") == mode:
            return
        os.environ["RAY_AUTH_MODE"] = mode
        from ray._raylet import Config

        Config.initialize("")

    def connect(self, **init_kwargs: Any) -> None:
        """``ray.init(address=self.address)`` from this process, with the right auth."""
        import ray

        self.use_auth()
        init_kwargs["runtime_env"] = pinned_env(self.address, init_kwargs.get("runtime_env"))
        ray.init(address=self.address, **init_kwargs)

    def pids(self) -> list[int]:
        """Every live process of this cluster (nodes, Ray workers, job drivers)."""
        return marked_pids(self._require_state().cluster_id)

    # ------------------------------------------------------------------ up

    def up(self) -> LocalCluster:
        """Start the head, then the worker nodes; return once all ``nodes + 1`` are
        registered with Ray. A cluster already up under this name is an error."""
        with self._locked():
            old = self._read_state()
            if old is not None:
                if marked_pids(old.cluster_id):
                    raise ClusterError(
                        f"local cluster {self.name!r} is already up (state file "
                        f"{self.state_path}); stop it with `optical-ray cluster down "
                        f"--name {self.name}` or pick another --name"
                    )
                shutil.rmtree(old.temp_dir, ignore_errors=True)  # stale: nothing runs
            self._ensure_token()
            base = "/tmp" if os.path.isdir("/tmp") else tempfile.gettempdir()
            # Ray's unix sockets live under the temp dir and must stay under ~107 chars
            # (/tmp/oray-XXXXXXXX/n1/session_<date>_<pid>/sockets/plasma_store: ~90).
            temp_dir = tempfile.mkdtemp(prefix="oray-", dir=base)
            self._state = State(
                name=self.name,
                cluster_id=uuid.uuid4().hex,
                temp_dir=temp_dir,
                auth_mode=os.environ.get("RAY_AUTH_MODE", "token"),
                nodes=self.nodes,
                cpus_per_node=self.cpus_per_node,
                gpus_per_node=self.gpus_per_node,
                memory=self.memory or physical_memory() // (self.nodes + 1),
                object_store_memory=self.object_store_memory or DEFAULT_OBJECT_STORE,
                started_at=time.time(),
            )
            self._write_state()
            deadline = time.monotonic() + self.timeout
            try:
                # The head first, the others join it; one at a time, because on a small
                # machine nodes that start together starve each other's registration.
                for index in range(self.nodes + 1):
                    self._start_node(index, deadline)
                self._await_registered(deadline)
            except BaseException:
                self._stop()
                raise
        return self

    def _ensure_token(self) -> None:
        """Token auth needs a token; make the user's default one if there is none."""
        if os.environ.get("RAY_AUTH_MODE", "token") != "token":
            return
        if (
            os.environ.get("RAY_AUTH_TOKEN")
            or os.environ.get("RAY_AUTH_TOKEN_PATH")
            or (Path.home() / ".ray" / "auth_token").is_file()
        ):
            return
        subprocess.run(
            [sys.executable, "-m", "ray.scripts.scripts", "get-auth-token", "--generate"],
            check=True,
            stdout=subprocess.DEVNULL,
        )

    def _env(self) -> dict[str, str]:
        state = self._require_state()
        env = dict(os.environ)
        env.pop("RAY_ADDRESS", None)  # a node must not join whatever cluster the shell uses
        env[MARKER_ENV] = state.cluster_id
        env["RAY_AUTH_MODE"] = state.auth_mode
        # On SIGTERM a node first drains for up to 30 s (so Ray Serve can move traffic);
        # nothing here serves traffic, and `down` should take seconds.
        env["RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S"] = "0"
        # Job entrypoints (`optical-ray sweep ...`) run in the nodes' environment: put
        # this Python's scripts first on PATH.
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        return env

    def _command(self, node: Node) -> list[str]:
        state = self._require_state()
        p = node.ports
        # One temp dir per node, as if each were its own machine: nodes sharing one
        # would share runtime_resources/, and a node's runtime-env agent would delete
        # a job's working dir that another node's driver still runs in.
        cmd = [
            sys.executable,
            "-m",
            "ray.scripts.scripts",
            "start",
            "--block",
            f"--temp-dir={os.path.join(state.temp_dir, f'n{node.index}')}",
            f"--num-cpus={state.cpus_per_node}",
            f"--num-gpus={state.gpus_per_node}",
            f"--memory={state.memory}",
            f"--object-store-memory={state.object_store_memory}",
            f"--node-manager-port={p['node_manager']}",
            f"--object-manager-port={p['object_manager']}",
            f"--dashboard-agent-listen-port={p['dashboard_agent']}",
            # 0/0: each Ray worker binds a port the OS picks, so workers of two
            # clusters can never claim the same range.
            "--min-worker-port=0",
            "--max-worker-port=0",
            "--disable-usage-stats",
        ]
        if node.role == "head":
            cmd += [
                "--head",
                f"--port={p['gcs']}",
                f"--dashboard-port={p['dashboard']}",
                "--dashboard-host=127.0.0.1",
                f"--ray-client-server-port={p['client']}",
                "--include-dashboard=true",
            ]
        else:
            cmd += [f"--address={self.address}"]
        return cmd

    def _launch(self, index: int) -> Node:
        """Start node ``index`` (0 is the head) on fresh free ports; record it."""
        state = self._require_state()
        role = "head" if index == 0 else "worker"
        names = ["node_manager", "object_manager", "dashboard_agent"]
        if role == "head":
            names += ["gcs", "dashboard", "client"]
        node = Node(
            role=role,
            index=index,
            pid=0,
            ports=dict(zip(names, free_ports(len(names)))),
            log=os.path.join(state.temp_dir, f"{role}-{index}.log"),
        )
        with open(node.log, "wb") as log:
            proc = subprocess.Popen(
                self._command(node),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self._env(),
                start_new_session=True,
            )  # no SIGHUP/SIGINT from our tty
        node.pid = proc.pid
        self._procs[proc.pid] = proc
        state.launched = [n for n in state.launched if n.index != index] + [node]
        state.launched.sort(key=lambda n: n.index)
        self._write_state()
        return node

    def _start_node(self, index: int, deadline: float, attempts: int = 3) -> None:
        """Launch node ``index`` and wait until it runs; a start that failed for a
        passing reason (see ``RETRYABLE``) is cleaned up and tried again on new ports."""
        for attempt in range(attempts):
            node = self._launch(index)
            try:
                self._await_started(node, deadline)
                return
            except ClusterError:
                text = Path(node.log).read_text(errors="replace")
                if attempt == attempts - 1 or not RETRYABLE.search(text):
                    raise
                self._kill_session(node.pid)

    def _kill_session(self, launcher: int) -> None:
        """SIGKILL what a failed launcher left behind: our marked processes in its
        session (every launcher leads a session of its own)."""
        state = self._require_state()
        pids = [p for p in marked_pids(state.cluster_id) if session_of(p) == launcher]
        signal_all(pids, signal.SIGKILL)
        self._wait_gone(pids + [launcher], state.cluster_id, 10.0)

    def _await_started(self, node: Node, deadline: float) -> int:
        """Wait for ``ray start`` to say the node runs; raise with its log's tail if
        it exits or the deadline passes."""
        proc = self._procs.get(node.pid)
        while True:
            text = Path(node.log).read_text(errors="replace") if os.path.exists(node.log) else ""
            if STARTED_LINE in text:
                return node.pid
            code = proc.poll() if proc is not None else None
            if code is not None or time.monotonic() > deadline:
                what = (
                    f"exited with code {code}"
                    if code is not None
                    else f"did not start within {self.timeout:.0f}s"
                )
                raise ClusterError(
                    f"local cluster {self.name!r}: {node.role} node {node.index} "
                    f"{what}; {_last_lines(text)} (log: {node.log})"
                )
            time.sleep(0.2)

    def registered_nodes(self, timeout: int = 10) -> int | None:
        """Alive nodes as Ray's state API reports them; None if the head does not answer."""
        from ray.util.state import list_nodes

        self.use_auth()
        try:
            nodes = list_nodes(
                address=self.dashboard_url, timeout=timeout, raise_on_missing_output=False
            )
        except Exception:  # noqa: BLE001 - dashboard starting up, or gone
            return None
        return sum(1 for n in nodes if n.state == "ALIVE")

    def _await_registered(self, deadline: float) -> None:
        want = self.nodes + 1
        seen: int | None = None
        while time.monotonic() < deadline:
            for node in self._require_state().launched:
                proc = self._procs.get(node.pid)
                if proc is not None and proc.poll() is not None:
                    raise ClusterError(
                        f"local cluster {self.name!r}: {node.role} node "
                        f"{node.index} exited with code {proc.returncode}; "
                        f"{_last_lines(Path(node.log).read_text(errors='replace'))}"
                        f" (log: {node.log})"
                    )
            seen = self.registered_nodes(timeout=5)
            if seen == want:
                return
            time.sleep(0.5)
        raise ClusterError(
            f"local cluster {self.name!r}: {seen or 0} of {want} nodes registered "
            f"within {self.timeout:.0f}s; logs in {self.temp_dir}"
        )

    # ------------------------------------------------------------------ down / status

    def down(self, *, keep_logs: bool = False) -> int:
        """Stop exactly the processes this cluster started (its launchers first, then
        anything left that carries its marker); delete the state file and, unless
        ``keep_logs``, Ray's temp dir. Returns how many processes were stopped."""
        with self._locked():
            if self._state is None:
                self._state = self._read_state()
                if self._state is None:
                    raise ClusterError(
                        f"no local cluster named {self.name!r} (no state file {self.state_path})"
                    )
            return self._stop(keep_logs=keep_logs)

    def _stop(self, *, keep_logs: bool = False) -> int:
        state = self._require_state()
        before = set(marked_pids(state.cluster_id))
        launchers = {n.role: [] for n in state.launched}
        for node in state.launched:
            if node.pid in before:
                launchers[node.role].append(node.pid)
        # Workers first, the head last: a raylet whose GCS is gone waits for it.
        for role in ("worker", "head"):
            signal_all(launchers.get(role, []), signal.SIGTERM)
            self._wait_gone(launchers.get(role, []), state.cluster_id, 30.0)
        # What the launchers left (e.g. a job driver in a session of its own); a second
        # pass catches processes spawned while the first one ran.
        killed: set[int] = set()
        for _ in range(2):
            left = marked_pids(state.cluster_id)
            killed.update(left)
            signal_all(left, signal.SIGKILL)
            left = self._wait_gone(left, state.cluster_id, 10.0)
        if left:
            raise ClusterError(
                f"local cluster {self.name!r}: processes {left} did not stop; "
                f"state kept in {self.state_path}"
            )
        for proc in self._procs.values():
            proc.poll()
        self._procs.clear()
        if not keep_logs:
            shutil.rmtree(state.temp_dir, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            self.state_path.unlink()
        self._state = None
        return len(before | killed)

    def _wait_gone(self, pids: list[int], cluster_id: str, timeout: float) -> list[int]:
        needle = f"{MARKER_ENV}={cluster_id}".encode()
        deadline = time.monotonic() + timeout
        while True:
            for pid in pids:
                proc = self._procs.get(pid)
                if proc is not None:
                    proc.poll()
                else:
                    reap(pid)
            alive = [pid for pid in pids if environ_has(pid, needle)]
            if not alive or time.monotonic() > deadline:
                return alive
            time.sleep(0.1)

    def status(self) -> ClusterStatus:
        """Which launchers live, how many processes the cluster has, and how many
        nodes Ray reports alive (from the recorded state; works from any process)."""
        state = self._state or self._read_state()
        if state is None:
            raise ClusterError(
                f"no local cluster named {self.name!r} (no state file {self.state_path})"
            )
        self._state = state
        pids = set(marked_pids(state.cluster_id))
        nodes = [
            NodeStatus(n.role, n.index, n.pid, n.pid in pids, n.ports.get("node_manager", 0), n.log)
            for n in state.launched
        ]
        registered = self.registered_nodes(timeout=5) if nodes and nodes[0].alive else None
        return ClusterStatus(
            state.name,
            self.address,
            self.dashboard_url,
            state.temp_dir,
            state.cpus_per_node,
            state.started_at,
            nodes,
            len(pids),
            registered,
        )

    def summary(self) -> str:
        """What ``optical-ray cluster up`` prints: where the cluster is, how to use it."""
        state = self._require_state()
        env = " ".join(f"{k}={v}" for k, v in self.env().items())
        total = state.cpus_per_node * (state.nodes + 1)
        flags = "" if self.name == "local" else f" --name {self.name}"
        if self.state_dir != default_state_dir():
            flags += f" --state-dir {self.state_dir}"
        return "\n".join(
            [
                (
                    f"local Ray cluster {self.name!r} is up: head + {state.nodes} worker node(s), "
                    f"{state.cpus_per_node} CPUs each ({total} CPUs), memory "
                    f"{fmt_bytes(state.memory)} and object store "
                    f"{fmt_bytes(state.object_store_memory)} per node"
                ),
                f"  address:   {self.address}",
                f"  dashboard: {self.dashboard_url}",
                f"  logs:      {state.temp_dir}",
                "use it:",
                f"  export {env}",
                (
                    "  ray job submit --working-dir . -- optical-ray sweep --space "
                    "search_spaces/default.yaml --pairs en-xc --samples 4 --storage DIR"
                ),
                f"stop it: optical-ray cluster down{flags}",
            ]
        )

    def __enter__(self) -> LocalCluster:
        if self._state is None:
            self.up()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._state is not None:
            self.down()

    def __repr__(self) -> str:
        where = self.address if self._state else "not up"
        return f"LocalCluster({self.name!r}, nodes={self.nodes}, {where})"


def _last_lines(text: str, n: int = 3) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    errors = [line for line in lines if re.search(r"error|exception|failed", line, re.IGNORECASE)]
    shown = (errors or lines or ["no output"])[-n:]
    return "last output: " + " | ".join(shown)[:600]
