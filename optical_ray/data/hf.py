"""Hugging Face ``datasets`` adapters: collections and bitext from the hub or local files.

``source`` is a hub name (``"miracl/miracl"``, needs network), a folder written by
``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``, a data file (``.jsonl``,
``.json``, ``.parquet``, ``.csv``, ``.tsv``, ``.arrow``) or folder of them, or a
``datasets.Dataset`` / ``DatasetDict`` already in memory.

Collection presets (``field_map`` overrides any field; a field set to ``None`` is
synthesised where that makes sense: query ids as ``q<row>``, docids from the text)::

    preset    layout        fields
    miracl    grouped       query_id, query, positive_passages / negative_passages
    mrtydi                  (each a list of {docid, title, text}); Tevatron format
    xor-tydi  grouped       id, question, positive_ctxs / hard_negative_ctxs
                            (each {passage_id, title, text}; answers are not used)
    mmarco    text triples  query, positive, negative (texts; ids are synthesised)
    beir      parts         queries {_id, text}, corpus {_id, title, text},
                            qrels {query-id, corpus-id, score}

*grouped*: one row per query with its judged passages; positives become qrels (rel 1)
and triples. *parts*: pass ``source={"queries": .., "corpus": .., "qrels": ..,
"triples": ..}`` (any preset; ``"collection"`` is accepted for ``"corpus"``, as mMARCO
names it); ``qrels`` may be a TREC/BEIR file or a dataset, ``triples`` a file.

Bitext presets for :func:`load_hf_bitext` (``{src_lang}``/``{tgt_lang}`` are filled in)::

    opus      translation: {lang: text}           (OPUS, WMT, opus-100 on the hub)
    columns   {src_lang}, {tgt_lang}               one column per language
    flores    sentence_{src_lang}, sentence_{tgt_lang}
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa
import pyarrow.compute as pc

from optical_ray.data.collection import Collection, Corpus, TextPairs, build_collection
from optical_ray.data.formats import Doc, PathLike, Triple, qrels_records
from optical_ray.errors import DataError

__all__ = [
    "BITEXT_PRESETS",
    "COLLECTION_PRESETS",
    "load_hf_bitext",
    "load_hf_collection",
    "load_hf_dataset",
]

_BASE_FIELDS: dict[str, str | None] = {
    "query_id": "query_id", "query": "query",
    "positives": "positive_passages", "negatives": "negative_passages",
    "docid": "docid", "title": "title", "text": "text",
    "qrels_query_id": "query-id", "qrels_docid": "corpus-id", "qrels_score": "score",
    "triple_query": "query", "triple_pos": "positive", "triple_neg": "negative",
}  # fmt: skip

#: name -> (layout of a single-dataset source, field names).
COLLECTION_PRESETS: dict[str, tuple[str, dict[str, str | None]]] = {
    "miracl": ("grouped", dict(_BASE_FIELDS)),
    "mrtydi": ("grouped", dict(_BASE_FIELDS)),
    "xor-tydi": ("grouped", {**_BASE_FIELDS, "query_id": "id", "query": "question",
                             "positives": "positive_ctxs", "negatives": "hard_negative_ctxs",
                             "docid": "passage_id"}),
    "mmarco": ("text_triples", {**_BASE_FIELDS, "query_id": "id", "query": "text", "docid": "id",
                                "title": None}),
    "beir": ("parts", {**_BASE_FIELDS, "query_id": "_id", "query": "text", "docid": "_id"}),
}  # fmt: skip

#: name -> (layout, field names); ``{src_lang}``/``{tgt_lang}`` are formatted in.
BITEXT_PRESETS: dict[str, tuple[str, dict[str, str]]] = {
    "opus": ("translation", {"translation": "translation"}),
    "columns": ("columns", {"src": "{src_lang}", "tgt": "{tgt_lang}"}),
    "flores": ("columns", {"src": "sentence_{src_lang}", "tgt": "sentence_{tgt_lang}"}),
}

_BUILDERS = {
    ".jsonl": "json",
    ".json": "json",
    ".parquet": "parquet",
    ".csv": "csv",
    ".tsv": "csv",
    ".arrow": "arrow",
}
_PARTS = {"queries", "corpus", "collection", "qrels", "triples"}


def _label(source: Any) -> str:
    return str(source) if isinstance(source, (str, Path)) else f"<{type(source).__name__}>"


def _pick_split(ds: Any, split: str | None, label: str) -> datasets.Dataset:
    if isinstance(ds, datasets.DatasetDict):
        names = sorted(ds)
        if split is None and len(names) == 1:
            return ds[names[0]]
        if split not in ds:
            raise DataError(
                f"{label}: split {split!r} not found; splits available: {', '.join(names)}"
            )
        return ds[split]
    if isinstance(ds, datasets.Dataset):
        return ds
    raise DataError(
        f"{label}: expected a datasets.Dataset or DatasetDict, found {type(ds).__name__}"
    )


def load_hf_dataset(
    source: Any,
    *,
    split: str | None = None,
    config: str | None = None,
    cache_dir: PathLike | None = None,
) -> datasets.Dataset:
    """One split of a dataset from memory, a ``save_to_disk`` folder, data files or the hub."""
    if isinstance(source, (datasets.Dataset, datasets.DatasetDict)):
        return _pick_split(source, split, _label(source))
    label, path = str(source), Path(source)
    cache = str(cache_dir) if cache_dir is not None else None
    try:
        if path.is_dir() and any((path / f).is_file() for f in ("dataset_dict.json", "state.json")):
            return _pick_split(datasets.load_from_disk(str(path)), split, label)
        if path.is_file():
            name = path.name.removesuffix(".gz")
            builder = _BUILDERS.get(Path(name).suffix)
            if builder is None:
                raise DataError(
                    f"{path}: cannot load {Path(name).suffix!r} files; use one of {', '.join(_BUILDERS)}"
                )
            kwargs = {"sep": "\t"} if name.endswith(".tsv") else {}
            return _load_files(
                builder, data_files=str(path), split=split or "train", cache_dir=cache, **kwargs
            )
        if path.is_dir():
            return _pick_split(
                datasets.load_dataset(str(path), cache_dir=cache, trust_remote_code=False),
                split,
                label,
            )
        if path.suffix in _BUILDERS or path.is_absolute() or str(source).startswith("."):
            raise DataError(f"{path}: file or folder not found")
        return _pick_split(
            datasets.load_dataset(
                label, config, split=split, cache_dir=cache, trust_remote_code=False
            ),
            None,
            label,
        )
    except DataError:
        raise
    except Exception as e:  # datasets raises many types (hub, offline, parse errors)
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        hint = (
            ""
            if path.exists()
            else (
                "; offline? pass a folder saved with Dataset.save_to_disk or local .jsonl/.parquet files"
            )
        )
        raise DataError(
            f"{label}: could not load the dataset ({type(e).__name__}: {first}){hint}"
        ) from None


def _load_files(builder: str, **kwargs: Any) -> datasets.Dataset:
    """``datasets.load_dataset`` for a packaged builder, always returning one split."""
    return _pick_split(
        datasets.load_dataset(builder, **kwargs), kwargs.get("split"), str(kwargs.get("data_files"))
    )


def _fields(
    preset: str, field_map: Mapping[str, str | None] | None, presets: Mapping[str, tuple[str, dict]]
) -> tuple[str, dict]:
    if preset not in presets:
        raise DataError(f"unknown preset {preset!r}; allowed: {', '.join(presets)}")
    layout, fields = presets[preset]
    unknown = sorted(set(field_map or {}) - set(fields))
    if unknown:
        raise DataError(
            f"unknown field_map key {unknown[0]!r} for preset {preset!r}; allowed: {', '.join(fields)}"
        )
    return layout, {**fields, **(field_map or {})}


def _require(
    ds: datasets.Dataset, label: str, fields: Mapping[str, str | None], *keys: str
) -> None:
    for key in keys:
        name = fields[key]
        if name is not None and name not in ds.column_names:
            raise DataError(
                f"{label}: field {name!r} ({key}) not found; fields present: {', '.join(ds.column_names)}; "
                f"set field_map={{{key!r}: ...}}"
            )


def _rows(ds: datasets.Dataset, columns: list[str]) -> Iterator[dict[str, Any]]:
    """Rows with only ``columns``, read in Arrow batches (cheap on large datasets)."""
    for batch in ds.select_columns(columns).with_format("arrow").iter(batch_size=4096):
        cols = [batch.column(c).to_pylist() for c in columns]
        for values in zip(*cols, strict=True):
            yield dict(zip(columns, values, strict=True))


def _text_id(prefix: str, *texts: str) -> str:
    return prefix + hashlib.sha1("\x1f".join(texts).encode("utf-8")).hexdigest()[:16]


def _passage(p: Any, fields: Mapping[str, str | None], where: str) -> Doc:
    if not isinstance(p, Mapping):
        raise DataError(
            f"{where}: a passage must be a record with {fields['text']!r}, found {type(p).__name__}"
        )
    for key in ("docid", "text"):
        name = fields[key]
        if name is not None and p.get(name) is None:
            raise DataError(
                f"{where}: passage field {name!r} ({key}) not found; passage fields present: "
                f"{', '.join(map(str, p))}; set field_map={{{key!r}: ...}}"
            )
    title = str(p.get(fields["title"]) or "") if fields["title"] else ""
    text = str(p[fields["text"]])
    docid = str(p[fields["docid"]]) if fields["docid"] else _text_id("d", title, text)
    return Doc(docid, text, title)


def _grouped(
    ds: datasets.Dataset, label: str, fields: Mapping[str, str | None], strict: bool
) -> Collection:
    _require(ds, label, fields, "query_id", "query", "positives")
    cols = [
        fields[k]
        for k in ("query_id", "query", "positives", "negatives")
        if fields[k] in ds.column_names
    ]
    queries: dict[str, str] = {}
    docs: dict[str, Doc] = {}
    qrels: list[tuple[None, str, str, int]] = []
    triples: list[Triple] = []
    for i, row in enumerate(_rows(ds, cols)):
        where = f"{label}: row {i}"
        qid = str(row[fields["query_id"]]) if fields["query_id"] else f"q{i}"
        if qid in queries:
            raise DataError(f"{where}: duplicate query id {qid!r}; ids must be unique")
        queries[qid] = str(row[fields["query"]])
        ids = {}
        for key in ("positives", "negatives"):
            ids[key] = []
            for p in row.get(fields[key] or "", None) or []:
                doc = _passage(p, fields, where)
                docs.setdefault(doc.docid, doc)
                ids[key].append(doc.docid)
        qrels += [(None, qid, d, 1) for d in ids["positives"]]
        if ids["positives"]:
            triples.append(Triple(qid, tuple(ids["positives"]), tuple(ids["negatives"])))
    corpus = Corpus.from_docs(docs.values())
    return build_collection(queries, corpus, qrels, triples, strict=strict, names=_names(label))


def _text_triples(
    ds: datasets.Dataset, label: str, fields: Mapping[str, str | None], strict: bool
) -> Collection:
    _require(ds, label, fields, "triple_query", "triple_pos")
    cols = [
        fields[k]
        for k in ("triple_query", "triple_pos", "triple_neg")
        if fields[k] in ds.column_names
    ]
    qids: dict[str, str] = {}
    dids: dict[str, str] = {}
    qrels: set[tuple[str, str]] = set()
    triples: list[Triple] = []

    def doc_ids(value: Any) -> tuple[str, ...]:
        texts = value if isinstance(value, list) else ([] if value is None else [value])
        return tuple(dids.setdefault(str(t), f"d{len(dids)}") for t in texts)

    for row in _rows(ds, cols):
        qid = qids.setdefault(str(row[fields["triple_query"]]), f"q{len(qids)}")
        pos, neg = doc_ids(row[fields["triple_pos"]]), doc_ids(row.get(fields["triple_neg"] or ""))
        qrels.update((qid, d) for d in pos)
        if pos:
            triples.append(Triple(qid, pos, neg))
    queries = {qid: text for text, qid in qids.items()}
    corpus = Corpus.from_docs(Doc(d, text) for text, d in dids.items())
    records = ((None, q, d, 1) for q, d in sorted(qrels))
    return build_collection(queries, corpus, records, triples, strict=strict, names=_names(label))


def _names(label: str) -> dict[str, str]:
    return {k: f"{label} ({k})" for k in ("queries", "corpus", "qrels", "triples")}


def _parts(
    source: Mapping[str, Any],
    fields: Mapping[str, str | None],
    split: str | None,
    config: str | None,
    cache_dir: PathLike | None,
    strict: bool,
) -> Collection:
    unknown = sorted(set(source) - _PARTS)
    keys = set(source)
    if (
        unknown
        or "queries" not in keys
        or not {"corpus", "collection"} & keys
        or "qrels" not in keys
    ):
        raise DataError(
            "a parts source needs keys queries, corpus (or collection), qrels[, triples]; "
            f"got {', '.join(map(str, source))}"
        )
    names: dict[str, str] = {}

    def part(key: str) -> datasets.Dataset:
        names[key] = _label(source[key])
        return load_hf_dataset(source[key], split=split, config=config, cache_dir=cache_dir)

    q = part("queries")
    _require(q, names["queries"], fields, "query_id", "query")
    queries: dict[str, str] = {}
    for i, row in enumerate(_rows(q, [fields["query_id"], fields["query"]])):
        qid = str(row[fields["query_id"]])
        if qid in queries:
            raise DataError(
                f"{names['queries']}: row {i}: duplicate query id {qid!r}; ids must be unique"
            )
        queries[qid] = str(row[fields["query"]])
    corpus_key = "corpus" if "corpus" in source else "collection"
    c = part(corpus_key)
    names["corpus"] = names.pop(corpus_key)
    _require(c, names["corpus"], fields, "docid", "text")
    has_title = fields["title"] is not None and fields["title"] in c.column_names
    cols = [fields["docid"], fields["text"]] + ([fields["title"]] if has_title else [])
    seen: set[str] = set()

    def docs() -> Iterator[Doc]:
        for i, row in enumerate(_rows(c, cols)):
            doc = Doc(
                str(row[cols[0]]),
                str(row[cols[1]] or ""),
                str(row[cols[2]] or "") if has_title else "",
            )
            if doc.docid in seen:
                raise DataError(
                    f"{names['corpus']}: row {i}: duplicate document id {doc.docid!r}; ids must be unique"
                )
            seen.add(doc.docid)
            yield doc

    corpus = Corpus.from_docs(docs())
    qrels_src = source["qrels"]
    names["qrels"] = _label(qrels_src)
    if isinstance(qrels_src, (str, Path)) and Path(qrels_src).is_file():
        records: Any = qrels_records(qrels_src)
    else:
        qr = part("qrels")
        _require(qr, names["qrels"], fields, "qrels_query_id", "qrels_docid", "qrels_score")
        keys = [fields["qrels_query_id"], fields["qrels_docid"], fields["qrels_score"]]
        records = (
            (None, str(r[keys[0]]), str(r[keys[1]]), _int_score(r[keys[2]], names["qrels"], i))
            for i, r in enumerate(_rows(qr, keys))
        )
    triples = Path(source["triples"]) if "triples" in source else None
    if triples is not None:
        names["triples"] = str(triples)
    return build_collection(queries, corpus, records, triples, strict=strict, names=names)


def _int_score(value: Any, label: str, row: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
        raise DataError(f"{label}: row {row}: relevance {value!r} is not an integer")
    return int(value)


def load_hf_collection(
    source: Any,
    preset: str = "miracl",
    split: str | None = None,
    field_map: Mapping[str, str | None] | None = None,
    *,
    config: str | None = None,
    strict: bool = True,
    cache_dir: PathLike | None = None,
) -> Collection:
    """Load a retrieval collection through a preset's field mapping (see module docstring).

    ``source`` is one dataset (the preset's layout) or a ``{"queries", "corpus",
    "qrels"[, "triples"]}`` mapping of parts. ``config`` is the hub configuration name
    (e.g. ``"sw"`` for MIRACL Swahili); ``cache_dir`` where ``datasets`` caches files.
    """
    layout, fields = _fields(preset, field_map, COLLECTION_PRESETS)
    if isinstance(source, Mapping):
        return _parts(source, fields, split, config, cache_dir, strict)
    if layout == "parts":
        raise DataError(
            f"preset {preset!r} needs source={{'queries': .., 'corpus': .., 'qrels': ..}}, got one dataset"
        )
    ds = load_hf_dataset(source, split=split, config=config, cache_dir=cache_dir)
    convert = _grouped if layout == "grouped" else _text_triples
    return convert(ds, _label(source), fields, strict)


def load_hf_bitext(
    source: Any,
    src_lang: str,
    tgt_lang: str,
    preset: str = "opus",
    field_map: Mapping[str, str] | None = None,
    *,
    split: str | None = None,
    config: str | None = None,
    cache_dir: PathLike | None = None,
) -> TextPairs:
    """Load sentence pairs into :class:`TextPairs` (Arrow end to end, no Python loop).

    Pairs with an empty or missing side are dropped, as :func:`iter_bitext` does.
    """
    layout, fields = _fields(preset, field_map, BITEXT_PRESETS)
    fields = {k: v.format(src_lang=src_lang, tgt_lang=tgt_lang) for k, v in fields.items()}
    ds = load_hf_dataset(source, split=split, config=config, cache_dir=cache_dir)
    label = _label(source)
    if layout == "translation":
        _require(ds, label, fields, "translation")
        col = ds.select_columns([fields["translation"]]).with_format("arrow")[:].column(0)
        if not pa.types.is_struct(col.type):
            raise DataError(
                f"{label}: field {fields['translation']!r} must map language codes to texts, found {col.type}"
            )
        langs = [col.type.field(i).name for i in range(col.type.num_fields)]
        for lang in (src_lang, tgt_lang):
            if lang not in langs:
                raise DataError(
                    f"{label}: no language {lang!r} in {fields['translation']!r}; "
                    f"languages present: {', '.join(langs)}"
                )
        src, tgt = pc.struct_field(col, src_lang), pc.struct_field(col, tgt_lang)
    else:
        _require(ds, label, fields, "src", "tgt")
        table = ds.select_columns([fields["src"], fields["tgt"]]).with_format("arrow")[:]
        src, tgt = table.column(0), table.column(1)
    table = pa.table({"src": src.cast(pa.large_string()), "tgt": tgt.cast(pa.large_string())})
    keep = pc.and_(
        *(
            pc.fill_null(pc.greater(pc.utf8_length(pc.utf8_trim_whitespace(table[c])), 0), False)
            for c in ("src", "tgt")
        )
    )
    pairs = TextPairs(table.filter(keep), src_lang, tgt_lang)
    if not len(pairs):
        raise DataError(f"{label}: holds no {src_lang}-{tgt_lang} pair with text on both sides")
    return pairs
