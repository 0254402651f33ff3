"""Catalog parts as files: encoding a table, telling parts apart from other files,
reading many parts at once through ``pyarrow.dataset``."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from optical_ray.catalog.records import CATALOG_DIR, IDENTITY_COLUMNS, SCHEMA
from optical_ray.errors import StorageError
from optical_ray.storage import Storage, redact

__all__ = ["PartGone", "is_part", "parquet_bytes", "read_parts"]

_SMALL_PART = 4 << 20  # bytes; larger (compacted) parts are scanned, not fetched whole
_READ_THREADS = 32  # parallel GETs: object stores answer many small reads at once
_STATS_COLUMNS = ["experiment", "pair", "status", "metric", "best_value", "finished_at"]
_FORMAT = ds.ParquetFileFormat()


class PartGone(Exception):
    """A listed part disappeared before it was read (a concurrent compaction)."""


class _Unreadable(Exception):
    """A part's bytes are not a catalog part: corrupt, empty or another file's schema."""


def is_part(info: pafs.FileInfo) -> bool:
    """Whether a listed file is named as a catalog part."""
    return (
        info.type == pafs.FileType.File
        and info.base_name.startswith("part-")
        and info.base_name.endswith(".parquet")
    )


def parquet_bytes(table: pa.Table, compression: str) -> bytes:
    """A Parquet file in memory. Statistics only where filters use them: on the config
    JSON they would store the string twice more."""
    sink = pa.BufferOutputStream()
    pq.write_table(
        table, sink, compression=compression, write_statistics=_STATS_COLUMNS, row_group_size=65536
    )
    return sink.getvalue().to_pybytes()


def _foreign(schema: pa.Schema) -> str | None:
    """Why a Parquet file with ``schema`` is not a catalog part (None if it is one)."""
    wrong = [
        c
        for c in IDENTITY_COLUMNS
        if c not in schema.names or not pa.types.is_string(schema.field(c).type)
    ]
    return f"not a catalog part: no string column {', '.join(wrong)}" if wrong else None


def _why(exc: BaseException) -> str:
    return redact(" ".join(str(exc).split()) or type(exc).__name__)


def read_parts(
    storage: Storage,
    infos: list[pafs.FileInfo],
    columns: list[str] | None,
    expr: ds.Expression | None,
    with_part: bool = False,
) -> tuple[pa.Table, dict[str, str]]:
    """Read the parts ``infos`` in :data:`SCHEMA`, projected to ``columns`` (all if None)
    and filtered by ``expr``, many at once (object stores answer many small reads in
    parallel). ``with_part`` adds a ``part`` column: the path each row came from.

    Returns the rows and the parts that are not readable catalog parts (corrupt, empty,
    another schema) as ``{path: why}``: they are left out, never fatal. Raises
    :class:`PartGone` if a listed part vanished meanwhile, :class:`StorageError` if
    storage failed.
    """
    names = list(SCHEMA.names) if columns is None else list(columns)

    def read(info: pafs.FileInfo) -> pa.Table | Exception:
        try:
            table = _read_part(storage, info, names, expr)
        except (PartGone, _Unreadable, StorageError) as exc:
            return exc
        if with_part:
            table = table.append_column("part", pa.array([info.path] * table.num_rows, pa.string()))
        return table

    results: list[pa.Table | Exception] = []
    if infos:
        with ThreadPoolExecutor(min(_READ_THREADS, len(infos))) as ex:
            results = list(ex.map(read, infos))
    for error in (StorageError, PartGone):
        raised = next((r for r in results if isinstance(r, error)), None)
        if raised is not None:
            raise raised
    bad = {i.path: str(r) for i, r in zip(infos, results) if isinstance(r, _Unreadable)}
    tables = [r for r in results if isinstance(r, pa.Table)]
    if not tables:
        fields = [SCHEMA.field(c) for c in names]
        fields += [pa.field("part", pa.string())] if with_part else []
        return pa.schema(fields).empty_table(), bad
    return pa.concat_tables(tables), bad


def _read_part(
    storage: Storage, info: pafs.FileInfo, names: list[str], expr: ds.Expression | None
) -> pa.Table:
    """One part through its dataset fragment: columns an older version did not write
    come back null.

    A small part (one trial, the common case) is fetched whole in one GET and decoded
    from memory: a footer read and then a column read would cost two. A large
    (compacted) part is read in place, where projection and row-group statistics save
    I/O.
    """
    fragment = _FORMAT.make_fragment(info.path, filesystem=storage.filesystem, file_size=info.size)
    in_memory = (info.size or 0) <= _SMALL_PART
    if in_memory:
        try:
            with fragment.open() as f:
                fragment = _FORMAT.make_fragment(pa.BufferReader(f.read_buffer()))
        except OSError as exc:
            raise _read_error(storage, info, exc) from None
    try:
        problem = _foreign(fragment.physical_schema)
        if problem:
            raise _Unreadable(problem)
        return fragment.to_table(schema=SCHEMA, columns=names, filter=expr, use_threads=False)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
        raise _Unreadable(_why(exc)) from None
    except OSError as exc:
        if in_memory:  # nothing is fetched any more: the bytes themselves do not decode
            raise _Unreadable(_why(exc)) from None
        raise _read_error(storage, info, exc) from None


def _read_error(storage: Storage, info: pafs.FileInfo, exc: OSError) -> Exception:
    """:class:`PartGone` if the part no longer exists (asked of the filesystem, whose
    error texts differ by store), else a one-line :class:`StorageError`."""
    try:
        gone = storage.filesystem.get_file_info(info.path).type == pafs.FileType.NotFound
    except OSError:
        gone = False
    if gone:
        return PartGone()
    return storage.error(exc, f"read the catalog at {storage.uri_of(CATALOG_DIR)}")
