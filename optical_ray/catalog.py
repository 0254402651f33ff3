"""Results catalog: one record per trial, in object storage, and best-config queries.

Layout: ``<storage>/catalog/<experiment>/<pair>/part-<UTC time>-<id>.parquet``. Every
trial adds its own small, immutable Parquet part (or a batch adds one part), so any
number of sweeps can write at the same time without a read-modify-write of a shared
file, and nothing is lost when two of them finish together. A part is written
atomically (local: temp file + rename; S3: one upload that appears on completion) and
named after its record id, so a retried or re-flushed write rewrites the same key and
never duplicates a record. A part that cannot be written after :func:`with_retries` is
spooled to a local directory and written by the next ``append`` (or :meth:`Catalog.flush`).

Reads (:meth:`Catalog.records`) list only the directories a query needs and build a
``pyarrow.dataset`` with one fragment per part, each carrying its experiment and pair
as a partition expression: filters prune parts without opening them, and only the
projected columns are decoded. Queries rank on a few columns first and then load the
full records of the winners only. :meth:`Catalog.compact` merges a directory's parts
into one (written first, inputs deleted after; readers drop duplicate record ids in
between); writers do it themselves every ``auto_compact`` parts, so a pair's directory
stays at a few dozen parts however many trials it holds.

Queries: :func:`best_config` (top-k trials of one pair), :func:`best_configs_all` (the
best per pair), :func:`best_yaml` (a config file ``optical-ray train --config``
accepts), :func:`format_records` (table / json / yaml for the CLI).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import logging
import math
import os
import re
import socket
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence
from urllib.parse import quote, unquote

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import yaml

from optical_ray import __version__
from optical_ray.config import PAIR_RE, Config, from_flat, to_dict, to_flat
from optical_ray.errors import ConfigError, StorageError
from optical_ray.storage import Storage, as_storage, redact, with_retries

__all__ = ["TrialRecord", "BestRecord", "Catalog", "best_config", "best_configs_all",
           "best_yaml", "format_records", "format_table", "varying_distill_keys", "SCHEMA",
           "STATUSES", "CATALOG_DIR"]

log = logging.getLogger(__name__)

CATALOG_DIR = "catalog"
_SAFE_ID = re.compile(r"^[A-Za-z0-9_.=-]{1,80}$")  # record ids usable as part names
_SMALL_PART = 4 << 20  # bytes; larger (compacted) parts are scanned, not fetched whole
_READ_THREADS = 32  # parallel GETs: object stores answer many small reads at once
_COMPACT_INPUT = 1 << 20  # bytes; writer-side compaction merges parts below this
_LEASE_PREFIX = "_compacting-"
_COMPACT_LEASE_S = 120.0  # a writer that died mid-compaction blocks others this long
_FILTER_COLUMNS = ["experiment", "pair", "status", "record_id"]
_STATS_COLUMNS = ["experiment", "pair", "status", "metric", "best_value", "finished_at"]
STATUSES = ("finished", "failed", "stopped")
# Trials whose metrics rank: ASHA-stopped trials were evaluated too, failed ones may not.
RANKED_STATUSES = ("finished", "stopped")
# Plain columns of the main hyperparameters, for fast queries and the report's plots.
HYPERPARAMETERS = {"epsilon": "distill.epsilon", "weight": "distill.weight",
                   "layers": "distill.layers", "lr": "distill.lr", "method": "distill.method"}

SCHEMA = pa.schema([
    ("record_id", pa.string()), ("experiment", pa.string()), ("pair", pa.string()),
    ("trial_id", pa.string()), ("status", pa.string()), ("error", pa.string()),
    ("metric", pa.string()), ("mode", pa.string()), ("best_value", pa.float64()),
    ("last_value", pa.float64()), ("epsilon", pa.float64()), ("weight", pa.float64()),
    ("layers", pa.string()), ("lr", pa.float64()), ("method", pa.string()),
    ("config", pa.string()), ("best_metrics", pa.string()), ("last_metrics", pa.string()),
    ("baseline_metrics", pa.string()), ("checkpoint_uri", pa.string()),
    ("started_at", pa.timestamp("us", tz="UTC")), ("finished_at", pa.timestamp("us", tz="UTC")),
    ("duration_s", pa.float64()), ("training_s", pa.float64()), ("iterations", pa.int64()),
    ("version", pa.string()), ("host", pa.string()),
], metadata={"optical_ray.catalog": "1"})


# --------------------------------------------------------------------------- records


def _utc(value: Any, key: str) -> dt.datetime | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, pd.Timestamp):
        value = value.to_pydatetime()
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.timezone.utc) if value.tzinfo else value.replace(
            tzinfo=dt.timezone.utc)
    if isinstance(value, (int, float)):
        return dt.datetime.fromtimestamp(float(value), tz=dt.timezone.utc)
    if isinstance(value, str):
        try:
            return _utc(dt.datetime.fromisoformat(value), key)
        except ValueError:
            pass
    raise ConfigError(f"{key}: got {value!r}, expected a datetime, epoch seconds or an "
                      "ISO 8601 string")


def _flat_config(config: Any) -> dict[str, Any]:
    if isinstance(config, Config):
        return to_flat(config)
    if not isinstance(config, Mapping):
        raise ConfigError(f"config: got {type(config).__name__}, expected a Config or the "
                          "flat {'distill.epsilon': ...} dict handed to Ray Tune")
    return dict(config)


def _metrics(value: Any, key: str) -> dict[str, float]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{key}: got {value!r}, expected a mapping such as "
                          "{'en-sw/map': 0.31, 'map': 0.31}")
    out = {}
    for k, v in value.items():
        try:
            out[str(k)] = float(v)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}.{k}: got {v!r}, expected a number") from None
    return out


def _lookup(metrics: Mapping[str, float], pair: str, metric: str) -> float | None:
    """The value of ``metric`` for ``pair``: the plain key (the trial's own pair) or
    ``<pair>/<metric>``."""
    for key in (metric, f"{pair}/{metric}"):
        if key in metrics and metrics[key] is not None:
            return float(metrics[key])
    return None


@dataclass
class TrialRecord:
    """One trial's result, as the sweep appends it to the catalog.

    ``best_metrics`` / ``last_metrics`` hold every metric of every evaluated pair at the
    best and at the last evaluation: ``{"en-sw/map": 0.31, "en-en/map": 0.52, "map":
    0.31}`` (plain keys are the trial's own pair). ``baseline_metrics`` (optional) holds
    the same keys for the zero-shot teacher on the same evaluation set: the report's
    baseline when no ``distill.method: none`` trial was run. ``config`` is the flat
    dict given to Ray Tune (or a :class:`~optical_ray.config.Config`).
    """

    experiment: str
    pair: str
    trial_id: str
    status: str = "finished"
    config: Any = field(default_factory=dict)
    best_metrics: Mapping[str, float] | None = None
    last_metrics: Mapping[str, float] | None = None
    metric: str = "map"
    mode: str = "max"
    error: str | None = None
    baseline_metrics: Mapping[str, float] | None = None
    checkpoint_uri: str | None = None
    started_at: Any = None
    finished_at: Any = None
    training_s: float | None = None
    iterations: int | None = None
    version: str = __version__
    host: str = field(default_factory=socket.gethostname)
    record_id: str = field(default_factory=lambda: uuid.uuid4().hex)

    def validate(self) -> None:
        problems = []
        if not isinstance(self.experiment, str) or not self.experiment.strip():
            problems.append(f"experiment: got {self.experiment!r}, expected a non-empty name")
        if not isinstance(self.pair, str) or not PAIR_RE.match(self.pair):
            problems.append(f"pair: got {self.pair!r}, expected <query_lang>-<doc_lang> "
                            "such as en-sw")
        if self.status not in STATUSES:
            problems.append(f"status: got {self.status!r}, expected one of "
                            + ", ".join(STATUSES))
        if self.mode not in ("max", "min"):
            problems.append(f"mode: got {self.mode!r}, expected 'max' or 'min'")
        if not str(self.trial_id):
            problems.append("trial_id: empty")
        if problems:
            raise ConfigError(problems, source="catalog record")

    def to_row(self) -> dict[str, Any]:
        """The catalog row: JSON columns, plain hyperparameter columns, secrets removed."""
        self.validate()
        flat = _flat_config(self.config)
        best = _metrics(self.best_metrics, "best_metrics")
        last = _metrics(self.last_metrics, "last_metrics")
        base = _metrics(self.baseline_metrics, "baseline_metrics") if (
            self.baseline_metrics is not None) else None
        started = _utc(self.started_at, "started_at")
        finished = _utc(self.finished_at, "finished_at") or dt.datetime.now(dt.timezone.utc)
        hp: dict[str, Any] = {}
        for column, key in HYPERPARAMETERS.items():
            value = flat.get(key)
            if column == "layers":
                hp[column] = None if value is None else json.dumps(value)
            elif column == "method":
                hp[column] = None if value is None else str(value)
            else:
                hp[column] = _float_or_none(value)
        return {
            "record_id": self.record_id, "experiment": self.experiment, "pair": self.pair,
            "trial_id": str(self.trial_id), "status": self.status,
            "error": redact(self.error) if self.error else None,
            "metric": self.metric, "mode": self.mode,
            "best_value": _lookup(best, self.pair, self.metric),
            "last_value": _lookup(last, self.pair, self.metric), **hp,
            "config": redact(json.dumps(flat, sort_keys=True, default=str)),
            "best_metrics": json.dumps(best, sort_keys=True),
            "last_metrics": json.dumps(last, sort_keys=True),
            "baseline_metrics": None if base is None else json.dumps(base, sort_keys=True),
            "checkpoint_uri": redact(self.checkpoint_uri) if self.checkpoint_uri else None,
            "started_at": started, "finished_at": finished,
            "duration_s": (finished - started).total_seconds() if started else None,
            "training_s": _float_or_none(self.training_s),
            "iterations": None if self.iterations is None else int(self.iterations),
            "version": self.version, "host": self.host,
        }


def _float_or_none(value: Any) -> float | None:
    try:
        return None if value is None or isinstance(value, bool) else float(value)
    except (TypeError, ValueError):
        return None


def _as_record(record: TrialRecord | Mapping[str, Any]) -> TrialRecord:
    if isinstance(record, TrialRecord):
        return record
    if isinstance(record, Mapping):
        known = set(TrialRecord.__dataclass_fields__)
        unknown = sorted(set(record) - known)
        if unknown:
            raise ConfigError(f"catalog record: unknown keys {unknown} (allowed: "
                              f"{', '.join(sorted(known))})")
        return TrialRecord(**record)
    raise ConfigError(f"catalog record: got {type(record).__name__}, expected a "
                      "TrialRecord or a mapping")


def _encode_name(name: str) -> str:
    """An experiment name as one safe path segment (reversible with ``unquote``)."""
    out = quote(name, safe="-_.=+@,")
    return "%2E" + out[1:] if out.startswith(".") else out


# --------------------------------------------------------------------------- catalog


def _default_spool(storage: Storage) -> Path:
    root = os.environ.get("OPTICAL_RAY_SPOOL_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"),
        "optical_ray", "catalog-spool")
    key = hashlib.sha1(f"{storage.uri}|{storage.endpoint or ''}".encode()).hexdigest()[:16]
    return Path(root) / key


class Catalog:
    """The results catalog under ``<storage>/catalog/``.

    Parameters
    ----------
    storage : Storage | str | StorageConfig
        Where the results live.
    spool_dir : path, optional
        Local fallback for parts that could not be written (default
        ``$OPTICAL_RAY_SPOOL_DIR`` or ``~/.cache/optical_ray/catalog-spool``, one
        subdirectory per store).
    attempts, base_delay : int, float
        :func:`~optical_ray.storage.with_retries` settings for each write.
    auto_compact : int or None
        After an append, merge the directory's small parts once there are this many
        (None: never; call :meth:`compact`). Keeps queries fast at thousands of trials.
    """

    def __init__(self, storage: Any, *, spool_dir: str | os.PathLike[str] | None = None,
                 attempts: int = 4, base_delay: float = 0.5,
                 auto_compact: int | None = 64) -> None:
        self.storage = as_storage(storage)
        self.spool_dir = Path(spool_dir) if spool_dir else _default_spool(self.storage)
        self.attempts = attempts
        self.base_delay = base_delay
        self.auto_compact = auto_compact
        self._listed: dict[str, pafs.FileInfo] = {}  # path -> info of the last listings

    def __repr__(self) -> str:
        return f"Catalog({self.storage.uri_of(CATALOG_DIR)!r})"

    # ------------------------------------------------------------------ writing
    def append(self, record: TrialRecord | Mapping[str, Any]) -> str:
        """Add one trial record; return the URI of its part. Never loses the record: if
        storage stays down through the retries, the part is spooled locally (warning
        logged) and written by the next append or :meth:`flush`."""
        return self.extend([record])[0]

    def extend(self, records: Iterable[TrialRecord | Mapping[str, Any]]) -> list[str]:
        """Add several records: one part per (experiment, pair). Returns the part URIs."""
        rows: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for record in records:
            row = _as_record(record).to_row()
            rows.setdefault((row["experiment"], row["pair"]), []).append(row)
        parts = [self._encode(group) for group in rows.values()]
        self.flush()
        uris = []
        for rel, data in parts:
            uri, written = self._write_or_spool(rel, data)
            uris.append(uri)
            if written:
                self._maybe_compact(rel)
        return uris

    def _encode(self, rows: list[dict[str, Any]]) -> tuple[str, bytes]:
        first = rows[0]
        stamp = min(r["finished_at"] for r in rows).strftime("%Y%m%dT%H%M%S%fZ")
        # Deterministic in the record ids: a rewrite after an ambiguous failure lands on
        # the same key instead of duplicating the records.
        ident = rows[0]["record_id"]
        if len(rows) > 1 or not _SAFE_ID.match(ident):
            ident = hashlib.sha1("\n".join(r["record_id"] for r in rows).encode()).hexdigest()[:32]
        rel = (f"{CATALOG_DIR}/{_encode_name(first['experiment'])}/{first['pair']}/"
               f"part-{stamp}-{ident}.parquet")
        return rel, _parquet_bytes(pa.Table.from_pylist(rows, schema=SCHEMA), "snappy")

    def _write(self, rel: str, data: bytes, attempts: int | None = None) -> str:
        return with_retries(lambda: self.storage.write_bytes(rel, data),
                            attempts=attempts or self.attempts, base_delay=self.base_delay,
                            what=f"catalog write to {self.storage.uri_of(rel)}")

    def _write_or_spool(self, rel: str, data: bytes) -> tuple[str, bool]:
        """Write one part, or spool it; returns (its URI, whether it was written)."""
        try:
            return self._write(rel, data), True
        except StorageError as exc:
            path = self._spool(rel, data)
            log.warning("catalog: could not write %s (%s); the record is kept in %s and "
                        "will be written by the next append or Catalog.flush()",
                        self.storage.uri_of(rel), redact(exc), path)
            return self.storage.uri_of(rel), False

    def _spool(self, rel: str, data: bytes) -> Path:
        path = self.spool_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.parent / f".tmp-{uuid.uuid4().hex}"
        tmp.write_bytes(data)
        os.replace(tmp, path)
        return path

    def pending(self) -> list[Path]:
        """Spooled parts not yet written to storage."""
        if not self.spool_dir.is_dir():
            return []
        return sorted(p for p in self.spool_dir.rglob("part-*.parquet") if p.is_file())

    def flush(self) -> int:
        """Write spooled parts to storage (one attempt each; stops at the first failure,
        the store being still down). Returns how many were written."""
        written = 0
        for path in self.pending():
            rel = path.relative_to(self.spool_dir).as_posix()
            try:
                data = path.read_bytes()
            except FileNotFoundError:  # flushed meanwhile by another process
                continue
            try:
                self._write(rel, data, attempts=1)
            except StorageError as exc:
                log.warning("catalog: %d spooled part(s) still waiting for %s: %s",
                            len(self.pending()), self.storage.where(), redact(exc))
                break
            path.unlink(missing_ok=True)
            written += 1
        if written:
            log.info("catalog: wrote %d spooled part(s) to %s", written, self.storage.where())
        return written

    # ------------------------------------------------------------------ reading
    def _dirs(self, rel: str) -> list[str]:
        return [Path(i.path).name for i in self.storage.ls(rel)
                if i.type == pafs.FileType.Directory]

    def experiments(self) -> list[str]:
        """Experiment names with records."""
        return sorted(unquote(d) for d in self._dirs(CATALOG_DIR))

    def pairs(self, experiment: str | None = None) -> list[str]:
        """Language pairs with records (in one experiment, or in any)."""
        exps = [experiment] if experiment else self.experiments()
        found: set[str] = set()
        for exp in exps:
            found.update(d for d in self._dirs(f"{CATALOG_DIR}/{_encode_name(exp)}")
                         if PAIR_RE.match(d))
        return sorted(found)

    def parts(self, pair: str | None = None,
              experiment: str | None = None) -> list[pafs.FileInfo]:
        """The part files a query needs: only the matching directories are listed."""
        if experiment is not None:
            exp_dirs = [_encode_name(experiment)]
        elif pair is not None:
            exp_dirs = self._dirs(CATALOG_DIR)
        else:
            exp_dirs = [""]
        infos: list[pafs.FileInfo] = []
        for exp in exp_dirs:
            rel = "/".join(p for p in (CATALOG_DIR, exp, pair or "") if p)
            infos += [i for i in self.storage.ls(rel, recursive=True)
                      if i.type == pafs.FileType.File and i.base_name.startswith("part-")
                      and i.base_name.endswith(".parquet")]
        self._listed.update((i.path, i) for i in infos)
        return infos

    def records(self, pair: str | None = None, experiment: str | None = None, *,
                columns: Sequence[str] | None = None,
                status: str | Sequence[str] | None = None) -> pd.DataFrame:
        """Records (all, or one pair's / one experiment's) as a DataFrame, one row per
        trial, ordered by experiment, pair and finish time. ``columns`` projects
        (``record_id`` is always read: duplicates left by a compaction are dropped)."""
        if columns is not None:
            unknown = [c for c in columns if c not in SCHEMA.names]
            if unknown:
                raise ConfigError(f"columns: unknown {unknown} (allowed: "
                                  f"{', '.join(SCHEMA.names)})")
        return self._frame(pair, experiment, columns, status)

    def _frame(self, pair: str | None, experiment: str | None,
               columns: Sequence[str] | None, status: str | Sequence[str] | None = None,
               *, with_part: bool = False) -> pd.DataFrame:
        if columns is not None:  # what dropping duplicates needs
            columns = list(dict.fromkeys(["record_id", *columns, "finished_at"]))
        expr = None
        for name, value in (("pair", pair), ("experiment", experiment)):
            if value is not None:
                expr = _and(expr, ds.field(name) == value)
        if status is not None:
            expr = _and(expr, ds.field("status").isin(
                [status] if isinstance(status, str) else list(status)))
        for attempt in range(3):
            try:
                table = self._scan(self.parts(pair, experiment), columns, expr, with_part)
                break
            except _PartGone:
                # A compaction replaced parts between our listing and our reads: the
                # merged part holds the records now; list again.
                if attempt == 2:
                    raise StorageError(f"the catalog in {self.storage.where()} kept changing "
                                       "under the read (concurrent compactions?); retry")
        df = _unique_records(table).to_pandas()
        keys = [c for c in ("experiment", "pair", "finished_at", "trial_id") if c in df]
        if len(df) and keys:
            df = df.sort_values(keys, kind="stable").reset_index(drop=True)
        return df

    def _records_by_id(self, ids: list[str], parts: set[str]) -> dict[str, dict[str, Any]]:
        """Full rows of ``ids``, read from the ``parts`` that hold them (re-listing if a
        compaction moved them)."""
        wanted = ds.field("record_id").isin(ids)
        try:
            table = self._scan([self._listed[p] for p in parts if p in self._listed], None,
                               wanted)
        except _PartGone:  # merged meanwhile: read the same directories afresh
            infos = [i for d in sorted({str(Path(p).parent) for p in parts})
                     for i in self.storage.ls(self.storage.rel(d))
                     if i.type == pafs.FileType.File and i.base_name.startswith("part-")]
            table = self._scan(infos, None, wanted)
        rows = _unique_records(table).to_pandas()
        found = {r["record_id"]: r for r in rows.to_dict("records") if r["record_id"] in ids}
        missing = [i for i in ids if i not in found]
        if missing:
            raise StorageError(f"catalog records {missing} vanished from "
                               f"{self.storage.where()} during the query; retry")
        return found

    def _scan(self, infos: list[pafs.FileInfo], columns: list[str] | None,
              expr: ds.Expression | None, with_part: bool = False) -> pa.Table:
        """Read ``infos`` with projection and filter.

        Small parts (one trial each, the common case) are fetched whole, one GET each,
        many at once, and decoded in the fetching threads: a Dataset scanner costs a few
        ms per fragment, more than decoding a one-row part. Large (compacted) parts go
        through ``pyarrow.dataset``, where projection and row-group statistics save I/O.
        Every fragment carries the experiment and pair stated by its directory, so the
        filter prunes whole parts before they are read.
        """
        names = list(SCHEMA.names) if columns is None else list(columns)
        fmt = ds.ParquetFileFormat()
        fs = self.storage.filesystem
        fragments = []
        for info in infos:
            pair_dir = Path(info.path).parent
            where = ((ds.field("experiment") == unquote(pair_dir.parent.name))
                     & (ds.field("pair") == pair_dir.name))
            fragments.append(fmt.make_fragment(info.path, filesystem=fs,
                                               partition_expression=where,
                                               file_size=info.size))
        dataset = ds.FileSystemDataset(fragments, schema=SCHEMA, format=fmt, filesystem=fs)
        if expr is not None:
            fragments = list(dataset.get_fragments(filter=expr))
        sizes = {info.path: info.size or 0 for info in infos}
        small = [f for f in fragments if sizes[f.path] <= _SMALL_PART]
        large = [f for f in fragments if sizes[f.path] > _SMALL_PART]
        out = names + (["_part"] if with_part else [])
        tables: list[pa.Table] = []
        if small:
            # The columns the filter needs are read too, and dropped after filtering.
            read = pa.schema([SCHEMA.field(c) for c in dict.fromkeys(
                names + (_FILTER_COLUMNS if expr is not None else []))])

            def fetch(fragment: ds.FileFragment) -> pa.Table:
                with fragment.open() as f:
                    part = pq.ParquetFile(pa.BufferReader(f.read_buffer()))
                present = [c for c in read.names if c in part.schema_arrow.names]
                table = _conform(part.read(columns=present, use_threads=False), read)
                if with_part:
                    table = table.append_column("_part", pa.array(
                        [fragment.path] * table.num_rows, pa.string()))
                return table
            with self._reading(), ThreadPoolExecutor(min(_READ_THREADS, len(small))) as ex:
                merged = pa.concat_tables(list(ex.map(fetch, small)))
            if expr is not None:
                merged = merged.filter(expr)
            tables.append(merged.select(out))
        if large:
            cols: dict[str, ds.Expression] = {c: ds.field(c) for c in names}
            if with_part:
                cols["_part"] = ds.field("__filename")
            big = ds.FileSystemDataset(large, schema=SCHEMA, format=fmt, filesystem=fs)
            with self._reading():
                tables.append(ds.Scanner.from_dataset(
                    big, columns=cols, filter=expr, use_threads=True).to_table())
        if not tables:
            fields = [SCHEMA.field(c) for c in names]
            fields += [pa.field("_part", pa.string())] if with_part else []
            return pa.schema(fields).empty_table()
        return pa.concat_tables(tables)

    @contextlib.contextmanager
    def _reading(self) -> Iterator[None]:
        try:
            yield
        except FileNotFoundError:
            raise _PartGone() from None
        except OSError as exc:
            text = str(exc).lower()
            if any(k in text for k in ("nosuchkey", "no_such_key", "does not exist",
                                       "no such file")):
                raise _PartGone() from None
            raise self.storage.error(exc, f"read the catalog at "
                                     f"{self.storage.uri_of(CATALOG_DIR)}") from None

    # ------------------------------------------------------------------ compaction
    def compact(self, pair: str | None = None, experiment: str | None = None, *,
                min_parts: int = 2) -> dict[str, int]:
        """Merge each (experiment, pair) directory's parts into one part.

        The merged part is written (atomically, with retries) before any input is
        deleted, and only the inputs it holds are deleted, so records appended meanwhile
        stay, and a crash in between leaves duplicates that readers drop. Returns
        ``{"dirs": ..., "parts_before": ..., "parts_after": ..., "records": ...}``.
        """
        groups: dict[str, list[pafs.FileInfo]] = {}
        for info in self.parts(pair, experiment):
            groups.setdefault(str(Path(info.path).parent), []).append(info)
        stats = {"dirs": 0, "parts_before": 0, "parts_after": 0, "records": 0}
        for directory, infos in sorted(groups.items()):
            stats["parts_before"] += len(infos)
            merged = self._merge(directory, infos) if len(infos) >= min_parts else None
            if merged is None:
                stats["parts_after"] += len(infos)
                continue
            stats["dirs"] += 1
            stats["parts_after"] += 1
            stats["records"] += merged
        return stats

    def _merge(self, directory: str, infos: list[pafs.FileInfo]) -> int | None:
        """Merge ``infos`` (one directory) into one new part, then delete them. Returns
        the records merged, or None when another compaction removed an input first."""
        try:
            table = _unique_records(self._scan(infos, None, None))
        except _PartGone:
            return None
        table = table.sort_by([("finished_at", "ascending")])
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
        rel = f"{self.storage.rel(directory)}/part-{stamp}-compact-{uuid.uuid4().hex}.parquet"
        self._write(rel, _parquet_bytes(table, "zstd"))
        with_retries(lambda: self.storage.delete_files([i.path for i in infos]),
                     attempts=self.attempts, base_delay=self.base_delay,
                     what=f"catalog compaction deleting {len(infos)} merged parts")
        log.info("catalog: merged %d parts (%d records) into %s", len(infos), table.num_rows,
                 self.storage.uri_of(rel))
        return table.num_rows

    def _maybe_compact(self, rel: str) -> None:
        """Writer-side compaction after writing part ``rel``: once its directory holds
        ``auto_compact`` small parts (below ``_COMPACT_INPUT`` bytes, so the work stays
        bounded), merge them.

        Concurrent writers mostly stay out of each other's way: of those seeing the same
        listing only the one whose part is the newest compacts, and it leaves a
        ``_compacting-*`` marker that keeps the others off the directory for
        ``_COMPACT_LEASE_S``. Overlaps that still happen only cost work (readers drop
        the duplicates)."""
        if not self.auto_compact:
            return
        rel_dir = rel.rsplit("/", 1)[0]
        try:
            listing = self.storage.ls(rel_dir)
            small = [i for i in listing
                     if i.type == pafs.FileType.File and i.base_name.startswith("part-")
                     and i.base_name.endswith(".parquet") and (i.size or 0) < _COMPACT_INPUT]
            if len(small) < self.auto_compact:
                return
            newest = max(small, key=lambda i: (i.mtime_ns or 0, i.base_name))
            if newest.path != self.storage.join(rel):
                return
            now = dt.datetime.now(dt.timezone.utc).timestamp()
            if any(i.base_name.startswith(_LEASE_PREFIX) and i.mtime_ns
                   and now - i.mtime_ns / 1e9 < _COMPACT_LEASE_S for i in listing):
                return
            lease = f"{rel_dir}/{_LEASE_PREFIX}{uuid.uuid4().hex}"
            self.storage.write_bytes(lease, b"")
            try:
                self._merge(self.storage.join(rel_dir), small)
            finally:
                self.storage.delete_files([self.storage.join(lease)])
        except StorageError as exc:  # the record itself is safely written already
            log.warning("catalog: compaction of %s skipped: %s", rel_dir, redact(exc))


def _parquet_bytes(table: pa.Table, compression: str) -> bytes:
    """A Parquet file in memory. Statistics only where filters use them: on the config
    JSON they would store the string twice more."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression=compression, write_statistics=_STATS_COLUMNS,
                   row_group_size=65536)
    return sink.getvalue().to_pybytes()


def _and(a: ds.Expression | None, b: ds.Expression) -> ds.Expression:
    return b if a is None else a & b


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table`` in ``schema``: columns projected, missing ones (parts written by an
    older version) as nulls."""
    arrays = [table.column(f.name).cast(f.type) if f.name in table.column_names
              else pa.nulls(table.num_rows, f.type) for f in schema]
    return pa.Table.from_arrays(arrays, schema=schema)


class _PartGone(Exception):
    """A listed part disappeared before it was read (a concurrent compaction)."""


def _unique_records(table: pa.Table) -> pa.Table:
    """``table`` without repeated record ids: a record written twice (a trial recorded
    again after a resume, a compaction that crashed before deleting its inputs) counts
    once, as its latest version."""
    ids = table.column("record_id").to_pylist()
    if len(set(ids)) == len(ids):
        return table
    if "finished_at" in table.column_names:
        table = table.sort_by([("finished_at", "descending")])
        ids = table.column("record_id").to_pylist()
    seen: set[str] = set()
    keep = [i for i, rid in enumerate(ids) if not (rid in seen or seen.add(rid))]
    return table.take(keep)


# --------------------------------------------------------------------------- queries


@dataclass
class BestRecord:
    """One ranked trial: its config (nested, as ``optical-ray train --config`` takes it),
    its metrics and its checkpoint."""

    pair: str
    experiment: str
    trial_id: str
    rank: int
    metric: str
    value: float
    mode: str
    status: str
    config: dict[str, Any]
    flat_config: dict[str, Any]
    best_metrics: dict[str, float]
    last_metrics: dict[str, float]
    baseline_metrics: dict[str, float] | None
    checkpoint_uri: str | None
    finished_at: str | None
    duration_s: float | None
    record_id: str

    @property
    def hyperparameters(self) -> dict[str, Any]:
        """The main searched knobs: epsilon, weight, layers, lr, method."""
        return {col: self.flat_config.get(key) for col, key in HYPERPARAMETERS.items()}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _check_query(pair: str | None, metric: str, top: int, mode: str) -> None:
    problems = []
    if pair is not None and (not isinstance(pair, str) or not PAIR_RE.match(pair)):
        problems.append(f"pair: got {pair!r}, expected <query_lang>-<doc_lang> such as en-sw")
    if not isinstance(metric, str) or not metric:
        problems.append(f"metric: got {metric!r}, expected a metric name such as map")
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        problems.append(f"top: got {top!r}, expected an integer >= 1")
    if mode not in ("max", "min"):
        problems.append(f"mode: got {mode!r}, expected 'max' or 'min'")
    if problems:
        raise ConfigError(problems)


def _values(df: pd.DataFrame, metric: str) -> pd.Series:
    """``metric`` per row: the plain ``best_value`` column where the record's own metric
    is ``metric``; otherwise looked up in its ``best_metrics`` JSON."""
    values = df["best_value"].where(df["metric"] == metric).astype("float64")
    other = values.isna()
    if other.any():
        looked_up = [_lookup(json.loads(m) if isinstance(m, str) and m else {}, p, metric)
                     for m, p in zip(df.loc[other, "best_metrics"], df.loc[other, "pair"])]
        values.loc[other] = pd.Series(looked_up, index=values.index[other], dtype="float64")
    return values


def _recorded_metrics(df: pd.DataFrame) -> list[str]:
    names: set[str] = set(df["metric"].dropna())
    for text in df["best_metrics"].dropna():
        names.update(k.rsplit("/", 1)[-1] for k in json.loads(text))
    return sorted(names)


def _opt(row: Mapping[str, Any], key: str) -> Any:
    """A row value with pandas' missing markers (None, NaN, NaT) as None."""
    value = row.get(key)
    return None if value is None or (not isinstance(value, (str, dict, list))
                                     and pd.isna(value)) else value


def _to_best(row: Mapping[str, Any], rank: int, metric: str, value: float,
             mode: str) -> BestRecord:
    flat = json.loads(_opt(row, "config") or "{}")
    try:
        nested = to_dict(from_flat(flat))
    except ConfigError as exc:
        raise ConfigError([f"catalog record of trial {row['trial_id']!r} ({row['pair']}): "
                           f"{p}" for p in exc.problems]) from None
    finished, duration = _opt(row, "finished_at"), _opt(row, "duration_s")
    baseline = _opt(row, "baseline_metrics")
    return BestRecord(
        pair=row["pair"], experiment=row["experiment"], trial_id=row["trial_id"], rank=rank,
        metric=metric, value=float(value), mode=mode, status=row["status"], config=nested,
        flat_config=flat, best_metrics=json.loads(_opt(row, "best_metrics") or "{}"),
        last_metrics=json.loads(_opt(row, "last_metrics") or "{}"),
        baseline_metrics=None if baseline is None else json.loads(baseline),
        checkpoint_uri=_opt(row, "checkpoint_uri"),
        finished_at=None if finished is None else pd.Timestamp(finished).isoformat(),
        duration_s=None if duration is None else float(duration),
        record_id=row["record_id"])


# Phase 1 of a query reads only what ranking needs; phase 2 reads the winners' rows.
_RANK_COLUMNS = ["record_id", "experiment", "pair", "trial_id", "status", "error", "metric",
                 "best_value", "best_metrics", "finished_at"]


def _rank(df: pd.DataFrame, pair: str, metric: str, top: int, mode: str,
          where: str) -> pd.DataFrame:
    """The top ``top`` ranked trials of one pair's records ``df`` (column ``_value``)."""
    ranked = df[df["status"].isin(RANKED_STATUSES)]
    if ranked.empty:
        failed = df[df["status"] == "failed"]
        errors = failed["error"].dropna()
        # one line, however long the recorded traceback
        last = f"; last error: {' '.join(str(errors.iloc[-1]).split())[:300]}" if len(
            errors) else ""
        raise StorageError(f"no finished trial for pair {pair!r} in {where} "
                           f"({len(failed)} failed{last})")
    values = _values(ranked, metric)
    if values.isna().all():
        raise StorageError(f"metric {metric!r} was never recorded for pair {pair!r} in "
                           f"{where}; recorded metrics: {', '.join(_recorded_metrics(df))}")
    ranked = ranked.assign(_value=values).dropna(subset=["_value"])
    return ranked.sort_values(["_value", "finished_at"], ascending=[mode == "min", True],
                              kind="stable").head(top)


def _materialize(catalog: Catalog, winners: pd.DataFrame, metric: str,
                 mode: str) -> list[BestRecord]:
    """Full records of the ranked ``winners`` (read from their parts only)."""
    full = catalog._records_by_id(list(winners["record_id"]), set(winners["_part"]))
    out = []
    for rank_in_pair, row in zip(winners.groupby("pair").cumcount() + 1,
                                 winners.to_dict("records")):
        record = full[row["record_id"]]
        out.append(_to_best(record, int(rank_in_pair), metric, row["_value"], mode))
    return out


def _empty_error(catalog: Catalog) -> StorageError:
    return StorageError(f"no trial records in {catalog.storage.where()} (looked under "
                        f"{CATALOG_DIR}/); run a sweep first or check the storage URI")


def best_config(pair: str, metric: str = "map", storage: Any = "optical_runs", top: int = 1,
                mode: str = "max", *, experiment: str | None = None) -> list[BestRecord]:
    """The ``top`` best trials of ``pair`` by ``metric`` (best first).

    Ranks finished and ASHA-stopped trials by their best evaluation. Raises
    :class:`StorageError` for an empty or unreachable store, a pair without records
    (listing those with records) or a metric never recorded (listing those recorded);
    :class:`ConfigError` for a malformed pair, metric, top or mode.
    """
    _check_query(pair, metric, top, mode)
    catalog = Catalog(storage)
    df = catalog._frame(pair, experiment, _RANK_COLUMNS, with_part=True)
    if df.empty:
        known = catalog.pairs(experiment)
        if not known:
            raise _empty_error(catalog)
        scope = f" of experiment {experiment!r}" if experiment else ""
        raise StorageError(f"no records for pair {pair!r}{scope} in {catalog.storage.where()}; "
                           f"pairs with records: {', '.join(known)}")
    winners = _rank(df, pair, metric, top, mode, catalog.storage.where())
    return _materialize(catalog, winners, metric, mode)


def best_configs_all(metric: str = "map", storage: Any = "optical_runs", mode: str = "max",
                     *, experiment: str | None = None) -> list[BestRecord]:
    """The best trial of every pair (one per pair, sorted by pair); pairs without a
    finished trial or without ``metric`` are left out (logged)."""
    _check_query(None, metric, 1, mode)
    catalog = Catalog(storage)
    df = catalog._frame(None, experiment, _RANK_COLUMNS, with_part=True)
    if df.empty:
        raise _empty_error(catalog)
    winners = []
    for pair, group in df.groupby("pair", sort=True):
        try:
            winners.append(_rank(group, str(pair), metric, 1, mode, catalog.storage.where()))
        except StorageError as exc:
            log.warning("best_configs_all: skipping %s: %s", pair, exc)
    if not winners:
        raise StorageError(f"metric {metric!r} was never recorded by a finished trial in "
                           f"{catalog.storage.where()}; recorded metrics: "
                           f"{', '.join(_recorded_metrics(df))}")
    return _materialize(catalog, pd.concat(winners), metric, mode)


# --------------------------------------------------------------------------- formatting


class _YamlDumper(yaml.SafeDumper):
    """Block mappings, flow lists of scalars (``layers: [-1, -2]``), no line wrapping."""


def _represent_list(dumper: yaml.SafeDumper, data: list) -> yaml.Node:
    flow = all(not isinstance(x, (dict, list)) for x in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_YamlDumper.add_representer(list, _represent_list)


def best_yaml(record: BestRecord) -> str:
    """The record's config as YAML that ``optical-ray train --config`` accepts as is."""
    header = [f"# best config for {record.pair}: {record.metric}={record.value:.4f} "
              f"(rank {record.rank}, experiment {record.experiment!r}, trial "
              f"{record.trial_id!r})"]
    if record.checkpoint_uri:
        header.append(f"# checkpoint: {record.checkpoint_uri}")
    body = yaml.dump(record.config, Dumper=_YamlDumper, sort_keys=False,
                     default_flow_style=False, width=1000)
    return "\n".join(header) + "\n" + body


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value)


def format_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """Aligned plain-text table (numbers right-aligned)."""
    cells = [[_cell(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    numeric = [all(isinstance(r.get(c), (int, float)) or r.get(c) is None for r in rows)
               for c in columns]
    def line(values: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if num else v.ljust(w)
                         for v, w, num in zip(values, widths, numeric)).rstrip()
    return "\n".join([line(columns), line(["-" * w for w in widths])]
                     + [line(r) for r in cells])


def format_records(records: Sequence[BestRecord], fmt: str = "table") -> str:
    """``table`` (aligned text), ``json`` (a list of records) or ``yaml`` (the configs,
    one YAML document per record: a single record is a valid ``--config`` file)."""
    if fmt == "json":
        return json.dumps([r.to_dict() for r in records], indent=2, sort_keys=True,
                          default=str)
    if fmt == "yaml":
        return "---\n".join(best_yaml(r) for r in records)
    if fmt != "table":
        raise ConfigError(f"format: got {fmt!r}, expected table, json or yaml")
    if not records:
        return "(no records)"
    metric = records[0].metric
    extra = varying_distill_keys(records)
    rows = [{"pair": r.pair, "rank": r.rank, metric: r.value, **r.hyperparameters,
             **{k.split(".", 1)[1]: r.flat_config.get(k) for k in extra},
             "trial": r.trial_id, "experiment": r.experiment,
             "checkpoint": r.checkpoint_uri} for r in records]
    columns = ["pair", "rank", metric, *HYPERPARAMETERS, *(k.split(".", 1)[1] for k in extra),
               "trial", "experiment", "checkpoint"]
    return format_table(rows, columns)


def varying_distill_keys(records: Sequence[BestRecord]) -> list[str]:
    """``distill.*`` keys with scalar values, beyond the main columns, that differ
    between ``records`` (what else a sweep searched, e.g. ``distill.contrastive``)."""
    shown = set(HYPERPARAMETERS.values())
    keys = sorted({k for r in records for k in r.flat_config
                   if k.startswith("distill.") and k not in shown})
    out = []
    for k in keys:
        values = {json.dumps(r.flat_config.get(k), sort_keys=True, default=str) for r in records}
        if len(values) > 1 and all(isinstance(r.flat_config.get(k), (int, float, str, bool, type(None)))
                                   for r in records):
            out.append(k)
    return out
