"""Where a study keeps what its effects are computed from, no Ray.

::

    <storage>/studies/<name>/design.json                 the design as run (cells, seeds,
                                                         pairs, tasks, references, metrics)
    <storage>/studies/<name>/runs/<pair>/<cell>--<seed>.parquet
                                                         a run's test values, per query
    <storage>/studies/<name>/zero_shot/<pair>.parquet    the teacher, zero-shot, on the
                                                         pair's tasks and references
    <storage>/catalog/<name>-<pair>/...                  each run's catalog record
                                                         (origin study:<cell>/<seed>)

Per-query values go to Parquet files, one per run (columns ``task``, ``qid`` and one
per metric), not into the catalog: a run holds several test tasks of up to ~1,500
queries and several metrics, which a catalog row (read by every ``best`` query) should
not carry, and test values kept apart from the records that sweeps and warm starts rank
by cannot be selected on by accident. The file is written before the run's end-of-trial
report, under a name fixed by its cell and seed, so a run that is retried rewrites the
same file; the effects read only runs whose record is finished.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any, Mapping

import pyarrow as pa
import pyarrow.parquet as pq

from optical_ray.catalog.records import encode_name
from optical_ray.config.rules import parse_study_origin
from optical_ray.errors import ConfigError, StorageError

__all__ = [
    "STUDIES_DIR",
    "StoredRun",
    "study_dir",
    "design_path",
    "run_path",
    "zero_shot_path",
    "list_studies",
    "read_design",
    "save_design",
    "write_values",
    "read_values",
    "load_runs",
]

STUDIES_DIR = "studies"
PerQuery = dict[str, dict[str, dict[str, float]]]  # task -> qid -> metric -> value
#: What must match between a study in storage and a resumed one.
_SAME = ("design", "pairs", "seeds", "cells", "tasks", "reference")


def study_dir(name: str) -> str:
    return f"{STUDIES_DIR}/{encode_name(name)}"


def design_path(name: str) -> str:
    return f"{study_dir(name)}/design.json"


def run_path(name: str, pair: str, cell: str, seed: int) -> str:
    return f"{study_dir(name)}/runs/{pair}/{encode_name(cell)}--{int(seed)}.parquet"


def zero_shot_path(name: str, pair: str) -> str:
    return f"{study_dir(name)}/zero_shot/{pair}.parquet"


def list_studies(store: Any) -> list[str]:
    """The names of the studies in ``store``."""
    from urllib.parse import unquote

    return sorted(
        unquote(i.base_name)
        for i in store.ls(STUDIES_DIR)
        if store.exists(f"{STUDIES_DIR}/{i.base_name}/design.json")
    )


def read_design(store: Any, name: str) -> dict[str, Any]:
    """The stored design of study ``name``; a one-line :class:`StorageError` listing the
    studies there when it has none."""
    rel = design_path(name)
    if not store.exists(rel):
        have = list_studies(store)
        raise StorageError(
            f"no study {name!r} in {store.where()}; studies there: {', '.join(have) or 'none'}"
        )
    return json.loads(store.read_bytes(rel))


def save_design(store: Any, doc: Mapping[str, Any], resume: bool) -> None:
    """Store a study's design (:meth:`~optical_ray.studies.plan.StudyPlan.doc`). A study
    of that name already there is refused without ``resume``; with it, its design must
    be the same (else the refusal names what changed)."""
    rel = design_path(doc["name"])
    if store.exists(rel):
        if not resume:
            raise ConfigError(
                f"study {doc['name']!r} already exists in {store.where()}; pass --resume "
                "to continue it, or another --name"
            )
        stored = json.loads(store.read_bytes(rel))
        changed = [
            k
            for k in _SAME
            if json.dumps(stored.get(k), sort_keys=True) != json.dumps(doc.get(k), sort_keys=True)
        ]
        if changed:
            raise ConfigError(
                f"study {doc['name']!r} in storage was run with another design (changed: "
                f"{', '.join(changed)}); resume it with the same design, pairs and seeds, "
                "or give another --name"
            )
        return
    created = dt.datetime.now(dt.timezone.utc).isoformat()
    store.write_bytes(rel, (json.dumps({**doc, "created_at": created}, indent=1) + "\n").encode())


def write_values(
    store: Any, rel: str, values: PerQuery, metrics: list[str], meta: Mapping[str, Any]
) -> str:
    """Write per-query values (``{task: {qid: {metric: value}}}``) to ``rel`` as one
    Parquet table, ``meta`` in its schema metadata; returns its URI."""
    rows: dict[str, list[Any]] = {"task": [], "qid": [], **{m: [] for m in metrics}}
    for task, per_query in values.items():
        for qid in sorted(per_query):
            rows["task"].append(task)
            rows["qid"].append(qid)
            for m in metrics:
                rows[m].append(per_query[qid].get(m))
    schema = pa.schema(
        [("task", pa.string()), ("qid", pa.string())] + [(m, pa.float64()) for m in metrics],
        metadata={"optical_ray.study": json.dumps({**meta, "metrics": metrics}, default=str)},
    )
    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pydict(rows, schema=schema), sink, compression="zstd")
    return store.write_bytes(rel, sink.getvalue().to_pybytes())


def read_values(store: Any, rel: str) -> tuple[dict[str, Any], PerQuery]:
    """``(meta, {task: {qid: {metric: value}}})`` of a file :func:`write_values` wrote."""
    table = pq.read_table(pa.BufferReader(store.read_bytes(rel)))
    meta = json.loads(table.schema.metadata[b"optical_ray.study"])
    out: PerQuery = {}
    for row in table.to_pylist():
        out.setdefault(row["task"], {})[row["qid"]] = {
            m: float(row[m]) for m in meta["metrics"] if row[m] is not None
        }
    return meta, out


@dataclass
class StoredRun:
    """One finished run of a study: its cell and seed, its record, its test values."""

    pair: str
    cell: str
    seed: int
    record_id: str
    trial_id: str
    values: PerQuery


def load_runs(store: Any, doc: Mapping[str, Any]) -> tuple[list[StoredRun], list[str]]:
    """The finished runs of the study ``doc`` describes (its catalog records whose origin
    is one of its cells and seeds, with their stored values), and notes on what is
    missing (a finished record without values, a run that has not finished)."""
    from optical_ray.catalog import Catalog
    from optical_ray.sweeps.plan import experiment_name

    catalog = Catalog(store)
    runs: list[StoredRun] = []
    notes: list[str] = []
    cells, seeds = set(doc["cells"]), set(doc["seeds"])
    for pair in doc["pairs"]:
        df = catalog.records(
            pair,
            experiment_name(doc["name"], pair),
            columns=["pair", "trial_id", "status", "origin", "finished_at"],
        )
        seen: dict[tuple[str, int], StoredRun] = {}
        for row in df.sort_values("finished_at").itertuples():
            parsed = parse_study_origin(row.origin)
            if row.status != "finished" or parsed is None:
                continue
            cell, seed = parsed
            if cell not in cells or seed not in seeds:
                continue
            rel = run_path(doc["name"], pair, cell, seed)
            if not store.exists(rel):
                notes.append(f"{pair}: run {cell}/{seed} finished but has no stored values")
                continue
            _, values = read_values(store, rel)
            seen[(cell, seed)] = StoredRun(pair, cell, seed, row.record_id, row.trial_id, values)
        runs += list(seen.values())
        missing = len(cells) * len(seeds) - len(seen)
        if missing:
            notes.append(f"{pair}: {missing} of {len(cells) * len(seeds)} runs not finished")
    return runs, notes
