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
    monkeypatch.setenv("OPTICAL_RAY_STATE_KEY", "from-the-environment")
    assert state_key(path) == b"from-the-environment"


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
    assert verify_state(store, "sw-en-xc").files  # our own state: trusted
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
