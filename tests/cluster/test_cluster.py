"""clusters/: the AWS launcher config and KubeRay manifests validate; the local
multi-node cluster starts K+1 real nodes, stops exactly its own processes, and runs the
README's `ray job submit` path (a sweep, then `optical-ray best`)."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CLUSTERS = ROOT / "clusters"
BIN = Path(sys.executable).parent


def _cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "optical-ray"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        check=False,
    )


# --------------------------------------------------------------------------- AWS


def _aws() -> dict:
    return yaml.safe_load((CLUSTERS / "aws.yaml").read_text())


def test_aws_yaml_validates_against_the_ray_schema() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    import ray
    from ray.autoscaler._private.util import prepare_config, validate_config

    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    cfg = _aws()
    jsonschema.validate(cfg, schema)
    # The schema has teeth: a misspelt key or a fractional resource is refused.
    for bad in (
        {**cfg, "max_worker": 3},
        {
            **cfg,
            "available_node_types": {
                **cfg["available_node_types"],
                "gpu-worker": {
                    **cfg["available_node_types"]["gpu-worker"],
                    "resources": {"GPU": 0.5},
                },
            },
        },
    ):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)
    # What `ray up` does before it calls AWS: merge the provider defaults, validate again.
    prepared = prepare_config(cfg)
    validate_config(prepared)
    assert prepared["provider"]["type"] == "aws"


def test_aws_yaml_has_head_cpu_and_gpu_workers_and_no_keys() -> None:
    cfg = _aws()
    types = cfg["available_node_types"]
    assert cfg["head_node_type"] in types
    workers = {k: v for k, v in types.items() if k != cfg["head_node_type"]}
    gpu = [v for v in workers.values() if v["resources"].get("GPU", 0) >= 1]
    cpu = [v for v in workers.values() if not v["resources"].get("GPU")]
    assert gpu and cpu
    for t in workers.values():
        assert 0 <= t["min_workers"] <= t["max_workers"] <= cfg["max_workers"]
    # S3 through instance profiles on every node type; no credentials anywhere.
    for t in types.values():
        assert t["node_config"]["IamInstanceProfile"]["Arn"].startswith("arn:aws:iam::")
    text = (CLUSTERS / "aws.yaml").read_text()
    assert not re.search(
        r"AKIA[0-9A-Z]{16}|aws_secret_access_key|aws_access_key_id|"
        r"AWS_SECRET_ACCESS_KEY\s*=",
        text,
        re.IGNORECASE,
    )
    # torch (pinned) is installed before optical-ray, which installs this checkout.
    setup = cfg["setup_commands"]
    torch_at = next(i for i, c in enumerate(setup) if "torch==2.13.0" in c)
    pkg_at = next(i for i, c in enumerate(setup) if "optical-ray[minilm]" in c)
    assert torch_at < pkg_at
    assert "--index-url https://download.pytorch.org/whl/cpu" in setup[torch_at]
    assert cfg["file_mounts"]["~/optical-ray"] == "."
    # Token auth on every node.
    for cmd in cfg["head_start_ray_commands"][-1:] + cfg["worker_start_ray_commands"][-1:]:
        assert "RAY_AUTH_MODE=token ray start" in cmd


# --------------------------------------------------------------------------- KubeRay


def _manifests() -> dict[str, dict]:
    docs = {}
    for path in sorted((CLUSTERS / "kuberay").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs[doc["kind"]] = doc
    return docs


def _check_cluster_spec(spec: dict) -> None:
    assert re.fullmatch(r"2\.\d+\.\d+", spec["rayVersion"])
    head = spec["headGroupSpec"]
    assert isinstance(head["rayStartParams"], dict)
    containers = head["template"]["spec"]["containers"]
    assert containers and containers[0]["image"] and containers[0]["name"]
    groups = spec["workerGroupSpecs"]
    for g in groups:
        assert g["groupName"] and isinstance(g["rayStartParams"], dict)
        assert 0 <= g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]
        assert g["template"]["spec"]["containers"][0]["image"]
    gpu = [
        g
        for g in groups
        if any(
            "nvidia.com/gpu" in c.get("resources", {}).get("limits", {})
            for c in g["template"]["spec"]["containers"]
        )
    ]
    assert gpu, "no worker group asks for nvidia.com/gpu"
    assert (
        int(gpu[0]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"])
        >= 1
    )
    # Object-storage credentials from a Kubernetes Secret, on every Ray container.
    for c in containers + [c for g in groups for c in g["template"]["spec"]["containers"]]:
        env = {e["name"]: e for e in c["env"]}
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            ref = env[key]["valueFrom"]["secretKeyRef"]
            assert ref["name"] and ref["key"] and "value" not in env[key]
    assert spec["authOptions"]["mode"] == "token"


def test_kuberay_manifests_carry_the_fields_kuberay_requires() -> None:
    docs = _manifests()
    assert set(docs) == {"RayCluster", "RayJob"}
    for doc in docs.values():
        assert doc["apiVersion"] == "ray.io/v1" and doc["metadata"]["name"]
    _check_cluster_spec(docs["RayCluster"]["spec"])
    job = docs["RayJob"]["spec"]
    assert job["entrypoint"].startswith("optical-ray sweep ")
    assert job["shutdownAfterJobFinishes"] is True
    _check_cluster_spec(job["rayClusterSpec"])


def test_rayjob_entrypoint_is_a_valid_sweep_command() -> None:
    """The shipped entrypoint parses with optical-ray's own CLI and config validation."""
    from optical_ray.cli.parser import build_parser
    from optical_ray.config import load_config
    from optical_ray.sweeps.space import load_space

    argv = shlex.split(_manifests()["RayJob"]["spec"]["entrypoint"])
    args = build_parser().parse_args(argv[1:])
    assert args.command == "sweep" and args.storage.startswith("s3://")
    # The space is one the repository ships (the image copies the checkout), and it
    # distills the pre-trained MiniLM teacher.
    space = load_space(ROOT / "search_spaces" / Path(args.space).name)
    assert space.base["model.name_or_path"] == "minilm"
    cfg = load_config(None, list(args.overrides))
    assert cfg.scaling.gpus_per_worker == 1


# --------------------------------------------------------------------------- local: input


@pytest.mark.parametrize(
    "argv, names",
    [
        (["--nodes", "0"], ["--nodes", "got 0", "1 to 16"]),
        (["--nodes", "2", "--cpus-per-node", "0"], ["--cpus-per-node", "got 0", "1 to 64"]),
        (["--memory", "lots"], ["--memory", "'lots'", "2G"]),
        (["--object-store-memory", "10M"], ["--object-store-memory", "10M", "at least 75M"]),
        (["--name", "no/slash"], ["--name", "'no/slash'", "letters"]),
    ],
)
def test_bad_cluster_flags_are_one_line_and_exit_2(argv, names, tmp_path, capsys) -> None:
    from optical_ray.cli.parser import main

    rc = main(["cluster", "up", "--state-dir", str(tmp_path), *argv])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    for part in names:
        assert part in err
    assert not list(tmp_path.iterdir())  # nothing was started or recorded


@pytest.mark.parametrize("action", ["down", "status"])
def test_unknown_cluster_is_one_line_and_exit_2(action, tmp_path, capsys) -> None:
    from optical_ray.cli.parser import main

    rc = main(["cluster", action, "--name", "nothing", "--state-dir", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert "no local cluster named 'nothing'" in err and "cluster up" in err


def test_parse_bytes() -> None:
    from optical_ray.cluster.local import parse_bytes
    from optical_ray.errors import ConfigError

    assert parse_bytes("200M", "--x") == 200 * 2**20
    assert parse_bytes("1.5g", "--x") == int(1.5 * 2**30)
    assert parse_bytes("150MiB", "--x") == 150 * 2**20
    assert parse_bytes(" 4 GB ", "--x") == 4 * 2**30
    assert parse_bytes(1024, "--x") == parse_bytes("1024", "--x") == 1024
    for bad in ("", "0", "-5M", "5X", "M", 0, True):
        with pytest.raises(ConfigError, match="--x: got"):
            parse_bytes(bad, "--x")


# --------------------------------------------------------------------------- local: real nodes
# One cluster, brought up with the CLI, serves the module: the K+1 nodes are checked,
# the README's job path runs on it, and `cluster down` (another process) ends it while
# an unrelated Ray keeps running.


def _session_pids(sid: int) -> set[int]:
    out = set()
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                stat = Path(f"/proc/{entry.name}/stat").read_bytes()
            except OSError:
                continue
            fields = stat.rsplit(b")", 1)[1].split()
            if fields[0] != b"Z" and int(fields[3]) == sid:
                out.add(int(entry.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0]
    except OSError:
        return False
    return state != b"Z"


class _UnrelatedRay:
    """A one-node Ray started by plain `ray start` (not by LocalCluster), in a session
    of its own: what `cluster down` must leave alone."""

    def __init__(self) -> None:
        from optical_ray.cluster.nodes import free_ports

        self.temp = tempfile.mkdtemp(prefix="oray-x-", dir="/tmp")
        self.log = Path(self.temp) / "launcher.log"
        agent, client = free_ports(2)
        env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"}
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "ray.scripts.scripts",
                    "start",
                    "--head",
                    "--block",
                    "--port=0",
                    "--include-dashboard=false",
                    f"--dashboard-agent-listen-port={agent}",
                    f"--ray-client-server-port={client}",
                    "--num-cpus=1",
                    f"--object-store-memory={80 * 2**20}",
                    f"--temp-dir={self.temp}",
                    "--disable-usage-stats",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )

    def pids(self) -> set[int]:
        """Its processes, once it runs."""
        deadline = time.time() + 180
        while "Ray runtime started" not in self.log.read_text(errors="replace"):
            assert self.proc.poll() is None and time.time() < deadline, self.log.read_text(
                errors="replace"
            )[-2000:]
            time.sleep(0.3)
        return _session_pids(self.proc.pid)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for pid in _session_pids(self.proc.pid):
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.temp, ignore_errors=True)


@pytest.fixture(scope="module")
def unrelated_ray():
    """Started before the local cluster (not waited for: the two start side by side)."""
    other = _UnrelatedRay()
    try:
        yield other
    finally:
        other.stop()


@pytest.fixture(scope="module")
def cli_cluster(unrelated_ray, tmp_path_factory):
    """`optical-ray cluster up --nodes 2 --cpus-per-node 1`: yields the CLI's stdout,
    its name/state-dir flags and the cluster attached from this process."""
    import ray

    from optical_ray.cluster.local import LocalCluster

    state = str(tmp_path_factory.mktemp("cluster-state"))
    name = f"t{uuid.uuid4().hex[:6]}"
    flags = ["--name", name, "--state-dir", state]
    up = _cli(
        "cluster",
        "up",
        "--nodes",
        "2",
        "--cpus-per-node",
        "1",
        "--object-store-memory",
        "100M",
        *flags,
    )
    assert up.returncode == 0, up.stderr[-3000:]
    try:
        yield up.stdout, flags, LocalCluster.attach(name, state)
    finally:
        if ray.is_initialized():
            ray.shutdown()
        if (Path(state) / f"{name}.json").exists():
            LocalCluster.attach(name, state).down()


@pytest.mark.slow
def test_cluster_up_starts_k_plus_1_capped_nodes(cli_cluster) -> None:
    import ray

    stdout, flags, cluster = cli_cluster
    assert cluster.address in stdout and cluster.dashboard_url in stdout
    assert "RAY_AUTH_MODE=token" in stdout
    cluster.connect()
    try:
        nodes = [n for n in ray.nodes() if n["Alive"]]
        assert len(nodes) == 3  # K + 1
        assert len({n["NodeManagerPort"] for n in nodes}) == 3
        assert ray.cluster_resources()["CPU"] == 3
        assert all(n["Resources"]["object_store_memory"] == 100 * 2**20 for n in nodes)
    finally:
        ray.shutdown()
    status = _cli("cluster", "status", *flags)
    assert status.returncode == 0 and "3 nodes registered" in status.stdout
    # A second `up` under the same name is refused in one line; the first keeps running.
    again = _cli("cluster", "up", "--nodes", "1", *flags)
    assert again.returncode == 2 and "already up" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1
    assert _cli("cluster", "status", *flags).returncode == 0


@pytest.mark.slow
def test_job_submit_runs_a_sweep_on_the_cluster_and_best_reads_it(
    cli_cluster, tmp_path, sweep_space
) -> None:
    """The README path: `ray job submit --working-dir DIR -- optical-ray sweep ...`
    against the local cluster, then `optical-ray best` on the storage it wrote."""
    SPACE = sweep_space()
    from ray.job_submission import JobStatus, JobSubmissionClient

    from optical_ray.config import from_flat, to_dict
    from optical_ray.data.synthetic import synthesize_world
    from optical_ray.models.encoder import RetrievalModel

    _, _, cluster = cli_cluster
    world = synthesize_world(tmp_path / "world", seed=0, scale="tiny")
    cfg = from_flat({"data.root": str(world.root)})
    RetrievalModel.from_config(cfg).save(tmp_path / "teacher", cfg)
    store = tmp_path / "store"
    job_dir = tmp_path / "job"
    job_dir.mkdir()
    base = from_flat(
        {
            "data.root": str(world.root),
            "output_dir": str(tmp_path / "runs"),
            "train.teacher": str(tmp_path / "teacher"),
            "eval.metrics": ["map", "mrr@10"],
            "eval.pairs": ["en-en"],
            "sweep.max_concurrent": 2,
        }
    )
    (job_dir / "base.yaml").write_text(yaml.safe_dump(to_dict(base)))
    (job_dir / "space.yaml").write_text(yaml.safe_dump(SPACE))

    env = {**os.environ, **cluster.env()}
    job_id = f"optical-ray-{uuid.uuid4().hex[:8]}"
    submit = subprocess.run(
        [
            str(BIN / "ray"),
            "job",
            "submit",
            "--address",
            cluster.dashboard_url,
            "--working-dir",
            str(job_dir),
            "--submission-id",
            job_id,
            "--no-wait",
            "--",
            "optical-ray",
            "sweep",
            "--config",
            "base.yaml",
            "--space",
            "space.yaml",
            "--pairs",
            "en-xc",
            "--samples",
            "2",
            "--name",
            "job",
            "--storage",
            str(store),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert submit.returncode == 0, submit.stderr[-3000:]
    cluster.use_auth()
    client = JobSubmissionClient(cluster.dashboard_url)
    deadline = time.time() + 420
    while (status := client.get_job_status(job_id)) not in {
        JobStatus.SUCCEEDED,
        JobStatus.FAILED,
        JobStatus.STOPPED,
    }:
        assert time.time() < deadline, client.get_job_logs(job_id)[-3000:]
        time.sleep(2)
    logs = client.get_job_logs(job_id)
    assert status == JobStatus.SUCCEEDED, logs[-4000:]
    assert "best config per pair" in logs and "en-xc: map=" in logs

    best = _cli("best", "--pair", "en-xc", "--storage", str(store), "--format", "json")
    assert best.returncode == 0, best.stderr[-3000:]
    records = json.loads(best.stdout)
    assert len(records) == 1
    r = records[0]
    assert r["pair"] == "en-xc" and r["metric"] == "map" and r["value"] > 0
    assert r["experiment"] == "job-en-xc" and r["status"] in {"finished", "stopped"}
    assert 0.01 <= r["config"]["distill"]["epsilon"] <= 1.0


@pytest.mark.slow
def test_cluster_down_stops_exactly_its_processes(cli_cluster, unrelated_ray) -> None:
    from optical_ray.cluster.nodes import marked_pids

    _, flags, cluster = cli_cluster
    other = unrelated_ray.pids()
    assert len(other) >= 3  # its launcher, GCS, raylet, ...
    ours = set(cluster.pids())
    assert len(ours) >= 3 * 3 and not ours & other  # per node: launcher, raylet, agents
    down = _cli("cluster", "down", *flags)  # from another process than `up`
    assert down.returncode == 0, down.stderr[-3000:]
    assert f"local Ray cluster {cluster.name!r} stopped" in down.stdout
    assert not [p for p in ours if _alive(p)]
    assert not marked_pids(cluster.cluster_id)
    assert not cluster.state_path.exists()
    assert not Path(cluster.temp_dir).exists()
    # Every process of the unrelated Ray survived.
    assert all(_alive(p) for p in other), "cluster down killed a process it did not start"
    gone = _cli("cluster", "status", *flags)
    assert gone.returncode == 2 and "no local cluster" in gone.stderr
