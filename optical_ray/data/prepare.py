"""``optical-ray data prepare-real``: the shared real-data samples written as a dataset
root in the standard layout (bitext, every evaluation task, a manifest), read by the
loaders of :mod:`optical_ray.data.real`."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from optical_ray.data.collection import Collection
from optical_ray.data.formats import write_bitext, write_corpus, write_qrels, write_queries
from optical_ray.data.real import (
    EVAL_SPLITS,
    HIGH_RESOURCE,
    LOW_RESOURCE,
    XQUAD_CODES,
    afriqa_collection,
    afriqa_rows,
    canonical_lang,
    mafand_bitext,
    mafand_languages,
    ntrex_collection,
    ntrex_languages,
    shared_data_dir,
    xquad_r_collection,
)
from optical_ray.errors import DataError

__all__ = ["prepare_real"]


def _write_collection(col: Collection, out: Path) -> dict[str, int]:
    write_queries(out / "queries.tsv", col.queries)
    write_corpus(out / "corpus.jsonl", col.corpus)
    write_qrels(out / "qrels.txt", col.qrels)
    return col.counts()


def prepare_real(
    out: str | os.PathLike,
    *,
    shared: str | os.PathLike | None = None,
    languages: Sequence[str] = LOW_RESOURCE,
    reference: Sequence[str] = HIGH_RESOURCE,
    dev_fraction: float = 0.3,
) -> dict:
    """Write a dataset root in the standard layout from the shared data folder.

    For every low-resource language ``xx`` in ``languages``: ``bitext/en-xx/{train,dev,
    test}.tsv`` (MAFAND-MT) and the evaluation tasks ``eval/<task>/{dev,test}/``:
    ``xx-en`` / ``en-xx`` (NTREX sentences), ``xx-en_doc`` / ``en-xx_doc`` (NTREX
    sentence -> document), ``xx-en_afriqa`` (AfriQA; splits that have gold passages).
    For each ``reference`` language: ``yy-en``, ``en-yy``, ``yy-en_doc``; plus
    ``en-en`` (NTREX English -> English, the teacher's ceiling) and XQuAD-R
    ``deu-en_xquadr``, ``spa-en_xquadr``, ``en-en_xquadr`` when present. Returns the
    manifest (also written to ``manifest.json``, last).
    """
    root = Path(out)
    src = shared_data_dir(shared)
    langs = [canonical_lang(x) for x in languages]
    refs = [canonical_lang(x) for x in reference]
    bad = [x for x in langs + refs if x == "en"]
    if bad:
        raise DataError("languages/reference: English is the teacher's language; give others")
    missing = [x for x in langs if x not in mafand_languages(src)]
    missing += [x for x in langs + refs if x not in ntrex_languages(src)]
    if missing:
        raise DataError(
            f"languages {', '.join(dict.fromkeys(missing))} have no data in {src}: "
            f"MAFAND-MT bitext for {', '.join(mafand_languages(src)) or 'none'}; "
            f"NTREX-128 for {', '.join(ntrex_languages(src)) or 'none'}"
        )
    root.mkdir(parents=True, exist_ok=True)
    (root / "manifest.json").unlink(missing_ok=True)
    counts: dict[str, dict] = {}
    tasks: dict[str, tuple] = {}
    for xx in langs:
        for split in ("train", "dev", "test"):
            n = write_bitext(
                root / "bitext" / f"en-{xx}" / f"{split}.tsv", mafand_bitext(xx, split, src)
            )
            counts[f"bitext/en-{xx}/{split}"] = {"pairs": n}
        tasks.update(
            {
                f"{xx}-en": ("ntrex", xx, "en"),
                f"en-{xx}": ("ntrex", "en", xx),
                f"{xx}-en_doc": ("ntrex_doc", xx, "en"),
                f"en-{xx}_doc": ("ntrex_doc", "en", xx),
                f"{xx}-en_afriqa": ("afriqa", xx, "en"),
            }
        )
    for yy in refs:
        tasks.update(
            {
                f"{yy}-en": ("ntrex", yy, "en"),
                f"en-{yy}": ("ntrex", "en", yy),
                f"{yy}-en_doc": ("ntrex_doc", yy, "en"),
            }
        )
    tasks["en-en"] = ("ntrex", "en", "en")
    if (src / "xquad_r" / "xquad-r" / "en.json").is_file():
        for q in ("deu", "spa", "en"):
            if (src / "xquad_r" / "xquad-r" / f"{XQUAD_CODES[q]}.json").is_file():
                tasks[f"{q}-en_xquadr"] = ("xquad_r", q, "en")
    # AfriQA covers a few languages only: the others simply get no _afriqa task.
    has_afriqa = (src / "afriqa" / "data" / "gold_passages").is_dir()
    afriqa = afriqa_rows(src) if has_afriqa else {}
    for name, (fmt, q, d) in tasks.items():
        for split in EVAL_SPLITS:
            if fmt == "afriqa" and (q, split) not in afriqa:
                continue  # e.g. Swahili AfriQA has gold passages for test only
            if fmt == "ntrex" or fmt == "ntrex_doc":
                col = ntrex_collection(
                    q,
                    d,
                    split,
                    shared=src,
                    dev_fraction=dev_fraction,
                    level="document" if fmt == "ntrex_doc" else "sentence",
                )
            elif fmt == "afriqa":
                col = afriqa_collection(q, split, src)
            else:
                col = xquad_r_collection(q, d, split, shared=src, dev_fraction=dev_fraction)
            counts[f"eval/{name}/{split}"] = _write_collection(col, root / "eval" / name / split)
    manifest = {
        "kind": "real",
        "source": str(src),
        "languages": langs,
        "reference": refs,
        "pairs": sorted(tasks),
        "dev_fraction": dev_fraction,
        "counts": counts,
    }
    tmp = root / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, root / "manifest.json")
    return manifest
