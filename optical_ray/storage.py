"""Storage URIs → one pyarrow filesystem, for results, checkpoints and the catalog.

A storage URI is a local directory (relative paths become absolute; ``file://`` works
too) or ``s3://bucket/prefix`` on AWS or any S3-compatible store (MinIO, SeaweedFS,
Ceph). :func:`resolve_storage` turns it into a :class:`Storage`: the
``pyarrow.fs.FileSystem`` plus the path on it, which is exactly what Ray writes through
(``RunConfig(storage_path=s.ray_storage_path(),
storage_filesystem=s.ray_storage_filesystem())``).

Credentials come from the standard AWS chain only (``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN``, ``AWS_PROFILE``, the instance role):
they are never passed in configs, so they are never pickled with the filesystem, saved
beside a checkpoint or written to the catalog. A URI or endpoint that carries them
(``s3://KEY:SECRET@bucket``, ``http://user:pw@host``) is refused with one line that
masks the secret (:func:`check_no_credentials`), and :func:`redact` (from
:mod:`optical_ray.redaction`) strips secrets from any text before it is logged or saved.

Failures become one-line :class:`~optical_ray.errors.StorageError` naming the endpoint
and the bucket; :class:`StorageUnavailable` (a subclass) marks the ones worth retrying
(connection refused, timeouts, 5xx, throttling), which
:func:`~optical_ray.retries.with_retries` retries (:mod:`optical_ray.retries`).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, TypeVar
from urllib.parse import urlsplit

import pyarrow.fs as pafs

from optical_ray.errors import StorageError
from optical_ray.redaction import CREDENTIALS_HINT, has_credentials, redact, redact_uri
from optical_ray.retries import (
    PERMANENT_MARKERS,
    TRANSIENT_MARKERS,
    StorageUnavailable,
    is_transient,
    one_line,
    with_retries,
)

__all__ = [
    "Storage",
    "StorageUnavailable",
    "resolve_storage",
    "as_storage",
    "with_retries",
    "is_transient",
    "local_copy",
    "redact",
    "check_no_credentials",
    "CONNECT_TIMEOUT_S",
    "REQUEST_TIMEOUT_S",
]

log = logging.getLogger(__name__)
T = TypeVar("T")

# A dead endpoint must fail in seconds, not minutes: one TCP connect is allowed this
# long, and the SDK retries a failed request once; longer outages are the business of
# with_retries (the catalog) or Ray (checkpoints).
CONNECT_TIMEOUT_S = 3.0
REQUEST_TIMEOUT_S = 30.0
SDK_ATTEMPTS = 2

_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_ALLOWED = "a local path, file:///abs/path or s3://bucket/prefix"


def _reason(message: str) -> str:
    """The useful tail of an AWS SDK message: 'Could not connect to server' etc."""
    m = re.search(r"AWS Error (\w+) during (\w+) operation: ([^;(]*)", message)
    if m:
        detail = m.group(3).strip().rstrip(".")
        detail = re.sub(r"^curlCode: \d+, ", "", detail)
        return f"{m.group(1)} on {m.group(2)}" + (f": {detail}" if detail else "")
    return message


# --------------------------------------------------------------------------- Storage


@dataclass
class Storage:
    """A resolved storage location: the filesystem and the root path on it.

    ``path`` is ``bucket/prefix`` for S3 and an absolute directory for local storage.
    The helpers take paths *relative to the root* (``"catalog/exp/en-sw/part.parquet"``).
    Picklable: carries no credentials, so it can go to Ray workers and subprocesses.
    """

    uri: str
    scheme: str  # "local" | "s3"
    path: str
    filesystem: pafs.FileSystem = field(repr=False)
    endpoint: str | None = None  # "http://host:port" for S3-compatible stores
    region: str | None = None

    # ------------------------------------------------------------------ naming
    @property
    def bucket(self) -> str | None:
        return self.path.split("/", 1)[0] if self.scheme == "s3" else None

    def where(self) -> str:
        """Where this is, for messages: the URI and, for S3, the endpoint."""
        if self.scheme != "s3":
            return self.path
        return f"{self.uri} (endpoint {self.endpoint or 'AWS default'})"

    def join(self, *parts: str) -> str:
        """The filesystem path of ``parts`` under the root (what ``filesystem`` takes)."""
        clean = [p.strip("/") for p in parts if p and p.strip("/")]
        return "/".join([self.path.rstrip("/")] + clean) if clean else self.path

    def uri_of(self, *parts: str) -> str:
        """The URI of ``parts`` under the root: ``s3://bucket/prefix/...`` or a local path."""
        full = self.join(*parts)
        return f"s3://{full}" if self.scheme == "s3" else full

    def ray_storage_path(self) -> str:
        """``RunConfig(storage_path=...)``: the path on :meth:`ray_storage_filesystem`."""
        return self.path

    def ray_storage_filesystem(self) -> pafs.FileSystem:
        """``RunConfig(storage_filesystem=...)``: the filesystem, custom endpoint included."""
        return self.filesystem

    # ------------------------------------------------------------------ errors
    def error(self, exc: BaseException, action: str) -> StorageError:
        """A one-line :class:`StorageError` for ``exc`` raised while doing ``action``."""
        message = redact(one_line(exc))
        low = message.lower()
        if self.scheme == "local":
            return StorageError(f"cannot {action} in local storage {self.path}: {message}")
        bucket = self.bucket
        endpoint = self.endpoint or "AWS default"
        if any(k in low for k in ("no_such_bucket", "nosuchbucket")):
            return StorageError(
                f"S3 bucket {bucket!r} does not exist at endpoint {endpoint} "
                f"(while trying to {action}); create it or fix {self.uri!r}"
            )
        if any(k in low for k in PERMANENT_MARKERS):
            return StorageError(
                f"S3 endpoint {endpoint} refused access to bucket {bucket!r} (while trying "
                f"to {action}): {_reason(message)}; check the credentials in the AWS chain "
                "(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE or the instance role)"
            )
        if any(k in low for k in TRANSIENT_MARKERS):
            return StorageUnavailable(
                f"cannot reach S3 endpoint {endpoint} for bucket {bucket!r} (while trying to "
                f"{action}): {_reason(message)}; check storage.endpoint / AWS_ENDPOINT_URL "
                "and that the server is up"
            )
        return StorageError(
            f"S3 error at endpoint {endpoint}, bucket {bucket!r} (while "
            f"trying to {action}): {_reason(message)}"
        )

    @contextlib.contextmanager
    def _translate(self, action: str) -> Iterator[None]:
        try:
            yield
        except StorageError:
            raise
        except (OSError, ValueError) as exc:  # pyarrow raises OSError subclasses
            raise self.error(exc, action) from None

    # ------------------------------------------------------------------ checks
    def check(self) -> "Storage":
        """Raise a one-line :class:`StorageError` if the store cannot be reached (S3: the
        endpoint answers and the bucket exists). Local storage always passes."""
        if self.scheme == "local":
            return self
        with self._translate(f"list {self.uri}"):
            # A listing reaches the server (network errors raise); HeadBucket alone maps
            # some failures to "not found".
            self.filesystem.get_file_info(pafs.FileSelector(self.path, allow_not_found=True))
            info = self.filesystem.get_file_info(self.bucket)
        if info.type == pafs.FileType.NotFound:
            raise StorageError(
                f"S3 bucket {self.bucket!r} does not exist at endpoint "
                f"{self.endpoint or 'AWS default'}; create it (ensure_bucket) "
                f"or fix {self.uri!r}"
            )
        return self

    def ensure_bucket(self) -> "Storage":
        """Create the S3 bucket if it is missing (needs the permission to); local storage:
        create the root directory."""
        if self.scheme == "local":
            with self._translate("create the storage directory"):
                self.filesystem.create_dir(self.path, recursive=True)
            return self
        with self._translate(f"check bucket {self.bucket!r}"):
            self.filesystem.get_file_info(pafs.FileSelector(self.path, allow_not_found=True))
            if self.filesystem.get_file_info(self.bucket).type != pafs.FileType.NotFound:
                return self
        creator = _s3_filesystem(self.endpoint, self.region, allow_bucket_creation=True)
        with self._translate(f"create bucket {self.bucket!r}"):
            creator.create_dir(self.bucket, recursive=False)
        return self

    def check_writable(self, hint: str = "give a writable --storage / storage.uri") -> "Storage":
        """Write and delete a small probe object under the root, or raise a one-line
        :class:`StorageError` saying why not (read-only, not a directory, access denied).

        Entry points that write (``train``, ``sweep``, ``evaluate --best``) call this
        before Ray or training starts: a store that takes no writes otherwise fails
        only after a training stage has finished, and that stage's work is lost.
        Local storage is probed in its nearest existing directory, so a check creates
        no directory; ``hint`` ends the message (the flag or key to change)."""
        name = f".optical-ray-probe-{uuid.uuid4().hex}"
        if self.scheme == "local":
            root = Path(self.path)
            here = next((p for p in (root, *root.parents) if p.exists()), root)
            if not here.is_dir():
                raise StorageError(
                    f"local storage {self.path} cannot be written: {str(here)!r} is not a "
                    f"directory; {hint}"
                )
            probe = here / name
            try:
                probe.write_bytes(b"probe")
                probe.unlink()
            except OSError as exc:
                raise StorageError(
                    f"local storage {self.path} cannot be written "
                    f"({exc.strerror or type(exc).__name__} in {str(here)!r}); {hint}"
                ) from None
            return self
        with self._translate(f"write a probe object under {self.uri}"):
            with self.filesystem.open_output_stream(self.join(name)) as out:
                out.write(b"probe")
            self.filesystem.delete_file(self.join(name))
        return self

    # ------------------------------------------------------------------ files
    def exists(self, rel: str = "") -> bool:
        with self._translate(f"look up {self.uri_of(rel)}"):
            return self.filesystem.get_file_info(self.join(rel)).type != pafs.FileType.NotFound

    def open_input(self, rel: str):
        """A readable random-access file; a missing file is a :class:`StorageError`."""
        with self._translate(f"read {self.uri_of(rel)}"):
            try:
                return self.filesystem.open_input_file(self.join(rel))
            except FileNotFoundError:
                raise StorageError(f"no such file: {self.uri_of(rel)}") from None

    def open_output(self, rel: str):
        """A writable stream (parent directories created on local storage). On S3 the
        object appears only when the stream is closed; locally use :meth:`write_bytes`
        for an atomic write."""
        with self._translate(f"write {self.uri_of(rel)}"):
            if self.scheme == "local":
                self.filesystem.create_dir(str(Path(self.join(rel)).parent), recursive=True)
            return self.filesystem.open_output_stream(self.join(rel))

    def read_bytes(self, rel: str) -> bytes:
        f = self.open_input(rel)
        with self._translate(f"read {self.uri_of(rel)}"), f:
            return f.read()

    def write_bytes(self, rel: str, data: bytes) -> str:
        """Write ``data`` atomically: readers see the whole file or nothing. Local: a temp
        file in the same directory, then rename; S3: one upload, visible on completion.
        Returns the URI written."""
        target = self.join(rel)
        with self._translate(f"write {self.uri_of(rel)}"):
            if self.scheme == "local":
                parent = Path(target).parent
                parent.mkdir(parents=True, exist_ok=True)
                tmp = parent / f".tmp-{uuid.uuid4().hex}-{Path(target).name}"
                try:
                    with open(tmp, "wb") as f:
                        f.write(data)
                        f.flush()
                        os.fsync(f.fileno())
                    os.replace(tmp, target)
                finally:
                    tmp.unlink(missing_ok=True)
            else:
                with self.filesystem.open_output_stream(target) as out:
                    out.write(data)
        return self.uri_of(rel)

    def ls(self, rel: str = "", recursive: bool = False) -> list[pafs.FileInfo]:
        """Entries under ``rel`` (files and directories; [] if it does not exist)."""
        with self._translate(f"list {self.uri_of(rel)}"):
            return self.filesystem.get_file_info(
                pafs.FileSelector(self.join(rel), recursive=recursive, allow_not_found=True)
            )

    def download(self, rel: str, local_dir: str | os.PathLike[str]) -> Path:
        """Copy the directory ``rel`` (everything under it) into ``local_dir``; returns
        ``local_dir``. A missing directory is a :class:`StorageError`."""
        dest = Path(local_dir)
        if not self.ls(rel):
            raise StorageError(f"no such directory: {self.uri_of(rel)}")
        with self._translate(f"download {self.uri_of(rel)}"):
            dest.mkdir(parents=True, exist_ok=True)
            pafs.copy_files(
                self.join(rel),
                str(dest.absolute()),
                source_filesystem=self.filesystem,
                destination_filesystem=pafs.LocalFileSystem(),
            )
        return dest

    def rel(self, path: str) -> str:
        """The inverse of :meth:`join`: ``path`` relative to the root."""
        root = self.path.rstrip("/") + "/"
        return path[len(root) :] if path.startswith(root) else path

    def delete(self, rel: str) -> None:
        """Delete a file, or a directory with everything under it; missing is fine."""
        with self._translate(f"delete {self.uri_of(rel)}"):
            target = self.join(rel)
            info = self.filesystem.get_file_info(target)
            if info.type == pafs.FileType.Directory:
                self.filesystem.delete_dir(target)
            elif info.type == pafs.FileType.File:
                self.filesystem.delete_file(target)

    def s3_client(self) -> Any:
        """A boto3 S3 client on this store's endpoint, region and AWS credential chain,
        for requests pyarrow does not make (batch deletes, conditional writes)."""
        return _boto_client(self.endpoint, self.region)

    def delete_files(self, paths: list[str]) -> None:
        """Delete many files (filesystem paths, as :meth:`join` gives); missing ones are
        fine. S3: DeleteObjects, 1000 keys a request (one request per key through
        pyarrow is 10x slower, and concurrent single deletes make SeaweedFS crawl)."""
        if self.scheme == "local":
            with self._translate("delete files"):
                for path in paths:
                    Path(path).unlink(missing_ok=True)
            return
        client = self.s3_client()
        by_bucket: dict[str, list[str]] = {}
        for path in paths:
            bucket, _, key = path.partition("/")
            by_bucket.setdefault(bucket, []).append(key)
        for bucket, keys in by_bucket.items():
            for i in range(0, len(keys), 1000):
                chunk = [{"Key": k} for k in keys[i : i + 1000]]
                with self._translate(f"delete {len(chunk)} objects in bucket {bucket!r}"):
                    try:
                        out = client.delete_objects(
                            Bucket=bucket, Delete={"Objects": chunk, "Quiet": True}
                        )
                    except Exception as exc:  # botocore errors are not OSErrors
                        raise OSError(str(exc)) from None
                errors = [e for e in out.get("Errors", []) if e.get("Code") != "NoSuchKey"]
                if errors:
                    raise self.error(
                        OSError(f"{errors[0].get('Code')}: {errors[0].get('Message')}"),
                        f"delete {errors[0].get('Key')!r} in bucket {bucket!r}",
                    )


@functools.lru_cache(maxsize=8)
def _boto_client(endpoint: str | None, region: str | None) -> Any:
    """A boto3 S3 client on the same endpoint, region and AWS credential chain as the
    pyarrow filesystem (clients are thread-safe; one per endpoint is kept)."""
    import boto3
    from botocore.config import Config

    config = Config(
        connect_timeout=CONNECT_TIMEOUT_S,
        read_timeout=REQUEST_TIMEOUT_S,
        retries={"max_attempts": SDK_ATTEMPTS, "mode": "standard"},
    )
    return boto3.client("s3", endpoint_url=endpoint or None, region_name=region, config=config)


# --------------------------------------------------------------------------- resolving


def check_no_credentials(uri: str | None, what: str, *, bare_host: bool = False) -> None:
    """Raise a one-line :class:`StorageError` (secret masked, pointing to the AWS chain) if
    ``uri`` carries credentials: ``scheme://user:pw@...`` or a credential query
    parameter. ``bare_host``: ``uri`` may be ``host:port`` without a scheme."""
    if uri and has_credentials(uri, bare_host=bare_host):
        raise StorageError(
            f"{what} {redact_uri(uri, bare_host=bare_host)!r} carries "
            f"credentials; {CREDENTIALS_HINT}"
        )


def _parse_endpoint(endpoint: str) -> tuple[str, str]:
    """``http(s)://host:port`` (or bare ``host:port`` = https) → (host:port, scheme)."""
    check_no_credentials(endpoint, "S3 endpoint", bare_host=True)
    text = endpoint.strip()
    if "://" not in text:
        text = "https://" + text
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise StorageError(
            f"S3 endpoint {redact(endpoint)!r} is not valid; expected "
            "http(s)://host[:port], e.g. http://127.0.0.1:8333"
        )
    try:
        port = parts.port
    except ValueError:
        raise StorageError(
            f"S3 endpoint {redact(endpoint)!r} has a bad port; expected http(s)://host[:port]"
        ) from None
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return (f"{host}:{port}" if port else host), parts.scheme


def _s3_filesystem(
    endpoint: str | None,
    region: str | None,
    *,
    allow_bucket_creation: bool = False,
    connect_timeout: float = CONNECT_TIMEOUT_S,
    request_timeout: float = REQUEST_TIMEOUT_S,
) -> pafs.S3FileSystem:
    kwargs: dict[str, Any] = dict(
        region=region,
        connect_timeout=connect_timeout,
        request_timeout=request_timeout,
        retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=SDK_ATTEMPTS),
        allow_bucket_creation=allow_bucket_creation,
        # Small writes become one PutObject instead of a three-request multipart upload.
        allow_delayed_open=True,
    )
    if endpoint:
        kwargs["endpoint_override"], kwargs["scheme"] = _parse_endpoint(endpoint)
    return pafs.S3FileSystem(**kwargs)


def resolve_storage(
    uri: str,
    endpoint: str | None = None,
    region: str | None = None,
    *,
    connect_timeout: float = CONNECT_TIMEOUT_S,
    request_timeout: float = REQUEST_TIMEOUT_S,
) -> Storage:
    """Parse a storage URI into a :class:`Storage` (no I/O; see :meth:`Storage.check`).

    Parameters
    ----------
    uri : str
        A local path (relative → absolute, ``~`` expanded), ``file:///abs/path``, or
        ``s3://bucket/prefix``.
    endpoint : str, optional
        S3-compatible endpoint ``http(s)://host:port``. Default: ``AWS_ENDPOINT_URL_S3``,
        then ``AWS_ENDPOINT_URL``, then AWS itself.
    region : str, optional
        Default: ``AWS_REGION`` / ``AWS_DEFAULT_REGION``; ``us-east-1`` with a custom
        endpoint (so the SDK never asks the instance metadata service).
    """
    if not isinstance(uri, str) or not uri.strip():
        raise StorageError(f"storage URI {uri!r} is empty; expected {_ALLOWED}")
    check_no_credentials(uri, "storage URI")
    if endpoint:
        check_no_credentials(endpoint, "S3 endpoint", bare_host=True)
    text = uri.strip()
    scheme, sep, rest = text.partition("://")
    if not sep:
        path = str(Path(text).expanduser().absolute())
        return Storage(uri=path, scheme="local", path=path, filesystem=pafs.LocalFileSystem())
    scheme = scheme.lower()
    if scheme == "file":
        host, slash, local = rest.partition("/")
        if host not in ("", "localhost") or not slash:
            raise StorageError(
                f"storage URI {uri!r} is not valid; file URIs are file:///absolute/path"
            )
        path = str(Path("/" + local).absolute())
        return Storage(uri=path, scheme="local", path=path, filesystem=pafs.LocalFileSystem())
    if scheme != "s3":
        raise StorageError(
            f"storage URI {uri!r} has unsupported scheme '{scheme}://'; expected {_ALLOWED}"
        )
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise StorageError(f"storage URI {uri!r} names no bucket; expected s3://bucket/prefix")
    if not _BUCKET_RE.match(bucket) or ".." in bucket:
        raise StorageError(
            f"storage URI {uri!r}: bucket {bucket!r} is not a valid S3 "
            "bucket name (3-63 lowercase letters, digits, '.', '-')"
        )
    segments = [s for s in prefix.split("/") if s]
    if any(s in (".", "..") for s in segments):
        raise StorageError(f"storage URI {uri!r}: '.' and '..' are not allowed in an S3 prefix")
    path = "/".join([bucket] + segments)
    endpoint = (
        endpoint
        or os.environ.get("AWS_ENDPOINT_URL_S3")
        or os.environ.get("AWS_ENDPOINT_URL")
        or None
    )
    region = region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if endpoint and not region:
        region = "us-east-1"
    fs = _s3_filesystem(
        endpoint, region, connect_timeout=connect_timeout, request_timeout=request_timeout
    )
    return Storage(
        uri=f"s3://{path}",
        scheme="s3",
        path=path,
        filesystem=fs,
        endpoint=endpoint.strip() if endpoint else None,
        region=region,
    )


def local_copy(
    uri: str,
    dest: str | os.PathLike[str] | None = None,
    *,
    endpoint: str | None = None,
    region: str | None = None,
) -> Path:
    """A local directory with the contents of ``uri``: a local path as it is, an
    ``s3://`` directory (a checkpoint or a saved model) downloaded into ``dest`` (default:
    a new temporary directory)."""
    store = resolve_storage(uri, endpoint, region)
    if store.scheme == "local":
        return Path(store.path)
    target = Path(dest) if dest is not None else Path(tempfile.mkdtemp(prefix="optical-ray-"))
    return store.download("", target)


def as_storage(storage: "Storage | str | os.PathLike[str] | Any") -> Storage:
    """A :class:`Storage` from a Storage, a URI/path, or a ``StorageConfig``."""
    if isinstance(storage, Storage):
        return storage
    if isinstance(storage, (str, os.PathLike)):
        return resolve_storage(os.fspath(storage))
    if hasattr(storage, "uri"):  # config.StorageConfig, without importing config here
        return resolve_storage(
            storage.uri, getattr(storage, "endpoint", None), getattr(storage, "region", None)
        )
    raise StorageError(f"storage {storage!r}: expected {_ALLOWED}, a Storage or a StorageConfig")
