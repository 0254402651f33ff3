"""Resolve a config to concrete data: which files feed each stage and evaluation.

``cfg.data.root`` is a directory in the standard layout (see
:mod:`optical_ray.data.collection`); when it is ``None`` a synthetic world is generated
once under ``<output_dir>/world/`` and reused. Explicit sources in ``cfg.data.bitext``,
``cfg.data.eval``, ``cfg.data.mono`` and ``cfg.data.rank`` override the layout per pair
or language; a source whose ``format`` is ``hf`` is read through
:mod:`optical_ray.data.hf`, and the formats of the real data samples (``mafand`` for
bitext and monolingual text; ``ntrex``, ``ntrex_doc``, ``afriqa``, ``xquad_r`` for
evaluation; ``english_train`` for ranking) through
:mod:`optical_ray.data.real`, with ``path`` the shared data folder (empty: the
``OPTICAL_RAY_SHARED_DATA`` variable, else ``../shared/data``).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from optical_ray.config import REAL_FORMATS, Config, SourceConfig
from optical_ray.data.collection import Collection, load_collection, parse_pair
from optical_ray.data.formats import iter_bitext, read_lines
from optical_ray.errors import DataError

__all__ = [
    "ensure_data_root",
    "rank_collection",
    "bitext_pairs",
    "mono_texts",
    "eval_collection",
    "world_dir",
]


def world_dir(cfg: Config) -> Path:
    """Where the synthetic world of ``cfg`` lives when ``data.root`` is unset."""
    name = f"seed{cfg.data.synthetic_seed}-{cfg.data.synthetic_scale}"
    return (Path(cfg.output_dir) / "world" / name).resolve()


def ensure_data_root(cfg: Config) -> Path:
    """Return the dataset root, generating the synthetic world on first use.

    Generation writes into a temporary sibling and renames it into place, so concurrent
    trials that race here never see a half-written world.
    """
    if cfg.data.root is not None:
        root = Path(cfg.data.root).expanduser()
        if not root.is_dir():
            raise DataError(
                f"data.root {str(root)!r} is not a directory; give a dataset "
                "root in the standard layout, or leave it unset for the "
                "synthetic world"
            )
        return root.resolve()
    root = world_dir(cfg)
    if (root / "manifest.json").is_file():
        return root
    from optical_ray.data.synthetic import synthesize_world

    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}-", dir=root.parent))
    try:
        synthesize_world(tmp, seed=cfg.data.synthetic_seed, scale=cfg.data.synthetic_scale)
        try:
            os.rename(tmp, root)
        except OSError:
            if not (root / "manifest.json").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return root


def _lookup(sources: dict[str, SourceConfig], *keys: str) -> SourceConfig | None:
    for key in keys:
        if key in sources:
            return sources[key]
    return None


def rank_collection(cfg: Config) -> Collection:
    """The ranking training collection (the teacher's language by default)."""
    src = cfg.data.rank
    if src is not None and src.format in REAL_FORMATS:
        from optical_ray.data.real import real_rank_collection

        return real_rank_collection(src.format, src.path)
    if src is not None and src.format == "hf":
        from optical_ray.data.hf import load_hf_collection

        return load_hf_collection(
            src.path,
            preset=src.preset or "miracl",
            split=src.split,
            field_map=src.field_map or None,
        )
    path = (
        Path(src.path)
        if src is not None
        else ensure_data_root(cfg) / "train" / cfg.data.teacher_lang
    )
    return load_collection(path, strict=False)


def bitext_pairs(
    cfg: Config,
    pair: str | None = None,
    split: str = "train",
) -> list[tuple[str, str]]:
    """Bitext for ``pair`` as ``(teacher_lang_text, foreign_text)`` pairs.

    Either direction of the pair finds the same bitext (``en-sw`` and ``sw-en``): the
    teacher's side always comes first, because the teacher encodes it.
    """
    pair = pair or cfg.pair
    q, d = parse_pair(pair)
    en = cfg.data.teacher_lang
    if en not in (q, d) or q == d:
        raise DataError(
            f"pair {pair!r}: distillation needs bitext between "
            f"{en!r} (data.teacher_lang) and another language"
        )
    xx = d if q == en else q
    src = _lookup(cfg.data.bitext, f"{en}-{xx}", f"{xx}-{en}")
    if src is not None and split != "train" and src.format not in REAL_FORMATS:
        src = None  # a configured file is the train split; other splits from the layout
    if src is not None and src.format in REAL_FORMATS:
        from optical_ray.data.real import real_bitext

        pairs = real_bitext(src.format, f"{en}-{xx}", src.split or split, src.path)
    elif src is not None and src.format == "hf":
        from optical_ray.data.hf import load_hf_bitext

        pairs = load_hf_bitext(
            src.path,
            en,
            xx,
            preset=src.preset or "opus",
            split=src.split,
            field_map=src.field_map or None,
        )
    elif src is not None:
        paths = src.path.split(",")  # "a.en,a.sw": two line-aligned files
        source = (paths[0], paths[1]) if len(paths) == 2 else src.path
        fmt = None if src.format == "auto" else src.format
        pairs = list(iter_bitext(source, fmt=fmt, src_lang=en, tgt_lang=xx))
    else:
        pairs = _layout_bitext(ensure_data_root(cfg), en, xx, split)
    if not pairs:
        raise DataError(f"bitext for {en}-{xx} ({split}) is empty")
    return pairs


def _first_file(folder: Path, names: list[str]) -> Path | None:
    return next((folder / n for n in names if (folder / n).is_file()), None)


def _layout_bitext(root: Path, en: str, xx: str, split: str) -> list[tuple[str, str]]:
    """``split`` bitext from the standard layout, ``en`` side first: in
    ``bitext/<en>-<xx>/`` or ``bitext/<xx>-<en>/``, one ``<split>.tsv`` / ``.jsonl``
    file, or the line-aligned pair ``<split>.<en>`` + ``<split>.<xx>`` (what ``data
    validate`` accepts too)."""
    for a, b in ((en, xx), (xx, en)):
        folder = root / "bitext" / f"{a}-{b}"
        one = _first_file(
            folder, [f"{split}.{ext}{gz}" for ext in ("tsv", "jsonl") for gz in ("", ".gz")]
        )
        if one is not None:
            pairs = iter_bitext(one, src_lang=a, tgt_lang=b)
            return [(s, t) if a == en else (t, s) for s, t in pairs]
        sides = [
            _first_file(folder, [f"{split}.{lang}", f"{split}.{lang}.gz"]) for lang in (en, xx)
        ]
        if sides[0] is not None and sides[1] is not None:
            return list(iter_bitext((sides[0], sides[1])))
        if sides[0] is not None or sides[1] is not None:
            have = next(p for p in sides if p is not None)
            raise DataError(
                f"{have}: line-aligned bitext needs both {split}.{en} and {split}.{xx} in {folder}"
            )
    have = sorted(p.name for p in (root / "bitext").glob("*")) if (root / "bitext").is_dir() else []
    forward = root / "bitext" / f"{en}-{xx}"
    raise DataError(
        f"no {split} bitext for {en}-{xx}: expected {forward}/{split}.tsv or "
        f"{split}.{en} + {split}.{xx} (bitext present: {', '.join(have) or 'none'}); "
        f"or set data.bitext.{en}-{xx}"
    )


def mono_texts(cfg: Config, lang: str) -> list[str]:
    """Unlabelled text in ``lang`` for the ``adapt`` stage: ``data.mono.<lang>`` (a text
    file, one text a line; or ``format: mafand``, MAFAND-MT's train split), else
    ``<root>/mono/<lang>.txt``."""
    src = cfg.data.mono.get(lang)
    if src is not None and src.format in REAL_FORMATS:
        from optical_ray.data.real import real_mono

        return real_mono(src.format, lang, src.path)
    path = Path(src.path) if src is not None else ensure_data_root(cfg) / "mono" / f"{lang}.txt"
    if not path.is_file():
        raise DataError(
            f"no unlabelled text for {lang!r}: expected {path}; or set data.mono.{lang}"
        )
    texts = read_lines(path)
    if not texts:
        raise DataError(f"unlabelled text for {lang!r} is empty: {path}")
    return texts


def eval_collection(cfg: Config, pair: str, split: str | None = None) -> Collection:
    """The evaluation collection of ``pair`` (queries in its first language, documents
    in its second) for ``split`` (default ``cfg.eval.split``)."""
    parse_pair(pair)
    split = split or cfg.eval.split
    src = cfg.data.eval.get(pair)
    if src is not None and src.format in REAL_FORMATS:
        from optical_ray.data.real import real_eval_collection

        return real_eval_collection(src.format, pair, src.split or split, src.path)
    if src is not None and src.format == "hf":
        from optical_ray.data.hf import load_hf_collection

        return load_hf_collection(
            src.path,
            preset=src.preset or "miracl",
            split=src.split or split,
            field_map=src.field_map or None,
        )
    if src is not None:
        path = Path(src.path)
        if (path / split).is_dir():
            path = path / split
    else:
        root = ensure_data_root(cfg)
        path = root / "eval" / pair / split
        if not path.is_dir():
            have = (
                sorted(p.name for p in (root / "eval").glob("*"))
                if (root / "eval").is_dir()
                else []
            )
            raise DataError(
                f"no evaluation collection for {pair!r} ({split}): expected "
                f"{path} (pairs present: {', '.join(have) or 'none'}); or set "
                f"data.eval.{pair}"
            )
    return load_collection(path, strict=False)
