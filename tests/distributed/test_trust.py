"""Signed manifests of Tune's saved state: resume refuses state this installation did
not write (no Ray needed)."""

from __future__ import annotations

import os
import pickle
import stat

import pytest


@pytest.fixture
def key_env(monkeypatch):
    monkeypatch.setenv("OPTICAL_RAY_STATE_KEY", "k" * 32)


def test_key_file_is_created_once_private(tmp_path, monkeypatch) -> None:
    from optical_ray.distributed.trust import state_key

    monkeypatch.delenv("OPTICAL_RAY_STATE_KEY", raising=False)
    path = tmp_path / "cfg" / "state.key"
    first = state_key(path)
    assert len(first) == 32 and state_key(path) == first
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["state.key"]  # no temp file left
    monkeypatch.setenv("OPTICAL_RAY_STATE_KEY", "from-the-environment-" + "x" * 11)
    assert state_key(path) == b"from-the-environment-" + b"x" * 11
    monkeypatch.setenv("OPTICAL_RAY_STATE_KEY", "")  # set but empty: unset
    assert state_key(path) == first


@pytest.mark.parametrize("value", ["short", " " * 40, "x" * 31, "\n" + "y" * 30 + "\n"])
def test_a_short_key_in_the_environment_is_refused(value, tmp_path, monkeypatch) -> None:
    """An empty or short HMAC key would let anyone forge a manifest: refused in one
    line that gives its length, never the key."""
    from optical_ray.distributed.trust import StateKeyError, state_key

    monkeypatch.setenv("OPTICAL_RAY_STATE_KEY", value)
    with pytest.raises(
        StateKeyError, match=r"OPTICAL_RAY_STATE_KEY holds \d+ bytes.*at least 32"
    ) as e:
        state_key(tmp_path / "state.key")
    assert "\n" not in str(e.value) and (not value.strip() or value.strip() not in str(e.value))
    assert not (tmp_path / "state.key").exists()


@pytest.mark.parametrize(
    "content, problem",
    [
        (b"", "is empty"),
        (b"  \n\t\n", "is empty"),
        (b"not a hex key at all, but 64 characters long.................", "is not hex"),
        (b"ab" * 31 + b"\n", "holds a 31-byte key"),
        (b"\xff\xfe" * 32, "cannot be read"),
    ],
)
def test_a_corrupt_key_file_is_one_line_naming_it(content, problem, tmp_path, monkeypatch) -> None:
    from optical_ray.distributed.trust import StateKeyError, state_key

    monkeypatch.delenv("OPTICAL_RAY_STATE_KEY", raising=False)
    path = tmp_path / "state.key"
    path.write_bytes(content)
    with pytest.raises(StateKeyError) as e:
        state_key(path)
    line = str(e.value)
    assert "\n" not in line and str(path) in line and problem in line
    assert "delete it" in line and "OPTICAL_RAY_STATE_KEY" in line
    assert path.read_bytes() == content  # never replaced behind the user's back


def _key_in_a_process(path: str, start: float, out) -> None:
    import time

    from optical_ray.distributed.trust import state_key

    time.sleep(max(0.0, start - time.time()))
    out.put(state_key(path).hex())


def test_processes_creating_the_key_at_once_agree_on_one(tmp_path, monkeypatch) -> None:
    import multiprocessing
    import time

    monkeypatch.delenv("OPTICAL_RAY_STATE_KEY", raising=False)
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    start = time.time() + 0.5
    path = str(tmp_path / "cfg" / "state.key")
    procs = [ctx.Process(target=_key_in_a_process, args=(path, start, out)) for _ in range(6)]
    for p in procs:
        p.start()
    keys = {out.get(timeout=60) for _ in procs}
    for p in procs:
        p.join(timeout=60)
    assert len(keys) == 1 and (tmp_path / "cfg" / "state.key").read_text() == keys.pop()


def test_a_crash_while_creating_the_key_leaves_no_key_file(tmp_path, monkeypatch) -> None:
    """The key is written to a temp file and linked into place: a crash before the link
    leaves no key file (the next call creates a whole one), never an empty one."""
    from optical_ray.distributed import trust

    monkeypatch.delenv("OPTICAL_RAY_STATE_KEY", raising=False)
    path = tmp_path / "state.key"

    def crash(fd: int) -> None:
        raise KeyboardInterrupt  # the process dies mid-write

    monkeypatch.setattr(trust.os, "fsync", crash)
    with pytest.raises(KeyboardInterrupt):
        trust.state_key(path)
    assert not path.exists()
    monkeypatch.undo()
    monkeypatch.delenv("OPTICAL_RAY_STATE_KEY", raising=False)
    assert len(trust.state_key(path)) == 32 and len(path.read_text()) == 64


def test_manifest_signature_and_versions(key_env) -> None:
    from optical_ray.distributed.trust import StateManifest, UntrustedStateError, state_key

    m = StateManifest()
    assert m.add("tuner.pkl", b"v1") and not m.add("tuner.pkl", b"v1")
    m.add("tuner.pkl", b"v2")
    signed = m.sign(state_key())
    back = StateManifest.load(signed, state_key())
    # Every version this installation wrote is trusted (storage may lag behind).
    assert back.untrusted([("tuner.pkl", b"v1"), ("tuner.pkl", b"v2")]) == []
    assert back.untrusted([("tuner.pkl", b"evil"), ("other.json", b"v1")]) == [
        "tuner.pkl",
        "other.json",
    ]
    with pytest.raises(UntrustedStateError, match="signature does not match"):
        StateManifest.load(signed, b"another installation's key")
    forged = signed.replace(b"files", b"files", 1).replace(b'"hmac": "', b'"hmac": "0', 1)
    with pytest.raises(UntrustedStateError):
        StateManifest.load(forged, state_key())


class _Payload:
    """Unpickling this writes a marker file: what an attacker's tuner.pkl would do."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_planted_pickle_is_refused_before_anything_reads_it(tmp_path, key_env) -> None:
    from optical_ray.distributed.trust import StateSigner, verify_state
    from optical_ray.storage import resolve_storage
    from optical_ray.distributed.trust import StateManifest, UntrustedStateError

    store = resolve_storage(str(tmp_path / "store"))
    staging = tmp_path / "staging"
    staging.mkdir()
    (staging / "experiment_state-1.json").write_text('{"trials": []}')
    (staging / "searcher-state-1.pkl").write_bytes(pickle.dumps({"ok": 1}))
    signer = StateSigner(store, "sw-en-xc", StateManifest(), b"k" * 32)
    signer.sign(staging)
    for p in staging.iterdir():  # Tune's sync: the same bytes land in storage
        store.write_bytes(f"sw-en-xc/{p.name}", p.read_bytes())
    state = verify_state(store, "sw-en-xc")  # our own state: trusted, read once
    assert state.files == {p.name: p.read_bytes() for p in staging.iterdir()}
    assert state.snapshotted
    assert b"kkkk" not in pickle.dumps(signer)  # Tune pickles callbacks into storage

    marker = tmp_path / "pwned"
    store.write_bytes("sw-en-xc/tuner.pkl", pickle.dumps(_Payload(str(marker))))
    with pytest.raises(
        UntrustedStateError,
        match=r"tuner\.pkl was not written by this "
        r"installation.*--trust-storage",
    ):
        verify_state(store, "sw-en-xc")
    assert not marker.exists()
    # --trust-storage: the files as they are are adopted (signed), so the next resume
    # needs no flag; nothing is unpickled here either.
    trusted = verify_state(store, "sw-en-xc", trust=True)
    assert not trusted.manifest.untrusted(trusted.files.items()) and not marker.exists()
    store.delete("sw-en-xc/optical-ray-state.json")
    with pytest.raises(UntrustedStateError, match="no optical-ray-state.json"):
        verify_state(store, "sw-en-xc")


def test_the_signer_waits_until_storage_holds_what_it_signed(tmp_path, key_env) -> None:
    """``settled``: storage holding the driver's staging copy byte for byte is at once;
    a half-written file is not; signed but older files wait until they stop changing
    (an upload still running may yet touch them), then the staging copy is stored; an
    unsigned file never is."""
    import time

    from optical_ray.storage import resolve_storage
    from optical_ray.distributed.trust import StateManifest, StateSigner

    store = resolve_storage(str(tmp_path / "store"))
    staging = tmp_path / "staging"
    staging.mkdir()
    old, new = b'{"trials": ["a"]}', b'{"trials": ["a", "b"]}'
    signer = StateSigner(store, "sw-en-xc", StateManifest(), b"k" * 32)
    (staging / "experiment_state-1.json").write_bytes(old)
    signer.sign(staging)
    time.sleep(0.01)  # a new mtime for the next version
    (staging / "experiment_state-1.json").write_bytes(new)
    signer.sign(staging)
    path = "sw-en-xc/experiment_state-1.json"
    store.write_bytes(path, new[:9])  # half uploaded
    assert not signer.settled(timeout=0.3, staging=staging, poll_s=0.05, quiet_s=0.1)
    store.write_bytes(path, new)
    start = time.monotonic()
    assert signer.settled(timeout=5, staging=staging, poll_s=0.05, quiet_s=3)
    assert time.monotonic() - start < 1  # the staging copy landed: no quiet wait
    store.write_bytes(path, old)  # a signed older version, staging a step ahead
    assert not signer.settled(timeout=0.3, staging=staging, poll_s=0.05, quiet_s=1)
    assert signer.settled(timeout=2, staging=staging, poll_s=0.05, quiet_s=0.2)
    assert store.read_bytes(path) == new  # once quiet, the signed staging copy is stored
    store.write_bytes("sw-en-xc/searcher-state-1.pkl", b"unsigned")
    assert not signer.settled(timeout=0.5, poll_s=0.05, quiet_s=0.1)
