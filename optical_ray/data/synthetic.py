"""A synthetic multilingual CLIR world, learnable on a laptop CPU in minutes.

English is a small topical language: ``n_topics`` topics with their own nouns, verbs and
adjectives (Zipf-distributed, so rare words identify a passage), shared general words,
real English function words, and *names* and *numbers*. Foreign languages are derived
from English by a per-language lexicon (pseudo-words from the language's own syllable
inventory), morphology, word order and noise, with the difficulty set by named presets
(:data:`LANGUAGE_PRESETS`). Names and numbers stay unchanged in every language, as real
named entities do: they are the floor of zero-shot lexical transfer. What a world is
(language specs, scales, the manifest) lives in :mod:`optical_ray.data.world`, its text
in :mod:`optical_ray.data.synthtext`; this module writes it.

Every eval collection is built from the SAME English passages and queries for every
language (same docids, qids and qrels), so the per-language gap is a paired comparison.
Each data stream has its own RNG keyed by ``(seed, stream name)``: the same seed gives
byte-identical files, and adding a language changes no other language's data files
(only the shared tokenizer and the manifest).

Layout written by :func:`synthesize_world` (see the world's ``README.md``)::

    manifest.json  README.md  tokenizer/
    train/en/{queries.tsv,corpus.jsonl,qrels.txt,triples.jsonl}
    bitext/en-<xx>/{train,dev}.tsv          English<TAB>foreign
    mono/<lang>.txt
    eval/<qlang>-<dlang>/{dev,test}/{queries.tsv,corpus.jsonl,qrels.txt}
"""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

from optical_ray.data.formats import (
    write_bitext,
    write_corpus,
    write_lines,
    write_qrels,
    write_queries,
    write_triples,
)
from optical_ray.data.synthtext import (
    FUNCTION_WORDS,
    english_text,
    hard_negatives,
    make_collection,
    make_english,
    make_language,
    make_passage,
    snippet,
    translate,
    translate_query,
)
from optical_ray.data.world import (
    LANGUAGE_PRESETS,
    SCALES,
    SPLITS,
    LanguageSpec,
    WorldManifest,
    WorldScale,
    load_manifest,
)
from optical_ray.errors import ConfigError, DataError

__all__ = [
    "LanguageSpec",
    "LANGUAGE_PRESETS",
    "WorldScale",
    "SCALES",
    "WorldManifest",
    "synthesize_world",
    "load_manifest",
]

# Entries a world owns in its root; overwrite=True removes only these.
_WORLD_ENTRIES = ("manifest.json", "README.md", "tokenizer", "train", "bitext", "mono", "eval")


# ------------------------------------------------------------------------------ world


def _resolve(
    languages, bitext_sizes, scale: str
) -> tuple[WorldScale, list[LanguageSpec], dict[str, int]]:
    problems: list[str] = []
    if scale not in SCALES:
        raise ConfigError(f"scale={scale!r} is unknown; allowed: {sorted(SCALES)}")
    sc = SCALES[scale]
    specs: list[LanguageSpec] = []
    for item in list(LANGUAGE_PRESETS) if languages is None else languages:
        if isinstance(item, LanguageSpec):
            problems += item.problems()
            spec = item
        elif item in LANGUAGE_PRESETS:
            spec = LANGUAGE_PRESETS[item]
        else:
            problems.append(
                f"language {item!r} is unknown; presets: {sorted(LANGUAGE_PRESETS)} "
                "(or pass a LanguageSpec)"
            )
            continue
        if spec.code in [s.code for s in specs]:
            problems.append(f"language {spec.code!r} is given twice")
        specs.append(spec)
    sizes = {s.code: sc.bitext[s.tier] for s in specs}
    for code, n in (bitext_sizes or {}).items():
        if code not in sizes:
            problems.append(f"bitext_sizes[{code!r}]: not a language of this world {sorted(sizes)}")
        elif isinstance(n, bool) or not isinstance(n, int) or n < 1:
            problems.append(f"bitext_sizes[{code!r}]={n!r}: must be a positive integer")
        else:
            sizes[code] = n
    if problems:
        raise ConfigError(problems)
    return sc, specs, sizes


def _prepare_dir(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise DataError(f"out_dir {out} is a file; give a directory")
    if out.exists():
        present = [e for e in _WORLD_ENTRIES if (out / e).exists()]
        if present and not overwrite:
            raise DataError(
                f"out_dir {out} already holds a world ({present}); pass overwrite=True "
                "(CLI: --overwrite) or choose an empty directory"
            )
        for e in present:
            p = out / e
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    out.mkdir(parents=True, exist_ok=True)


def synthesize_world(
    out_dir: str | Path,
    *,
    seed: int = 0,
    languages: Sequence[str | LanguageSpec] | None = None,
    bitext_sizes: Mapping[str, int] | None = None,
    scale: str = "default",
    overwrite: bool = False,
) -> WorldManifest:
    """Write a synthetic multilingual CLIR world to ``out_dir`` (layout in the module doc).

    ``languages`` picks foreign presets (default: all of :data:`LANGUAGE_PRESETS`) or
    custom :class:`LanguageSpec`; ``bitext_sizes`` overrides the per-tier default number
    of bitext training pairs (``{"xa": 20000, "xc": 1000}``); ``scale`` is ``"tiny"``
    (unit tests, < 2 s) or ``"default"``. The same arguments give byte-identical files.
    ``manifest.json`` is written last, so a world without one is incomplete.
    """
    from optical_ray.models.tiny import train_tokenizer  # tiny imports transformers: keep it lazy

    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"seed={seed!r}: must be an integer")
    sc, specs, bitext_n = _resolve(languages, bitext_sizes, scale)
    out = Path(out_dir)
    _prepare_dir(out, overwrite)
    eng = make_english(seed, sc)
    langs = {s.code: make_language(seed, s, eng) for s in specs}
    texts: list[str] = []  # everything written, for the tokenizer

    def lines(items: list[str]) -> list[str]:
        texts.extend(items)
        return items

    # English ranking training data
    train = make_collection(
        random.Random(f"{seed}:train"), eng, "train", sc.train_corpus, sc.train_queries
    )
    tdir = out / "train" / "en"
    write_queries(
        tdir / "queries.tsv",
        dict(
            zip(
                [q for q, _ in train.queries],
                lines([" ".join(t for t, _ in q) for _, q in train.queries]),
            )
        ),
    )
    write_corpus(
        tdir / "corpus.jsonl",
        (
            {"docid": d, "text": t}
            for (d, _, _), t in zip(train.docs, lines([english_text(s) for _, _, s in train.docs]))
        ),
    )
    write_qrels(tdir / "qrels.txt", train.qrels)
    n_triples = write_triples(
        tdir / "triples.jsonl",
        hard_negatives(random.Random(f"{seed}:negatives"), train, sc.negatives),
    )

    # Evaluation collections: one English collection per split, translated per language
    pairs = ["en-en"] + [p for c in langs for p in (f"en-{c}", f"{c}-en")]
    for split in SPLITS:
        coll = make_collection(
            random.Random(f"{seed}:eval:{split}"), eng, split, sc.eval_corpus, sc.eval_queries
        )
        en_docs = lines([english_text(s) for _, _, s in coll.docs])
        en_queries = lines([" ".join(t for t, _ in q) for _, q in coll.queries])
        qids = [q for q, _ in coll.queries]
        docids = [d for d, _, _ in coll.docs]
        variants = {"en": (en_queries, en_docs)}
        for code, lang in langs.items():
            rng = random.Random(f"{seed}:eval:{split}:{code}")
            variants[code] = (
                lines([translate_query(lang, rng, q) for _, q in coll.queries]),
                lines([translate(lang, rng, s) for _, _, s in coll.docs]),
            )
        for pair in pairs:
            ql, dl = pair.split("-")
            d = out / "eval" / pair / split
            write_queries(d / "queries.tsv", dict(zip(qids, variants[ql][0])))
            write_corpus(
                d / "corpus.jsonl",
                ({"docid": i, "text": t} for i, t in zip(docids, variants[dl][1])),
            )
            write_qrels(d / "qrels.txt", coll.qrels)

    # Bitext (English side from the generator, never the eval passages) and mono text
    for code, lang in langs.items():
        rng = random.Random(f"{seed}:bitext:{code}")
        for split, n in (("train", bitext_n[code]), ("dev", sc.bitext_dev)):
            snippets = [snippet(rng, eng) for _ in range(n)]
            src = lines([english_text(s) for s in snippets])
            tgt = lines([translate(lang, rng, s) for s in snippets])
            write_bitext(out / "bitext" / f"en-{code}" / f"{split}.tsv", zip(src, tgt))
    for code in ["en", *langs]:
        rng = random.Random(f"{seed}:mono:{code}")
        passages = [make_passage(rng, eng, rng.randrange(sc.n_topics)) for _ in range(sc.mono)]
        rendered = [
            english_text(p) if code == "en" else translate(langs[code], rng, p) for p in passages
        ]
        write_lines(out / "mono" / f"{code}.txt", lines(rendered))

    tokenizer = train_tokenizer(texts, out / "tokenizer", vocab_size=sc.tokenizer_vocab)

    language_info = {
        s.code: {
            **{f.name: _jsonable(getattr(s, f.name)) for f in fields(s)},
            "bitext_size": bitext_n[s.code],
            "resource": "high" if bitext_n[s.code] >= sc.high_resource_min else "low",
        }
        for s in specs
    }
    sizes = {
        "vocabulary": {
            "topics": sc.n_topics,
            "content_words": len(eng.content_words()),
            "function_words": len(FUNCTION_WORDS),
            "names": len(eng.names),
            "numbers": len(eng.numbers),
        },
        "train": {
            "queries": len(train.queries),
            "corpus": len(train.docs),
            "triples": n_triples,
            "negatives_per_query": sc.negatives,
        },
        "eval": {split: {"queries": sc.eval_queries, "corpus": sc.eval_corpus} for split in SPLITS},
        "bitext": {c: {"train": bitext_n[c], "dev": sc.bitext_dev} for c in langs},
        "mono": {c: sc.mono for c in ["en", *langs]},
        "tokenizer_vocab": len(tokenizer),
    }
    manifest = WorldManifest(
        root=out, seed=seed, scale=sc.name, languages=language_info, pairs=tuple(pairs), sizes=sizes
    )
    (out / "README.md").write_text(_readme(manifest, specs, sc), encoding="utf-8")
    (out / "manifest.json").write_text(
        json.dumps(manifest.to_dict(), indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )
    return manifest


def _jsonable(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


def _readme(m: WorldManifest, specs: list[LanguageSpec], sc: WorldScale) -> str:
    rows = "\n".join(
        f"| `{s.code}` | {m.languages[s.code]['resource']} | {m.languages[s.code]['bitext_size']} "
        f"| {s.cognate_rate:.2f} | {'SOV' if s.verb_final else 'SVO'} | {s.description} |"
        for s in specs
    )
    return f"""# Synthetic multilingual CLIR world

Made by `optical_ray.data.synthetic.synthesize_world(seed={m.seed}, scale={sc.name!r})`;
the same call writes byte-identical files. English has {sc.n_topics} topics with their own
words, shared general words, function words, {sc.n_names} names and
{sc.n_numbers} numbers; names and numbers are the same in every language. Each foreign
language is English through a lexicon of pseudo-words, morphology, word order and noise.

| code | resource | bitext pairs | cognates | order | description |
|---|---|---|---|---|---|
{rows}

Layout:

- `train/en/` English ranking data: `queries.tsv`, `corpus.jsonl`, `qrels.txt`,
  `triples.jsonl` ({sc.negatives} hard negatives per query: same-topic passages sharing
  the most query words).
- `bitext/en-<xx>/{{train,dev}}.tsv` English<TAB>foreign (not eval passages).
- `mono/<lang>.txt` unlabelled passages, one per line.
- `eval/<qlang>-<dlang>/{{dev,test}}/` {sc.eval_queries} queries over {sc.eval_corpus}
  passages per split; every pair is a translation of the same English collection, with
  the same qids, docids and qrels (a query's source passage, plus any passage holding
  all of its words).
- `tokenizer/` WordPiece tokenizer trained on all of the text above.

Pairs: {", ".join(m.pairs)}.
"""
