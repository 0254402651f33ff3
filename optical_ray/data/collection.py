"""Retrieval collections, bitext containers and the standard dataset layout.

The standard layout (the synthetic generator writes it; lay out your own data the
same way and every command finds it)::

    <root>/
      manifest.json                       optional: {"kind", "seed", "languages", "pairs"}
      tokenizer/                          optional: a Hugging Face tokenizer
      train/<lang>/                       a ranking collection for training (e.g. train/en)
      bitext/<src>-<tgt>/{train,dev}.tsv  src<TAB>tgt, English first (bitext/en-sw/train.tsv);
                                          also .jsonl, or line-aligned train.en + train.sw
      mono/<lang>.txt                     unlabelled text, one passage per line (MLM adaptation)
      eval/<qlang>-<dlang>/{dev,test}/    a retrieval collection per language pair and split

A *collection directory* holds ``queries.tsv`` (or ``queries.jsonl``), ``corpus.jsonl``
(or ``corpus.tsv``: ``docid<TAB>text[<TAB>title]``), ``qrels.txt`` (TREC ``qid 0 docid
rel``; ``qrels.tsv`` in BEIR form also works) and optionally ``triples.jsonl`` /
``triples.tsv``. Any of them may be gzipped (``corpus.jsonl.gz``). A language pair is
named ``<query_lang>-<doc_lang>``: ``en-sw`` has English queries and Swahili documents,
``sw-en`` the reverse.

Corpora and bitext are held in Arrow columns (:class:`Corpus`, :class:`TextPairs`): the
strings of a column share one buffer, so a million passages cost their UTF-8 bytes plus
8 bytes each instead of ~50 bytes of Python object overhead each, row access is O(1),
and the tables go to Ray's object store without pickling every string.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import overload

import pyarrow as pa

from optical_ray.data.formats import (
    Doc,
    PathLike,
    Triple,
    doc_records,
    qrels_records,
    triple_records,
    iter_bitext,
    read_queries,
)
from optical_ray.errors import DataError

__all__ = [
    "COLLECTION_FILES",
    "DROPPED",
    "STRICT_HINT",
    "Collection",
    "Corpus",
    "TextPairs",
    "build_collection",
    "find_collection_files",
    "load_collection",
    "parse_pair",
    "read_bitext",
    "read_corpus",
]

_LANG = r"[A-Za-z0-9_]+"
_PAIR = re.compile(rf"^({_LANG})-({_LANG})$")
_CHUNK = 65_536  # rows converted to Arrow at a time: bounds the Python objects alive

#: File names looked up in a collection directory, in order of preference.
COLLECTION_FILES: dict[str, tuple[str, ...]] = {
    "queries": ("queries.tsv", "queries.jsonl", "queries.json"),
    "corpus": ("corpus.jsonl", "corpus.tsv", "corpus.json"),
    "qrels": ("qrels.txt", "qrels.trec", "qrels.tsv"),
    "triples": ("triples.jsonl", "triples.tsv"),
}


def parse_pair(pair: str) -> tuple[str, str]:
    """Split a language pair ``"<query_lang>-<doc_lang>"`` into ``(query_lang, doc_lang)``.

    Each side is letters, digits or underscores (``en``, ``sw``, ``eng_Latn``).
    """
    m = _PAIR.match(pair) if isinstance(pair, str) else None
    if not m:
        raise DataError(
            f"invalid language pair {pair!r}; expected <query_lang>-<doc_lang> with letters, "
            f"digits or underscores on each side, e.g. en-sw or eng_Latn-swh_Latn"
        )
    return m.group(1), m.group(2)


# ---------------------------------------------------------------------------- containers


def _column(values: list[str]) -> pa.Array:
    # large_string: 64-bit offsets, so a column may pass 2 GiB of text.
    return pa.array(values, type=pa.large_string())


def _single_chunk(table: pa.Table, name: str) -> pa.Array:
    col = table.column(name)
    col = col.cast(pa.large_string()) if col.type != pa.large_string() else col
    return col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)


class Corpus:
    """Documents in Arrow columns ``docid``, ``text``, ``title``.

    ``corpus[i]`` is the i-th :class:`Doc`; ``corpus.get(docid)`` looks one up by id
    (the id index is built on first use).
    """

    def __init__(self, table: pa.Table, path: Path | None = None) -> None:
        missing = {"docid", "text", "title"} - set(table.column_names)
        if missing:
            raise DataError(
                f"a corpus table needs columns docid, text, title; missing {sorted(missing)}"
            )
        self.table = table
        self.path = path
        self._docid = _single_chunk(table, "docid")
        self._text = _single_chunk(table, "text")
        self._title = _single_chunk(table, "title")
        self._index: dict[str, int] | None = None

    @classmethod
    def from_docs(cls, docs: Iterable[Doc], path: Path | None = None) -> Corpus:
        """Build from :class:`Doc` records, ``_CHUNK`` rows at a time."""
        batches, ids, texts, titles = [], [], [], []
        schema = pa.schema([(n, pa.large_string()) for n in ("docid", "text", "title")])

        def flush() -> None:
            batches.append(
                pa.record_batch([_column(ids), _column(texts), _column(titles)], schema=schema)
            )
            ids.clear(), texts.clear(), titles.clear()

        for doc in docs:
            ids.append(doc.docid), texts.append(doc.text), titles.append(doc.title)
            if len(ids) == _CHUNK:
                flush()
        flush()
        return cls(pa.Table.from_batches(batches, schema=schema), path)

    def __len__(self) -> int:
        return len(self._docid)

    def __getitem__(self, i: int) -> Doc:
        if not -len(self) <= i < len(self):
            raise IndexError(f"document {i} out of range for a corpus of {len(self)}")
        return Doc(self._docid[i].as_py(), self._text[i].as_py(), self._title[i].as_py())

    def __iter__(self) -> Iterator[Doc]:
        for batch in self.table.to_batches(_CHUNK):
            yield from map(Doc._make, zip(*(c.to_pylist() for c in batch.columns), strict=True))

    def __contains__(self, docid: object) -> bool:
        return docid in self.index

    @property
    def index(self) -> dict[str, int]:
        """``{docid: row}``, built on first use."""
        if self._index is None:
            self._index = {d: i for i, d in enumerate(self._docid.to_pylist())}
        return self._index

    def get(self, docid: str) -> Doc | None:
        """The document with this id, or ``None``."""
        i = self.index.get(docid)
        return None if i is None else self[i]

    def batches(self, batch_size: int) -> Iterator[list[Doc]]:
        """The documents in lists of ``batch_size`` (for encoding)."""
        batch: list[Doc] = []
        for doc in self:
            batch.append(doc)
            if len(batch) == batch_size:
                yield batch
                batch = []
        if batch:
            yield batch


class TextPairs:
    """Sentence pairs in Arrow columns ``src``, ``tgt``, for random-access training.

    ``pairs[i]`` is ``(src, tgt)``; ``pairs.take(indices)`` returns a batch as two lists.
    """

    def __init__(
        self, table: pa.Table, src_lang: str | None = None, tgt_lang: str | None = None
    ) -> None:
        missing = {"src", "tgt"} - set(table.column_names)
        if missing:
            raise DataError(f"a bitext table needs columns src, tgt; missing {sorted(missing)}")
        self.table = table.select(["src", "tgt"])
        self.src_lang, self.tgt_lang = src_lang, tgt_lang
        self._src = _single_chunk(self.table, "src")
        self._tgt = _single_chunk(self.table, "tgt")

    @classmethod
    def from_pairs(
        cls,
        pairs: Iterable[tuple[str, str]],
        src_lang: str | None = None,
        tgt_lang: str | None = None,
    ) -> TextPairs:
        """Build from ``(src, tgt)`` tuples, ``_CHUNK`` rows at a time."""
        schema = pa.schema([("src", pa.large_string()), ("tgt", pa.large_string())])
        batches, src, tgt = [], [], []
        for s, t in pairs:
            src.append(s), tgt.append(t)
            if len(src) == _CHUNK:
                batches.append(pa.record_batch([_column(src), _column(tgt)], schema=schema))
                src, tgt = [], []
        batches.append(pa.record_batch([_column(src), _column(tgt)], schema=schema))
        return cls(pa.Table.from_batches(batches, schema=schema), src_lang, tgt_lang)

    def __len__(self) -> int:
        return len(self._src)

    @overload
    def __getitem__(self, i: int) -> tuple[str, str]: ...
    @overload
    def __getitem__(self, i: slice) -> TextPairs: ...
    def __getitem__(self, i: int | slice) -> tuple[str, str] | TextPairs:
        if isinstance(i, slice):
            start, stop, step = i.indices(len(self))
            rows = (
                self.table.slice(start, max(stop - start, 0))
                if step == 1
                else self.table.take(list(range(start, stop, step)))
            )
            return TextPairs(rows, self.src_lang, self.tgt_lang)
        if not -len(self) <= i < len(self):
            raise IndexError(f"pair {i} out of range for {len(self)} pairs")
        return self._src[i].as_py(), self._tgt[i].as_py()

    def __iter__(self) -> Iterator[tuple[str, str]]:
        for batch in self.table.to_batches(_CHUNK):
            yield from zip(batch.column(0).to_pylist(), batch.column(1).to_pylist(), strict=True)

    def take(self, indices: Sequence[int]) -> tuple[list[str], list[str]]:
        """A batch: the source and the target sentences at ``indices``."""
        idx = pa.array(indices, type=pa.int64())
        return self._src.take(idx).to_pylist(), self._tgt.take(idx).to_pylist()


def read_corpus(path: PathLike, *, fmt: str | None = None) -> Corpus:
    """Read a corpus file into a :class:`Corpus`; duplicate ids are an error."""
    seen: set[str] = set()

    def docs() -> Iterator[Doc]:
        for lineno, doc in doc_records(path, fmt):
            if doc.docid in seen:
                raise DataError(
                    f"{path}: line {lineno}: duplicate document id {doc.docid!r}; ids must be unique"
                )
            seen.add(doc.docid)
            yield doc

    return Corpus.from_docs(docs(), Path(path))


def read_bitext(
    source: PathLike | tuple[PathLike, PathLike],
    *,
    fmt: str | None = None,
    src_lang: str | None = None,
    tgt_lang: str | None = None,
) -> TextPairs:
    """Read bitext (see :func:`~optical_ray.data.formats.iter_bitext`) into :class:`TextPairs`."""
    pairs = TextPairs.from_pairs(
        iter_bitext(source, fmt=fmt, src_lang=src_lang, tgt_lang=tgt_lang), src_lang, tgt_lang
    )
    if not len(pairs):
        raise DataError(f"{source}: holds no sentence pair with text on both sides")
    return pairs


# ---------------------------------------------------------------------------- collections


@dataclass
class Collection:
    """A retrieval collection: queries, corpus, relevance judgements, optional triples.

    ``triples`` is the path of a triples file (streamed by :meth:`iter_triples`) or the
    triples themselves. ``warnings`` lists what was dropped or looks off.
    """

    queries: dict[str, str]
    corpus: Corpus
    qrels: dict[str, dict[str, int]]
    triples: Path | tuple[Triple, ...] | None = None
    path: Path | None = None
    num_triples: int | None = None
    dropped_qrels: int = 0
    dropped_triples: int = 0
    queries_without_relevant: int = 0
    warnings: list[str] = field(default_factory=list)

    @property
    def num_queries(self) -> int:
        return len(self.queries)

    @property
    def num_docs(self) -> int:
        return len(self.corpus)

    @property
    def num_qrels(self) -> int:
        """The number of (query, document) judgements."""
        return sum(len(d) for d in self.qrels.values())

    def counts(self) -> dict[str, int]:
        """Counts for reports: queries, docs, qrels and (when known) triples."""
        out = {"queries": self.num_queries, "docs": self.num_docs, "qrels": self.num_qrels}
        if self.num_triples is not None:
            out["triples"] = self.num_triples
        return out

    def iter_triples(self) -> Iterator[Triple]:
        """Stream the training triples; id triples naming unknown ids are skipped."""
        if self.triples is None:
            return
        source = (
            (t for _, t in triple_records(self.triples, None, False))
            if isinstance(self.triples, Path)
            else iter(self.triples)
        )
        for t in source:
            if t.texts:
                yield t
                continue
            pos = tuple(d for d in t.pos if d in self.corpus)
            if t.query in self.queries and pos:
                yield Triple(t.query, pos, tuple(d for d in t.neg if d in self.corpus), False)


def find_collection_files(directory: PathLike) -> dict[str, Path]:
    """The data files of a collection directory, by role (queries, corpus, qrels, triples)."""
    root = Path(directory)
    if not root.is_dir():
        raise DataError(f"{root}: collection directory not found")
    found: dict[str, Path] = {}
    for role, names in COLLECTION_FILES.items():
        hits = [root / n for name in names for n in (name, name + ".gz") if (root / n).is_file()]
        if len(hits) > 1:
            raise DataError(
                f"{root}: several {role} files ({', '.join(p.name for p in hits)}); keep one"
            )
        if hits:
            found[role] = hits[0]
    return found


#: How a dropped id ends its warning, and what ends the same line as a strict error.
DROPPED = "; dropped"
STRICT_HINT = "; fix the ids or load with strict=False to drop them"


def _report(where: str, strict: bool, message: str, col: Collection) -> None:
    """Raise in strict mode; otherwise record and warn."""
    if strict:
        raise DataError(f"{where}: {message}{STRICT_HINT}")
    col.warnings.append(f"{where}: {message}{DROPPED}")
    warnings.warn(f"{where}: {message}; dropped (strict=False)", UserWarning, stacklevel=3)


def build_collection(
    queries: dict[str, str],
    corpus: Corpus,
    qrels: Iterable[tuple[int | None, str, str, int]],
    triples: Path | Iterable[Triple] | None = None,
    *,
    strict: bool = True,
    check_triples: bool = True,
    names: Mapping[str, str] | None = None,
    path: Path | None = None,
) -> Collection:
    """Check the parts against each other and assemble a :class:`Collection`.

    ``qrels`` are ``(line_number or None, qid, docid, rel)`` records. Judgements (and id
    triples) naming unknown queries or documents raise in ``strict`` mode and are
    dropped with a warning otherwise. ``names`` label the parts in messages.
    """
    names = {
        "queries": "queries",
        "corpus": "corpus",
        "qrels": "qrels",
        "triples": "triples",
        **(names or {}),
    }
    col = Collection(queries, corpus, {}, path=path)
    total, dropped = 0, 0
    unknown_q: set[str] = set()
    unknown_d: set[str] = set()
    first = ""
    for lineno, qid, docid, rel in qrels:
        total += 1
        at = f"line {lineno}: " if lineno else ""
        if qid not in queries or docid not in corpus:
            dropped += 1
            kind, value = ("query", qid) if qid not in queries else ("document", docid)
            (unknown_q if kind == "query" else unknown_d).add(value)
            other = names["queries"] if kind == "query" else names["corpus"]
            first = first or f"{at}{kind} id {value!r} is not in {other}"
            continue
        docs = col.qrels.setdefault(qid, {})
        if docs.get(docid, rel) != rel:
            raise DataError(
                f"{names['qrels']}: {at}({qid!r}, {docid!r}) judged twice with different relevance"
            )
        docs[docid] = rel
    if total == 0:
        raise DataError(f"{names['qrels']}: holds no judgements")
    if dropped:
        col.dropped_qrels = dropped
        _report(
            names["qrels"],
            strict,
            f"{first} ({dropped} of {total} judgements name unknown ids: "
            f"{len(unknown_q)} unknown queries, {len(unknown_d)} unknown documents)",
            col,
        )
    if not col.qrels:
        raise DataError(f"{names['qrels']}: no judgement names a known query and document")
    col.queries_without_relevant = sum(
        1 for q in queries if not any(r > 0 for r in col.qrels.get(q, {}).values())
    )
    if col.queries_without_relevant:
        col.warnings.append(
            f"{names['queries']}: {col.queries_without_relevant} of {len(queries)} queries "
            "have no relevant document"
        )
    if triples is not None:
        col.triples = triples if isinstance(triples, Path) else tuple(triples)
        if check_triples:
            _check_triples(col, names["triples"], strict)
    return col


def _check_triples(col: Collection, name: str, strict: bool) -> None:
    """Count the triples and find those naming unknown ids (one streaming pass)."""
    assert col.triples is not None
    records: Iterable[tuple[int | None, Triple]] = (
        triple_records(col.triples, None, False)
        if isinstance(col.triples, Path)
        else ((None, t) for t in col.triples)
    )
    count, bad, first = 0, 0, ""
    for lineno, t in records:
        count += 1
        if t.texts:
            continue
        unknown = [t.query] if t.query not in col.queries else []
        unknown += [d for d in (*t.pos, *t.neg) if d not in col.corpus]
        if unknown:
            bad += 1
            first = (
                first
                or f"{f'line {lineno}: ' if lineno else ''}id {unknown[0]!r} is in neither "
                "queries nor corpus"
            )
    col.num_triples = count
    if bad:
        col.dropped_triples = bad
        _report(name, strict, f"{first} ({bad} of {count} triples name unknown ids)", col)


def load_collection(
    directory: PathLike,
    *,
    strict: bool = True,
    check_triples: bool = True,
    queries: PathLike | None = None,
    corpus: PathLike | None = None,
    qrels: PathLike | None = None,
    triples: PathLike | None = None,
) -> Collection:
    """Load and check a collection directory (see the module docstring for its files).

    ``queries``/``corpus``/``qrels``/``triples`` override single files (e.g. a BEIR
    folder's ``qrels/test.tsv``). In ``strict`` mode judgements or triples naming unknown
    ids raise; otherwise they are dropped, counted and warned about. ``check_triples``
    makes one pass over the triples file to count it and check its ids.
    """
    root = Path(directory)
    found = find_collection_files(root)
    given = {"queries": queries, "corpus": corpus, "qrels": qrels, "triples": triples}
    files = {**found, **{k: Path(v) for k, v in given.items() if v is not None}}
    missing = [r for r in ("queries", "corpus", "qrels") if r not in files]
    if missing:
        expected = "; ".join(f"{r}: {' or '.join(COLLECTION_FILES[r])}" for r in missing)
        raise DataError(f"{root}: not a collection directory, missing {expected}")
    q = read_queries(files["queries"])
    docs = read_corpus(files["corpus"])
    return build_collection(
        q,
        docs,
        qrels_records(files["qrels"]),
        files.get("triples"),
        strict=strict,
        check_triples=check_triples,
        names={k: str(v) for k, v in files.items()},
        path=root,
    )
