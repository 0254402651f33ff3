"""The description of a synthetic world: how each foreign language is derived from
English (:class:`LanguageSpec`, the named :data:`LANGUAGE_PRESETS`), how big the world
is (:class:`WorldScale`, :data:`SCALES`) and what a written world's ``manifest.json``
says (:class:`WorldManifest`, :func:`load_manifest`). The generator that writes a world
is :mod:`optical_ray.data.synthetic`; its languages' text, :mod:`optical_ray.data.synthtext`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from optical_ray.errors import DataError

__all__ = [
    "LanguageSpec",
    "LANGUAGE_PRESETS",
    "WorldScale",
    "SCALES",
    "WorldManifest",
    "load_manifest",
    "MANIFEST_VERSION",
    "SPLITS",
]

MANIFEST_VERSION = 1
SPLITS = ("dev", "test")


@dataclass(frozen=True)
class LanguageSpec:
    """How a foreign language is derived from English (one named preset each).

    Lexicon: every English content and function word maps to a pseudo-word built from
    ``onsets`` x ``vowels`` x ``codas`` with ``syllables`` syllables, except a
    ``cognate_rate`` fraction kept in its English form (shared surface forms and
    subwords), and a ``synonym_rate`` fraction that gets two translations used at random.
    Morphology: nouns take ``case_suffixes`` (subject, object, oblique), verbs
    ``verb_suffix``, adjectives ``adjective_suffix``; names and numbers never change.
    Word order: ``verb_final`` (SOV instead of SVO), ``adjective_after_noun``,
    ``postpositions``; ``articles=False`` drops "the"/"a". Noise, per token:
    ``drop_rate`` (function words), ``insert_rate`` (a particle), ``swap_rate``
    (adjacent swap), ``typo_rate`` (one character edit in a content word).
    ``tier`` picks the default bitext size from the scale (high / medium / low).
    """

    code: str
    description: str
    onsets: tuple[str, ...]
    vowels: tuple[str, ...]
    codas: tuple[str, ...]
    syllables: tuple[int, int] = (1, 3)
    cognate_rate: float = 0.0
    synonym_rate: float = 0.0
    case_suffixes: tuple[str, str, str] = ("", "", "")
    verb_suffix: str = ""
    adjective_suffix: str = ""
    verb_final: bool = False
    adjective_after_noun: bool = False
    postpositions: bool = False
    articles: bool = True
    particles: tuple[str, ...] = ()
    drop_rate: float = 0.0
    insert_rate: float = 0.0
    swap_rate: float = 0.0
    typo_rate: float = 0.0
    tier: str = "low"

    def problems(self) -> list[str]:
        """Every problem with this spec, one line each (empty when valid)."""
        out = []
        if len(self.code) != 2 or not self.code.isalpha() or not self.code.islower():
            out.append(f"language code {self.code!r}: must be two lowercase letters")
        if self.code == "en":
            out.append("language code 'en': is English itself; pick another code")
        for name in (
            "cognate_rate",
            "synonym_rate",
            "drop_rate",
            "insert_rate",
            "swap_rate",
            "typo_rate",
        ):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                out.append(f"{self.code}.{name}={v!r}: must be in [0, 1]")
        lo, hi = self.syllables
        if not 1 <= lo <= hi:
            out.append(f"{self.code}.syllables={self.syllables!r}: need 1 <= min <= max")
        if not self.onsets or not self.vowels or not self.codas:
            out.append(f"{self.code}: onsets, vowels and codas must be non-empty")
        if self.tier not in ("high", "medium", "low"):
            out.append(f"{self.code}.tier={self.tier!r}: must be 'high', 'medium' or 'low'")
        if self.insert_rate > 0 and not self.particles:
            out.append(f"{self.code}.insert_rate={self.insert_rate}: needs particles")
        return out


LANGUAGE_PRESETS: dict[str, LanguageSpec] = {
    spec.code: spec
    for spec in (
        LanguageSpec(
            code="xa",
            description="easy: Romance-like, half the words are cognates, "
            "SVO with adjectives after nouns, no inflection, little noise",
            onsets=("b", "c", "d", "f", "g", "l", "m", "n", "p", "r", "s", "t", "v", "pr", "tr"),
            vowels=("a", "e", "i", "o", "u"),
            codas=("", "", "", "n", "r", "s", "l"),
            syllables=(2, 3),
            cognate_rate=0.5,
            synonym_rate=0.0,
            adjective_after_noun=True,
            drop_rate=0.03,
            typo_rate=0.01,
            tier="high",
        ),
        LanguageSpec(
            code="xb",
            description="medium: Slavic-like, 15% cognates, case suffixes on objects and "
            "obliques, verb suffix, some synonyms and noise",
            onsets=("b", "d", "g", "k", "l", "m", "n", "r", "s", "t", "v", "z", "sh", "kr", "dv"),
            vowels=("a", "e", "i", "o", "u", "y"),
            codas=("", "", "k", "t", "v", "sh", "n"),
            syllables=(2, 3),
            cognate_rate=0.15,
            synonym_rate=0.1,
            case_suffixes=("", "em", "u"),
            verb_suffix="at",
            articles=False,
            drop_rate=0.08,
            swap_rate=0.04,
            typo_rate=0.02,
            tier="medium",
        ),
        LanguageSpec(
            code="xc",
            description="hard: agglutinative SOV with postpositions and no "
            "articles, disjoint syllables, no cognates (only names and numbers are "
            "shared), case and verb suffixes, synonyms and noise",
            onsets=("k", "q", "x", "z", "j", "w", "h", "kh", "ts", "ng"),
            vowels=("u", "o", "y", "a", "i", "uu"),
            codas=("", "", "q", "x", "k", "ng"),
            syllables=(2, 3),
            cognate_rate=0.0,
            synonym_rate=0.15,
            case_suffixes=("wa", "zo", "qi"),
            verb_suffix="hux",
            adjective_suffix="ny",
            verb_final=True,
            postpositions=True,
            articles=False,
            particles=("jo", "ku", "xe"),
            drop_rate=0.1,
            insert_rate=0.04,
            swap_rate=0.05,
            typo_rate=0.04,
            tier="low",
        ),
    )
}


@dataclass(frozen=True)
class WorldScale:
    """Sizes of a world. ``bitext`` maps a language tier to its default pair count;
    a language is ``"high"``-resource when its bitext has >= ``high_resource_min`` pairs."""

    name: str
    n_topics: int
    topic_words: tuple[int, int, int]  # nouns, verbs, adjectives per topic
    general_words: tuple[int, int, int]  # nouns, verbs, adjectives shared by all topics
    n_names: int
    n_numbers: int
    train_corpus: int
    train_queries: int
    negatives: int
    eval_corpus: int
    eval_queries: int
    bitext: Mapping[str, int]
    bitext_dev: int
    high_resource_min: int
    mono: int
    tokenizer_vocab: int


SCALES: dict[str, WorldScale] = {
    "tiny": WorldScale(
        name="tiny",
        n_topics=8,
        topic_words=(10, 4, 4),
        general_words=(12, 6, 6),
        n_names=40,
        n_numbers=30,
        train_corpus=200,
        train_queries=100,
        negatives=2,
        eval_corpus=120,
        eval_queries=40,
        bitext={"high": 1000, "medium": 600, "low": 400},
        bitext_dev=50,
        high_resource_min=600,
        mono=60,
        tokenizer_vocab=600,
    ),
    "default": WorldScale(
        name="default",
        n_topics=40,
        topic_words=(24, 10, 10),
        general_words=(60, 30, 30),
        n_names=300,
        n_numbers=200,
        train_corpus=10000,
        train_queries=5000,
        negatives=4,
        eval_corpus=1000,
        eval_queries=200,
        bitext={"high": 20000, "medium": 5000, "low": 1000},
        bitext_dev=500,
        high_resource_min=5000,
        mono=2000,
        tokenizer_vocab=6000,
    ),
}


@dataclass(frozen=True)
class WorldManifest:
    """What ``manifest.json`` of a world says, plus where the world lives (``root``)."""

    root: Path
    seed: int
    scale: str
    languages: dict[str, dict[str, Any]]
    pairs: tuple[str, ...]
    sizes: dict[str, Any]
    kind: str = "synthetic"
    version: int = MANIFEST_VERSION

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (``root`` left out: a world can be moved)."""
        return {
            "kind": self.kind,
            "version": self.version,
            "seed": self.seed,
            "scale": self.scale,
            "languages": self.languages,
            "pairs": list(self.pairs),
            "sizes": self.sizes,
        }

    @property
    def tokenizer_dir(self) -> Path:
        return self.root / "tokenizer"

    @property
    def train_dir(self) -> Path:
        return self.root / "train" / "en"

    def eval_dir(self, pair: str, split: str) -> Path:
        """``eval/<qlang>-<dlang>/<split>``; raises DataError for an unknown pair/split."""
        if pair not in self.pairs:
            raise DataError(f"pair {pair!r} is not in this world; it has {list(self.pairs)}")
        if split not in SPLITS:
            raise DataError(f"split {split!r} is unknown; allowed: {list(SPLITS)}")
        return self.root / "eval" / pair / split

    def bitext_path(self, lang: str, split: str = "train") -> Path:
        if lang not in self.languages:
            raise DataError(
                f"language {lang!r} has no bitext; this world has {list(self.languages)}"
            )
        if split not in ("train", "dev"):
            raise DataError(f"bitext split {split!r} is unknown; allowed: ['train', 'dev']")
        return self.root / "bitext" / f"en-{lang}" / f"{split}.tsv"

    def mono_path(self, lang: str) -> Path:
        if lang != "en" and lang not in self.languages:
            raise DataError(
                f"language {lang!r} is not in this world; it has {['en', *self.languages]}"
            )
        return self.root / "mono" / f"{lang}.txt"

    def languages_by_resource(self, resource: str) -> list[str]:
        """Foreign languages whose bitext makes them ``"high"`` or ``"low"`` resource."""
        return [c for c, info in self.languages.items() if info["resource"] == resource]


def load_manifest(root: str | Path) -> WorldManifest:
    """Read ``<root>/manifest.json``; DataError if it is missing or not a world's."""
    root = Path(root)
    path = root / "manifest.json"
    if not path.is_file():
        raise DataError(f"{path} not found: not a synthetic world (make one with synthesize_world)")
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DataError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(d, dict) or d.get("kind") != "synthetic":
        kind = d.get("kind") if isinstance(d, dict) else type(d).__name__
        raise DataError(f"{path}: kind={kind!r}, expected 'synthetic'")
    if d.get("version") != MANIFEST_VERSION:
        raise DataError(
            f"{path}: version={d.get('version')!r}, this code reads version {MANIFEST_VERSION}"
        )
    missing = [k for k in ("seed", "scale", "languages", "pairs", "sizes") if k not in d]
    if missing:
        raise DataError(f"{path}: missing keys {missing}")
    return WorldManifest(
        root=root,
        seed=d["seed"],
        scale=d["scale"],
        languages=d["languages"],
        pairs=tuple(d["pairs"]),
        sizes=d["sizes"],
        kind=d["kind"],
        version=d["version"],
    )
