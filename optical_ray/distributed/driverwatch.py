"""A pair's Tune driver task stops when the sweep's driver process dies.

Ray does not end the tasks of a driver killed with SIGKILL promptly: measured with
Ray 2.60 on a local cluster, a zero-CPU task of a killed driver went on running for
87 s, until the cluster shut down. A pair task left running like that keeps starting
trials and writing catalog records after its last experiment snapshot, next to the
driver that resumes the sweep. Each pair task therefore watches its driver process (it
runs on the driver's node, see :func:`optical_ray.distributed.driver.run`) and ends its own process
within about a second of the driver's death; the trial actors it owns end with it.
It ends between two steps of its Tune loop, once the state Tune last saved is signed
and uploaded, so a resume finds it complete and trusted (ended at any other moment, the
task could leave an unsigned or half-uploaded state behind; CI saw the first).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

log = logging.getLogger(__name__)

__all__ = [
    "DriverRef",
    "end_task",
    "this_driver",
    "local_driver",
    "process_alive",
    "process_start",
    "watch_driver",
]

POLL_S = 0.5


@dataclass(frozen=True)
class DriverRef:
    """A driver process: pid, its start time (so a reused pid is not taken for it) and
    the Ray node it runs on (a task on another node cannot see it)."""

    pid: int
    started: str | None
    node_id: str


def process_start(pid: int) -> str | None:
    """The start time of ``pid`` (Linux: ``/proc/<pid>/stat``), None when it is not
    running (gone, or a zombie waiting to be reaped) or cannot be read."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    if fields[0] in ("Z", "X"):  # exited, not yet reaped
        return None
    return fields[19]  # starttime, in clock ticks since boot


def process_alive(ref: DriverRef) -> bool:
    """Whether the process ``ref`` names still runs."""
    if os.path.isdir("/proc"):
        started = process_start(ref.pid)
        return started is not None and (ref.started is None or started == ref.started)
    try:
        os.kill(ref.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def end_task(ref: DriverRef) -> None:
    """End this pair task's process now: ``ref``, its driver, is gone. Immediate
    (``os._exit``), so Tune saves no experiment state after the driver's death."""
    log.error(
        "the sweep's driver (pid %d) is gone: this pair's task ends; "
        "rerun the sweep with --resume to continue",
        ref.pid,
    )
    os._exit(1)


def this_driver() -> DriverRef:
    """The calling process, as its pair tasks will watch it (Ray must be initialised)."""
    import ray

    pid = os.getpid()
    started = process_start(pid) if os.path.isdir("/proc") else None
    return DriverRef(pid, started, ray.get_runtime_context().get_node_id())


def local_driver(ref: DriverRef | None) -> DriverRef | None:
    """``ref`` when it runs on this process's Ray node (where its pid can be seen),
    else None: a Ray Client driver elsewhere is left to Ray's own clean-up."""
    import ray

    if ref is None or (
        ray.is_initialized() and ray.get_runtime_context().get_node_id() != ref.node_id
    ):
        return None
    return ref


@contextmanager
def watch_driver(
    ref: DriverRef | None,
    on_death: Callable[[], None] | None = None,
    poll_s: float = POLL_S,
    grace_s: float | None = None,
) -> Iterator[None]:
    """While the block runs, poll ``ref`` (a driver on this node, see
    :func:`local_driver`) and call ``on_death`` (default: end this process) once it is
    gone. With ``grace_s``, ``on_death`` only asks the task to end at a safe point (see
    :func:`optical_ray.distributed.pair.fit_pair`); if the block still runs ``grace_s`` seconds
    later, the task ends anyway. Does nothing for ``ref=None``."""
    if ref is None:
        yield
        return
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(poll_s):
            if not process_alive(ref):
                (on_death or (lambda: end_task(ref)))()
                if grace_s is not None and not stop.wait(grace_s):
                    log.warning("no safe point within %.0f s of the driver's death", grace_s)
                    end_task(ref)
                return

    thread = threading.Thread(target=loop, name="optical-ray-driver-watch", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=poll_s * 4)
