"""Tune's saved state read only from bytes this process verified or wrote.

Ray Tune restores an experiment by reading its state files from storage, by path, at
several moments: ``tuner.pkl`` in ``Tuner.restore``, the newest ``experiment_state-*``
when the run starts, the searcher and callback states when they are downloaded. Checking
storage before that (:func:`~optical_ray.distributed.trust.verify_state`) leaves a
window in which anyone who can write to the bucket swaps a checked file for a pickle of
their own. So the pair's Tune driver never lets Tune read a state file from storage:
:func:`state_filesystem` wraps the storage filesystem in a ``pyarrow.fs.PyFileSystem``
whose handler

* serves every state file at the experiment's root (what
  :func:`~optical_ray.distributed.trust.is_state_file` names) from bytes held in memory:
  the ones verified against the signed manifest, or the last ones this process wrote
  through it (so ``tuner.pkl`` is signed as Tune wrote it, not as storage returns it);
* lists the root with exactly those state files, and refuses to open any other one
  (:class:`~optical_ray.distributed.trust.UntrustedStateError`);
* passes everything else (checkpoints, results, listings of trial directories, every
  write) to the real filesystem, whose native streams do the I/O.

Pickled (Tune ships its storage filesystem to every trial, and saves it in the
experiment state), the wrapper is the plain storage filesystem: trials never read
experiment-level state, and a saved experiment never names this module. Copies within
the process (``copy.copy``/``deepcopy``) are the wrapper itself.
"""

from __future__ import annotations

import io
import posixpath
import threading
from typing import Any, Callable, Mapping

import pyarrow as pa
import pyarrow.fs as pafs

from optical_ray.distributed.trust import UntrustedStateError, is_state_file

__all__ = ["StateFileSystem", "state_filesystem"]


def _norm(path: str) -> str:
    """A path compared without leading/trailing slashes or dot segments: local paths
    start with '/', S3 ones (``bucket/prefix``) do not."""
    return posixpath.normpath("/" + path.strip("/")).lstrip("/")


class _Recorder:
    """A write-only stream that forwards to ``out`` and hands the whole content to
    ``done`` once closed."""

    def __init__(self, out: Any, done: Callable[[bytes], None]) -> None:
        self.out, self.done = out, done
        self.buf = io.BytesIO()
        self.closed = False

    def write(self, data: Any) -> int:
        self.buf.write(data)
        return self.out.write(data)

    def flush(self) -> None:
        self.out.flush()

    def tell(self) -> int:
        return self.buf.tell()

    def close(self) -> None:
        if not self.closed:
            self.out.close()
            self.closed = True
            self.done(self.buf.getvalue())


class _StateHandler(pafs.FileSystemHandler):
    """The handler behind :class:`StateFileSystem` (see the module docstring)."""

    def __init__(self, base: pafs.FileSystem, root: str, files: Mapping[str, bytes]) -> None:
        self.base = base
        self.root = _norm(root)
        self.files: dict[str, bytes] = dict(files)
        self.written: dict[str, bytes] = {}
        self.lock = threading.Lock()  # Tune uploads its state from a background thread

    def __eq__(self, other: object) -> bool:
        return self is other

    def __ne__(self, other: object) -> bool:
        return self is not other

    def _name(self, path: str) -> str | None:
        """The state file ``path`` names at the experiment's root, else None."""
        parent, _, name = _norm(path).rpartition("/")
        return name if parent == self.root and is_state_file(name) else None

    def _served(self, name: str) -> bytes:
        with self.lock:
            data = self.files.get(name)
        if data is None:
            raise UntrustedStateError(
                f"refusing to read {name} from the experiment's storage: it is not a "
                "state file this driver verified against the signed manifest or wrote"
            )
        return data

    def _forget(self, path: str) -> None:
        name = self._name(path)
        if name is not None:
            with self.lock:
                self.files.pop(name, None)

    # ------------------------------------------------------------------ queries
    def get_type_name(self) -> str:
        return self.base.type_name

    def normalize_path(self, path: str) -> str:
        return self.base.normalize_path(path)

    def _info(self, path: str) -> pafs.FileInfo:
        name = self._name(path)
        if name is None:
            return self.base.get_file_info(path)
        with self.lock:
            data = self.files.get(name)
        if data is None:
            return pafs.FileInfo(path, pafs.FileType.NotFound)
        return pafs.FileInfo(path, pafs.FileType.File, size=len(data))

    def get_file_info(self, paths: list[str]) -> list[pafs.FileInfo]:
        return [self._info(p) for p in paths]

    def get_file_info_selector(self, selector: pafs.FileSelector) -> list[pafs.FileInfo]:
        with self.lock:
            files = dict(self.files)
        out, listed = [], set()
        for info in self.base.get_file_info(selector):
            name = self._name(info.path)
            if name is None:
                out.append(info)
            elif name in files:
                out.append(pafs.FileInfo(info.path, pafs.FileType.File, size=len(files[name])))
                listed.add(name)
        if _norm(selector.base_dir) == self.root:
            # a served file deleted from storage meanwhile is still what Tune reads
            base = selector.base_dir.rstrip("/")
            out += [
                pafs.FileInfo(f"{base}/{name}", pafs.FileType.File, size=len(data))
                for name, data in sorted(files.items())
                if name not in listed
            ]
        return out

    # ------------------------------------------------------------------ reads
    def open_input_stream(self, path: str) -> pa.NativeFile:
        name = self._name(path)
        if name is None:
            return self.base.open_input_stream(path)
        return pa.BufferReader(self._served(name))

    def open_input_file(self, path: str) -> pa.NativeFile:
        name = self._name(path)
        if name is None:
            return self.base.open_input_file(path)
        return pa.BufferReader(self._served(name))

    # ------------------------------------------------------------------ writes
    def open_output_stream(self, path: str, metadata: Any) -> pa.NativeFile:
        out = self.base.open_output_stream(path, metadata=metadata)
        name = self._name(path)
        if name is None:
            return out

        def done(data: bytes) -> None:
            with self.lock:
                self.files[name] = self.written[name] = data

        return pa.PythonFile(_Recorder(out, done), mode="w")

    def open_append_stream(self, path: str, metadata: Any) -> pa.NativeFile:
        self._forget(path)  # its new content is unknown: never served
        return self.base.open_append_stream(path, metadata=metadata)

    def create_dir(self, path: str, recursive: bool) -> None:
        self.base.create_dir(path, recursive=recursive)

    def delete_file(self, path: str) -> None:
        self._forget(path)
        self.base.delete_file(path)

    def move(self, src: str, dest: str) -> None:
        self._forget(src)
        self._forget(dest)
        self.base.move(src, dest)

    def copy_file(self, src: str, dest: str) -> None:
        self._forget(dest)
        self.base.copy_file(src, dest)

    def _drop_all_under(self, path: str) -> None:
        where = _norm(path)
        if self.root == where or self.root.startswith(where + "/") or not where:
            with self.lock:
                self.files.clear()

    def delete_dir(self, path: str) -> None:
        self._drop_all_under(path)
        self.base.delete_dir(path)

    def delete_dir_contents(self, path: str, missing_dir_ok: bool = False) -> None:
        self._drop_all_under(path)
        self.base.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self) -> None:
        self._drop_all_under("")
        self.base.delete_dir_contents("/", accept_root_dir=True)


class StateFileSystem(pafs.PyFileSystem):
    """The storage filesystem, with the experiment's state files served from memory
    (see the module docstring). Build it with :func:`state_filesystem`."""

    def __reduce__(self) -> Any:
        # Elsewhere (a trial, a saved experiment) it is the plain storage filesystem.
        return self.handler.base.__reduce__()

    @property  # type: ignore[misc]
    def __class__(self) -> type:
        # Ray's uploads turn arrow's threaded copy off for S3 filesystems only, which
        # they recognise with isinstance (threaded copies to S3 are 3-5x slower): over
        # S3 this wrapper answers isinstance(fs, S3FileSystem) too. type() is unchanged.
        base = type(self.handler.base)
        return base if issubclass(base, pafs.S3FileSystem) else StateFileSystem

    def __getattr__(self, name: str) -> Any:
        # what the storage filesystem has beyond the FileSystem API (S3's region, ...)
        return getattr(self.handler.base, name)

    def __copy__(self) -> StateFileSystem:
        return self

    def __deepcopy__(self, memo: dict) -> StateFileSystem:
        return self

    def written(self, name: str) -> bytes | None:
        """The bytes of the last complete write of state file ``name`` through this
        filesystem, None if there was none."""
        with self.handler.lock:
            return self.handler.written.get(name)


def state_filesystem(
    base: pafs.FileSystem, experiment_path: str, files: Mapping[str, bytes] | None = None
) -> StateFileSystem:
    """``base`` with the state files at ``experiment_path`` (a path on ``base``) served
    from ``files`` (name → verified bytes; empty for a new experiment) and from what is
    written through it."""
    return StateFileSystem(_StateHandler(base, experiment_path, files or {}))
