"""A pair task's watch on its driver process (optical_ray.distributed.driverwatch)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

from optical_ray.distributed.driverwatch import (
    DriverRef,
    process_start,
    process_alive,
    watch_driver,
)


def _ref(pid: int) -> DriverRef:
    return DriverRef(pid, process_start(pid), node_id="here")


def test_a_running_process_is_alive_and_a_reused_pid_is_not() -> None:
    me = _ref(os.getpid())
    assert process_alive(me)
    assert not process_alive(DriverRef(os.getpid(), "1", node_id="here"))  # other start


def test_a_killed_process_is_gone_reaped_or_not() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    ref = _ref(child.pid)
    assert process_alive(ref)
    child.kill()
    deadline = time.time() + 10
    while process_alive(ref) and time.time() < deadline:  # a zombie until reaped
        time.sleep(0.05)
    assert not process_alive(ref)
    child.wait()
    assert not process_alive(ref)


def test_watch_calls_on_death_once_the_driver_dies_and_stops_with_its_block() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    died = threading.Event()
    try:
        with watch_driver(_ref(child.pid), on_death=died.set, poll_s=0.05):
            assert not died.wait(0.3)  # alive: nothing happens
            child.kill()
            child.wait()
            assert died.wait(5)
    finally:
        child.kill()
    # After its block the watch is over: a later death calls nothing.
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    calls = []
    with watch_driver(_ref(other.pid), on_death=lambda: calls.append(1), poll_s=0.05):
        pass
    other.kill()
    other.wait()
    time.sleep(0.3)
    assert calls == []


def test_only_a_driver_on_this_node_is_watched_or_fences_records(monkeypatch) -> None:
    """A Ray Client driver on another node has no pid here: it must be neither watched
    nor taken for dead (which would stop every catalog record)."""
    import ray

    from optical_ray.distributed.driverwatch import local_driver

    ref = DriverRef(os.getpid(), process_start(os.getpid()), node_id="head")

    class Context:
        def __init__(self, node: str) -> None:
            self.node = node

        def get_node_id(self) -> str:
            return self.node

    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(ray, "get_runtime_context", lambda: Context("head"))
    assert local_driver(ref) is ref
    monkeypatch.setattr(ray, "get_runtime_context", lambda: Context("worker-7"))
    assert local_driver(ref) is None
    assert local_driver(None) is None


def test_a_task_asked_to_end_at_a_safe_point_ends_anyway_after_the_grace(monkeypatch) -> None:
    """With ``grace_s``, the driver's death only sets a flag (the Tune loop ends the task
    at its next step); a task whose block is still running after the grace is ended
    anyway, and one whose block ended within it is left alone."""
    import optical_ray.distributed.driverwatch as dw

    ended = []
    monkeypatch.setattr(dw, "end_task", lambda ref: ended.append(ref.pid))
    for block_s, expected in ((1.5, 1), (0.0, 0)):
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        gone = threading.Event()
        ended.clear()
        try:
            with dw.watch_driver(_ref(child.pid), on_death=gone.set, poll_s=0.05, grace_s=0.5):
                child.kill()
                child.wait()
                assert gone.wait(5)
                time.sleep(block_s)
        finally:
            child.kill()
        time.sleep(0.8)
        assert ended == [child.pid] * expected, (block_s, ended)


class _Signer:
    """Stands in for StateSigner; its log lives on the instance (cloudpickle may swap
    the methods of a class it pickled by value, so no closures)."""

    def __init__(self, events: list[str]) -> None:
        self.events = events

    def on_step_end(self, iteration, trials) -> None:  # noqa: ANN001
        self.events.append("signed")

    def settled(self, timeout: float, staging=None) -> bool:  # noqa: ANN001
        self.events.append("stored")
        return True


def test_the_tune_loop_ends_the_task_once_its_last_state_is_signed_and_stored(
    monkeypatch,
) -> None:
    """Once the driver is gone, the pair's Tune callback ends the task at the start of a
    step, after signing what Tune saved and waiting until storage holds it (ended during
    the upload, a resume would find a state it cannot trust); a fenced record only asks
    for that end. It survives Tune's pickling, and a pickled copy ends nothing."""
    import ray.cloudpickle

    import optical_ray.distributed.pair as rt

    events: list[str] = []
    monkeypatch.setattr(rt, "end_task", lambda ref: events.append("ended"))
    cb = rt._EndWhenDriverGone(threading.Event(), _ref(os.getpid()), _Signer(events))
    cb.on_step_begin(0, [])
    assert events == []  # the driver runs
    ray.cloudpickle.loads(ray.cloudpickle.dumps(cb.fenced))(None)  # a copy: no effect
    assert not cb.gone.is_set()
    cb.fenced(None)  # a record refused mid-step: nothing ends yet
    assert events == [] and cb.gone.is_set()
    cb.on_step_begin(1, [])
    assert events == ["signed", "stored", "ended"]
    restored = ray.cloudpickle.loads(ray.cloudpickle.dumps(cb))
    restored.on_step_begin(2, [])
    assert events == ["signed", "stored", "ended"]
