"""The catalog's storage: Parquet parts under ``<storage>/catalog/``, written, spooled,
read and compacted (see :mod:`optical_ray.catalog` for the layout)."""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import re
import uuid
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence
from urllib.parse import unquote

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs

from optical_ray.catalog.parts import PartGone, is_part, parquet_bytes, read_parts
from optical_ray.catalog.records import (
    CATALOG_DIR,
    IDENTITY_COLUMNS,
    SCHEMA,
    TrialRecord,
    as_record,
    encode_name,
    unique_records,
)
from optical_ray.config import PAIR_RE
from optical_ray.errors import ConfigError, StorageError
from optical_ray.storage import Storage, as_storage, redact, with_retries

__all__ = ["Catalog", "QUARANTINE_DIR"]

log = logging.getLogger("optical_ray.catalog")

#: Where compaction moves parts that cannot be read as catalog parts, keeping their path
#: below it: ``<storage>/quarantine/catalog/<experiment>/<pair>/part-*.parquet``.
QUARANTINE_DIR = "quarantine"
_SAFE_ID = re.compile(r"^[A-Za-z0-9_.=-]{1,80}$")  # record ids usable as part names
_COMPACT_INPUT = 1 << 20  # bytes; writer-side compaction merges parts below this
_LEASE_PREFIX = "_compacting-"
_COMPACT_LEASE_S = 120.0  # a writer that died mid-compaction blocks others this long


def _default_spool(storage: Storage) -> Path:
    root = os.environ.get("OPTICAL_RAY_SPOOL_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"),
        "optical_ray",
        "catalog-spool",
    )
    key = hashlib.sha1(f"{storage.uri}|{storage.endpoint or ''}".encode()).hexdigest()[:16]
    return Path(root) / key


def _and(a: ds.Expression | None, b: ds.Expression) -> ds.Expression:
    return b if a is None else a & b


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

    def __init__(
        self,
        storage: Any,
        *,
        spool_dir: str | os.PathLike[str] | None = None,
        attempts: int = 4,
        base_delay: float = 0.5,
        auto_compact: int | None = 64,
    ) -> None:
        self.storage = as_storage(storage)
        self.spool_dir = Path(spool_dir) if spool_dir else _default_spool(self.storage)
        self.attempts = attempts
        self.base_delay = base_delay
        self.auto_compact = auto_compact
        self._listed: dict[str, pafs.FileInfo] = {}  # path -> info of the last listings
        self._skipped: dict[str, str] = {}  # unreadable part URI -> why

    def __repr__(self) -> str:
        return f"Catalog({self.storage.uri_of(CATALOG_DIR)!r})"

    @classmethod
    def of(cls, storage: Any) -> Catalog:
        """``storage`` itself when it is a catalog (several queries of one command
        share it, and warn once about an unreadable part), else a catalog on it."""
        return storage if isinstance(storage, Catalog) else cls(storage)

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
            row = as_record(record).to_row()
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
        rel = (
            f"{CATALOG_DIR}/{encode_name(first['experiment'])}/{first['pair']}/"
            f"part-{stamp}-{ident}.parquet"
        )
        return rel, parquet_bytes(pa.Table.from_pylist(rows, schema=SCHEMA), "snappy")

    def _write(self, rel: str, data: bytes, attempts: int | None = None) -> str:
        return with_retries(
            lambda: self.storage.write_bytes(rel, data),
            attempts=attempts or self.attempts,
            base_delay=self.base_delay,
            what=f"catalog write to {self.storage.uri_of(rel)}",
        )

    def _write_or_spool(self, rel: str, data: bytes) -> tuple[str, bool]:
        """Write one part, or spool it; returns (its URI, whether it was written)."""
        try:
            return self._write(rel, data), True
        except StorageError as exc:
            path = self._spool(rel, data)
            log.warning(
                "catalog: could not write %s (%s); the record is kept in %s and "
                "will be written by the next append or Catalog.flush()",
                self.storage.uri_of(rel),
                redact(exc),
                path,
            )
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
                log.warning(
                    "catalog: %d spooled part(s) still waiting for %s: %s",
                    len(self.pending()),
                    self.storage.where(),
                    redact(exc),
                )
                break
            path.unlink(missing_ok=True)
            written += 1
        if written:
            log.info("catalog: wrote %d spooled part(s) to %s", written, self.storage.where())
        return written

    # ------------------------------------------------------------------ listing
    def _dirs(self, rel: str) -> list[str]:
        return [
            Path(i.path).name for i in self.storage.ls(rel) if i.type == pafs.FileType.Directory
        ]

    def experiments(self) -> list[str]:
        """Experiment names with records."""
        return sorted(unquote(d) for d in self._dirs(CATALOG_DIR))

    def pairs(self, experiment: str | None = None) -> list[str]:
        """Language pairs with records (in one experiment, or in any)."""
        exps = [experiment] if experiment else self.experiments()
        found: set[str] = set()
        for exp in exps:
            found.update(
                d for d in self._dirs(f"{CATALOG_DIR}/{encode_name(exp)}") if PAIR_RE.match(d)
            )
        return sorted(found)

    def parts(self, pair: str | None = None, experiment: str | None = None) -> list[pafs.FileInfo]:
        """The part files a query needs: only the matching directories are listed."""
        if experiment is not None:
            exp_dirs = [encode_name(experiment)]
        elif pair is not None:
            exp_dirs = self._dirs(CATALOG_DIR)
        else:
            exp_dirs = [""]
        infos: list[pafs.FileInfo] = []
        for exp in exp_dirs:
            rel = "/".join(p for p in (CATALOG_DIR, exp, pair or "") if p)
            infos += [i for i in self.storage.ls(rel, recursive=True) if is_part(i)]
        self._listed.update((i.path, i) for i in infos)
        return infos

    @property
    def skipped(self) -> dict[str, str]:
        """Parts this catalog's reads skipped as unreadable (URI -> why). Their records
        are left out of every answer; :meth:`compact` moves them to ``quarantine/``."""
        return dict(self._skipped)

    # ------------------------------------------------------------------ reading
    def records(
        self,
        pair: str | None = None,
        experiment: str | None = None,
        *,
        columns: Sequence[str] | None = None,
        status: str | Sequence[str] | None = None,
        with_part: bool = False,
    ) -> pd.DataFrame:
        """Records (all, or one pair's / one experiment's) as a DataFrame, one row per
        trial, ordered by experiment, pair and finish time. ``columns`` projects
        (``record_id`` and ``finished_at`` are always read: duplicates left by a
        compaction are dropped); ``with_part`` adds a ``part`` column, the path of the
        part holding each record (for :meth:`records_by_id`).

        A part that cannot be read as a catalog part (corrupt, empty, another schema) is
        skipped with a warning naming it, and listed in :attr:`skipped`.
        """
        if columns is not None:
            unknown = [c for c in columns if c not in SCHEMA.names]
            if unknown:
                raise ConfigError(
                    f"columns: unknown {unknown} (allowed: {', '.join(SCHEMA.names)})"
                )
            columns = list(dict.fromkeys(["record_id", *columns, "finished_at"]))
        expr = None
        for name, value in (("pair", pair), ("experiment", experiment)):
            if value is not None:
                expr = _and(expr, ds.field(name) == value)
        if status is not None:
            expr = _and(
                expr, ds.field("status").isin([status] if isinstance(status, str) else list(status))
            )
        for attempt in range(3):
            try:
                table = self._read(self.parts(pair, experiment), columns, expr, with_part)
                break
            except PartGone as exc:
                # A compaction replaced parts between our listing and our reads: the
                # merged part holds the records now; list again.
                if attempt == 2:
                    raise StorageError(
                        f"the catalog in {self.storage.where()} kept changing "
                        "under the read (concurrent compactions?); retry"
                    ) from exc
        df = unique_records(table).to_pandas()
        keys = [c for c in ("experiment", "pair", "finished_at", "trial_id") if c in df]
        if len(df) and keys:
            df = df.sort_values(keys, kind="stable").reset_index(drop=True)
        return df

    def records_by_id(
        self, ids: Sequence[str], parts: Iterable[str] | None = None
    ) -> dict[str, dict[str, Any]]:
        """Full rows of the records ``ids`` (``{record_id: row}``), read from ``parts``
        (paths, as :meth:`records` ``with_part=True`` gives them) or from every part.
        Raises :class:`StorageError` if one of them is not found (re-listing first if a
        compaction moved it)."""
        ids = list(ids)
        wanted = ds.field("record_id").isin(ids)
        if parts is None:
            infos = self.parts()
        else:
            parts = set(parts)
            infos = [self._listed[p] for p in parts if p in self._listed]
            if len(infos) < len(parts):  # not listed by this catalog: list their dirs
                infos = self._list_dirs(parts)
        try:
            table = self._read(infos, None, wanted)
        except PartGone:  # merged meanwhile: read the same directories afresh
            table = self._read(self._list_dirs({i.path for i in infos}), None, wanted)
        rows = unique_records(table).to_pandas()
        found = {r["record_id"]: r for r in rows.to_dict("records") if r["record_id"] in ids}
        missing = [i for i in ids if i not in found]
        if missing:
            raise StorageError(
                f"catalog records {missing} vanished from "
                f"{self.storage.where()} during the query; retry"
            )
        return found

    def _list_dirs(self, paths: Iterable[str]) -> list[pafs.FileInfo]:
        infos = [
            i
            for d in sorted({str(Path(p).parent) for p in paths})
            for i in self.storage.ls(self.storage.rel(d))
            if is_part(i)
        ]
        self._listed.update((i.path, i) for i in infos)
        return infos

    def _read(
        self,
        infos: list[pafs.FileInfo],
        columns: list[str] | None,
        expr: ds.Expression | None,
        with_part: bool = False,
    ) -> pa.Table:
        """:func:`read_parts`, warning once per catalog about each unreadable part."""
        table, bad = read_parts(self.storage, infos, columns, expr, with_part)
        for path, reason in bad.items():
            uri = self.storage.uri_of(self.storage.rel(path))
            if uri not in self._skipped:
                log.warning(
                    "catalog: skipping unreadable part %s (%s); its records are "
                    "left out, and the next compaction moves it to %s/",
                    uri,
                    reason,
                    self.storage.uri_of(QUARANTINE_DIR),
                )
            self._skipped[uri] = reason
        return table

    # ------------------------------------------------------------------ compaction
    def compact(
        self, pair: str | None = None, experiment: str | None = None, *, min_parts: int = 2
    ) -> dict[str, int]:
        """Merge each (experiment, pair) directory's parts into one part, and move the
        parts that cannot be read as catalog parts to ``quarantine/`` (never deleted).

        The merged part is written (atomically, with retries) before any input is
        deleted, and only the inputs it holds are deleted, so records appended meanwhile
        stay, and a crash in between leaves duplicates that readers drop. Returns
        ``{"dirs": ..., "parts_before": ..., "parts_after": ..., "records": ...,
        "quarantined": ...}``.
        """
        groups: dict[str, list[pafs.FileInfo]] = {}
        for info in self.parts(pair, experiment):
            groups.setdefault(str(Path(info.path).parent), []).append(info)
        stats = {"dirs": 0, "parts_before": 0, "parts_after": 0, "records": 0, "quarantined": 0}
        for directory, infos in sorted(groups.items()):
            merged, parts_after, moved = self._merge(directory, infos, min_parts)
            stats["parts_before"] += len(infos)
            stats["parts_after"] += parts_after
            stats["quarantined"] += moved
            if merged is not None:
                stats["dirs"] += 1
                stats["records"] += merged
        return stats

    def _merge(
        self, directory: str, infos: list[pafs.FileInfo], min_parts: int = 2
    ) -> tuple[int | None, int, int]:
        """Merge the readable parts of ``infos`` (one directory) into one new part if
        there are ``min_parts`` of them, then delete them; quarantine the unreadable
        ones (reading is how an unreadable one shows: below ``min_parts`` only the
        identity columns are read, enough to tell a corrupt, empty or foreign file).
        Returns (records merged, or None if nothing was merged; parts left in the
        directory; parts quarantined)."""
        columns = None if len(infos) >= min_parts else list(IDENTITY_COLUMNS)
        try:
            table, bad = read_parts(self.storage, infos, columns, None)
        except PartGone:  # another compaction removed an input first
            return None, len(infos), 0
        good = [i for i in infos if i.path not in bad]
        merged = None
        if columns is None and len(good) >= min_parts:
            table = unique_records(table).sort_by([("finished_at", "ascending")])
            stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
            rel = f"{self.storage.rel(directory)}/part-{stamp}-compact-{uuid.uuid4().hex}.parquet"
            self._write(rel, parquet_bytes(table, "zstd"))
            with_retries(
                lambda: self.storage.delete_files([i.path for i in good]),
                attempts=self.attempts,
                base_delay=self.base_delay,
                what=f"catalog compaction deleting {len(good)} merged parts",
            )
            log.info(
                "catalog: merged %d parts (%d records) into %s",
                len(good),
                table.num_rows,
                self.storage.uri_of(rel),
            )
            merged = table.num_rows
        moved = sum(self._quarantine(i, bad[i.path], columns) for i in infos if i.path in bad)
        left = (1 if merged is not None else len(good)) + len(bad) - moved
        return merged, left, moved

    def _quarantine(self, info: pafs.FileInfo, reason: str, columns: list[str] | None) -> bool:
        """Move an unreadable part to ``quarantine/`` (same path below it) once a second
        read of ``columns`` confirms it, so that a glitch never hides good records.
        Returns whether it moved; on failure it stays where it is (logged), skipped by
        readers."""
        rel = self.storage.rel(info.path)
        uri = self.storage.uri_of(rel)
        try:
            if not read_parts(self.storage, [info], columns, None)[1]:
                return False  # the second read was fine after all
            target = f"{QUARANTINE_DIR}/{rel}"
            self._write(target, self.storage.read_bytes(rel))
            self.storage.delete_files([info.path])
        except PartGone:
            return False  # another compaction moved it first
        except StorageError as exc:
            log.warning(
                "catalog: could not move unreadable part %s to %s/: %s",
                uri,
                self.storage.uri_of(QUARANTINE_DIR),
                redact(exc),
            )
            return False
        self._skipped.pop(uri, None)
        log.warning(
            "catalog: moved unreadable part %s to %s (%s)", uri, self.storage.uri_of(target), reason
        )
        return True

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
            small = [i for i in listing if is_part(i) and (i.size or 0) < _COMPACT_INPUT]
            if len(small) < self.auto_compact:
                return
            newest = max(small, key=lambda i: (i.mtime_ns or 0, i.base_name))
            if newest.path != self.storage.join(rel):
                return
            now = dt.datetime.now(dt.timezone.utc).timestamp()
            if any(
                i.base_name.startswith(_LEASE_PREFIX)
                and i.mtime_ns
                and now - i.mtime_ns / 1e9 < _COMPACT_LEASE_S
                for i in listing
            ):
                return
            lease = f"{rel_dir}/{_LEASE_PREFIX}{uuid.uuid4().hex}"
            self.storage.write_bytes(lease, b"")
            try:
                self._merge(self.storage.join(rel_dir), small)
            finally:
                self.storage.delete_files([self.storage.join(lease)])
        except StorageError as exc:  # the record itself is safely written already
            log.warning("catalog: compaction of %s skipped: %s", rel_dir, redact(exc))
