"""Signed manifests of Ray Tune's saved state, so a resume never unpickles state that
this installation did not write.

Threat model: storage may be shared (a bucket many people and jobs can write to). Ray
Tune restores an experiment by unpickling ``tuner.pkl``, ``searcher-state-*.pkl``,
``callback-states-*.pkl`` and the trial objects inside ``experiment_state-*.json``; a
pickle placed there by anyone with write access to the prefix runs code on the machine
that resumes. So while a sweep runs, its driver records the SHA-256 of every state file
it writes (from its own local staging copy or the bytes it wrote, never read back from
storage) in a manifest signed with HMAC-SHA256 under a key that never leaves the
installation. ``--resume`` reads every state file once, checks it against that manifest
(:func:`verify_state`), and Tune then restores from exactly those bytes
(:mod:`optical_ray.distributed.statefs`), so a file swapped in storage after the check
is never read.

The key: ``$OPTICAL_RAY_STATE_KEY`` when set (at least 32 bytes; give the same secret
to every machine that may resume a sweep, e.g. a cluster's head node, through a secret
store), else a random key created once, atomically, in
``~/.config/optical-ray/state.key`` (mode 0600).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from ray.tune import Callback

from optical_ray.errors import OpticalRayError
from optical_ray.storage import StorageUnavailable, redact

__all__ = [
    "KEY_ENV",
    "MANIFEST_NAME",
    "MIN_KEY_BYTES",
    "UntrustedStateError",
    "StateKeyError",
    "StateManifest",
    "StateSigner",
    "VerifiedState",
    "state_key",
    "is_state_file",
    "verify_state",
]

KEY_ENV = "OPTICAL_RAY_STATE_KEY"
MANIFEST_NAME = "optical-ray-state.json"
#: Hashes kept per file: storage may lag behind the driver's staging copy by a few
#: saves, and any version this installation wrote is one it may resume from.
HISTORY = 64
#: The shortest HMAC key accepted (bytes): SHA-256's output size.
MIN_KEY_BYTES = 32


class UntrustedStateError(OpticalRayError):
    """Saved sweep state in storage that this installation did not write."""


class StateKeyError(OpticalRayError):
    """The state key is missing, too short or its file is corrupt."""


def _key_file(path: str | os.PathLike[str] | None) -> Path:
    if path:
        return Path(path)
    config = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(config) / "optical-ray" / "state.key"


def state_key(path: str | os.PathLike[str] | None = None) -> bytes:
    """The HMAC key: ``$OPTICAL_RAY_STATE_KEY`` (at least :data:`MIN_KEY_BYTES` bytes),
    else the local key file (``path``; default ``$XDG_CONFIG_HOME/optical-ray/state.key``),
    created with 32 random bytes, hex-encoded, mode 0600, on first use.

    Raises :class:`StateKeyError` (one line, never the key itself) for a key that is too
    short (an empty key would let anyone forge a manifest) or a key file that is not
    one this function wrote (empty, not hex, cut short)."""
    env = os.environ.get(KEY_ENV)
    if env:  # set but empty counts as unset, as in most tools
        size = len(env.strip().encode())
        if size < MIN_KEY_BYTES:
            raise StateKeyError(
                f"${KEY_ENV} holds {size} bytes; a state key needs at least "
                f"{MIN_KEY_BYTES} (e.g. the output of: python -c 'import secrets; "
                "print(secrets.token_hex(32))'), or unset it to use the local key file"
            )
        return env.encode()
    key_file = _key_file(path)
    try:
        return _read_key_file(key_file)
    except FileNotFoundError:
        pass
    return _create_key_file(key_file)


def _read_key_file(key_file: Path) -> bytes:
    """The key in ``key_file``; :class:`FileNotFoundError` when there is none yet."""
    fix = (
        f"delete it to have a new key created (sweeps signed with the old key then "
        f"resume once with --trust-storage), or set ${KEY_ENV}"
    )
    try:
        text = key_file.read_bytes().decode("ascii").strip()
    except FileNotFoundError:
        raise
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not text"
        raise StateKeyError(f"state key file {key_file} cannot be read ({reason}); {fix}") from None
    if not text:
        raise StateKeyError(f"state key file {key_file} is empty; {fix}")
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise StateKeyError(f"state key file {key_file} is not hex; {fix}") from None
    if len(key) < MIN_KEY_BYTES:
        raise StateKeyError(
            f"state key file {key_file} holds a {len(key)}-byte key, under the "
            f"{MIN_KEY_BYTES} bytes a state key needs; {fix}"
        )
    return key


def _create_key_file(key_file: Path) -> bytes:
    """Create ``key_file`` atomically: the key is written and synced to a private temp
    file, then hard-linked into place. The link fails when the file exists, so two
    processes creating it at once agree on the first one linked, and a crash leaves
    either no key file or a whole one (never an empty key)."""
    try:
        key_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = key_file.parent / f".{key_file.name}.{secrets.token_hex(8)}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32))
                f.flush()
                os.fsync(f.fileno())
            with contextlib.suppress(FileExistsError):  # another process was first
                os.link(tmp, key_file)
        finally:
            tmp.unlink(missing_ok=True)
    except OSError as exc:
        raise StateKeyError(
            f"cannot create the state key file {key_file} ({exc.strerror or exc}); "
            f"set ${KEY_ENV} to a secret of at least {MIN_KEY_BYTES} bytes instead"
        ) from None
    return _read_key_file(key_file)


def is_state_file(name: str) -> bool:
    """Whether Ray Tune may read ``name`` (a file at an experiment's root) on restore:
    every ``.pkl`` and ``.json`` there is downloaded and may hold pickles."""
    return name.endswith((".pkl", ".json")) and name != MANIFEST_NAME


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class StateManifest:
    """``files``: state file name → SHA-256 of each version written (newest last)."""

    files: dict[str, list[str]] = field(default_factory=dict)

    def add(self, name: str, data: bytes) -> bool:
        """Record a version of ``name``; True when it was new."""
        seen = self.files.setdefault(name, [])
        digest = _digest(data)
        if digest in seen:
            return False
        seen.append(digest)
        del seen[:-HISTORY]
        return True

    def sign(self, key: bytes) -> bytes:
        """The manifest as signed JSON bytes."""
        body = json.dumps(self.files, sort_keys=True, separators=(",", ":"))
        mac = hmac.new(key, body.encode(), hashlib.sha256).hexdigest()
        return json.dumps({"files": self.files, "hmac": mac}, sort_keys=True).encode()

    @classmethod
    def load(cls, data: bytes, key: bytes) -> StateManifest:
        """A manifest from :meth:`sign`'s bytes; raises :class:`UntrustedStateError` when
        the signature does not verify under ``key``."""
        try:
            raw = json.loads(data)
            files = {str(k): [str(h) for h in v] for k, v in raw["files"].items()}
            mac = str(raw["hmac"])
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise UntrustedStateError(f"the state manifest is not readable ({exc})") from exc
        body = json.dumps(files, sort_keys=True, separators=(",", ":"))
        expected = hmac.new(key, body.encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(mac, expected):
            raise UntrustedStateError(
                "the state manifest's signature does not match this "
                f"installation's key (${KEY_ENV} or the local key file)"
            )
        return cls(files)

    def untrusted(self, found: Iterable[tuple[str, bytes]]) -> list[str]:
        """Names among ``found`` (name, content) whose content this manifest does not
        vouch for."""
        return [name for name, data in found if _digest(data) not in self.files.get(name, ())]


class StateSigner(Callback):
    """Signs Tune's experiment state as this driver writes it: after every Tune step
    (Tune saves its state, then calls ``on_step_end``) the SHA-256 of each state file in
    the driver's local staging copy joins the manifest, which is re-signed and written
    to the experiment's storage. Resume verifies storage against it
    (:func:`verify_state`)."""

    def __init__(
        self, store: Any, experiment_rel: str, manifest: StateManifest, key: bytes
    ) -> None:
        self.store, self.rel, self.manifest, self.key = store, experiment_rel, manifest, key
        self._seen: dict[str, tuple[float, int]] = {}

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its callbacks into tuner.pkl, in storage: never the key.
        return {**self.__dict__, "_seen": {}, "key": None}

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        if trials:
            self.sign(Path(trials[0].storage.experiment_driver_staging_path))

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self.on_step_end(0, trials)

    def sign(self, staging: Path) -> None:
        changed = False
        for path in staging.iterdir() if staging.is_dir() else ():
            if not path.is_file() or not is_state_file(path.name):
                continue
            st = path.stat()
            if self._seen.get(path.name) == (st.st_mtime, st.st_size):
                continue
            self._seen[path.name] = (st.st_mtime, st.st_size)
            changed |= self.manifest.add(path.name, path.read_bytes())
        if changed:
            self.write()

    def settled(
        self,
        timeout: float,
        staging: Path | None = None,
        poll_s: float = 0.1,
        quiet_s: float = 1.0,
    ) -> bool:
        """Wait (at most ``timeout`` seconds) until Tune's background upload of its saved
        state has landed: storage holds every state file of ``staging`` (the driver's
        local copy) byte for byte, or every state file in storage is a version this
        signer signed and none has changed for ``quiet_s``: Tune skips an upload while
        one runs, so staging may be a step ahead, and then the signed staging copy is
        stored here. True when it did."""
        deadline = time.monotonic() + timeout
        last: dict[str, str] | None = None
        since = time.monotonic()
        while True:
            with contextlib.suppress(OSError, OpticalRayError):  # replaced under the read
                found = {
                    info.base_name: self.store.read_bytes(f"{self.rel}/{info.base_name}")
                    for info in self.store.ls(self.rel)
                    if info.is_file and is_state_file(info.base_name)
                }
                want = {
                    p.name: p.read_bytes()
                    for p in (staging.iterdir() if staging and staging.is_dir() else ())
                    if p.is_file() and is_state_file(p.name)
                }
                if want and all(found.get(name) == data for name, data in want.items()):
                    return True
                now = {name: _digest(data) for name, data in found.items()}
                if now != last:
                    last, since = now, time.monotonic()
                elif (
                    not self.manifest.untrusted(found.items())
                    and time.monotonic() - since >= quiet_s
                ):
                    if not want:
                        return True
                    # Tune's upload is over and staging is a step ahead (it skipped an
                    # upload while one ran): store the signed staging copy ourselves, so
                    # the resume sees every trial the catalog may already record.
                    for name, data in want.items():
                        if found.get(name) != data and not self.manifest.untrusted([(name, data)]):
                            self.store.write_bytes(f"{self.rel}/{name}", data)
                    last = None
            if time.monotonic() >= deadline:
                return False
            time.sleep(poll_s)

    def write(self) -> None:
        if self.key is None:
            return
        with contextlib.suppress(OSError, StorageUnavailable):
            self.store.write_bytes(f"{self.rel}/{MANIFEST_NAME}", self.manifest.sign(self.key))


@dataclass
class VerifiedState:
    """An experiment's state files as read once from storage (name → bytes) and the
    manifest that vouches for them: what a resume restores from
    (:func:`~optical_ray.distributed.statefs.state_filesystem`), never storage again."""

    manifest: StateManifest
    files: dict[str, bytes]

    @property
    def snapshotted(self) -> bool:
        """Whether Tune saved the experiment's state (an ``experiment_state-*``): a
        ``tuner.pkl`` alone means its driver died before Tune's first snapshot."""
        return any(name.startswith("experiment_state-") for name in self.files)


def _read_state_files(store: Any, experiment_rel: str) -> dict[str, bytes]:
    return {
        info.base_name: store.read_bytes(f"{experiment_rel}/{info.base_name}")
        for info in store.ls(experiment_rel)
        if info.is_file and is_state_file(info.base_name)
    }


def verify_state(
    store: Any, experiment_rel: str, key: bytes | None = None, *, trust: bool = False
) -> VerifiedState:
    """Read every state file Tune would read on restore, once, and check it against the
    signed manifest; returns the bytes and the manifest, or raises
    :class:`UntrustedStateError` naming the files.

    ``trust`` (``--trust-storage``) skips the check: the files read are adopted into the
    manifest (the signed one when its signature holds, else a new one), so this
    installation signs what its user vouched for and the next resume needs no flag."""
    where = store.uri_of(experiment_rel)
    key = key or state_key()
    hint = (
        "; resume only state you trust: pass --trust-storage (trust_storage=True) if "
        f"everyone who can write to {redact(where)} is trusted"
    )
    try:
        data = store.read_bytes(f"{experiment_rel}/{MANIFEST_NAME}")
    except (FileNotFoundError, OpticalRayError):
        data = None
    if trust:
        manifest = StateManifest()
        if data is not None:
            with contextlib.suppress(UntrustedStateError):
                manifest = StateManifest.load(data, key)
        files = _read_state_files(store, experiment_rel)
        for name, content in files.items():
            manifest.add(name, content)
        return VerifiedState(manifest, files)
    if data is None:
        raise UntrustedStateError(
            f"refusing to resume {redact(where)}: it has no "
            f"{MANIFEST_NAME} signed by this installation{hint}"
        )
    try:
        manifest = StateManifest.load(data, key)
    except UntrustedStateError as exc:
        raise UntrustedStateError(f"refusing to resume {redact(where)}: {exc}{hint}") from None
    files = _read_state_files(store, experiment_rel)
    bad = manifest.untrusted(files.items())
    if bad:
        raise UntrustedStateError(
            f"refusing to resume {redact(where)}: {', '.join(sorted(bad))} "
            f"{'was' if len(bad) == 1 else 'were'} not written by this installation "
            f"(not in its signed {MANIFEST_NAME}){hint}"
        )
    return VerifiedState(manifest, files)
