"""Results catalog: append/records, concurrent writers, storage outages, best-config
queries and their errors, YAML that ``train --config`` accepts, no secret written."""

from __future__ import annotations

import dataclasses
import json
import multiprocessing as mp
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from optical_ray.catalog import (
    Catalog,
    TrialRecord,
    best_config,
    best_configs_all,
    best_yaml,
    format_records,
    trial_epochs,
)
from optical_ray.config import from_dict, to_dict, to_flat
from optical_ray.errors import ConfigError, StorageError
from optical_ray.storage import resolve_storage

SECRET = "testsecret-xyz123"  # the key tests/s3server.py gives SeaweedFS


def flat_config(pair: str = "en-sw", **overrides) -> dict:
    flat = to_flat(from_dict({"pair": pair, "name": f"sweep-{pair}"}))
    flat.update(overrides)
    return flat


def record(
    i: int,
    pair: str = "en-sw",
    experiment: str = "exp",
    value: float | None = None,
    status: str = "finished",
    **extra,
) -> TrialRecord:
    value = i / 100 if value is None else value
    ref = 0.6
    config = flat_config(
        pair, **{"distill.epsilon": 0.01 * (i + 1), "distill.weight": round(0.1 * (i % 10), 1)}
    )
    return TrialRecord(
        experiment=experiment,
        pair=pair,
        trial_id=f"{pair}-{i:04d}",
        status=status,
        config=config,
        best_metrics={"map": value, f"{pair}/map": value, "en-en/map": ref, "ndcg@10": 1 - value},
        last_metrics={"map": value / 2},
        metric="map",
        checkpoint_uri=f"s3://bucket/runs/{pair}/{i}/checkpoint",
        started_at=1_700_000_000.0 + i,
        finished_at=1_700_000_100.0 + i,
        training_s=90.0,
        **extra,
    )


@pytest.fixture
def catalog(tmp_path) -> Catalog:
    return Catalog(tmp_path / "store", spool_dir=tmp_path / "spool")


# --------------------------------------------------------------------------- local


def test_append_and_records_round_trip(catalog) -> None:
    uri = catalog.append(record(3, baseline_metrics={"map": 0.01, "en-en/map": 0.6}))
    assert "/catalog/exp/en-sw/part-" in uri and uri.endswith(".parquet") and Path(uri).is_file()
    df = catalog.records()
    assert len(df) == 1
    row = df.iloc[0]
    assert (row.experiment, row.pair, row.trial_id, row.status) == (
        "exp",
        "en-sw",
        "en-sw-0003",
        "finished",
    )
    assert row.metric == "map" and row.best_value == pytest.approx(0.03)
    assert row.last_value == pytest.approx(0.015)
    assert row.epsilon == pytest.approx(0.04) and row.weight == pytest.approx(0.3)
    assert json.loads(row.layers) == [-1] and row.method == "ot"
    assert row.lr == pytest.approx(5e-5)
    assert json.loads(row.best_metrics)["en-en/map"] == 0.6
    assert json.loads(row.baseline_metrics) == {"map": 0.01, "en-en/map": 0.6}
    assert json.loads(row.config)["distill.epsilon"] == pytest.approx(0.04)
    assert row.duration_s == pytest.approx(100.0) and row.training_s == 90.0
    assert row.version and row.host
    assert row.checkpoint_uri == "s3://bucket/runs/en-sw/3/checkpoint"


@pytest.mark.parametrize(
    "status, iterations, epochs",
    [
        ("finished", 3, 2),  # two evaluations and the end-of-trial summary report
        ("stopped", 3, 3),  # ASHA stopped it: every report was an evaluation
        ("failed", 2, 2),
        ("finished", 1, 1),  # a summary only still cost something
        ("finished", None, 1),
        ("stopped", float("nan"), 1),  # unknown, as pandas reads a missing count
    ],
)
def test_trial_epochs_counts_evaluations_not_the_summary_report(
    status: str, iterations: float | None, epochs: int
) -> None:
    assert trial_epochs(status, iterations) == epochs


def test_records_filter_project_and_list(catalog) -> None:
    catalog.extend([record(i, "en-sw") for i in range(3)])  # one part for the batch
    for i in range(2):
        catalog.append(record(i, "en-yo"))
    catalog.append(record(0, "en-sw", experiment="other exp/2"))
    assert len(catalog.parts()) == 4
    assert catalog.pairs() == ["en-sw", "en-yo"]
    assert catalog.experiments() == ["exp", "other exp/2"]
    assert catalog.pairs("other exp/2") == ["en-sw"]
    assert len(catalog.records()) == 6
    assert set(catalog.records(pair="en-yo").trial_id) == {"en-yo-0000", "en-yo-0001"}
    assert len(catalog.records(pair="en-sw", experiment="exp")) == 3
    assert len(catalog.records(experiment="other exp/2")) == 1
    small = catalog.records(pair="en-sw", columns=["trial_id", "best_value"])
    assert list(small.columns) == ["record_id", "trial_id", "best_value", "finished_at"]
    assert len(catalog.records(status="failed")) == 0
    with pytest.raises(ConfigError, match="unknown \\['bogus'\\]"):
        catalog.records(columns=["bogus"])


def test_rewriting_a_record_never_duplicates_it(catalog) -> None:
    rec = record(1)
    first = catalog.append(rec)
    assert catalog.append(rec) == first  # same record id → same key
    assert len(catalog.records()) == 1


def test_a_trial_recorded_again_counts_once_as_its_latest_version(catalog) -> None:
    # e.g. the sweep records a trial as failed, resumes it, and records it as finished
    first = record(1, status="failed", error="node lost", record_id="sweep/en-sw--t1")
    again = record(1, value=0.7, record_id="sweep/en-sw--t1")
    again.finished_at = first.finished_at + 3600
    catalog.append(first)
    catalog.append(again)
    assert len(catalog.parts()) == 2  # "/" in the id: the part name is its hash
    df = catalog.records()
    assert len(df) == 1 and df.iloc[0].status == "finished"
    assert best_config("en-sw", storage=catalog.storage)[0].value == 0.7
    catalog.compact()
    assert len(catalog.parts()) == 1 and catalog.records().iloc[0].status == "finished"


def test_invalid_records_are_refused(catalog) -> None:
    with pytest.raises(ConfigError) as info:
        catalog.append(TrialRecord(experiment="", pair="ensw", trial_id="t", status="done"))
    text = str(info.value)
    assert "pair: got 'ensw'" in text and "status: got 'done'" in text and "experiment" in text
    with pytest.raises(ConfigError, match="unknown keys \\['bogus'\\]"):
        catalog.append({"experiment": "e", "pair": "en-sw", "trial_id": "t", "bogus": 1})
    assert catalog.records().empty


def test_unwritable_store_spools_then_flushes(tmp_path) -> None:
    blocker = tmp_path / "store"
    blocker.write_text("a file where the store directory should be")
    catalog = Catalog(blocker / "runs", spool_dir=tmp_path / "spool", attempts=1)
    catalog.append(record(1))
    catalog.append(record(2))
    assert len(catalog.pending()) == 2  # nothing lost: both parts wait in the spool
    blocker.unlink()
    catalog.append(record(3))  # the next append writes the spooled parts first
    assert catalog.pending() == []
    assert sorted(catalog.records().trial_id) == ["en-sw-0001", "en-sw-0002", "en-sw-0003"]


def test_compact_merges_parts_and_keeps_every_record(catalog) -> None:
    for i in range(12):
        catalog.append(record(i, "en-sw"))
    catalog.append(record(0, "en-yo"))
    # A crash between writing a merged part and deleting its inputs leaves duplicates:
    # simulate one by copying a part; readers and the next compaction drop it.
    part = catalog.parts("en-sw")[0].path
    Path(part).with_name("part-copy.parquet").write_bytes(Path(part).read_bytes())
    assert len(catalog.records(pair="en-sw")) == 12
    stats = catalog.compact()
    assert stats == {
        "dirs": 1,
        "parts_before": 14,
        "parts_after": 2,
        "records": 12,
        "quarantined": 0,
    }
    assert len(catalog.parts("en-sw")) == 1
    df = catalog.records()
    assert len(df) == 13 and df.record_id.is_unique
    assert best_config("en-sw", storage=catalog.storage)[0].trial_id == "en-sw-0011"


def test_auto_compaction_bounds_the_part_count(tmp_path) -> None:
    catalog = Catalog(tmp_path / "store", spool_dir=tmp_path / "spool", auto_compact=5)
    for i in range(23):
        catalog.append(record(i))
    assert len(catalog.parts()) < 5
    assert sorted(catalog.records().trial_id) == [f"en-sw-{i:04d}" for i in range(23)]


# --------------------------------------------------------------------------- best config


def test_best_config_ordering_top_and_mode(catalog) -> None:
    values = [0.31, 0.52, 0.12, 0.47, 0.52]
    for i, v in enumerate(values):
        catalog.append(record(i, value=v))
    catalog.append(record(9, value=0.99, status="failed", error="worker died"))
    catalog.append(record(8, value=0.50, status="stopped"))  # ASHA-stopped trials count
    store = catalog.storage
    best = best_config("en-sw", storage=store, top=3)
    assert [b.value for b in best] == [0.52, 0.52, 0.50]
    # ties: the trial that finished first wins
    assert [b.trial_id for b in best] == ["en-sw-0001", "en-sw-0004", "en-sw-0008"]
    assert [b.rank for b in best] == [1, 2, 3]
    top = best[0]
    assert top.config["distill"]["epsilon"] == pytest.approx(0.02)
    assert top.config["pair"] == "en-sw" and top.metric == "map"
    assert top.checkpoint_uri == "s3://bucket/runs/en-sw/1/checkpoint"
    assert top.best_metrics["en-en/map"] == 0.6 and top.last_metrics == {"map": 0.26}
    assert top.hyperparameters["epsilon"] == pytest.approx(0.02)
    worst = best_config("en-sw", storage=store, mode="min")
    assert [b.value for b in worst] == [0.12]
    assert len(best_config("en-sw", storage=store, top=100)) == 6
    # another recorded metric is read from the metrics JSON
    by_ndcg = best_config("en-sw", metric="ndcg@10", storage=store)
    assert by_ndcg[0].trial_id == "en-sw-0002" and by_ndcg[0].value == pytest.approx(0.88)


def test_best_configs_all_one_per_pair(catalog) -> None:
    for i in range(4):
        catalog.append(record(i, "en-sw"))
        catalog.append(record(i, "en-yo", value=0.9 - i / 10))
    catalog.append(record(0, "en-xx", status="failed", error="OOM"))
    rows = best_configs_all(storage=catalog.storage)
    assert [(r.pair, r.trial_id) for r in rows] == [
        ("en-sw", "en-sw-0003"),
        ("en-yo", "en-yo-0000"),
    ]
    text = format_records(rows)
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["pair", "rank", "map"] and len(lines) == 4
    assert "en-yo" in lines[3] and "0.9" in lines[3]
    data = json.loads(format_records(rows, "json"))
    assert [d["pair"] for d in data] == ["en-sw", "en-yo"]
    assert len(list(yaml.safe_load_all(format_records(rows, "yaml")))) == 2
    with pytest.raises(ConfigError, match="format: got 'xml'"):
        format_records(rows, "xml")


def test_table_shows_the_other_distill_keys_that_differ(catalog) -> None:
    for i, weight in enumerate([0.5, 2.0, 2.0]):
        rec = record(i, "en-sw")
        rec.config["distill.contrastive"] = weight
        catalog.append(rec)
    rows = best_config("en-sw", storage=catalog.storage, top=3)
    header = format_records(rows).splitlines()[0].split()
    assert "contrastive" in header and "sinkhorn_iters" not in header  # the same in all
    column = header.index("contrastive")
    assert [line.split()[column] for line in format_records(rows).splitlines()[2:]] == [
        "2",
        "2",
        "0.5",
    ]
    assert "contrastive" not in format_records(rows[:2]).splitlines()[0].split()


def test_best_yaml_is_a_valid_train_config(catalog, tmp_path) -> None:
    from optical_ray.config import load_config

    for i in range(3):
        catalog.append(record(i))
    best = best_config("en-sw", storage=catalog.storage)[0]
    text = best_yaml(best)
    assert text.startswith("# best config for en-sw: map=0.0200")
    cfg = from_dict(yaml.safe_load(text))
    assert to_dict(cfg) == best.config
    assert cfg.distill.epsilon == pytest.approx(0.03) and cfg.pair == "en-sw"
    path = tmp_path / "best.yaml"
    path.write_text(text)
    assert load_config(path) == cfg  # what `optical-ray train --config best.yaml` does


def test_query_errors_are_one_clear_line(catalog, tmp_path) -> None:
    empty = tmp_path / "empty"
    with pytest.raises(StorageError, match="no trial records in .*run a sweep first"):
        best_config("en-sw", storage=empty)
    with pytest.raises(StorageError, match="no trial records"):
        best_configs_all(storage=empty)
    catalog.append(record(1, "en-sw"))
    catalog.append(record(1, "en-yo"))
    catalog.append(record(1, "en-zz", status="failed", error="CUDA OOM\nTraceback ..."))
    store = catalog.storage
    with pytest.raises(StorageError) as info:
        best_config("en-xx", storage=store)
    assert "'en-xx'" in str(info.value) and "pairs with records: en-sw, en-yo, en-zz" in str(
        info.value
    )
    with pytest.raises(StorageError) as info:
        best_config("en-sw", metric="recall@100", storage=store)
    assert "'recall@100' was never recorded" in str(info.value)
    assert "recorded metrics: map, ndcg@10" in str(info.value)
    with pytest.raises(
        StorageError, match=r"no finished trial .*\(1 failed; last error: CUDA"
    ) as info:
        best_config("en-zz", storage=store)
    assert "CUDA OOM Traceback ..." in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="pair: got 'ensw'"):
        best_config("ensw", storage=store)
    with pytest.raises(ConfigError, match="mode: got 'best'"):
        best_config("en-sw", storage=store, mode="best")
    with pytest.raises(ConfigError, match="top: got 0"):
        best_config("en-sw", storage=store, top=0)
    with pytest.raises(StorageError, match="unsupported scheme 'gs://'"):
        best_config("en-sw", storage="gs://bucket/x")


def test_unreachable_store_query_fails_fast(monkeypatch) -> None:
    import socket
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testkey")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    store = resolve_storage("s3://results/runs", endpoint=f"http://127.0.0.1:{port}")
    start = time.monotonic()
    with pytest.raises(StorageError) as info:
        best_config("en-sw", storage=store)
    assert time.monotonic() - start < 10
    text = str(info.value)
    assert f"127.0.0.1:{port}" in text and "'results'" in text and "\n" not in text


# --------------------------------------------------------------------------- unreadable parts


def _bad_parts(directory: Path) -> dict[str, Path]:
    """A corrupt, an empty and two foreign Parquet files named like parts in ``directory``
    (issue 22: one of them used to hide every record of the store)."""
    directory.mkdir(parents=True, exist_ok=True)
    bad = {
        name: directory / f"part-99999999T000000000000Z-{name}.parquet"
        for name in ("corrupt", "empty", "foreign", "clash")
    }
    good = next(directory.glob("part-*.parquet"), None)
    head = good.read_bytes()[:200] if good else b"PAR1"
    bad["corrupt"].write_bytes(head + b"\x00garbage" * 20)  # a torn part
    bad["empty"].write_bytes(b"")
    pq.write_table(pa.table({"a": [1, 2], "b": ["x", "y"]}), bad["foreign"])
    # the identity columns, but a value column that cannot be read as a number
    ids = {
        "record_id": "clash",
        "experiment": "exp",
        "pair": directory.name,
        "trial_id": "t",
        "status": "finished",
    }
    pq.write_table(
        pa.table({k: [v] for k, v in ids.items()} | {"best_value": ["high"]}), bad["clash"]
    )
    return bad


def _warned(caplog, path: Path) -> int:
    return sum(str(path) in r.getMessage() for r in caplog.records if r.levelname == "WARNING")


def test_unreadable_parts_are_skipped_with_a_warning_and_quarantined(catalog, caplog) -> None:
    for i in range(4):
        catalog.append(record(i, "en-sw"))
    catalog.append(record(0, "en-yo"))
    store = Path(catalog.storage.path)
    bad = _bad_parts(store / "catalog" / "exp" / "en-sw")
    alone = store / "catalog" / "exp" / "en-zz" / "part-1-torn.parquet"  # a pair of its own
    alone.parent.mkdir()
    alone.write_bytes(bad["corrupt"].read_bytes())
    caplog.set_level("WARNING", logger="optical_ray.catalog")
    best = best_config("en-sw", storage=catalog.storage, top=10)
    assert [b.trial_id for b in best] == [f"en-sw-{i:04d}" for i in (3, 2, 1, 0)]
    for path in bad.values():
        assert _warned(caplog, path) == 1, path  # named once, though the query reads twice
    assert [r.pair for r in best_configs_all(storage=catalog.storage)] == ["en-sw", "en-yo"]
    reader = Catalog(catalog.storage, spool_dir=catalog.spool_dir)
    assert len(reader.records()) == 5
    assert set(reader.skipped) == {str(p) for p in [*bad.values(), alone]}
    assert "not a catalog part" in reader.skipped[str(bad["foreign"])]
    originals = {p: p.read_bytes() for p in [*bad.values(), alone]}

    stats = catalog.compact()
    assert stats["quarantined"] == 5 and stats["records"] == 4
    assert stats["parts_after"] == 2  # en-sw merged, en-yo as it was, en-zz emptied
    for path, data in originals.items():
        moved = store / "quarantine" / path.relative_to(store)
        assert not path.exists() and moved.read_bytes() == data  # moved aside, never deleted
    caplog.clear()
    after = Catalog(catalog.storage, spool_dir=catalog.spool_dir)
    assert sorted(after.records().trial_id) == sorted(
        [f"en-sw-{i:04d}" for i in range(4)] + ["en-yo-0000"]
    )
    assert after.skipped == {} and not caplog.records


def test_writer_compaction_quarantines_unreadable_parts(tmp_path) -> None:
    catalog = Catalog(tmp_path / "store", spool_dir=tmp_path / "spool", auto_compact=4)
    catalog.append(record(0))
    bad = _bad_parts(tmp_path / "store" / "catalog" / "exp" / "en-sw")
    for i in range(1, 4):
        catalog.append(record(i))
    assert not any(p.exists() for p in bad.values())
    assert len(list((tmp_path / "store" / "quarantine").rglob("part-*.parquet"))) == 4
    assert sorted(catalog.records().trial_id) == [f"en-sw-{i:04d}" for i in range(4)]


def test_best_cli_exits_0_and_names_the_unreadable_parts(catalog) -> None:
    import subprocess
    import sys

    for i in range(3):
        catalog.append(record(i))
    bad = _bad_parts(Path(catalog.storage.path) / "catalog" / "exp" / "en-sw")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "optical_ray.cli",
            "best",
            "--pair",
            "en-sw",
            "--storage",
            catalog.storage.path,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "en-sw-0002" in proc.stdout
    warnings = proc.stderr.strip().splitlines()
    assert len(warnings) == len(bad) and "Traceback" not in proc.stderr
    for path in bad.values():
        assert sum(str(path) in line for line in warnings) == 1


def test_a_part_that_vanished_is_told_apart_from_a_storage_error(catalog) -> None:
    from optical_ray.catalog.parts import PartGone, read_parts

    for i in range(3):
        catalog.append(record(i))
    infos = catalog.parts()
    Path(infos[1].path).unlink()  # a concurrent compaction removed it after our listing
    with pytest.raises(PartGone):
        read_parts(catalog.storage, infos, ["record_id"], None)
    assert len(catalog.records()) == 2  # the catalog lists again and reads what is there


# --------------------------------------------------------------------------- package seams


def test_public_names_and_report_uses_only_public_ones() -> None:
    import ast

    import optical_ray.catalog as catalog_pkg
    import optical_ray.report.gap

    for name in catalog_pkg.__all__:
        assert getattr(catalog_pkg, name) is not None
    tree = ast.parse(Path(optical_ray.report.gap.__file__).read_text())
    imported = [
        a.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
        and (node.module or "").startswith("optical_ray.catalog")
        for a in node.names
    ]
    assert imported and not [n for n in imported if n.startswith("_")]


def test_metric_values_and_rank_trials_on_records(catalog) -> None:
    from optical_ray.catalog import metric_value, metric_values, rank_trials, recorded_metrics

    assert metric_value({"en-sw/map": 0.3, "map": None}, "en-sw", "map") == 0.3
    assert metric_value({"map": 0.4}, "en-sw", "ndcg@10") is None
    for i, v in enumerate([0.2, 0.5, 0.5]):
        catalog.append(record(i, value=v))
    catalog.append(record(7, status="failed", value=0.9))
    df = catalog.records(pair="en-sw")
    assert list(metric_values(df, "ndcg@10").round(6)) == [0.8, 0.5, 0.5, 0.1]
    top = rank_trials(df, "en-sw", "map", top=2)
    assert list(top.trial_id) == ["en-sw-0001", "en-sw-0002"] and list(top.value) == [0.5, 0.5]
    assert recorded_metrics(df) == ["map", "ndcg@10"]
    with pytest.raises(StorageError, match="'p@5' was never recorded"):
        rank_trials(df, "en-sw", "p@5")


# --------------------------------------------------------------------------- secrets


def _strings_in_parquet(data: bytes) -> str:
    table = pq.read_table(pa.BufferReader(data))
    return json.dumps(table.to_pylist(), default=str)


def _assert_no_secret(blobs: dict[str, bytes], secret: str) -> None:
    assert blobs, "nothing was written?"
    for name, data in blobs.items():
        assert secret.encode() not in data, name  # raw bytes (e.g. uncompressed pages)
        if name.endswith(".parquet"):
            assert secret not in _strings_in_parquet(data), name  # decoded values


def _leaky_record(i: int) -> TrialRecord:
    rec = record(i, error=f"upload failed: aws_secret_access_key={SECRET} and {SECRET}")
    rec.config["storage.endpoint"] = f"http://user:{SECRET}@127.0.0.1:1"
    rec.checkpoint_uri = f"s3://b/ckpt?X-Amz-Signature={SECRET}"
    return rec


def test_secret_never_written_local(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    catalog = Catalog(tmp_path / "store", spool_dir=tmp_path / "spool", auto_compact=2)
    for i in range(3):
        catalog.append(_leaky_record(i))
    files = {str(p): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    _assert_no_secret(files, SECRET)
    row = catalog.records().iloc[0]
    assert "***" in row.error and "***" in row.config and "***" in row.checkpoint_uri


# --------------------------------------------------------------------------- S3 (SeaweedFS)


def _append_many(uri: str, spool: str, worker: int, n: int) -> None:
    catalog = Catalog(uri, spool_dir=spool, auto_compact=40)
    for i in range(n):
        catalog.append(record(1000 * worker + i, experiment="concurrent"))


def _run_writers(uri: str, spool: Path, workers: int = 4, n: int = 50) -> None:
    ctx = mp.get_context("spawn")  # no fork after the AWS SDK started its threads
    procs = [
        ctx.Process(target=_append_many, args=(uri, str(spool / str(w)), w, n))
        for w in range(workers)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=240)
        assert p.exitcode == 0


def _expected_ids(workers: int = 4, n: int = 50) -> list[str]:
    return sorted(f"en-sw-{1000 * w + i:04d}" for w in range(workers) for i in range(n))


def test_concurrent_writers_lose_nothing_local(tmp_path) -> None:
    # Threads here (the S3 test below uses processes): four independent writers, each
    # with its own Catalog, appending and compacting one directory at the same time.
    import threading

    uri = str(tmp_path / "store")
    threads = [
        threading.Thread(target=_append_many, args=(uri, str(tmp_path / str(w)), w, 25))
        for w in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    df = Catalog(uri, spool_dir=tmp_path / "spool-r").records()
    assert sorted(df.trial_id) == _expected_ids(n=25) and df.record_id.is_unique


@pytest.mark.slow
def test_s3_append_records_best(s3_storage_uri, tmp_path) -> None:
    catalog = Catalog(s3_storage_uri, spool_dir=tmp_path / "spool")
    for i in range(5):
        catalog.append(record(i, value=[0.3, 0.5, 0.1, 0.4, 0.2][i]))
    catalog.append(record(0, "en-yo"))
    assert catalog.pairs() == ["en-sw", "en-yo"]
    assert len(catalog.records(pair="en-sw")) == 5
    best = best_config("en-sw", storage=s3_storage_uri, top=2)
    assert [b.value for b in best] == [0.5, 0.4]
    assert from_dict(yaml.safe_load(best_yaml(best[0]))).distill.epsilon == pytest.approx(0.02)
    assert catalog.compact()["parts_after"] == 2
    assert best_config("en-sw", storage=s3_storage_uri)[0].trial_id == "en-sw-0001"


@pytest.mark.slow
def test_s3_concurrent_writers_lose_nothing(s3_storage_uri, tmp_path) -> None:
    # 4 processes x 50 appends into one directory, with writer-side compactions racing.
    _run_writers(s3_storage_uri, tmp_path / "spool")
    catalog = Catalog(s3_storage_uri, spool_dir=tmp_path / "spool-r")
    df = catalog.records()
    assert sorted(df.trial_id) == _expected_ids() and df.record_id.is_unique
    assert all(
        not Catalog(s3_storage_uri, spool_dir=tmp_path / "spool" / str(w)).pending()
        for w in range(4)
    )


@pytest.mark.slow
def test_s3_outage_spools_then_flushes(s3_storage_uri, s3_env, tmp_path) -> None:
    catalog = Catalog(s3_storage_uri, spool_dir=tmp_path / "spool", attempts=2, base_delay=0.2)
    catalog.append(record(1))
    s3_env.stop()
    try:
        catalog.append(record(2))  # retried, then kept in the spool: no exception
        assert len(catalog.pending()) == 1
        with pytest.raises(StorageError, match="cannot reach S3 endpoint"):
            catalog.records()
    finally:
        s3_env.start()
    catalog.append(record(3))  # flushes the spooled part first
    assert catalog.pending() == []
    assert sorted(catalog.records().trial_id) == ["en-sw-0001", "en-sw-0002", "en-sw-0003"]


@pytest.mark.slow
def test_s3_secret_never_written(s3_storage_uri, s3_env, tmp_path) -> None:
    catalog = Catalog(s3_storage_uri, spool_dir=tmp_path / "spool", auto_compact=3, attempts=1)
    for i in range(3):
        catalog.append(_leaky_record(i))
    s3_env.stop()
    try:
        catalog.append(_leaky_record(3))  # lands in the spool
    finally:
        s3_env.start()
    spooled = {str(p): p.read_bytes() for p in catalog.pending()}
    assert len(spooled) == 1
    _assert_no_secret(spooled, SECRET)
    catalog.flush()
    client = s3_env.client()
    bucket, prefix = s3_storage_uri[len("s3://") :].split("/", 1)
    keys = [
        o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    ]
    blobs = {k: client.get_object(Bucket=bucket, Key=k)["Body"].read() for k in keys}
    assert sum(k.endswith(".parquet") for k in keys) >= 1
    _assert_no_secret(blobs, SECRET)
    assert len(catalog.records()) == 4


@pytest.mark.slow
def test_s3_unreadable_parts_and_vanished_parts(s3_storage_uri, s3_env, tmp_path) -> None:
    from optical_ray.catalog.parts import PartGone, read_parts

    catalog = Catalog(s3_storage_uri, spool_dir=tmp_path / "spool", auto_compact=None)
    for i in range(3):
        catalog.append(record(i))
    bad = _bad_parts(tmp_path / "bad" / "en-sw")
    client = s3_env.client()
    bucket, prefix = s3_storage_uri[len("s3://") :].split("/", 1)
    for path in bad.values():
        client.put_object(
            Bucket=bucket, Key=f"{prefix}/catalog/exp/en-sw/{path.name}", Body=path.read_bytes()
        )
    assert best_config("en-sw", storage=s3_storage_uri)[0].trial_id == "en-sw-0002"
    assert catalog.compact()["quarantined"] == len(bad)
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"]]
    assert sorted(
        k.rsplit("/", 1)[1] for k in keys if "/quarantine/catalog/exp/en-sw/" in k
    ) == sorted(p.name for p in bad.values())
    assert sorted(catalog.records().trial_id) == [f"en-sw-{i:04d}" for i in range(3)]
    catalog.append(record(3))
    infos = catalog.parts()
    catalog.storage.delete_files([infos[0].path])  # gone between listing and reading
    with pytest.raises(PartGone):
        read_parts(catalog.storage, infos, ["record_id"], None)


# --------------------------------------------------------------------------- planted records


def plant(catalog: Catalog, rec: TrialRecord, **changes) -> Path:
    """Write ``rec`` as a part of its own with ``changes`` to its row, past the record
    validation (what anyone who can write to the bucket can do)."""
    from optical_ray.catalog.records import SCHEMA

    row = {**rec.to_row(), **changes}
    path = (
        Path(catalog.storage.path)
        / "catalog"
        / rec.experiment
        / rec.pair
        / f"part-99999999T000000000000Z-{rec.trial_id}.parquet"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist([row], schema=SCHEMA), path)
    return path


def test_a_non_finite_metric_is_refused_on_write_and_ranks_nowhere(catalog) -> None:
    from optical_ray.catalog import pareto_front

    inf = float("inf")
    with pytest.raises(ConfigError, match=r"best_metrics.map: got inf, expected a finite"):
        catalog.append(dataclasses.replace(record(1), best_metrics={"map": inf}))
    with pytest.raises(ConfigError, match=r"retention: got -inf"):
        catalog.append(record(1, retention=-inf))
    for i in range(3):
        catalog.append(record(i, value=0.2 + i / 10, retention=0.9))
    planted = {"map": inf, "en-sw/map": inf, "en-en/map": inf, "ndcg@10": inf}
    plant(
        catalog,
        record(9),
        best_value=inf,
        best_metrics=json.dumps(planted),
        retention=inf,
    )
    plant(catalog, record(8, value=0.1), best_metrics='{"map": 1e999, "en-en/map": 1e999}')
    assert len(catalog.records(pair="en-sw")) == 5
    (best,) = best_config("en-sw", storage=catalog.storage)
    assert best.trial_id == "en-sw-0002" and best.value == pytest.approx(0.4)
    by_ndcg = best_config("en-sw", "ndcg@10", storage=catalog.storage, top=5)
    assert "en-sw-0009" not in [r.trial_id for r in by_ndcg]
    ranked = best_config("en-sw", storage=catalog.storage, objectives="map,retention", top=9)
    assert [r.trial_id for r in ranked][:3] == ["en-sw-0002", "en-sw-0001", "en-sw-0000"]
    assert "en-sw-0009" not in [r.trial_id for r in ranked]
    front = pareto_front("en-sw", "map,en-en/map", catalog.storage)
    assert [r.trial_id for r in front] == ["en-sw-0002"]
    assert best_configs_all(storage=catalog.storage)[0].trial_id == "en-sw-0002"


def test_a_record_this_version_cannot_read_is_skipped_with_a_warning(catalog, caplog) -> None:
    """Text planted in a part, or a record from a newer version: the pair still answers,
    from the next record in the ranking, and the warning names the one skipped."""
    for i in range(3):
        catalog.append(record(i, value=0.2 + i / 10))
    newer = {**flat_config("en-sw"), "distill.from_the_future": 1}
    plant(catalog, record(7, value=0.8), config=json.dumps(newer))
    plant(catalog, record(8, value=0.9), config="<script>not json")
    caplog.set_level("WARNING", logger="optical_ray.catalog")
    (best,) = best_config("en-sw", storage=catalog.storage)
    assert best.trial_id == "en-sw-0002" and best.rank == 1
    warned = " ".join(r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    assert "trial 'en-sw-0008'" in warned and "trial 'en-sw-0007'" in warned
    assert "distill.from_the_future" in warned
    top = best_config("en-sw", storage=catalog.storage, top=3)
    assert [(r.trial_id, r.rank) for r in top] == [
        ("en-sw-0002", 1),
        ("en-sw-0001", 2),
        ("en-sw-0000", 3),
    ]
    assert best_configs_all(storage=catalog.storage)[0].trial_id == "en-sw-0002"
    objs = best_config("en-sw", storage=catalog.storage, objectives="map,ndcg@10")
    assert objs[0].trial_id == "en-sw-0002" and objs[0].objectives["map"] == pytest.approx(0.4)


def test_every_objective_must_have_been_recorded(catalog) -> None:
    for i in range(2):
        catalog.append(record(i))
    with pytest.raises(StorageError, match=r"'recall@100' was never recorded .* recorded"):
        best_config("en-sw", storage=catalog.storage, objectives="map,recall@100")
    with pytest.raises(StorageError, match=r"'mrr@10', 'recall@100' were never recorded"):
        best_config("en-sw", storage=catalog.storage, objectives="map,mrr@10,recall@100")
