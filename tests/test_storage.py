"""Storage URIs → pyarrow filesystems: local and S3 round trips, URI errors, fail-fast on
a dead endpoint, retries, redaction."""

from __future__ import annotations

import logging
import pickle
import socket
import time
import uuid

import pyarrow.fs as pafs
import pytest

from optical_ray.errors import ConfigError, StorageError
from optical_ray.storage import (
    Storage,
    StorageUnavailable,
    as_storage,
    redact,
    resolve_storage,
    with_retries,
)

TEST_SECRET_KEY = "testsecret-xyz123"  # the key tests/s3server.py gives SeaweedFS


def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def no_aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_S3",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


# --------------------------------------------------------------------------- local


def test_local_relative_path_becomes_absolute(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    s = resolve_storage("runs/a")
    assert s.scheme == "local" and s.path == str(tmp_path / "runs" / "a")
    assert isinstance(s.filesystem, pafs.LocalFileSystem)
    assert s.ray_storage_path() == s.path and s.ray_storage_filesystem() is s.filesystem
    assert resolve_storage(f"file://{tmp_path}/x").path == str(tmp_path / "x")
    assert resolve_storage(f"file://localhost{tmp_path}/x").path == str(tmp_path / "x")


def test_local_round_trip(tmp_path) -> None:
    s = resolve_storage(str(tmp_path / "store"))
    assert not s.exists("a/b.bin")
    uri = s.write_bytes("a/b.bin", b"hello")
    assert uri == str(tmp_path / "store" / "a" / "b.bin")
    assert s.exists("a/b.bin") and s.read_bytes("a/b.bin") == b"hello"
    s.write_bytes("a/b.bin", b"again")  # overwrite in place, atomically
    assert s.read_bytes("a/b.bin") == b"again"
    # no temp file is left behind by the atomic write
    assert sorted(p.name for p in (tmp_path / "store" / "a").iterdir()) == ["b.bin"]
    with s.open_output("c/d.txt") as f:
        f.write(b"stream")
    with s.open_input("c/d.txt") as f:
        assert f.read() == b"stream"
    names = sorted(s.rel(i.path) for i in s.ls(recursive=True) if i.type == pafs.FileType.File)
    assert names == ["a/b.bin", "c/d.txt"]
    assert s.ls("missing") == []
    s.delete("a")
    s.delete("nothing/here")  # missing is fine
    assert not s.exists("a/b.bin") and s.exists("c/d.txt")
    with pytest.raises(StorageError, match="no such file"):
        s.open_input("a/b.bin")


def test_as_storage_accepts_uri_storage_and_config(tmp_path) -> None:
    from optical_ray.config import StorageConfig

    s = as_storage(str(tmp_path))
    assert as_storage(s) is s
    assert as_storage(StorageConfig(uri=str(tmp_path))).path == str(tmp_path)
    with pytest.raises(StorageError, match="expected a local path"):
        as_storage(42)


# --------------------------------------------------------------------------- URIs


@pytest.mark.parametrize(
    "uri, fragment",
    [
        ("s3://", "names no bucket"),
        ("s3:///prefix", "names no bucket"),
        ("gs://bucket/x", "unsupported scheme 'gs://'"),
        ("http://host/x", "unsupported scheme 'http://'"),
        ("s3://Bad_Bucket/x", "not a valid S3 bucket name"),
        ("s3://ab/x", "not a valid S3 bucket name"),
        ("s3://bucket/a/../b", "'..' are not allowed"),
        ("file://otherhost/x", "file:///absolute/path"),
        ("", "is empty"),
    ],
)
def test_malformed_uris(uri, fragment, no_aws_env) -> None:
    with pytest.raises(StorageError) as info:
        resolve_storage(uri)
    text = str(info.value)
    assert fragment in text and "\n" not in text
    if uri:
        assert repr(uri) in text  # the bad value is named


def test_s3_uri_and_endpoint_resolution(no_aws_env, monkeypatch) -> None:
    s = resolve_storage("s3://my-bucket//runs/exp/", endpoint="http://127.0.0.1:9000")
    assert (s.scheme, s.path, s.bucket) == ("s3", "my-bucket/runs/exp", "my-bucket")
    assert s.uri == "s3://my-bucket/runs/exp" and s.region == "us-east-1"
    assert s.join("catalog", "x.parquet") == "my-bucket/runs/exp/catalog/x.parquet"
    assert s.uri_of("catalog") == "s3://my-bucket/runs/exp/catalog"
    assert isinstance(s.ray_storage_filesystem(), pafs.S3FileSystem)
    assert s.ray_storage_path() == "my-bucket/runs/exp"
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://10.0.0.1:8333")
    assert resolve_storage("s3://b-1/x").endpoint == "http://10.0.0.1:8333"
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "https://s3.example.org")
    assert resolve_storage("s3://b-1/x").endpoint == "https://s3.example.org"
    assert resolve_storage("s3://b-1/x", endpoint="http://h:1").endpoint == "http://h:1"
    monkeypatch.setenv("AWS_REGION", "eu-west-3")
    assert resolve_storage("s3://b-1/x").region == "eu-west-3"


@pytest.mark.parametrize(
    "endpoint, fragment",
    [
        ("ftp://host:21", "is not valid"),
        ("http://user:pw-secret@host:9000", "carries credentials"),
        ("http://host:notaport", "bad port"),
    ],
)
def test_bad_endpoints(endpoint, fragment, no_aws_env) -> None:
    with pytest.raises(StorageError, match=fragment) as info:
        resolve_storage("s3://bucket/x", endpoint=endpoint)
    assert "pw-secret" not in str(info.value)


def test_storage_pickles_without_credentials(monkeypatch, no_aws_env) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testkey")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", TEST_SECRET_KEY)
    s = resolve_storage("s3://bucket-x/p", endpoint="http://127.0.0.1:1")
    blob = pickle.dumps(s)
    assert TEST_SECRET_KEY.encode() not in blob
    back = pickle.loads(blob)
    assert isinstance(back, Storage) and back.path == s.path and back.endpoint == s.endpoint


def test_unreachable_endpoint_fails_fast_with_one_line(no_aws_env, monkeypatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testkey")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", TEST_SECRET_KEY)
    endpoint = f"http://127.0.0.1:{closed_port()}"  # nothing listens there
    s = resolve_storage("s3://some-bucket/runs", endpoint=endpoint)
    start = time.monotonic()
    with pytest.raises(StorageUnavailable) as info:
        s.check()
    assert time.monotonic() - start < 10
    text = str(info.value)
    assert endpoint in text and "'some-bucket'" in text and "\n" not in text
    assert "Traceback" not in text and TEST_SECRET_KEY not in text
    assert info.value.__cause__ is None and info.value.__suppress_context__
    with pytest.raises(StorageUnavailable):
        s.write_bytes("x", b"1")


# --------------------------------------------------------------------------- retries


def test_with_retries_retries_transient_then_succeeds(caplog, monkeypatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", TEST_SECRET_KEY)
    calls, sleeps = [], []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise StorageUnavailable(f"server restarting; secret_key={TEST_SECRET_KEY}")
        return "ok"

    with caplog.at_level(logging.WARNING, logger="optical_ray.storage"):
        assert with_retries(flaky, attempts=4, base_delay=0.5, sleep=sleeps.append) == "ok"
    assert len(calls) == 3 and sleeps == [0.5, 1.0]
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2 and "attempt 1/4" in warnings[0]
    assert all(TEST_SECRET_KEY not in w for w in warnings)


def test_with_retries_gives_up_and_skips_permanent_errors() -> None:
    calls = []

    def down() -> None:
        calls.append(1)
        raise StorageUnavailable("down")

    with pytest.raises(StorageUnavailable):
        with_retries(down, attempts=3, base_delay=0.01, sleep=lambda s: None)
    assert len(calls) == 3
    calls.clear()

    def denied() -> None:
        calls.append(1)
        raise StorageError("access denied")

    with pytest.raises(StorageError):
        with_retries(denied, attempts=3, base_delay=0.01, sleep=lambda s: None)
    assert len(calls) == 1  # not transient: no retry


# --------------------------------------------------------------------------- redaction


def test_redact_env_secrets_and_patterns(monkeypatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", TEST_SECRET_KEY)
    monkeypatch.setenv("AWS_SESSION_TOKEN", "tok-abcdef-123456")
    text = (
        f"failed with {TEST_SECRET_KEY} and tok-abcdef-123456; "
        'aws_secret_access_key=AbCdEf/123+xyz, "aws_session_token": "zzz-1" '
        "url https://b.s3.amazonaws.com/k?X-Amz-Signature=deadbeef&x=1 "
        "endpoint http://admin:hunter2@host:9000/"
    )
    out = redact(text)
    for secret in (
        TEST_SECRET_KEY,
        "tok-abcdef-123456",
        "AbCdEf/123+xyz",
        "zzz-1",
        "deadbeef",
        "hunter2",
    ):
        assert secret not in out, secret
    assert "failed with ***" in out and "&x=1" in out and "@host:9000" in out
    assert redact("nothing secret here") == "nothing secret here"


# --------------------------------------------------------------------------- S3 (SeaweedFS)


@pytest.mark.slow
def test_s3_round_trip(s3_storage_uri) -> None:
    s = resolve_storage(s3_storage_uri).check()
    assert not s.exists("a/b.bin")
    assert s.write_bytes("a/b.bin", b"hello") == f"{s3_storage_uri}/a/b.bin"
    assert s.exists("a/b.bin") and s.read_bytes("a/b.bin") == b"hello"
    with s.open_output("c/d.txt") as f:
        f.write(b"stream")
    with s.open_input("c/d.txt") as f:
        assert f.read() == b"stream"
    files = sorted(s.rel(i.path) for i in s.ls(recursive=True) if i.type == pafs.FileType.File)
    assert files == ["a/b.bin", "c/d.txt"]
    s.delete("a")
    assert not s.exists("a/b.bin") and s.exists("c/d.txt")
    with pytest.raises(StorageError, match="no such file"):
        s.read_bytes("a/b.bin")


@pytest.mark.slow
def test_s3_missing_bucket_then_ensure_bucket(s3_env) -> None:
    bucket = f"missing-{uuid.uuid4().hex[:10]}"
    s = resolve_storage(f"s3://{bucket}/runs")
    with pytest.raises(StorageError) as info:
        s.check()
    text = str(info.value)
    assert f"'{bucket}'" in text and s3_env.endpoint in text and "does not exist" in text
    with pytest.raises(StorageError, match="does not exist"):
        s.write_bytes("x", b"1")
    s.ensure_bucket().check()
    s.write_bytes("x", b"1")
    assert s.read_bytes("x") == b"1"


@pytest.mark.slow
def test_s3_wrong_credentials_one_line_no_secret(s3_storage_uri, monkeypatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret-987654")
    with pytest.raises(StorageError) as info:
        resolve_storage(s3_storage_uri).check()
    text = str(info.value)
    assert "refused access" in text and "\n" not in text
    assert "wrong-secret-987654" not in text and TEST_SECRET_KEY not in text


@pytest.mark.slow
def test_local_copy_of_a_local_path_and_of_an_s3_directory(s3_storage_uri, tmp_path) -> None:
    from optical_ray.storage import local_copy, resolve_storage

    assert local_copy(str(tmp_path)) == tmp_path  # a local path is used where it is
    store = resolve_storage(s3_storage_uri)
    store.write_bytes("ckpt/model/weights.bin", b"\x00\x01" * 10)
    store.write_bytes("ckpt/model/sub/config.json", b"{}")
    got = local_copy(store.uri_of("ckpt/model"), tmp_path / "dl")
    assert (got / "weights.bin").read_bytes() == b"\x00\x01" * 10
    assert (got / "sub" / "config.json").read_bytes() == b"{}"
    with pytest.raises(StorageError, match="no such directory"):
        local_copy(store.uri_of("missing"), tmp_path / "none")


# --------------------------------------------------------------------------- credentials in URIs

AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"  # the documented example; holds '/'


@pytest.mark.parametrize(
    "uri, masked",
    [
        (f"s3://AKIAIOSFODNN7EXAMPLE:{AWS_SECRET}@bucket/x", "s3://***@bucket/x"),
        ("s3://AKIAIOSFODNN7EXAMPLE@bucket/x", "s3://***@bucket/x"),
        (f"file://user:{AWS_SECRET}@localhost/tmp/x", "file://***@localhost/tmp/x"),
        (
            f"s3://bucket/x?access_key=AKIA&secret_key={AWS_SECRET}",
            "s3://bucket/x?access_key=AKIA&secret_key=***",
        ),
    ],
)
def test_storage_uri_with_credentials_is_refused_without_echo(uri, masked, no_aws_env) -> None:
    with pytest.raises(StorageError) as info:
        resolve_storage(uri)
    text = str(info.value)
    assert AWS_SECRET not in text and masked in text
    assert "AWS_ACCESS_KEY_ID" in text and "instance role" in text


def test_at_signs_in_keys_and_paths_are_not_credentials(tmp_path, no_aws_env) -> None:
    assert resolve_storage("s3://bucket/runs@v2").path == "bucket/runs@v2"
    assert resolve_storage(str(tmp_path / "runs@v2")).scheme == "local"
    assert redact("http://127.0.0.1:8333/a@b") == "http://127.0.0.1:8333/a@b"


def test_redact_masks_the_whole_userinfo_even_with_slashes() -> None:
    text = f"got 's3://AKIAIOSFODNN7EXAMPLE:{AWS_SECRET}@bucket/x' and ray://u:p@head:10001"
    out = redact(text)
    assert out == "got 's3://***@bucket/x' and ray://***@head:10001"


def test_config_holding_credentials_is_refused_and_never_saved(tmp_path) -> None:
    from optical_ray.config import Config, from_flat, save_config

    with pytest.raises(ConfigError) as info:
        from_flat(
            {
                "storage.endpoint": f"admin:{AWS_SECRET}@10.0.0.1:9000",
                "data.bitext": {"en-sw": f"http://u:{AWS_SECRET}@host/b.tsv"},
            }
        )
    assert len(info.value.problems) == 2 and AWS_SECRET not in str(info.value)
    assert "storage.endpoint: got '***@10.0.0.1:9000'" in str(info.value)  # host:port alone
    assert "data.bitext.en-sw.path: got 'http://***@host/b.tsv'" in str(info.value)
    cfg = Config()
    cfg.storage.endpoint = f"http://admin:{AWS_SECRET}@10.0.0.1:9000"  # mutated past validation
    text = save_config(cfg, tmp_path / "config.json").read_text()
    assert AWS_SECRET not in text and "http://***@10.0.0.1:9000" in text


def test_endpoint_host_port_with_credentials_is_masked(no_aws_env) -> None:
    with pytest.raises(StorageError) as info:
        resolve_storage("s3://bucket/x", endpoint=f"admin:{AWS_SECRET}@10.0.0.1:9000")
    assert AWS_SECRET not in str(info.value) and "'***@10.0.0.1:9000'" in str(info.value)


# --------------------------------------------------------------------------- writes probed


@pytest.fixture
def read_only_dir(tmp_path, monkeypatch):
    """A directory that takes no writes: permissions for a user; for root (who writes
    through permissions) a read-only tmpfs mounted there, or, where mounting is not
    allowed, a directory whose writes fail as a read-only file system's do."""
    import errno
    import os
    import subprocess
    from pathlib import Path

    d = tmp_path / "ro"
    d.mkdir()
    if os.geteuid() != 0:
        d.chmod(0o555)
        yield d
        d.chmod(0o755)
        return
    mount = ["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(d)]
    if subprocess.run(mount, capture_output=True).returncode == 0:
        try:
            yield d
        finally:
            subprocess.run(["umount", str(d)], capture_output=True)
        return
    real = Path.write_bytes

    def refuse(self, data):
        if d in self.parents:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", refuse)
    yield d


def test_check_writable_probes_a_real_write_and_leaves_nothing(tmp_path) -> None:
    s = resolve_storage(str(tmp_path / "not" / "yet" / "there"))
    assert s.check_writable() is s
    assert list(tmp_path.iterdir()) == []  # no probe left, no directory created
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(StorageError, match=r"cannot be written: '.*a-file' is not a directory"):
        resolve_storage(str(tmp_path / "a-file" / "store")).check_writable()


def test_read_only_storage_is_one_line_before_anything_runs(read_only_dir, capsys) -> None:
    from optical_ray.cli.parser import main

    store = read_only_dir / "store"
    with pytest.raises(StorageError, match=r"cannot be written \(.*\); give a writable"):
        resolve_storage(str(store)).check_writable()
    # train: refused before the model is built or a step runs (it failed after the
    # first stage's training, when its checkpoint could not be saved)
    code = main(["train", "--storage", str(store), "rank.steps=1", "train.stages=[rank]"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "cannot be written" in err, err
    assert str(read_only_dir) in err


@pytest.mark.slow
def test_s3_write_probe_leaves_no_object(s3_storage_uri) -> None:
    s = resolve_storage(s3_storage_uri).check()
    s.check_writable()
    assert [i for i in s.ls(recursive=True) if i.type == pafs.FileType.File] == []
