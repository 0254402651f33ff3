"""Loaders for the real public data samples in ``../shared/data`` (see its README).

Four sources, each turned into what the rest of optical-ray reads (bitext pairs and
:class:`~optical_ray.data.collection.Collection` objects), and together into a dataset
root in the standard layout (:func:`~optical_ray.data.prepare.prepare_real`, ``optical-ray data prepare-real``):

- **MAFAND-MT** (Adelani et al., NAACL 2022): news bitext, line-aligned
  ``mafand_mt/data/text_files/en-<xx>/{train,dev,test}.{en,<xx>}``.
- **NTREX-128** (Federmann et al., 2022): 1,997 English news sentences and their human
  translations, multi-way parallel; ``DOCUMENT_IDS.tsv`` names the source document of
  each line. Retrieval tests from parallel text: a sentence in one language retrieves
  the same sentence (level ``sentence``) or the document holding it (level
  ``document``: the document's sentences joined) in another. Dev and test are split
  *by document* (:func:`ntrex_split_documents`), so they never share one.
- **AfriQA** (Ogundepo et al., 2023): an African-language question retrieves its English
  Wikipedia gold passage from the pool of all gold passages of the sample. Rows whose
  ``context`` is null are dropped; files without a final newline are read whole.
- **XQuAD-R** (Roy et al., 2020): SQuAD JSON with ``sentence_breaks``; a question in one
  language retrieves the sentence (in another language) that holds its answer. Dev and
  test are split by article.

Language codes: English is ``en`` (the teacher's language); the others keep the
three-letter codes of the files (``swa``, ``hau``, ``deu``, ``fra``, ``fin``, ``spa``);
two-letter aliases (``sw``, ``ha``, ``de``, ...) are accepted everywhere.

The data folder comes from an explicit path, else ``$OPTICAL_RAY_SHARED_DATA``, else
``../shared/data`` beside the repository checkout. Nothing is copied into the
repository: :func:`~optical_ray.data.prepare.prepare_real` writes wherever ``out`` points.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from optical_ray.data.collection import Collection, Corpus, build_collection, parse_pair
from optical_ray.data.formats import (
    Doc,
    iter_bitext,
    read_lines,
)
from optical_ray.errors import DataError

__all__ = [
    "ENV_VAR",
    "REAL_FORMATS",
    "LOW_RESOURCE",
    "HIGH_RESOURCE",
    "shared_data_dir",
    "canonical_lang",
    "mafand_bitext",
    "ntrex_sentences",
    "ntrex_languages",
    "mafand_languages",
    "ntrex_document_ids",
    "ntrex_split_documents",
    "ntrex_collection",
    "afriqa_collection",
    "xquad_r_collection",
    "real_eval_collection",
    "real_bitext",
    "real_mono",
    "EVAL_SPLITS",
    "XQUAD_CODES",
    "afriqa_rows",
    "english_rank_collection",
    "ict_pair",
    "real_rank_collection",
]

#: Environment variable naming the shared data folder.
ENV_VAR = "OPTICAL_RAY_SHARED_DATA"
#: ``format`` values of config data sources read by this module.
REAL_FORMATS = ("mafand", "ntrex", "ntrex_doc", "afriqa", "xquad_r", "english_train")
LOW_RESOURCE = ("swa", "hau")
HIGH_RESOURCE = ("deu", "fra", "fin")

_ALIASES = {
    "eng": "en",
    "english": "en",
    "sw": "swa",
    "swh": "swa",
    "ha": "hau",
    "de": "deu",
    "ger": "deu",
    "fr": "fra",
    "fre": "fra",
    "fi": "fin",
    "es": "spa",
}
_NTREX_FILES = {"en": "newstest2019-src.eng.txt"}  # others: newstest2019-ref.<lang>.txt
#: XQuAD-R file codes of the languages its sample holds.
XQUAD_CODES = {"en": "en", "deu": "de", "spa": "es"}
#: The evaluation splits every task has (train is for bitext and the teacher).
EVAL_SPLITS = ("dev", "test")


def shared_data_dir(path: str | os.PathLike | None = None) -> Path:
    """The shared data folder: ``path``, else ``$OPTICAL_RAY_SHARED_DATA``, else
    ``../shared/data`` beside the repository. DataError if it is not a directory."""
    if path is not None and str(path) != "":
        where, how = Path(path).expanduser(), "given"
    elif os.environ.get(ENV_VAR):
        where, how = Path(os.environ[ENV_VAR]).expanduser(), f"from ${ENV_VAR}"
    else:
        where, how = Path(__file__).resolve().parents[2].parent / "shared" / "data", "default"
    if not where.is_dir():
        raise DataError(
            f"shared data folder {str(where)!r} ({how}) is not a directory; "
            f"pass its path (--shared DIR, or a source's path) or set ${ENV_VAR}"
        )
    return where.resolve()


def canonical_lang(code: str) -> str:
    """``sw`` -> ``swa``, ``eng`` -> ``en``, ``deu`` -> ``deu`` (lower case)."""
    c = code.strip().lower()
    return _ALIASES.get(c, c)


def _need(path: Path, what: str) -> Path:
    if not path.is_file():
        raise DataError(f"{what}: {path} not found in the shared data folder")
    return path


# --------------------------------------------------------------------------- MAFAND-MT


def mafand_bitext(
    lang: str,
    split: str = "train",
    shared: str | os.PathLike | None = None,
) -> list[tuple[str, str]]:
    """MAFAND-MT ``(english, foreign)`` pairs of ``lang`` for ``split`` (train/dev/test).

    The two line-aligned files must have the same number of lines (DataError
    otherwise); pairs with an empty side are skipped.
    """
    xx = canonical_lang(lang)
    if split not in ("train", "dev", "test"):
        raise DataError(f"MAFAND split {split!r}: allowed train, dev, test")
    base = shared_data_dir(shared) / "mafand_mt" / "data" / "text_files" / f"en-{xx}"
    if not base.is_dir():
        have = sorted(p.name for p in base.parent.glob("en-*")) if base.parent.is_dir() else []
        raise DataError(
            f"MAFAND-MT has no pair en-{xx} in {base.parent} (present: {', '.join(have) or 'none'})"
        )
    en = _need(base / f"{split}.en", f"MAFAND en-{xx} {split}")
    fx = _need(base / f"{split}.{xx}", f"MAFAND en-{xx} {split}")
    pairs = list(iter_bitext((en, fx)))
    if not pairs:
        raise DataError(f"MAFAND en-{xx} {split}: no sentence pair")
    return pairs


# --------------------------------------------------------------------------- NTREX-128


def _ntrex_dir(shared: str | os.PathLike | None) -> Path:
    return shared_data_dir(shared) / "ntrex128"


def ntrex_sentences(lang: str, shared: str | os.PathLike | None = None) -> list[str]:
    """The 1,997 NTREX sentences of ``lang``, line i of every language being the same
    sentence (the English source for ``en``)."""
    code = canonical_lang(lang)
    name = _NTREX_FILES.get(code, f"newstest2019-ref.{code}.txt")
    path = _ntrex_dir(shared) / "NTREX-128" / name
    if not path.is_file():
        have = ntrex_languages(shared)
        raise DataError(
            f"NTREX-128 has no language {code!r} in {path.parent} "
            f"(present: {', '.join(have) or 'none'})"
        )
    lines = path.read_text(encoding="utf-8").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    n_docs = len(ntrex_document_ids(shared))
    if len(lines) != n_docs:
        raise DataError(
            f"{path}: {len(lines)} lines, but DOCUMENT_IDS.tsv has {n_docs}; "
            "NTREX files must be line-aligned"
        )
    empty = [i + 1 for i, s in enumerate(lines) if not s.strip()]
    if empty:
        raise DataError(f"{path}: line {empty[0]} is empty ({len(empty)} empty lines)")
    return [s.strip() for s in lines]


def ntrex_languages(shared: str | os.PathLike | None = None) -> list[str]:
    """Languages with NTREX-128 sentences in the shared folder (``en`` for the source)."""
    folder = _ntrex_dir(shared) / "NTREX-128"
    if not folder.is_dir():
        return []
    codes = {
        "en" if p.name in _NTREX_FILES.values() else p.name.split(".")[1]
        for p in folder.glob("newstest2019-*.txt")
        if p.name in _NTREX_FILES.values() or p.name.startswith("newstest2019-ref.")
    }
    return sorted(c for c in codes if "-" not in c)  # eng-US is a variant, not a language


def mafand_languages(shared: str | os.PathLike | None = None) -> list[str]:
    """Languages with MAFAND-MT bitext (``en-<xx>`` folders) in the shared folder."""
    base = shared_data_dir(shared) / "mafand_mt" / "data" / "text_files"
    return sorted(p.name[3:] for p in base.glob("en-*") if p.is_dir()) if base.is_dir() else []


def ntrex_document_ids(shared: str | os.PathLike | None = None) -> list[str]:
    """The source document id of every NTREX line (``DOCUMENT_IDS.tsv``)."""
    path = _need(_ntrex_dir(shared) / "DOCUMENT_IDS.tsv", "NTREX-128 document ids")
    lines = path.read_text(encoding="utf-8").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.split("\t")[0].strip() for line in lines]


def _stable_order(keys: Iterable[str]) -> list[str]:
    """Keys in an order fixed by their SHA-1 (independent of file order and seeds)."""
    return sorted(set(keys), key=lambda k: (hashlib.sha1(k.encode("utf-8")).hexdigest(), k))


def ntrex_split_documents(
    doc_ids: Sequence[str],
    dev_fraction: float = 0.3,
) -> dict[str, set[str]]:
    """Split documents (not lines) into ``dev`` and ``test``: the first
    ``round(dev_fraction * n_docs)`` documents in :func:`_stable_order` are dev."""
    if not 0 < dev_fraction < 1:
        raise DataError(f"dev_fraction: got {dev_fraction!r}, expected a number in (0, 1)")
    order = _stable_order(doc_ids)
    n_dev = min(len(order) - 1, max(1, round(dev_fraction * len(order))))
    return {"dev": set(order[:n_dev]), "test": set(order[n_dev:])}


def _check_split(split: str) -> None:
    if split not in EVAL_SPLITS:
        raise DataError(f"split {split!r}: allowed {', '.join(EVAL_SPLITS)}")


def ntrex_collection(
    qlang: str,
    dlang: str,
    split: str,
    *,
    level: str = "sentence",
    shared: str | os.PathLike | None = None,
    dev_fraction: float = 0.3,
) -> Collection:
    """An NTREX retrieval test: ``qlang`` sentences retrieve ``dlang`` sentences
    (``level="sentence"``: the same line is relevant) or ``dlang`` documents
    (``level="document"``: the document holding the line is relevant), restricted to the
    documents of ``split``.

    Sentence-level corpora hold each distinct text once (a handful of NTREX lines repeat
    within a language); a query's relevant document is the one with its line's text.
    """
    _check_split(split)
    if level not in ("sentence", "document"):
        raise DataError(f"NTREX level {level!r}: allowed sentence, document")
    doc_ids = ntrex_document_ids(shared)
    keep = ntrex_split_documents(doc_ids, dev_fraction)[split]
    q_text, d_text = ntrex_sentences(qlang, shared), ntrex_sentences(dlang, shared)
    lines = [i for i, d in enumerate(doc_ids) if d in keep]
    queries = {f"L{i:04d}": q_text[i] for i in lines}
    docs: list[Doc] = []
    qrels: list[tuple[int | None, str, str, int]] = []
    if level == "sentence":
        by_text: dict[str, str] = {}
        for i in lines:
            did = by_text.get(d_text[i])
            if did is None:
                did = by_text[d_text[i]] = f"S{i:04d}"
                docs.append(Doc(did, d_text[i]))
            qrels.append((None, f"L{i:04d}", did, 1))
    else:
        grouped: dict[str, list[str]] = {}
        for i in lines:
            grouped.setdefault(doc_ids[i], []).append(d_text[i])
        docs = [Doc(f"D-{d}", " ".join(sents)) for d, sents in grouped.items()]
        qrels = [(None, f"L{i:04d}", f"D-{doc_ids[i]}", 1) for i in lines]
    return build_collection(queries, Corpus.from_docs(docs), qrels)


# --------------------------------------------------------------------------- AfriQA


def _json_lines(path: Path) -> list[dict]:
    """JSON Lines, tolerant of a missing final newline; DataError names a bad line."""
    out = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: line {lineno}: not JSON ({exc.msg})") from None
    return out


def afriqa_rows(shared: str | os.PathLike | None) -> dict[tuple[str, str], list[dict]]:
    """Gold-passage rows with a context, per (language, split), English pivot files."""
    base = shared_data_dir(shared) / "afriqa" / "data" / "gold_passages"
    if not base.is_dir():
        raise DataError(f"AfriQA gold passages not found: {base}")
    out: dict[tuple[str, str], list[dict]] = {}
    for path in sorted(base.glob("*/gold_span_passages.afriqa.*.en.*.json")):
        lang, split = path.parent.name, path.name.split(".")[-2]
        rows = [r for r in _json_lines(path) if r.get("context") and r.get("question_lang")]
        out[(canonical_lang(lang), split)] = rows
    return out


def afriqa_collection(
    lang: str,
    split: str,
    shared: str | os.PathLike | None = None,
) -> Collection:
    """AfriQA: ``lang`` questions (``question_lang``) of ``split`` retrieve their English
    gold passage among the pool of every gold passage of the sample (all languages and
    splits, each distinct text once; rows with a null context dropped)."""
    _check_split(split)
    xx = canonical_lang(lang)
    rows = afriqa_rows(shared)
    if (xx, split) not in rows:
        have = sorted(f"{k[0]}/{k[1]}" for k in rows)
        raise DataError(
            f"AfriQA has no English gold passages for {xx} {split} (present: {', '.join(have)})"
        )
    pool: dict[str, Doc] = {}
    for key in sorted(rows):
        for r in rows[key]:
            text = " ".join(r["context"].split())
            if text not in pool:
                pool[text] = Doc(f"P{len(pool):05d}", text, (r.get("title") or "").strip())
    queries, qrels = {}, []
    for r in rows[(xx, split)]:
        qid = f"{xx}-{split}-{r['id']}"
        queries[qid] = " ".join(str(r["question_lang"]).split())
        qrels.append((None, qid, pool[" ".join(r["context"].split())].docid, 1))
    return build_collection(queries, Corpus.from_docs(pool.values()), qrels)


# --------------------------------------------------------------------------- XQuAD-R


def _xquad(lang: str, shared: str | os.PathLike | None) -> list[dict]:
    code = XQUAD_CODES.get(canonical_lang(lang))
    if code is None:
        raise DataError(f"XQuAD-R language {lang!r}: allowed {', '.join(XQUAD_CODES)}")
    path = _need(shared_data_dir(shared) / "xquad_r" / "xquad-r" / f"{code}.json", "XQuAD-R")
    return json.loads(path.read_text(encoding="utf-8"))["data"]


def xquad_r_collection(
    qlang: str,
    dlang: str,
    split: str,
    *,
    shared: str | os.PathLike | None = None,
    dev_fraction: float = 0.3,
) -> Collection:
    """XQuAD-R: ``qlang`` questions retrieve the ``dlang`` sentence that holds the answer
    (its ``answer_start`` inside the sentence's ``sentence_breaks`` span), among all
    ``dlang`` sentences of the split's articles (split by article title)."""
    _check_split(split)
    qdata, ddata = _xquad(qlang, shared), _xquad(dlang, shared)
    if len(qdata) != len(ddata):
        raise DataError(f"XQuAD-R {qlang} and {dlang} have different article counts")
    titles = [a["title"] for a in ddata]
    n_dev = max(1, round(dev_fraction * len(titles)))
    keep = set(
        _stable_order(str(i) for i in range(len(titles)))[:n_dev]
        if split == "dev"
        else _stable_order(str(i) for i in range(len(titles)))[n_dev:]
    )
    queries, docs, qrels = {}, [], []
    for ai, (qa_art, d_art) in enumerate(zip(qdata, ddata)):
        if str(ai) not in keep:
            continue
        for pi, (qp, dp) in enumerate(zip(qa_art["paragraphs"], d_art["paragraphs"])):
            breaks = dp["sentence_breaks"]
            for si, (s, e) in enumerate(breaks):
                docs.append(Doc(f"a{ai}p{pi}s{si}", dp["context"][s:e].strip()))
            answers = {qa["id"]: qa["answers"][0]["answer_start"] for qa in dp["qas"]}
            for qa in qp["qas"]:
                start = answers.get(qa["id"])
                if start is None:
                    continue
                queries[qa["id"]] = qa["question"].strip()
                hit = next((si for si, (s, e) in enumerate(breaks) if s <= start < e + 1), None)
                if hit is not None:
                    qrels.append((None, qa["id"], f"a{ai}p{pi}s{hit}", 1))
    return build_collection(
        queries, Corpus.from_docs(d for d in docs if d.text), qrels, strict=False
    )


# --------------------------------------------------------------------------- English teacher


def ict_pair(
    sentence: str, fraction: float = 1 / 3, keep_every: int = 10, min_words: int = 12
) -> tuple[str, str] | None:
    """An inverse-cloze pair (Lee, Chang & Toutanova 2019) from one sentence: a
    contiguous span of ``fraction`` of its words is the query, the sentence without it
    the document. Every ``keep_every``-th sentence (by hash) keeps the span in its
    document, as Lee et al. keep the query sentence in 10 % of contexts, so word
    matching is still rewarded. The span's place is fixed by the sentence's SHA-1:
    the pairs are the same in every run. None for sentences under ``min_words`` words."""
    words = sentence.split()
    if len(words) < min_words:
        return None
    h = int(hashlib.sha1(sentence.encode("utf-8")).hexdigest(), 16)
    n = max(3, round(fraction * len(words)))
    start = h % (len(words) - n + 1)
    query = " ".join(words[start : start + n])
    keep = keep_every > 0 and (h // 7919) % keep_every == 0
    doc = sentence.strip() if keep else " ".join(words[:start] + words[start + n :])
    return query, doc


def english_rank_collection(
    shared: str | os.PathLike | None = None, *, ict_sentences: int = 12000
) -> Collection:
    """English question -> passage training data for a late-interaction English
    teacher, from the *train* splits of the shared data only (NTREX, XQuAD-R and every
    dev/test split are left for evaluation):

    - AfriQA: the English translation of each train question (``question_translated``)
      -> its English Wikipedia gold passage (with its title), among the train passages;
    - MAFAND-MT: up to ``ict_sentences`` distinct English train sentences (of every
      ``en-xx`` pair present, in :func:`_stable_order`) as inverse-cloze pairs
      (:func:`ict_pair`): a span of the sentence -> the rest of it.

    Query ids are ``afriqa-<lang>-<id>`` and ``ict-<n>``; every query has one relevant
    document. DataError when neither source has a train split.
    """
    src = shared_data_dir(shared)
    queries: dict[str, str] = {}
    docs: dict[str, Doc] = {}
    qrels: list[tuple[int | None, str, str, int]] = []

    def add(qid: str, query: str, text: str, title: str = "") -> None:
        key = f"{title}\t{text}"
        doc = docs.get(key)
        if doc is None:
            doc = docs[key] = Doc(f"T{len(docs):06d}", text, title)
        queries[qid] = query
        qrels.append((None, qid, doc.docid, 1))

    base = src / "afriqa" / "data" / "gold_passages"
    for path in sorted(base.glob("*/gold_span_passages.afriqa.*.en.train.json")):
        lang = canonical_lang(path.parent.name)
        for r in _json_lines(path):
            query = " ".join(str(r.get("question_translated") or "").split())
            if r.get("context") and query:
                add(
                    f"afriqa-{lang}-{r['id']}",
                    query,
                    " ".join(r["context"].split()),
                    (r.get("title") or "").strip(),
                )
    sentences: list[str] = []
    text_files = src / "mafand_mt" / "data" / "text_files"
    for pair_dir in sorted(text_files.glob("en-*")) if text_files.is_dir() else []:
        if (pair_dir / "train.en").is_file():
            sentences += [
                s.strip() for s in read_lines(pair_dir / "train.en", fmt="txt") if s.strip()
            ]
    n = 0
    for sentence in _stable_order(sentences):
        if n >= ict_sentences:
            break
        pair = ict_pair(sentence)
        if pair is not None:
            add(f"ict-{n}", *pair)
            n += 1
    if not queries:
        raise DataError(
            f"no English training pairs in {src}: expected AfriQA train gold "
            "passages (afriqa/data/gold_passages/<lang>/...en.train.json) or "
            "MAFAND-MT train.en files"
        )
    return build_collection(queries, Corpus.from_docs(docs.values()), qrels)


def real_rank_collection(fmt: str, shared: str | os.PathLike | None = None) -> Collection:
    """The ranking training collection a config source ``{format: english_train}`` names."""
    if fmt != "english_train":
        raise DataError(f"format {fmt!r} is not a ranking format; allowed: english_train")
    return english_rank_collection(shared)


# --------------------------------------------------------------------------- sources


def _task_langs(pair: str) -> tuple[str, str]:
    """Languages of a task name: ``swa-en_doc`` -> ``(swa, en)`` (suffix after ``_``)."""
    q, d = parse_pair(pair)
    return canonical_lang(q.split("_")[0]), canonical_lang(d.split("_")[0])


def real_eval_collection(
    fmt: str, pair: str, split: str, shared: str | os.PathLike | None = None
) -> Collection:
    """The collection a config source ``{format: <fmt>, path: <shared>}`` names for
    ``pair`` (languages before any ``_suffix``: ``swa-en_doc`` is Swahili -> English)."""
    q, d = _task_langs(pair)
    if fmt == "ntrex":
        return ntrex_collection(q, d, split, shared=shared)
    if fmt == "ntrex_doc":
        return ntrex_collection(q, d, split, level="document", shared=shared)
    if fmt == "afriqa":
        if d != "en":
            raise DataError(f"AfriQA pair {pair!r}: documents are English (e.g. hau-en)")
        return afriqa_collection(q, split, shared)
    if fmt == "xquad_r":
        return xquad_r_collection(q, d, split, shared=shared)
    raise DataError(
        f"format {fmt!r} is not an evaluation format; allowed: ntrex, ntrex_doc, afriqa, xquad_r"
    )


def real_bitext(
    fmt: str, pair: str, split: str = "train", shared: str | os.PathLike | None = None
) -> list[tuple[str, str]]:
    """Bitext a config source ``{format: mafand}`` names: ``(english, foreign)`` pairs."""
    if fmt != "mafand":
        raise DataError(f"format {fmt!r} is not a bitext format; allowed: mafand")
    q, d = _task_langs(pair)
    return mafand_bitext(d if q == "en" else q, split, shared)


def real_mono(fmt: str, lang: str, shared: str | os.PathLike | None = None) -> list[str]:
    """Monolingual ``lang`` text a config source ``data.mono.<lang>: {format: mafand}``
    names: the foreign side of MAFAND-MT's *train* split, one text per sentence pair
    (dev and test sentences are held out for evaluation, so never read here)."""
    if fmt != "mafand":
        raise DataError(f"format {fmt!r} is not a monolingual format; allowed: mafand")
    return [foreign for _, foreign in mafand_bitext(lang, "train", shared)]
