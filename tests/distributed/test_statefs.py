"""The filesystem a resumed pair's Tune driver restores through: Tune's state files come
from the bytes verified once (or written by this process), never from storage again, so
a state file swapped in storage after the check never runs (issue 33, item 1). Ray-free
but for Ray's own storage helpers, which read the state the way a restore does."""

from __future__ import annotations

import copy
import pickle

import pytest

from tests.distributed.test_trust import _Payload

STATE = {
    "tuner.pkl": pickle.dumps({"tuner": 1}),
    "experiment_state-2024-01-01_00-00-00.json": b'{"trial_data": []}',
    "searcher-state-2024-01-01_00-00-00.pkl": pickle.dumps({"searcher": 1}),
    "basic-variant-state-2024-01-01_00-00-00.json": b"{}",
}
KEY = b"k" * 32


def _signed_experiment(store, rel: str) -> None:
    """An experiment's root as a pair's driver leaves it: state files, a trial
    directory, and the manifest that signs the state files."""
    from optical_ray.distributed.trust import MANIFEST_NAME, StateManifest

    manifest = StateManifest()
    for name, data in STATE.items():
        store.write_bytes(f"{rel}/{name}", data)
        manifest.add(name, data)
    store.write_bytes(f"{rel}/trial_0/result.json", b'{"map": 0.5}\n')
    store.write_bytes(f"{rel}/{MANIFEST_NAME}", manifest.sign(KEY))


def _swap_everything(store, rel: str, marker) -> bytes:
    """The race: after the check, every state file becomes a pickle that writes
    ``marker`` when loaded, a newer experiment state is planted, one file deleted."""
    bomb = pickle.dumps(_Payload(str(marker)))
    for name in STATE:
        store.write_bytes(f"{rel}/{name}", bomb)
    store.write_bytes(f"{rel}/experiment_state-2099-01-01_00-00-00.json", bomb)
    store.delete(f"{rel}/searcher-state-2024-01-01_00-00-00.pkl")
    return bomb


def _restore_reads(fs, root: str, staging) -> tuple[dict[str, bytes], dict[str, bytes]]:
    """What Ray Tune reads on restore, through ``fs``: ``tuner.pkl`` by path
    (``Tuner.restore``), the newest ``experiment_state-*`` (the controller's resume),
    and every ``.json``/``.pkl`` at the root downloaded to its staging directory
    (``sync_down_experiment_state``); returns what was read by path, and the staging
    directory's files (name -> bytes) as Tune would see them."""
    from ray.train._internal.storage import _download_from_fs_path, _list_at_fs_path
    from ray.tune.execution.experiment_state import _find_newest_experiment_checkpoint

    seen = {}
    with fs.open_input_file(f"{root}/tuner.pkl") as f:
        seen["tuner.pkl"] = f.readall()
    newest = _find_newest_experiment_checkpoint(root, fs=fs)
    with fs.open_input_stream(newest) as f:
        seen["newest"] = f.readall()
    seen["newest-name"] = newest.rsplit("/", 1)[1].encode()
    for rel in _list_at_fs_path(fs, root):
        if rel.endswith((".json", ".pkl")):
            _download_from_fs_path(fs, f"{root}/{rel}", str(staging / rel))
    return seen, {path.name: path.read_bytes() for path in staging.iterdir()}


def _check_served(store, rel: str, tmp_path) -> None:
    from optical_ray.distributed.statefs import state_filesystem
    from optical_ray.distributed.trust import UntrustedStateError, verify_state

    state = verify_state(store, rel, KEY)
    fs = state_filesystem(store.filesystem, store.join(rel), state.files)
    marker = tmp_path / "pwned"
    bomb = _swap_everything(store, rel, marker)
    root = store.join(rel)
    seen, staged = _restore_reads(fs, root, tmp_path / "staging")
    # Exactly the verified bytes, every one of them (the deleted one too), nothing else.
    assert seen == {
        "tuner.pkl": STATE["tuner.pkl"],
        "newest-name": b"experiment_state-2024-01-01_00-00-00.json",
        "newest": STATE["experiment_state-2024-01-01_00-00-00.json"],
    }
    manifest = staged.pop("optical-ray-state.json")  # not a state file: never unpickled
    assert staged == STATE and manifest != bomb
    assert pickle.loads(STATE["tuner.pkl"]) and not marker.exists()
    # A state file nobody verified is refused by name, never read.
    with pytest.raises(UntrustedStateError, match=r"experiment_state-2099.*not a state file"):
        fs.open_input_stream(f"{root}/experiment_state-2099-01-01_00-00-00.json")
    # Everything else is storage itself.
    store.write_bytes(f"{rel}/trial_0/result.json", b'{"map": 0.6}\n')
    with fs.open_input_stream(f"{root}/trial_0/result.json") as f:
        assert f.readall() == b'{"map": 0.6}\n'
    assert not marker.exists()


def test_state_files_come_from_the_verified_bytes_after_a_swap(tmp_path) -> None:
    from optical_ray.storage import resolve_storage

    store = resolve_storage(str(tmp_path / "store"))
    _signed_experiment(store, "sw-en-xc")
    _check_served(store, "sw-en-xc", tmp_path)


@pytest.mark.slow
def test_state_files_come_from_the_verified_bytes_on_s3(s3_storage_uri, tmp_path) -> None:
    from optical_ray.storage import resolve_storage

    store = resolve_storage(s3_storage_uri)
    _signed_experiment(store, "sw-en-xc")
    _check_served(store, "sw-en-xc", tmp_path)


def test_what_the_driver_writes_is_what_it_serves_and_signs(tmp_path) -> None:
    """A new experiment: Tune writes ``tuner.pkl`` straight to storage; the bytes it
    wrote (not storage's copy, which may have been swapped since) are what the driver
    signs and what a later read in the process gets. Other writes pass through."""
    from optical_ray.distributed.statefs import state_filesystem
    from optical_ray.distributed.trust import UntrustedStateError
    from optical_ray.storage import resolve_storage

    store = resolve_storage(str(tmp_path / "store"))
    root = store.join("sw-en-xc")
    fs = state_filesystem(store.filesystem, root)
    fs.create_dir(root)
    with pytest.raises(UntrustedStateError):  # nothing verified or written yet
        fs.open_input_file(f"{root}/tuner.pkl")
    with fs.open_output_stream(f"{root}/tuner.pkl") as f:
        f.write(STATE["tuner.pkl"][:5])
        f.write(STATE["tuner.pkl"][5:])
    assert store.read_bytes("sw-en-xc/tuner.pkl") == STATE["tuner.pkl"]
    assert fs.written("tuner.pkl") == STATE["tuner.pkl"]
    store.write_bytes("sw-en-xc/tuner.pkl", b"swapped")
    with fs.open_input_file(f"{root}/tuner.pkl") as f:
        assert f.readall() == STATE["tuner.pkl"]
    fs.create_dir(f"{root}/trial_0")
    with fs.open_output_stream(f"{root}/trial_0/result.json") as f:
        f.write(b"{}")
    assert store.read_bytes("sw-en-xc/trial_0/result.json") == b"{}"
    assert fs.written("result.json") is None
    fs.delete_file(f"{root}/tuner.pkl")
    assert fs.get_file_info(f"{root}/tuner.pkl").type.name == "NotFound"


def test_elsewhere_it_is_the_plain_storage_filesystem(tmp_path) -> None:
    """Pickled (Tune ships it to trials and saves it in the experiment state) it is the
    storage filesystem itself: no verified bytes travel, and no saved experiment names
    this wrapper. Copied in the process (``copy``/``deepcopy``) it stays the wrapper."""
    import pyarrow.fs as pafs
    from ray import cloudpickle

    from optical_ray.distributed.callbacks import checkpoint_uri
    from optical_ray.distributed.statefs import StateFileSystem, state_filesystem

    fs = state_filesystem(pafs.LocalFileSystem(), str(tmp_path), {"tuner.pkl": b"x" * 100})
    for dumps, loads in ((pickle.dumps, pickle.loads), (cloudpickle.dumps, cloudpickle.loads)):
        blob = dumps(fs)
        assert type(loads(blob)) is pafs.LocalFileSystem
        assert b"statefs" not in blob and b"x" * 100 not in blob
    assert copy.copy(fs) is fs and copy.deepcopy({"fs": fs})["fs"] is fs
    s3 = pafs.S3FileSystem(endpoint_override="127.0.0.1:9", scheme="http", region="us-east-1")
    wrapped = state_filesystem(s3, "bucket/sw-en-xc")
    back = pickle.loads(pickle.dumps(wrapped))
    assert isinstance(back, pafs.S3FileSystem) and back.equals(s3)
    assert isinstance(wrapped, StateFileSystem) and wrapped.region == "us-east-1"

    class Ckpt:
        path = "bucket/sw-en-xc/trial_0/checkpoint_000001"
        filesystem = wrapped

    assert checkpoint_uri(Ckpt(), {}, None) == f"s3://{Ckpt.path}"


def test_uploads_through_it_to_s3_are_not_threaded(monkeypatch) -> None:
    """Ray turns arrow's threaded copy (3-5x slower to S3: benchmarks/bench_statefs.py)
    off for destinations that are S3FileSystem instances; the wrapper over S3 is one to
    isinstance. Private Ray: ``ray.train._internal.storage._pyarrow_fs_copy_files``."""
    import pyarrow.fs as pafs
    from ray.train._internal import storage as ray_storage

    from optical_ray.distributed.statefs import state_filesystem

    seen = {}
    monkeypatch.setattr(pafs, "copy_files", lambda *a, **kw: seen.update(kw))
    s3 = pafs.S3FileSystem(endpoint_override="127.0.0.1:9", scheme="http", region="us-east-1")
    ray_storage._pyarrow_fs_copy_files("/tmp/x", "b/x", destination_filesystem=s3)
    assert seen["use_threads"] is False  # what Ray does for S3 itself
    seen.clear()
    wrapped = state_filesystem(s3, "b/sw-en-xc")
    ray_storage._pyarrow_fs_copy_files("/tmp/x", "b/x", destination_filesystem=wrapped)
    assert seen["use_threads"] is False
    local = state_filesystem(pafs.LocalFileSystem(), "/tmp/sw-en-xc")
    assert not isinstance(local, pafs.S3FileSystem)
