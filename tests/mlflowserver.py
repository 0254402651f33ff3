"""A real MLflow tracking server on loopback for tests: ``mlflow server`` with a SQLite
backend store and a local artifact root, on a free port.

Used as a library (:class:`MlflowServer`, for tests that kill the server mid-sweep) and
through the module fixture ``mlflow_server`` (one server per test module). Only the
process group started here is ever stopped, by its id.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

__all__ = ["MlflowServer", "mlflow_server"]

START_TIMEOUT_S = 120.0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    """``mlflow server`` in its own process group, its stores under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.port = _free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "MlflowServer":
        self.root.mkdir(parents=True, exist_ok=True)
        mlflow = Path(sys.executable).parent / "mlflow"
        cmd = [
            str(mlflow),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{self.root / 'mlflow.db'}",
            "--default-artifact-root",
            (self.root / "artifacts").as_uri(),
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        self.log = open(self.root / "server.log", "ab")
        # Its own session: stop() signals exactly this server and the workers it forks.
        self.proc = subprocess.Popen(
            cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"mlflow server exited ({self.proc.returncode}); see {self.root / 'server.log'}"
                )
            if self.healthy():
                return self
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(
            f"mlflow server on {self.uri} did not answer in "
            f"{START_TIMEOUT_S:.0f} s; see {self.root / 'server.log'}"
        )

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop the server this object started (SIGKILL simulates a crash)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=20)
        self.log.close()


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """One MLflow server for the test module."""
    pytest.importorskip("mlflow")
    server = MlflowServer(tmp_path_factory.mktemp("mlflow")).start()
    yield server
    server.stop()
