"""Check a dataset laid out in the standard layout and report what it holds.

:func:`validate_dataset` walks ``train/``, ``eval/``, ``bitext/``, ``mono/`` and
``manifest.json`` (any subset), checks every file, and collects every problem instead of
stopping at the first, so a user fixes them in one round::

    report = validate_dataset("data/synthetic")
    print(report.format())
    report.raise_if_failed()
"""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from optical_ray.data.collection import (
    COLLECTION_FILES,
    DROPPED,
    STRICT_HINT,
    build_collection,
    find_collection_files,
    parse_pair,
    read_corpus,
)
from optical_ray.data.formats import (
    PathLike,
    iter_bitext,
    iter_lines,
    qrels_records,
    read_queries,
)
from optical_ray.errors import DataError

__all__ = ["FileReport", "ValidationReport", "validate_dataset"]

_COUNT_COLUMNS = ("queries", "docs", "qrels", "triples", "pairs", "lines")
_TEXT_SUFFIXES = (".tsv", ".txt", ".jsonl", ".json")
_LANG = re.compile(r"^[A-Za-z0-9_]+$")


@dataclass
class FileReport:
    """What one collection directory or file holds, or why it could not be read:
    ``errors`` holds every problem found in it, ``error`` the first (or None)."""

    path: str
    kind: str  # collection | bitext | mono | manifest | tokenizer
    counts: dict[str, int] = field(default_factory=dict)
    error: str | None = None
    warnings: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.error and not self.errors:
            self.errors = [self.error]

    def fail(self, problem: str) -> None:
        """Add one problem (the first becomes ``error``)."""
        self.errors.append(problem)
        self.error = self.error or problem


@dataclass
class ValidationReport:
    """Per-file counts plus every problem (errors) and warning found under ``root``."""

    root: Path
    entries: list[FileReport] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no problem was found (warnings allowed)."""
        return not self.problems

    def add(self, entry: FileReport) -> None:
        self.entries.append(entry)
        self.problems.extend(entry.errors)
        self.warnings.extend(entry.warnings)

    def format(self) -> str:
        """A readable table: one row per entry, then the problems and warnings."""
        cols = [c for c in _COUNT_COLUMNS if any(c in e.counts for e in self.entries)]
        rows = [["path", "kind", *cols, "status"]]
        for e in self.entries:
            status = "ERROR" if e.errors else ("warn" if e.warnings else "ok")
            rows.append(
                [
                    e.path,
                    e.kind,
                    *(f"{e.counts[c]:,}" if c in e.counts else "-" for c in cols),
                    status,
                ]
            )
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = [
            f"dataset {self.root}: " + ("OK" if self.ok else f"{len(self.problems)} problem(s)")
        ]
        for k, row in enumerate(rows):
            cells = [
                c.rjust(w) if 2 <= i < len(row) - 1 else c.ljust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            ]
            lines.append("  ".join(cells).rstrip())
            if k == 0:
                lines.append("  ".join("-" * w for w in widths))
        lines += [f"ERROR {p}" for p in self.problems]
        lines += [f"warning {w}" for w in self.warnings]
        return "\n".join(lines)

    def raise_if_failed(self) -> None:
        """Raise :class:`DataError` with the first problem (and how many more) if any."""
        if self.problems:
            more = (
                f" (and {len(self.problems) - 1} more problems)" if len(self.problems) > 1 else ""
            )
            raise DataError(self.problems[0] + more)


def _collection(path: Path, rel: str, strict: bool) -> FileReport:
    """Every problem of one collection: each file is read on its own (a bad queries
    file does not hide a bad qrels file), then the files are checked against each
    other; in ``strict`` mode every id that would be dropped is a problem."""
    entry = FileReport(rel, "collection")
    try:
        files = find_collection_files(path)
    except DataError as e:
        entry.fail(str(e))
        return entry
    missing = [r for r in ("queries", "corpus", "qrels") if r not in files]
    if missing:
        expected = "; ".join(f"{r}: {' or '.join(COLLECTION_FILES[r])}" for r in missing)
        entry.fail(f"{path}: not a collection directory, missing {expected}")
    parts: dict[str, Any] = {}
    readers: dict[str, Callable[[Path], Any]] = {
        "queries": read_queries,
        "corpus": read_corpus,
        "qrels": lambda f: list(qrels_records(f)),
    }  # the triples are read once, when checked against the others
    for role, read in readers.items():
        if role in files:
            try:
                parts[role] = read(files[role])
            except DataError as e:
                entry.fail(str(e))
    if entry.errors:
        return entry
    try:
        with warnings.catch_warnings():  # the report carries them; don't print them twice
            warnings.simplefilter("ignore")
            # lenient, so that both the qrels' and the triples' unknown ids are found
            col = build_collection(
                parts["queries"],
                parts["corpus"],
                parts["qrels"],
                files.get("triples"),
                strict=False,
                names={k: str(v) for k, v in files.items()},
                path=path,
            )
    except DataError as e:
        entry.fail(str(e))
        return entry
    entry.counts = col.counts()
    for warning in col.warnings:
        if strict and warning.endswith(DROPPED):
            entry.fail(warning.removesuffix(DROPPED) + STRICT_HINT)
        else:
            entry.warnings.append(warning)
    return entry


def _bitext(source: Path | tuple[Path, Path], rel: str, pair: tuple[str, str]) -> FileReport:
    entry = FileReport(rel, "bitext")
    try:
        n, empty = 0, 0
        for src, tgt in iter_bitext(source, src_lang=pair[0], tgt_lang=pair[1], skip_empty=False):
            n += 1
            empty += not src.strip() or not tgt.strip()
    except DataError as e:
        entry.fail(str(e))
        return entry
    entry.counts = {"pairs": n - empty}
    if empty:
        entry.warnings.append(
            f"{rel}: {empty} of {n} pairs have an empty side and are skipped when loading"
        )
    return entry


def _bitext_dir(directory: Path, root: Path, report: ValidationReport) -> None:
    rel = str(directory.relative_to(root))
    try:
        pair = parse_pair(directory.name)
    except DataError as e:
        report.add(FileReport(rel, "bitext", error=f"{rel}: {e}"))
        return
    files = sorted(p for p in directory.iterdir() if p.is_file())
    aligned: dict[str, dict[str, Path]] = {}
    for p in files:
        name = p.name.removesuffix(".gz")
        stem, ext = name.rsplit(".", 1) if "." in name else (name, "")
        if ext in pair:  # train.en + train.sw: line-aligned files
            aligned.setdefault(stem, {})[ext] = p
        elif "." + ext in _TEXT_SUFFIXES:
            report.add(_bitext(p, str(p.relative_to(root)), pair))
        else:
            report.warnings.append(
                f"{p.relative_to(root)}: not a bitext file (.tsv/.jsonl/.<lang>), ignored"
            )
    for stem, by_lang in sorted(aligned.items()):
        if len(by_lang) != 2:
            have = next(iter(by_lang.values()))
            report.add(
                FileReport(
                    str(have.relative_to(root)),
                    "bitext",
                    error=(
                        f"{have}: line-aligned bitext needs both {stem}.{pair[0]} and {stem}.{pair[1]}"
                    ),
                )
            )
            continue
        src, tgt = by_lang[pair[0]], by_lang[pair[1]]
        report.add(_bitext((src, tgt), str(src.relative_to(root)) + " + " + tgt.name, pair))
    if not files:
        report.add(FileReport(rel, "bitext", error=f"{directory}: bitext folder holds no file"))


def _mono(path: Path, root: Path) -> FileReport:
    rel = str(path.relative_to(root))
    entry = FileReport(rel, "mono")
    lang = path.name.removesuffix(".gz").split(".")[0]
    if not _LANG.match(lang):
        entry.fail(
            f"{path}: file name {lang!r} is not a language code (letters, digits, underscores)"
        )
        return entry
    try:
        entry.counts = {"lines": sum(1 for _ in iter_lines(path))}
    except DataError as e:
        entry.fail(str(e))
    return entry


def _manifest(path: Path, root: Path) -> FileReport:
    entry = FileReport(str(path.relative_to(root)), "manifest")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        entry.fail(f"{path}: invalid JSON: {e}")
        return entry
    if not isinstance(data, dict):
        entry.fail(f"{path}: expected a JSON object, found {type(data).__name__}")
        return entry
    pairs = data.get("pairs", [])
    for pair in pairs if isinstance(pairs, list) else [pairs]:
        try:
            parse_pair(pair)
        except DataError as e:
            entry.fail(f"{path}: 'pairs': {e}")
    return entry


def _is_collection(path: Path) -> bool:
    try:
        return path.is_dir() and bool(find_collection_files(path))
    except DataError:  # e.g. two queries files: a collection, reported when loaded
        return True


def validate_dataset(root: PathLike, *, strict: bool = False) -> ValidationReport:
    """Validate every collection, bitext and mono file under ``root``.

    ``root`` follows the standard layout (see :mod:`optical_ray.data.collection`; any
    subset of it), or is itself one collection directory. With ``strict`` judgements or
    triples naming unknown ids are problems; otherwise they are warnings. Raises
    :class:`DataError` only when ``root`` holds nothing recognisable.
    """
    base = Path(root)
    if base.is_file():
        raise DataError(
            f"{base}: is a file; expected a dataset directory (the standard "
            "layout, or one collection directory with queries, corpus and qrels)"
        )
    if not base.is_dir():
        raise DataError(f"{base}: dataset directory not found")
    report = ValidationReport(base)
    if _is_collection(base):
        report.add(_collection(base, ".", strict))
        return report
    known = {"manifest.json", "tokenizer", "train", "eval", "bitext", "mono"}
    if (base / "manifest.json").is_file():
        report.add(_manifest(base / "manifest.json", base))
    if (base / "tokenizer").is_dir():
        n = sum(1 for p in (base / "tokenizer").iterdir() if p.is_file())
        report.add(
            FileReport(
                "tokenizer",
                "tokenizer",
                error=None if n else f"{base / 'tokenizer'}: folder is empty",
            )
        )
    for lang_dir in sorted(p for p in (base / "train").glob("*") if p.is_dir()):
        rel = str(lang_dir.relative_to(base))
        if not _LANG.match(lang_dir.name):
            report.add(
                FileReport(
                    rel,
                    "collection",
                    error=f"{rel}: {lang_dir.name!r} is not a language code (letters, digits, underscores)",
                )
            )
            continue
        report.add(_collection(lang_dir, rel, strict))
    for pair_dir in sorted(p for p in (base / "eval").glob("*") if p.is_dir()):
        rel = str(pair_dir.relative_to(base))
        try:
            parse_pair(pair_dir.name)
        except DataError as e:
            report.add(FileReport(rel, "collection", error=f"{rel}: {e}"))
            continue
        splits = (
            [pair_dir]
            if _is_collection(pair_dir)
            else sorted(p for p in pair_dir.iterdir() if p.is_dir())
        )
        if not splits:
            report.add(
                FileReport(
                    rel, "collection", error=f"{pair_dir}: holds no split folder (dev/, test/)"
                )
            )
        for split in splits:
            report.add(_collection(split, str(split.relative_to(base)), strict))
    for pair_dir in sorted(p for p in (base / "bitext").glob("*") if p.is_dir()):
        _bitext_dir(pair_dir, base, report)
    for path in sorted(p for p in (base / "mono").glob("*") if p.is_file()):
        report.add(_mono(path, base))
    for p in sorted(base.iterdir()):
        if p.name not in known and not p.name.startswith((".", "README")):
            report.warnings.append(
                f"{p.relative_to(base)}: not part of the standard layout, ignored"
            )
    if not any(e.kind not in ("manifest", "tokenizer") for e in report.entries):
        raise DataError(
            f"{base}: no dataset found; expected a collection directory (queries.tsv, corpus.jsonl, "
            f"qrels.txt) or any of train/<lang>/, eval/<qlang>-<dlang>/<split>/, "
            f"bitext/<src>-<tgt>/*.tsv, mono/<lang>.txt"
        )
    return report
