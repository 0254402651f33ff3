"""A tiny fake shared data folder in the layout of ``../shared/data`` (MAFAND-MT and
NTREX-128 only), for tests that need real-data formats but not the real data."""

from __future__ import annotations

from pathlib import Path


def make_fake_shared(
    root: Path,
    langs: tuple[str, ...] = ("swa",),
    reference: tuple[str, ...] = ("deu",),
    *,
    n_docs: int = 10,
    lines_per_doc: int = 2,
    bitext: int = 24,
    tag: str = "",
) -> Path:
    """Write MAFAND ``en-<lang>`` train/dev/test bitext for ``langs`` and NTREX lines
    for English, ``langs`` and ``reference`` (``n_docs`` documents); returns ``root``.
    Line i of every NTREX language is "<lang> sentence i"; bitext pairs likewise."""
    ntrex = root / "ntrex128"
    (ntrex / "NTREX-128").mkdir(parents=True, exist_ok=True)
    n = n_docs * lines_per_doc
    (ntrex / "DOCUMENT_IDS.tsv").write_text(
        "".join(f"doc{i // lines_per_doc}\t{i}\n" for i in range(n)), encoding="utf-8"
    )
    files = {"en": "newstest2019-src.eng.txt"}
    files.update({x: f"newstest2019-ref.{x}.txt" for x in (*langs, *reference)})
    for lang, name in files.items():
        (ntrex / "NTREX-128" / name).write_text(
            "".join(f"{tag}{lang} sentence {i} word{i % 7}\n" for i in range(n)), encoding="utf-8"
        )
    for lang in langs:
        base = root / "mafand_mt" / "data" / "text_files" / f"en-{lang}"
        base.mkdir(parents=True, exist_ok=True)
        for split in ("train", "dev", "test"):
            for side in ("en", lang):
                (base / f"{split}.{side}").write_text(
                    "".join(f"{side} {split} pair {i}\n" for i in range(bitext)), encoding="utf-8"
                )
    return root
