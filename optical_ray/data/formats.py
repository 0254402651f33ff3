"""Readers and writers for the usual IR / MT file formats.

=========  ==========================================================================
data       formats read (``fmt`` overrides the one guessed from the extension)
=========  ==========================================================================
queries    TSV ``qid<TAB>text``; JSONL ``{"qid"|"_id"|"query_id"|"id", "text"|"query"}``
corpus     JSONL ``{"docid"|"_id"|"doc_id"|"id"|"pid", "text"|"contents", "title"?}``;
           TSV ``docid<TAB>text[<TAB>title]``
qrels      TREC ``qid 0 docid rel`` (whitespace); BEIR TSV ``query-id corpus-id score``
triples    TSV ids ``qid<TAB>pos<TAB>neg[<TAB>neg..]`` (MS MARCO) or texts (``texts=True``);
           JSONL ``{"qid", "pos": [..], "neg": [..]}`` or
           ``{"query", "positive"|"positives", "negative"|"negatives"}`` (texts)
bitext     TSV ``src<TAB>tgt``; JSONL ``{"src", "tgt"}`` or ``{"translation": {lang: ..}}``
           (OPUS / HF); two line-aligned files ``(src_path, tgt_path)``
lines      plain text, one passage per line; JSONL ``{"text"}``
=========  ==========================================================================

Extensions: ``.tsv``/``.txt`` (tab-separated or plain), ``.jsonl``/``.json`` (JSON Lines),
``.trec``; any of them may end in ``.gz`` (gzip is also detected from the file's magic
bytes). Readers stream line by line and raise :class:`DataError` naming the file, the
line and the bad value. Writers create parent directories, write UTF-8 and replace tabs
and line breaks inside text by spaces so that every record stays on one line.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any, NamedTuple, overload

from optical_ray.errors import DataError

__all__ = [
    "Doc",
    "Triple",
    "detect_format",
    "doc_records",
    "qrels_records",
    "triple_records",
    "iter_bitext",
    "iter_corpus",
    "iter_lines",
    "iter_queries",
    "iter_triples",
    "read_lines",
    "read_qrels",
    "read_queries",
    "write_bitext",
    "write_corpus",
    "write_lines",
    "write_qrels",
    "write_queries",
    "write_triples",
]

PathLike = str | os.PathLike

QUERY_ID_KEYS = ("qid", "_id", "query_id", "id")
QUERY_TEXT_KEYS = ("text", "query")
DOC_ID_KEYS = ("docid", "_id", "doc_id", "id", "pid")
DOC_TEXT_KEYS = ("text", "contents")

_EXTENSIONS = {".tsv": "tsv", ".txt": "txt", ".jsonl": "jsonl", ".json": "jsonl", ".trec": "trec"}
_LINE_BREAKS = re.compile(r"[\t\r\n\v\f\x1c\x1d\x1e\x85\u2028\u2029]")


class Doc(NamedTuple):
    """One document of a corpus."""

    docid: str
    text: str
    title: str = ""


class Triple(NamedTuple):
    """A training example: a query with positive and negative documents.

    ``query``, ``pos`` and ``neg`` hold ids (a qid and docids), or texts when ``texts``.
    """

    query: str
    pos: tuple[str, ...]
    neg: tuple[str, ...]
    texts: bool = False


# ---------------------------------------------------------------------------- helpers


def _short(value: Any, limit: int = 60) -> str:
    """``repr`` of a value, cut so that an error stays one readable line."""
    s = repr(value)
    return s if len(s) <= limit else s[: limit - 4] + "...'"


def detect_format(path: PathLike, fmt: str | None = None) -> str:
    """The format of ``path``: ``fmt`` if given, else guessed from the extension.

    Returns one of ``tsv``, ``txt``, ``jsonl``, ``trec``; a trailing ``.gz`` is ignored.
    """
    allowed = sorted(set(_EXTENSIONS.values()))
    if fmt is not None:
        if fmt not in allowed:
            raise DataError(f"{path}: unknown format {fmt!r}; allowed: {', '.join(allowed)}")
        return fmt
    name = Path(path).name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    ext = os.path.splitext(name)[1]
    if ext not in _EXTENSIONS:
        raise DataError(
            f"{path}: cannot tell the format from the extension {ext or '(none)'!r}; "
            f"use one of {', '.join(_EXTENSIONS)} (optionally + .gz) or pass fmt=..."
        )
    return _EXTENSIONS[ext]


def _format(path: PathLike, fmt: str | None, what: str, allowed: dict[str, str]) -> str:
    """Map the detected format onto the reader's own (e.g. ``txt`` → ``tsv``)."""
    found = detect_format(path, fmt)
    if found not in allowed:
        raise DataError(
            f"{path}: format {found!r} cannot hold {what}; allowed: {', '.join(allowed)}"
        )
    return allowed[found]


def _open_read(path: Path) -> IO[bytes]:
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if path.is_dir():
        raise DataError(f"{path}: is a directory, expected a file")
    with open(path, "rb") as f:
        magic = f.read(2)
    return gzip.open(path, "rb") if magic == b"\x1f\x8b" else open(path, "rb")


def _lines(path: PathLike, *, skip_blank: bool = True) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, line)`` decoded as strict UTF-8, without the line break.

    Raises :class:`DataError` naming the line and byte offset of undecodable bytes, and
    when the file holds no (non-blank) line at all.
    """
    p = Path(path)
    offset, count = 0, 0
    with _open_read(p) as f:
        try:
            for lineno, raw in enumerate(f, 1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    bad = raw[e.start : max(e.end, e.start + 1)]
                    raise DataError(
                        f"{p}: line {lineno} (byte offset {offset + e.start}) is not valid "
                        f"UTF-8: {bad!r}; re-encode the file, e.g. iconv -f latin1 -t utf-8"
                    ) from None
                offset += len(raw)
                if lineno == 1 and line.startswith("\ufeff"):
                    line = line[1:]
                line = line.rstrip("\r\n")
                if skip_blank and not line.strip():
                    continue
                count += 1
                yield lineno, line
        except (OSError, EOFError) as e:  # truncated or corrupt gzip
            raise DataError(f"{p}: cannot read the file: {e}") from None
    if count == 0:
        raise DataError(f"{p}: file is empty")


def _columns(path: PathLike, lineno: int, line: str, allowed: range, layout: str) -> list[str]:
    cols = line.split("\t")
    if len(cols) not in allowed:
        raise DataError(
            f"{path}: line {lineno}: expected {layout} (tab-separated), found "
            f"{len(cols)} column{'s' if len(cols) != 1 else ''}: {_short(line)}"
        )
    return cols


def _json_records(path: PathLike) -> Iterator[tuple[int, dict]]:
    """Yield ``(line_number, object)`` for a JSON Lines file."""
    for lineno, line in _lines(path):
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            hint = "; a JSON array must be converted to JSON Lines" if line.strip() == "[" else ""
            raise DataError(
                f"{path}: line {lineno}: invalid JSON ({e.msg}, column {e.colno}): "
                f"{_short(line)}{hint}"
            ) from None
        if not isinstance(obj, dict):
            raise DataError(
                f"{path}: line {lineno}: expected a JSON object, found {type(obj).__name__}"
            )
        yield lineno, obj


def _field(path: PathLike, lineno: int, obj: Mapping, keys: tuple[str, ...], what: str) -> Any:
    for key in keys:
        if key in obj and obj[key] is not None:
            return obj[key]
    present = ", ".join(map(str, obj)) or "none"
    raise DataError(
        f"{path}: line {lineno}: missing {what} field (one of {', '.join(keys)}); "
        f"fields present: {present}"
    )


def _as_id(path: PathLike, lineno: int, value: Any, what: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise DataError(f"{path}: line {lineno}: {what} must be a string, found {_short(value)}")
    s = str(value).strip()
    if not s:
        raise DataError(f"{path}: line {lineno}: empty {what}")
    return s


def _as_text(path: PathLike, lineno: int, value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise DataError(f"{path}: line {lineno}: {what} must be a string, found {_short(value)}")
    return value


def _is_header(cols: list[str], names: set[str]) -> bool:
    return cols[0].strip().lower() in names


# ---------------------------------------------------------------------------- queries


def _query_records(path: PathLike, fmt: str | None) -> Iterator[tuple[int, str, str]]:
    kind = _format(path, fmt, "queries", {"tsv": "tsv", "txt": "tsv", "jsonl": "jsonl"})
    if kind == "jsonl":
        for lineno, obj in _json_records(path):
            qid = _as_id(
                path, lineno, _field(path, lineno, obj, QUERY_ID_KEYS, "query id"), "query id"
            )
            text = _field(path, lineno, obj, QUERY_TEXT_KEYS, "query text")
            yield lineno, qid, _as_text(path, lineno, text, "query text")
        return
    for i, (lineno, line) in enumerate(_lines(path)):
        cols = _columns(path, lineno, line, range(2, 3), "2 columns: qid, text")
        if i == 0 and _is_header(cols, {"qid", "query_id", "query-id", "_id", "id"}):
            continue
        yield lineno, _as_id(path, lineno, cols[0], "query id"), cols[1]


def iter_queries(path: PathLike, *, fmt: str | None = None) -> Iterator[tuple[str, str]]:
    """Stream ``(qid, text)`` pairs from a queries file."""
    for _, qid, text in _query_records(path, fmt):
        yield qid, text


def read_queries(path: PathLike, *, fmt: str | None = None) -> dict[str, str]:
    """Read a queries file into ``{qid: text}``; duplicate ids are an error."""
    queries: dict[str, str] = {}
    for lineno, qid, text in _query_records(path, fmt):
        if qid in queries:
            raise DataError(
                f"{path}: line {lineno}: duplicate query id {qid!r}; ids must be unique"
            )
        queries[qid] = text
    if not queries:
        raise DataError(f"{path}: holds no queries, only a header")
    return queries


# ---------------------------------------------------------------------------- corpus


def doc_records(path: PathLike, fmt: str | None) -> Iterator[tuple[int, Doc]]:
    """Yield ``(line_number, doc)`` from a corpus file (JSONL or TSV)."""
    kind = _format(path, fmt, "a corpus", {"tsv": "tsv", "txt": "tsv", "jsonl": "jsonl"})
    if kind == "jsonl":
        for lineno, obj in _json_records(path):
            docid = _as_id(
                path, lineno, _field(path, lineno, obj, DOC_ID_KEYS, "document id"), "document id"
            )
            text = _as_text(path, lineno, _field(path, lineno, obj, DOC_TEXT_KEYS, "text"), "text")
            title = obj.get("title") or ""
            yield lineno, Doc(docid, text, _as_text(path, lineno, title, "title"))
        return
    count = 0
    for i, (lineno, line) in enumerate(_lines(path)):
        cols = _columns(path, lineno, line, range(2, 4), "2 or 3 columns: docid, text[, title]")
        if i == 0 and _is_header(cols, {"docid", "doc_id", "_id", "id", "pid"}):
            continue
        count += 1
        yield (
            lineno,
            Doc(
                _as_id(path, lineno, cols[0], "document id"),
                cols[1],
                cols[2] if len(cols) == 3 else "",
            ),
        )
    if not count:
        raise DataError(f"{path}: holds no documents, only a header")


@overload
def iter_corpus(
    path: PathLike, *, fmt: str | None = ..., batch_size: None = ..., check_duplicates: bool = ...
) -> Iterator[Doc]: ...
@overload
def iter_corpus(
    path: PathLike, *, fmt: str | None = ..., batch_size: int, check_duplicates: bool = ...
) -> Iterator[list[Doc]]: ...
def iter_corpus(
    path: PathLike,
    *,
    fmt: str | None = None,
    batch_size: int | None = None,
    check_duplicates: bool = True,
) -> Iterator[Doc] | Iterator[list[Doc]]:
    """Stream the documents of a corpus file, one :class:`Doc` or ``batch_size`` at a time.

    Only the batch in hand is held in memory, plus the set of ids seen so far when
    ``check_duplicates`` (turn it off for a corpus of many millions of documents that is
    known to be clean).
    """
    if batch_size is not None and batch_size < 1:
        raise DataError(f"batch_size must be a positive integer, got {batch_size!r}")
    records = doc_records(path, fmt)
    if check_duplicates:
        records = _unique_docs(path, records)
    if batch_size is None:
        return (doc for _, doc in records)
    return _batched((doc for _, doc in records), batch_size)


def _unique_docs(path: PathLike, records: Iterator[tuple[int, Doc]]) -> Iterator[tuple[int, Doc]]:
    seen: set[str] = set()
    for lineno, doc in records:
        if doc.docid in seen:
            raise DataError(
                f"{path}: line {lineno}: duplicate document id {doc.docid!r}; ids must be unique"
            )
        seen.add(doc.docid)
        yield lineno, doc


def _batched(items: Iterator[Doc], size: int) -> Iterator[list[Doc]]:
    batch: list[Doc] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


# ---------------------------------------------------------------------------- qrels

_QRELS_HEADER = {"query-id", "query_id", "qid", "query"}


def qrels_records(path: PathLike) -> Iterator[tuple[int, str, str, int]]:
    """Yield ``(line_number, qid, docid, rel)`` from TREC or BEIR-TSV qrels."""
    width = 0
    for i, (lineno, line) in enumerate(_lines(path)):
        # tabs when present (BEIR, MS MARCO's qrels.*.tsv), else any whitespace (TREC)
        cols = [c.strip() for c in line.split("\t")] if "\t" in line else line.split()
        if i == 0 and _is_header(cols, _QRELS_HEADER):
            continue
        if not width:
            width = len(cols) if len(cols) in (3, 4) else 4
        if len(cols) != width:
            layout = (
                "4 columns: qid 0 docid rel"
                if width == 4
                else "3 columns: query-id corpus-id score"
            )
            raise DataError(
                f"{path}: line {lineno}: expected {layout}, found {len(cols)}: {_short(line)}"
            )
        qid, docid, rel = (cols[0], cols[2], cols[3]) if width == 4 else cols
        try:
            value = int(rel)
        except ValueError:
            raise DataError(
                f"{path}: line {lineno}: relevance {rel!r} is not an integer; expected e.g. 0, 1, 2"
            ) from None
        yield lineno, qid.strip(), docid.strip(), value


def read_qrels(path: PathLike) -> dict[str, dict[str, int]]:
    """Read relevance judgements into ``{qid: {docid: rel}}``.

    TREC (``qid 0 docid rel``, any whitespace) or BEIR TSV (``query-id corpus-id score``
    with or without the header); the layout is taken from the first line.
    """
    qrels: dict[str, dict[str, int]] = {}
    for lineno, qid, docid, rel in qrels_records(path):
        docs = qrels.setdefault(qid, {})
        if docs.get(docid, rel) != rel:
            raise DataError(
                f"{path}: line {lineno}: ({qid!r}, {docid!r}) judged again with relevance "
                f"{rel}, earlier {docs[docid]}; keep one judgement per pair"
            )
        docs[docid] = rel
    if not qrels:
        raise DataError(f"{path}: holds no judgements, only a header")
    return qrels


# ---------------------------------------------------------------------------- triples


def _id_list(path: PathLike, lineno: int, value: Any, what: str) -> tuple[str, ...]:
    items = value if isinstance(value, list) else [value]
    return tuple(_as_id(path, lineno, v, what) for v in items)


def _text_list(path: PathLike, lineno: int, value: Any, what: str) -> tuple[str, ...]:
    items = value if isinstance(value, list) else [value]
    return tuple(_as_text(path, lineno, v, what) for v in items)


def triple_records(path: PathLike, fmt: str | None, texts: bool) -> Iterator[tuple[int, Triple]]:
    """Yield ``(line_number, triple)`` from a triples file: ids, or texts when ``texts``."""
    kind = _format(path, fmt, "triples", {"tsv": "tsv", "txt": "tsv", "jsonl": "jsonl"})
    if kind == "tsv":
        layout = "3+ columns: query, pos, neg" if texts else "3+ columns: qid, pos docid, neg docid"
        for lineno, line in _lines(path):
            cols = _columns(path, lineno, line, range(3, 1 << 16), layout)
            if texts:
                yield lineno, Triple(cols[0], (cols[1],), tuple(cols[2:]), True)
            else:
                ids = [_as_id(path, lineno, c, "id") for c in cols]
                yield lineno, Triple(ids[0], (ids[1],), tuple(ids[2:]), False)
        return
    form: bool | None = None
    for lineno, obj in _json_records(path):
        is_text = "qid" not in obj and "query_id" not in obj and "query" in obj
        if form is not None and is_text != form:
            raise DataError(
                f"{path}: line {lineno}: mixes id triples (qid/pos/neg) and text triples "
                f"(query/positive/negative) in one file; use one form"
            )
        form = is_text
        if is_text:
            query = _as_text(path, lineno, obj["query"], "query")
            pos = _text_list(
                path,
                lineno,
                _field(path, lineno, obj, ("positive", "positives", "pos"), "positive"),
                "positive",
            )
            neg = _text_list(
                path,
                lineno,
                obj.get("negatives", obj.get("negative", obj.get("neg", []))),
                "negative",
            )
        else:
            query = _as_id(
                path, lineno, _field(path, lineno, obj, ("qid", "query_id"), "qid"), "qid"
            )
            pos = _id_list(
                path,
                lineno,
                _field(path, lineno, obj, ("pos", "positives", "positive"), "pos"),
                "pos docid",
            )
            neg = _id_list(
                path,
                lineno,
                obj.get("neg", obj.get("negatives", obj.get("negative", []))),
                "neg docid",
            )
        if not pos:
            raise DataError(
                f"{path}: line {lineno}: no positive document; each triple needs at least one"
            )
        yield lineno, Triple(query, pos, neg, is_text)


def iter_triples(
    path: PathLike, *, fmt: str | None = None, texts: bool = False
) -> Iterator[Triple]:
    """Stream training triples.

    TSV holds ids (``qid pos neg``, MS MARCO style) unless ``texts=True`` (``query pos
    neg``); extra columns are further negatives. JSONL says which form it is by its keys.
    """
    for _, triple in triple_records(path, fmt, texts):
        yield triple


# ---------------------------------------------------------------------------- bitext

_PAIR_DIR = re.compile(r"^([A-Za-z0-9_]+)-([A-Za-z0-9_]+)$")


def _bitext_langs(
    path: Path, keys: Mapping, src_lang: str | None, tgt_lang: str | None
) -> tuple[str, str]:
    """The language keys to read: given, or taken from a ``<src>-<tgt>`` parent folder."""
    if src_lang and tgt_lang:
        return src_lang, tgt_lang
    m = _PAIR_DIR.match(path.parent.name)
    if m and m.group(1) in keys and m.group(2) in keys:
        return m.group(1), m.group(2)
    raise DataError(
        f"{path}: records are keyed by language ({', '.join(map(str, keys))}); "
        f"pass src_lang= and tgt_lang= to say which is which"
    )


def _bitext_jsonl(
    path: Path, src_lang: str | None, tgt_lang: str | None
) -> Iterator[tuple[str, str]]:
    langs: tuple[str, str] | None = None
    for lineno, obj in _json_records(path):
        if "src" in obj and "tgt" in obj and "translation" not in obj:
            src, tgt = obj["src"], obj["tgt"]
        else:
            inner = obj.get("translation", obj)
            if not isinstance(inner, Mapping):
                raise DataError(
                    f"{path}: line {lineno}: 'translation' must be an object, found {_short(inner)}"
                )
            langs = langs or _bitext_langs(path, inner, src_lang, tgt_lang)
            missing = [lang for lang in langs if lang not in inner]
            if missing:
                raise DataError(
                    f"{path}: line {lineno}: no text for language {missing[0]!r}; "
                    f"keys present: {', '.join(map(str, inner)) or 'none'}"
                )
            src, tgt = inner[langs[0]], inner[langs[1]]
        yield _as_text(path, lineno, src, "source text"), _as_text(path, lineno, tgt, "target text")


def _bitext_aligned(src_path: Path, tgt_path: Path) -> Iterator[tuple[str, str]]:
    src_lines, tgt_lines = _lines(src_path, skip_blank=False), _lines(tgt_path, skip_blank=False)
    n_src = n_tgt = 0
    while True:
        src, tgt = next(src_lines, None), next(tgt_lines, None)
        n_src, n_tgt = n_src + (src is not None), n_tgt + (tgt is not None)
        if src is None or tgt is None:
            break
        yield src[1], tgt[1]
    if src is not None or tgt is not None:
        n_src, n_tgt = n_src + sum(1 for _ in src_lines), n_tgt + sum(1 for _ in tgt_lines)
        raise DataError(
            f"{src_path} has {n_src} lines but {tgt_path} has {n_tgt}; "
            f"line-aligned bitext files must have the same number of lines"
        )


def iter_bitext(
    source: PathLike | tuple[PathLike, PathLike],
    *,
    fmt: str | None = None,
    src_lang: str | None = None,
    tgt_lang: str | None = None,
    skip_empty: bool = True,
) -> Iterator[tuple[str, str]]:
    """Stream ``(src, tgt)`` sentence pairs.

    ``source`` is one file (TSV ``src<TAB>tgt`` or JSONL) or a ``(src_path, tgt_path)``
    pair of line-aligned text files. JSONL records keyed by language (``{"translation":
    {"en": .., "sw": ..}}``) need ``src_lang``/``tgt_lang`` unless the file sits in a
    ``<src>-<tgt>`` folder. Pairs with an empty side carry no alignment signal and are
    skipped unless ``skip_empty=False``.
    """
    if isinstance(source, (tuple, list)):
        if len(source) != 2:
            raise DataError(
                f"bitext source must be one path or (src_path, tgt_path), got {len(source)} paths"
            )
        pairs = _bitext_aligned(Path(source[0]), Path(source[1]))
    else:
        path = Path(source)
        kind = _format(path, fmt, "bitext", {"tsv": "tsv", "txt": "tsv", "jsonl": "jsonl"})
        if kind == "jsonl":
            pairs = _bitext_jsonl(path, src_lang, tgt_lang)
        else:
            pairs = (
                tuple(_columns(path, lineno, line, range(2, 3), "2 columns: source, target"))  # type: ignore[misc]
                for lineno, line in _lines(path)
            )
    for src, tgt in pairs:
        if skip_empty and (not src.strip() or not tgt.strip()):
            continue
        yield src, tgt


# ---------------------------------------------------------------------------- lines


def iter_lines(path: PathLike, *, fmt: str | None = None) -> Iterator[str]:
    """Stream non-blank lines of a text file (or the ``text`` field of a JSONL file)."""
    kind = _format(path, fmt, "text lines", {"txt": "txt", "tsv": "txt", "jsonl": "jsonl"})
    if kind == "jsonl":
        for lineno, obj in _json_records(path):
            yield _as_text(path, lineno, _field(path, lineno, obj, ("text",), "text"), "text")
    else:
        for _, line in _lines(path):
            yield line


def read_lines(path: PathLike, *, fmt: str | None = None) -> list[str]:
    """Read the non-blank lines of a text file into a list."""
    return list(iter_lines(path, fmt=fmt))


# ---------------------------------------------------------------------------- writers


def _clean(text: Any) -> str:
    """Replace tabs and line breaks inside a field by spaces (one record per line)."""
    return _LINE_BREAKS.sub(" ", str(text))


def _clean_id(path: PathLike, value: Any, what: str) -> str:
    s = str(value)
    if not s or any(c.isspace() for c in s):
        raise DataError(
            f"{path}: cannot write {what} {s!r}: ids must be non-empty and hold no whitespace"
        )
    return s


def _open_write(path: PathLike) -> IO[str]:
    """Open ``path`` for UTF-8 text writing, creating parents; gzip if it ends in .gz."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    if p.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(p, "wb"), encoding="utf-8", newline="\n")
    return open(p, "w", encoding="utf-8", newline="\n")


def write_queries(path: PathLike, queries: Mapping[str, str]) -> None:
    """Write queries as TSV: ``qid<TAB>text``."""
    with _open_write(path) as f:
        for qid, text in queries.items():
            f.write(f"{_clean_id(path, qid, 'query id')}\t{_clean(text)}\n")


def write_corpus(path: PathLike, docs: Iterable[Mapping[str, str]]) -> int:
    """Write documents as JSONL ``{"docid", "text"[, "title"]}``; return the count.

    Accepts mappings or :class:`Doc` records.
    """
    n = 0
    with _open_write(path) as f:
        for d in docs:
            d = d._asdict() if isinstance(d, Doc) else d
            rec = {"docid": _clean_id(path, d["docid"], "document id"), "text": _clean(d["text"])}
            if d.get("title"):
                rec["title"] = _clean(d["title"])
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            n += 1
    return n


def write_qrels(path: PathLike, qrels: Mapping[str, Mapping[str, int]]) -> None:
    """Write TREC qrels: ``qid 0 docid rel``."""
    with _open_write(path) as f:
        for qid, docs in qrels.items():
            q = _clean_id(path, qid, "query id")
            for docid, rel in docs.items():
                f.write(f"{q} 0 {_clean_id(path, docid, 'document id')} {int(rel)}\n")


def write_triples(path: PathLike, triples: Iterable[Mapping]) -> int:
    """Write id triples as JSONL ``{"qid", "pos": [docid..], "neg": [docid..]}``.

    ``pos``/``neg`` may be one docid or a list; :class:`Triple` records (ids) work too.
    Returns the count.
    """
    n = 0
    with _open_write(path) as f:
        for t in triples:
            if isinstance(t, Triple):
                if t.texts:
                    raise DataError(
                        f"{path}: write_triples writes id triples; this one holds texts"
                    )
                t = {"qid": t.query, "pos": list(t.pos), "neg": list(t.neg)}
            pos, neg = t["pos"], t["neg"]
            rec = {
                "qid": _clean_id(path, t["qid"], "query id"),
                "pos": [str(pos)] if isinstance(pos, (str, int)) else [str(x) for x in pos],
                "neg": [str(neg)] if isinstance(neg, (str, int)) else [str(x) for x in neg],
            }
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            n += 1
    return n


def write_bitext(path: PathLike, pairs: Iterable[tuple[str, str]]) -> int:
    """Write sentence pairs as TSV ``src<TAB>tgt``; return the count."""
    n = 0
    with _open_write(path) as f:
        for src, tgt in pairs:
            f.write(f"{_clean(src)}\t{_clean(tgt)}\n")
            n += 1
    return n


def write_lines(path: PathLike, lines: Iterable[str]) -> int:
    """Write plain text, one item per line; return the count."""
    n = 0
    with _open_write(path) as f:
        for line in lines:
            f.write(_clean(line) + "\n")
            n += 1
    return n
