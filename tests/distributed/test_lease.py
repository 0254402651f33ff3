"""One driver per experiment (issue 33, item 4): the lease object in storage, taken
atomically, refused to a second driver in one line naming its holder, renewed, released,
and taken over when stale (at once when its holder's process is gone on this host, after
the TTL from another host), on local storage and on a real S3 server (SeaweedFS)."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _store(uri: str):
    from optical_ray.storage import resolve_storage

    return resolve_storage(uri)


def _write_lease(store, experiment: str, **holder) -> None:
    from optical_ray.distributed.lease import LEASE_NAME

    data = {
        "owner": "someone",
        "host": "elsewhere",
        "pid": 4242,
        "process_start": None,
        "pid_space": None,
        "started": time.time() - 3600,
        "heartbeat": time.time(),
        **holder,
    }
    store.write_bytes(f"{experiment}/{LEASE_NAME}", json.dumps(data).encode())


def _lease_cycle(uri: str, caplog) -> None:
    """Take, refuse, renew, lose to a takeover, release: the same on every storage."""
    from optical_ray.distributed.lease import LEASE_NAME, ExperimentLease, LeaseHeldError

    store = _store(uri)
    first = ExperimentLease(store, "sw-en-sw").acquire()
    assert json.loads(store.read_bytes(f"sw-en-sw/{LEASE_NAME}"))["pid"] == os.getpid()
    with pytest.raises(LeaseHeldError) as refused:
        ExperimentLease(store, "sw-en-sw").acquire()
    line = str(refused.value)
    assert "\n" not in line and "being run by another driver" in line
    for needle in (f"pid {os.getpid()}", "since 20", "last heartbeat 0 s ago", LEASE_NAME):
        assert needle in line, (needle, line)
    before = first.me.heartbeat
    time.sleep(0.01)
    first.renew()
    assert first.lost is None
    assert json.loads(store.read_bytes(f"sw-en-sw/{LEASE_NAME}"))["heartbeat"] > before
    # The holder stalls: seen from another host two minutes later its lease is stale.
    late = ExperimentLease(store, "sw-en-sw", host="other-host", clock=lambda: time.time() + 120)
    with caplog.at_level(logging.WARNING, logger="optical_ray.distributed.lease"):
        late.acquire()
    assert "taking over the lease of sw-en-sw" in caplog.text and "last heartbeat" in caplog.text
    first.renew()  # the stalled driver wakes up: it knows it lost, and says to whom
    assert first.lost and "host other-host" in first.lost
    first.release()  # releases nothing: the lease is the new holder's
    assert json.loads(store.read_bytes(f"sw-en-sw/{LEASE_NAME}"))["host"] == "other-host"
    late.release()
    assert not store.exists(f"sw-en-sw/{LEASE_NAME}")
    ExperimentLease(store, "sw-en-sw").acquire().release()  # free again


def test_the_lease_cycle_on_local_storage(tmp_path, caplog) -> None:
    _lease_cycle(str(tmp_path / "store"), caplog)
    assert list((tmp_path / "store" / "sw-en-sw").iterdir()) == []  # released: deleted


@pytest.mark.slow
def test_the_lease_cycle_on_s3(s3_storage_uri, caplog) -> None:
    _lease_cycle(s3_storage_uri, caplog)


def test_a_lease_from_another_host_waits_for_its_ttl(tmp_path, caplog) -> None:
    from optical_ray.distributed.lease import ExperimentLease, LeaseHeldError

    store = _store(str(tmp_path))
    _write_lease(store, "exp", heartbeat=time.time() - 30)
    with pytest.raises(LeaseHeldError, match=r"host elsewhere, pid 4242.*heartbeat 30 s ago"):
        ExperimentLease(store, "exp").acquire()
    _write_lease(store, "exp", heartbeat=time.time() - 90)
    with caplog.at_level(logging.WARNING):
        ExperimentLease(store, "exp").acquire()
    assert "last heartbeat was 90 s ago (TTL 60 s)" in caplog.text
    # A lease no driver wrote (damaged, or planted) is stale at once.
    store.write_bytes("exp/optical-ray.lease", b"\x00garbage")
    ExperimentLease(store, "exp").acquire()
    # A lease of this host whose pid lives but is another process (the pid was reused).
    _write_lease(
        store,
        "exp",
        host=ExperimentLease(store, "x").me.host,
        pid=os.getpid(),
        process_start="1",
        pid_space=ExperimentLease(store, "x").me.pid_space,
    )
    ExperimentLease(store, "exp").acquire()


def test_storage_that_cannot_hold_a_lease_is_one_line(tmp_path) -> None:
    from optical_ray.distributed.lease import ExperimentLease
    from optical_ray.errors import StorageError

    (tmp_path / "afile").write_text("not a directory")
    with pytest.raises(
        StorageError, match=r"cannot read the lease .*afile/exp.*Not a directory"
    ) as e:
        ExperimentLease(_store(str(tmp_path / "afile")), "exp").acquire()
    assert "\n" not in str(e.value)


def test_sweep_leases_are_all_or_none_and_beat(tmp_path) -> None:
    from optical_ray.distributed.lease import LeaseHeldError, SweepLeases

    store = _store(str(tmp_path))
    _write_lease(store, "sw-en-yo")  # held, live, by a driver elsewhere
    with pytest.raises(LeaseHeldError, match="sw-en-yo"):
        with SweepLeases(store, ["sw-en-sw", "sw-en-yo"]):
            pass
    assert not (tmp_path / "sw-en-sw").exists()  # the one taken was given back
    with SweepLeases(store, ["sw-en-sw", "sw-en-ha"], heartbeat_s=0.05) as leases:
        first = json.loads(store.read_bytes("sw-en-sw/optical-ray.lease"))["heartbeat"]
        beat = first
        deadline = time.monotonic() + 30  # a loaded machine may hold the thread back
        while beat == first and time.monotonic() < deadline:
            time.sleep(0.05)
            beat = json.loads(store.read_bytes("sw-en-sw/optical-ray.lease"))["heartbeat"]
        assert beat > first
        assert leases.lost() is None
    assert not (tmp_path / "sw-en-sw").exists() and not (tmp_path / "sw-en-ha").exists()


# --------------------------------------------------------------------------- processes


def _race(uri: str, ready, out) -> None:
    """Two rounds: take a free lease, then a stale one, at the same moment as the
    other racers (``ready`` lines everyone up, the test between the rounds)."""
    from optical_ray.distributed.lease import ExperimentLease, LeaseHeldError

    store = _store(uri)
    for _ in range(2):
        lease = ExperimentLease(store, "sw-en-sw")
        ready.wait(120)
        try:
            lease.acquire()
            out.put("won")
        except LeaseHeldError as exc:
            out.put(f"refused: {exc}")
        ready.wait(120)  # a winner that exited would leave a stale lease, taken over at once


def _check_one_wins(uri: str, start_method: str, n: int = 4) -> None:
    ctx = multiprocessing.get_context(start_method)
    out, ready = ctx.Queue(), ctx.Barrier(n + 1)
    procs = [ctx.Process(target=_race, args=(uri, ready, out)) for _ in range(n)]
    for p in procs:
        p.start()
    try:
        ready.wait(120)
        fresh = sorted(out.get(timeout=120) for _ in procs)
        assert fresh.count("won") == 1, fresh
        assert all("being run by another driver" in r for r in fresh if r != "won"), fresh
        _write_lease(_store(uri), "sw-en-sw", heartbeat=time.time() - 600)  # stale
        ready.wait(120)
        ready.wait(120)
        stale = sorted(out.get(timeout=120) for _ in procs)
        assert stale.count("won") == 1, stale
        ready.wait(120)
    finally:
        for p in procs:
            p.join(timeout=60)


@pytest.mark.slow
def test_of_drivers_starting_at_once_one_wins_local(tmp_path) -> None:
    _check_one_wins(str(tmp_path / "store"), "fork")


@pytest.mark.slow
def test_of_drivers_starting_at_once_one_wins_s3(s3_storage_uri) -> None:
    # spawned: the AWS SDK in a forked child of a process that used it may hang
    _check_one_wins(s3_storage_uri, "spawn")


@pytest.mark.slow
def test_a_killed_driver_on_this_host_is_taken_over_at_once(tmp_path, caplog) -> None:
    """What a SIGKILLed sweep's next --resume meets: a lease whose pid is gone."""
    from optical_ray.distributed.lease import ExperimentLease, LeaseHeldError

    code = (
        "import sys, time\n"
        "from optical_ray.storage import resolve_storage\n"
        "from optical_ray.distributed.lease import ExperimentLease\n"
        "ExperimentLease(resolve_storage(sys.argv[1]), 'sw-en-sw').acquire()\n"
        "print('held', flush=True)\n"
        "time.sleep(300)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, env=env
    )
    try:
        assert holder.stdout.readline() == b"held\n"
        with pytest.raises(LeaseHeldError, match=f"pid {holder.pid},"):
            ExperimentLease(_store(str(tmp_path)), "sw-en-sw").acquire()
    finally:
        holder.kill()
        holder.wait()
    start = time.monotonic()
    with caplog.at_level(logging.WARNING):
        ExperimentLease(_store(str(tmp_path)), "sw-en-sw").acquire()
    assert time.monotonic() - start < 5
    assert f"its driver (pid {holder.pid}) is gone" in caplog.text
