"""One driver per experiment: a lease object in the experiment's storage.

Two drivers running one experiment interleave its saved state, overwrite each other's
signed manifest and record more trials than asked for. So before a sweep's driver looks
at an experiment (whether it exists, its saved state) it takes the experiment's lease,
``<experiment>/optical-ray.lease``: a small JSON object naming its holder (owner id,
host, pid and that process's start time, when it was taken, its last heartbeat).

* **Taken atomically.** Local storage: a complete temp file hard-linked into place (the
  link fails when the lease exists, like ``O_EXCL``, and nobody ever reads it half
  written). S3: ``PutObject`` with ``If-None-Match: *`` (AWS S3, SeaweedFS, MinIO).
* **Renewed** by a heartbeat thread in the driver every :data:`HEARTBEAT_S` seconds, as
  a compare-and-swap against the version last written (local: under ``flock`` of the
  lease file, against its content; S3: ``If-Match`` its ETag), and **released**
  (deleted, under the same condition) when the sweep ends.
* **A second driver is refused** with one line naming the holder.
* **A stale lease is taken over**, with a warning and by the same compare-and-swap (of
  two drivers taking it over, one wins): its holder is on this host and its process is
  gone (at once: a driver killed with SIGKILL and run again on its machine resumes
  without waiting), or on another host and its heartbeat is older than :data:`TTL_S`
  (hosts' clocks must agree to well within that). A lease that cannot be parsed was not
  written by a driver, and is stale too.

A driver that finds its lease taken by another (it was stalled past the TTL) stops its
sweep (:class:`LeaseLostError`) instead of writing next to the new holder.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import logging
import os
import secrets
import socket
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from optical_ray.distributed.driverwatch import DriverRef, process_alive, process_start
from optical_ray.errors import OpticalRayError, StorageError
from optical_ray.storage import redact

__all__ = [
    "LEASE_NAME",
    "TTL_S",
    "HEARTBEAT_S",
    "Holder",
    "LeaseHeldError",
    "LeaseLostError",
    "ExperimentLease",
    "SweepLeases",
    "stale_reason",
]

LEASE_NAME = "optical-ray.lease"
#: Seconds without a heartbeat after which a lease held from another host is stale.
TTL_S = 60.0
#: Seconds between two renewals: a few may fail (storage briefly down) within the TTL.
HEARTBEAT_S = 15.0
log = logging.getLogger(__name__)


class LeaseHeldError(OpticalRayError):
    """Another driver, alive, holds the experiment's lease."""


class LeaseLostError(OpticalRayError):
    """Another driver took this driver's lease over (this one was stalled past the TTL)."""


class _Conflict(Exception):
    """The lease is not the version the caller read (or exists, for a create)."""


def _when(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, tz=dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def pid_space() -> str | None:
    """This machine's boot and pid namespace (Linux): two containers that share a host
    name but not their pids are different hosts to a lease."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        return f"{boot}:{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:
        return None


@dataclass(frozen=True)
class Holder:
    """Who holds a lease: ``owner`` is random per driver run, ``process_start`` tells a
    reused pid from the holder's process, ``pid_space`` where its pid means something
    (:func:`pid_space`), ``started``/``heartbeat`` are Unix times."""

    owner: str
    host: str
    pid: int
    process_start: str | None
    pid_space: str | None
    started: float
    heartbeat: float

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def parse(cls, data: bytes) -> Holder | None:
        """The holder in ``data``, None when it is not a lease a driver wrote."""
        try:
            raw = json.loads(data)
            return cls(
                owner=str(raw["owner"]),
                host=str(raw["host"]),
                pid=int(raw["pid"]),
                process_start=_opt_str(raw["process_start"]),
                pid_space=_opt_str(raw["pid_space"]),
                started=float(raw["started"]),
                heartbeat=float(raw["heartbeat"]),
            )
        except (ValueError, TypeError, KeyError, AttributeError):
            return None

    def describe(self, now: float) -> str:
        age = max(0.0, now - self.heartbeat)
        return (
            f"host {self.host}, pid {self.pid}, since {_when(self.started)}, "
            f"last heartbeat {age:.0f} s ago"
        )


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


def stale_reason(
    holder: Holder | None, *, host: str, space: str | None, now: float, ttl: float
) -> str | None:
    """Why ``holder``'s lease may be taken over, seen from ``host`` (pid space
    ``space``) at ``now``; None while it is live."""
    if holder is None:
        return "it is not a lease a driver wrote"
    if holder.host == host and holder.pid_space == space:
        if process_alive(DriverRef(holder.pid, holder.process_start, "")):
            return None
        return f"its driver (pid {holder.pid}) is gone"
    age = now - holder.heartbeat
    return f"its last heartbeat was {age:.0f} s ago (TTL {ttl:.0f} s)" if age > ttl else None


# --------------------------------------------------------------------------- backends


class _LocalLease:
    """A lease file. Versions are its content; every read and rewrite holds ``flock`` on
    it (re-checking after the lock that the path still names the inode locked)."""

    def __init__(self, store: Any, path: Path) -> None:
        self.store, self.path = store, path
        self.made_dir = False

    @contextlib.contextmanager
    def errors(self, action: str) -> Iterator[None]:
        """Storage that cannot hold a lease (read-only, a file where a directory
        belongs) is one :class:`~optical_ray.errors.StorageError` line."""
        try:
            yield
        except _Conflict:
            raise
        except OSError as exc:
            raise self.store.error(exc, f"{action} the lease {self.path}") from None

    @contextlib.contextmanager
    def _locked(self) -> Iterator[int | None]:
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR)
            except FileNotFoundError:
                yield None
                return
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # deleted or replaced while we waited: lock the current one
        try:
            yield fd
        finally:
            os.close(fd)

    @staticmethod
    def _content(fd: int) -> bytes:
        size = os.fstat(fd).st_size
        return os.pread(fd, size, 0)

    def read(self) -> tuple[bytes, Any] | None:
        with self.errors("read"), self._locked() as fd:
            if fd is None:
                return None
            data = self._content(fd)
            return data, data

    def create(self, data: bytes) -> Any:
        parent = self.path.parent
        with self.errors("create"):
            if not parent.is_dir():
                parent.mkdir(parents=True, exist_ok=True)
                self.made_dir = True
            tmp = parent / f".{self.path.name}.{secrets.token_hex(8)}.tmp"
            try:
                with open(tmp, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.link(tmp, self.path)
            except FileExistsError:
                raise _Conflict from None
            finally:
                tmp.unlink(missing_ok=True)
        return data

    def replace(self, data: bytes, version: Any) -> Any:
        with self.errors("renew"), self._locked() as fd:
            if fd is None or self._content(fd) != version:
                raise _Conflict
            os.ftruncate(fd, 0)
            os.pwrite(fd, data, 0)
            os.fsync(fd)
        return data

    def delete(self, version: Any) -> None:
        with self.errors("release"), self._locked() as fd:
            if fd is None:
                return
            if self._content(fd) != version:
                raise _Conflict
            os.unlink(self.path)
        if self.made_dir:  # a sweep refused before Tune started leaves no empty folder
            with contextlib.suppress(OSError):
                self.path.parent.rmdir()


class _S3Lease:
    """A lease object. Versions are ETags; writes are conditional puts and deletes."""

    CONFLICT = ("PreconditionFailed", "ConditionalRequestConflict")

    def __init__(self, store: Any, rel: str) -> None:
        self.store, self.rel = store, rel
        self.bucket, _, self.key = store.join(rel).partition("/")
        self.client = store.s3_client()

    def _call(self, action: str, fn: Callable[[], Any]) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn()
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            if code in self.CONFLICT or code in ("409", "412"):
                raise _Conflict from None
            if code in ("NoSuchKey", "404"):
                raise FileNotFoundError(self.rel) from None
            raise self.store.error(
                OSError(f"AWS Error {code} during {action} operation: {error.get('Message')}"),
                f"{action} the lease {self.store.uri_of(self.rel)}",
            ) from None
        except BotoCoreError as exc:
            raise self.store.error(OSError(str(exc)), f"{action} the lease") from None

    def read(self, attempts: int = 4) -> tuple[bytes, Any] | None:
        for attempt in range(attempts):
            try:
                out = self._call(
                    "GetObject", lambda: self.client.get_object(Bucket=self.bucket, Key=self.key)
                )
                return out["Body"].read(), out["ETag"]
            except FileNotFoundError:
                return None
            except StorageError:
                # SeaweedFS may fail a read racing a conditional write of the same key
                # (BadDigest): read again.
                if attempt == attempts - 1:
                    raise
                time.sleep(0.1 * (attempt + 1))
        return None

    def create(self, data: bytes) -> Any:
        return self._call(
            "PutObject",
            lambda: self.client.put_object(
                Bucket=self.bucket, Key=self.key, Body=data, IfNoneMatch="*"
            ),
        )["ETag"]

    def replace(self, data: bytes, version: Any) -> Any:
        return self._call(
            "PutObject",
            lambda: self.client.put_object(
                Bucket=self.bucket, Key=self.key, Body=data, IfMatch=version
            ),
        )["ETag"]

    def delete(self, version: Any) -> None:
        try:
            with contextlib.suppress(FileNotFoundError):
                self._call(
                    "DeleteObject",
                    lambda: self.client.delete_object(
                        Bucket=self.bucket, Key=self.key, IfMatch=version
                    ),
                )
        except StorageError:
            # a store without conditional deletes: check the version, then delete
            found = self.read()
            if found is None:
                return
            if found[1] != version:
                raise _Conflict from None
            with contextlib.suppress(FileNotFoundError):
                self._call(
                    "DeleteObject",
                    lambda: self.client.delete_object(Bucket=self.bucket, Key=self.key),
                )


# --------------------------------------------------------------------------- leases


class ExperimentLease:
    """The lease of one experiment (``<experiment>/optical-ray.lease`` in ``store``),
    for this process. ``host``, ``clock`` and ``ttl`` are for tests."""

    def __init__(
        self,
        store: Any,
        experiment: str,
        *,
        ttl: float = TTL_S,
        host: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store, self.experiment, self.ttl, self.clock = store, experiment, ttl, clock
        self.rel = f"{experiment}/{LEASE_NAME}"
        self.uri = redact(store.uri_of(self.rel))
        self.backend: Any = (
            _S3Lease(store, self.rel)
            if store.scheme == "s3"
            else _LocalLease(store, Path(store.join(self.rel)))
        )
        now = clock()
        self.me = Holder(
            owner=secrets.token_hex(8),
            host=host or socket.gethostname(),
            pid=os.getpid(),
            process_start=process_start(os.getpid()),
            pid_space=pid_space(),
            started=now,
            heartbeat=now,
        )
        self.version: Any = None
        self.lost: str | None = None

    def _refused(self, holder: Holder) -> LeaseHeldError:
        return LeaseHeldError(
            f"experiment {self.experiment} is being run by another driver "
            f"({holder.describe(self.clock())}; lease {self.uri}); wait for it to end or "
            "stop it (a lease whose driver is gone is taken over: at once on its host, "
            f"after {self.ttl:.0f} s without a heartbeat from another)"
        )

    def acquire(self, attempts: int = 5) -> ExperimentLease:
        """Take the lease, or take over a stale one; :class:`LeaseHeldError` when a live
        driver holds it."""
        for _ in range(attempts):
            found = self.backend.read()
            if found is None:
                try:
                    self.version = self.backend.create(self.me.to_bytes())
                except _Conflict:
                    continue  # another driver created it first: look at theirs
                return self
            data, version = found
            holder = Holder.parse(data)
            why = stale_reason(
                holder,
                host=self.me.host,
                space=self.me.pid_space,
                now=self.clock(),
                ttl=self.ttl,
            )
            if why is None:
                assert holder is not None  # a live holder parsed
                raise self._refused(holder)
            try:
                self.version = self.backend.replace(self.me.to_bytes(), version)
            except _Conflict:
                continue  # renewed, released or taken over meanwhile: look again
            log.warning(
                "taking over the lease of %s from %s: %s",
                self.experiment,
                holder.describe(self.clock()) if holder else "an unknown holder",
                why,
            )
            return self
        raise LeaseHeldError(
            f"experiment {self.experiment}: its lease {self.uri} kept changing while "
            "this driver tried to take it (other drivers starting at once?); try again"
        )

    def renew(self) -> None:
        """Refresh the heartbeat; when another driver holds the lease now, set
        :attr:`lost` to a line saying who."""
        if self.lost or self.version is None:
            return
        me = replace(self.me, heartbeat=self.clock())
        try:
            self.version = self.backend.replace(me.to_bytes(), self.version)
            self.me = me
        except _Conflict:
            found = self.backend.read()
            holder = Holder.parse(found[0]) if found else None
            who = holder.describe(self.clock()) if holder else "nobody (it was deleted)"
            self.lost = (
                f"this driver lost the lease of experiment {self.experiment} ({self.uri}): "
                f"it is held by {who}; this driver was stalled past the {self.ttl:.0f} s TTL"
            )

    def release(self) -> None:
        """Delete the lease if this driver still holds it."""
        if self.lost or self.version is None:
            return
        try:
            self.backend.delete(self.version)
        except _Conflict:
            pass  # taken over meanwhile: it is the new holder's
        except (StorageError, OSError) as exc:
            log.warning(
                "could not release the lease %s (%s); the next driver takes it over "
                "(at once on this host, after %.0f s from another)",
                self.uri,
                redact(str(exc)),
                self.ttl,
            )
        self.version = None


class SweepLeases:
    """The leases of a sweep's experiments, taken together (all or none) and renewed by
    one heartbeat thread until the ``with`` block ends."""

    def __init__(
        self,
        store: Any,
        experiments: Sequence[str],
        *,
        ttl: float = TTL_S,
        heartbeat_s: float = HEARTBEAT_S,
    ) -> None:
        self.leases = [ExperimentLease(store, e, ttl=ttl) for e in sorted(set(experiments))]
        self.heartbeat_s = heartbeat_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def lost(self) -> str | None:
        """Why this driver must stop (a lease taken over by another), else None."""
        return next((lease.lost for lease in self.leases if lease.lost), None)

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            for lease in self.leases:
                try:
                    lease.renew()
                except (OpticalRayError, OSError) as exc:
                    log.warning("could not renew the lease %s (%s); retrying", lease.uri, exc)

    def __enter__(self) -> SweepLeases:
        taken: list[ExperimentLease] = []
        try:
            for lease in self.leases:
                taken.append(lease.acquire())
        except BaseException:
            for lease in taken:
                lease.release()
            raise
        self._thread = threading.Thread(target=self._beat, name="optical-ray-lease", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        for lease in self.leases:
            lease.release()
