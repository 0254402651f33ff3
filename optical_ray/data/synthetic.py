"""A synthetic multilingual CLIR world, learnable on a laptop CPU in minutes.

English is a small topical language: ``n_topics`` topics with their own nouns, verbs and
adjectives (Zipf-distributed, so rare words identify a passage), shared general words,
real English function words, and *names* and *numbers*. Foreign languages are derived
from English by a per-language lexicon (pseudo-words from the language's own syllable
inventory), morphology, word order and noise, with the difficulty set by named presets
(:data:`LANGUAGE_PRESETS`). Names and numbers stay unchanged in every language, as real
named entities do: they are the floor of zero-shot lexical transfer.

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

import bisect
import json
import random
import shutil
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
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

MANIFEST_VERSION = 1
_SPLITS = ("dev", "test")
# Entries a world owns in its root; overwrite=True removes only these.
_WORLD_ENTRIES = ("manifest.json", "README.md", "tokenizer", "train", "bitext", "mono", "eval")


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
        if split not in _SPLITS:
            raise DataError(f"split {split!r} is unknown; allowed: {list(_SPLITS)}")
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


# --------------------------------------------------------------------------- English

_EN_ONSETS = (
    "b",
    "bl",
    "br",
    "c",
    "ch",
    "cl",
    "cr",
    "d",
    "dr",
    "f",
    "fl",
    "fr",
    "g",
    "gl",
    "gr",
    "h",
    "l",
    "m",
    "n",
    "p",
    "pl",
    "pr",
    "r",
    "s",
    "sh",
    "sl",
    "sp",
    "st",
    "t",
    "th",
    "tr",
    "w",
)
_EN_VOWELS = ("a", "e", "i", "o", "u", "a", "e", "i", "o", "ea", "oo", "ai", "ou")
_EN_CODAS = ("", "", "", "", "n", "r", "l", "s", "t", "nd", "st", "ck", "m", "nt", "rd")
_NAME_ENDINGS = ("a", "en", "ov", "is", "ard", "ia", "ez", "o")
_DETERMINERS = ("the", "a", "this", "each", "some")
_ARTICLES = ("the", "a")
_PREPOSITIONS = ("in", "of", "with", "for", "from", "near", "by", "about")
_QUESTION_WORDS = ("what", "how", "which", "why")
_FUNCTION_WORDS = _DETERMINERS + _PREPOSITIONS + _QUESTION_WORDS
_CONTENT = ("noun", "verb", "adj")


def _syllable_word(rng: random.Random, onsets, vowels, codas, n: int) -> str:
    return "".join(rng.choice(onsets) + rng.choice(vowels) + rng.choice(codas) for _ in range(n))


def _zipf(n: int, s: float = 0.9) -> list[float]:
    """Cumulative Zipf weights: rank r is drawn with probability ~ 1 / (r + 1)^s."""
    acc, out = 0.0, []
    for r in range(n):
        acc += 1.0 / (r + 1) ** s
        out.append(acc)
    return out


@dataclass
class _English:
    """The English vocabulary: per class, topic word lists and general word lists."""

    topics: list[dict[str, list[str]]]
    general: dict[str, list[str]]
    names: list[str]
    numbers: list[str]
    cum: dict[int, list[float]] = field(default_factory=dict)  # Zipf, by list length

    def content_words(self) -> list[tuple[str, str]]:
        """(word, class) for every content word, in a fixed order."""
        out = [(w, c) for t in self.topics for c in _CONTENT for w in t[c]]
        return out + [(w, c) for c in _CONTENT for w in self.general[c]]

    def pick(self, rng: random.Random, cls: str, topic: int, p_topic: float) -> str:
        words = self.topics[topic][cls] if rng.random() < p_topic else self.general[cls]
        cum = self.cum[len(words)]
        return words[bisect.bisect(cum, rng.random() * cum[-1])]


def _make_english(seed: int, sc: WorldScale) -> _English:
    rng = random.Random(f"{seed}:english")
    taken = set(_FUNCTION_WORDS)

    def fresh(n_syl_choices=(1, 1, 2, 2, 2, 3)) -> str:
        while True:
            w = _syllable_word(rng, _EN_ONSETS, _EN_VOWELS, _EN_CODAS, rng.choice(n_syl_choices))
            if w not in taken and len(w) >= 3:
                taken.add(w)
                return w

    topics = [
        {c: [fresh() for _ in range(n)] for c, n in zip(_CONTENT, sc.topic_words)}
        for _ in range(sc.n_topics)
    ]
    general = {c: [fresh() for _ in range(n)] for c, n in zip(_CONTENT, sc.general_words)}
    names = []
    while len(names) < sc.n_names:
        w = _syllable_word(rng, _EN_ONSETS, _EN_VOWELS, ("",), rng.choice((1, 2)))
        w = w + rng.choice(_NAME_ENDINGS)
        if w not in taken:
            taken.add(w)
            names.append(w.capitalize())
    numbers: list[str] = []
    while len(numbers) < sc.n_numbers:
        x = str(rng.randint(1850, 2030) if rng.random() < 0.5 else rng.randint(2, 999))
        if x not in numbers:
            numbers.append(x)
    eng = _English(topics, general, names, numbers)
    for lst in [*general.values(), *topics[0].values()]:
        eng.cum[len(lst)] = _zipf(len(lst))
    return eng


# A sentence is a list of phrases. A phrase is (kind, role, tokens); a token is
# (text, class). Kinds: "np" (role subj/obj), "v", "pp" (first token the preposition,
# role obl). Foreign rendering reorders phrases and inflects tokens by class and role.
_Tok = tuple[str, str]
_Phrase = tuple[str, str, list[_Tok]]
_Sentence = list[_Phrase]


def _noun_phrase(
    rng, eng: _English, topic: int, names: list[str], number: str | None, allow_number: bool
) -> list[_Tok]:
    r = rng.random()
    if names and r < 0.25:
        return [(rng.choice(names), "name")]
    if allow_number and number is not None and r < 0.4:
        return [(number, "num")]
    toks: list[_Tok] = []
    if rng.random() < 0.6:
        toks.append((rng.choice(_DETERMINERS), "det"))
    if rng.random() < 0.45:
        toks.append((eng.pick(rng, "adj", topic, 0.6), "adj"))
    toks.append((eng.pick(rng, "noun", topic, 0.75), "noun"))
    return toks


def _sentence(rng, eng: _English, topic: int, names: list[str], number: str | None) -> _Sentence:
    sent: _Sentence = [
        ("np", "subj", _noun_phrase(rng, eng, topic, names, number, False)),
        ("v", "", [(eng.pick(rng, "verb", topic, 0.65), "verb")]),
        ("np", "obj", _noun_phrase(rng, eng, topic, names, None, False)),
    ]
    r = rng.random()
    for _ in range(0 if r < 0.35 else 1 if r < 0.8 else 2):
        np_ = _noun_phrase(rng, eng, topic, names, number, True)
        sent.append(("pp", "obl", [(rng.choice(_PREPOSITIONS), "prep"), *np_]))
    return sent


def _passage(
    rng,
    eng: _English,
    topic: int,
    n_sentences: tuple[int, int] = (2, 4),
    max_words: int = 40,
    min_words: int = 15,
) -> list[_Sentence]:
    names = rng.sample(eng.names, rng.choices((0, 1, 2), (0.3, 0.5, 0.2))[0])
    number = rng.choice(eng.numbers) if rng.random() < 0.4 else None
    sents = [_sentence(rng, eng, topic, names, number) for _ in range(rng.randint(*n_sentences))]
    while _count(sents) < min_words:
        sents.append(_sentence(rng, eng, topic, names, number))
    while _count(sents) > max_words and len(sents) > 1:
        sents.pop()
    return sents


def _count(sents: list[_Sentence]) -> int:
    return sum(len(toks) for s in sents for _, _, toks in s)


def _english_text(sents: list[_Sentence]) -> str:
    return " ".join(" ".join(t for ph in s for t, _ in ph[2]) + "." for s in sents)


def _tokens(sents: list[_Sentence]) -> list[_Tok]:
    return [tok for s in sents for _, _, toks in s for tok in toks]


_QUERY_WEIGHT = {"name": 2.0, "num": 1.5, "noun": 1.5, "verb": 0.8, "adj": 1.0}


def _query(rng, eng: _English, topic: int, sents: list[_Sentence]) -> list[_Tok]:
    """3-6 content words of a passage, rarer classes preferred, with paraphrase noise:
    sometimes a word is replaced by another word of the topic (not in the passage),
    words are shuffled, or a question word is put in front."""
    seen: dict[str, str] = {}
    for text, cls in _tokens(sents):
        if cls in _QUERY_WEIGHT and text not in seen:
            seen[text] = cls
    cands = list(seen.items())
    k = min(rng.randint(3, 6), len(cands))
    weights = [_QUERY_WEIGHT[c] for _, c in cands]
    chosen: list[_Tok] = []
    for _ in range(k):
        i = rng.choices(range(len(cands)), weights)[0]
        chosen.append(cands.pop(i))
        weights.pop(i)
    if rng.random() < 0.25:
        j = rng.randrange(len(chosen))
        cls = chosen[j][1]
        if cls in _CONTENT:
            alt = [w for w in eng.topics[topic][cls] if w not in seen]
            if alt:
                chosen[j] = (rng.choice(alt), cls)
    if rng.random() < 0.3:
        rng.shuffle(chosen)
    if rng.random() < 0.15:
        chosen.insert(0, (rng.choice(_QUESTION_WORDS), "q"))
    return chosen


# ---------------------------------------------------------------------- foreign languages


@dataclass
class _Language:
    spec: LanguageSpec
    lexicon: dict[str, tuple[str, ...]]  # English word -> one or two foreign stems
    letters: str


def _make_language(seed: int, spec: LanguageSpec, eng: _English) -> _Language:
    rng = random.Random(f"{seed}:lexicon:{spec.code}")
    english = {w.lower() for w, _ in eng.content_words()} | set(_FUNCTION_WORDS)
    english |= {n.lower() for n in eng.names} | set(eng.numbers)
    suffixes = {"", *spec.case_suffixes, spec.verb_suffix, spec.adjective_suffix}
    taken: set[str] = set()

    def fresh(n_syl: tuple[int, int]) -> str:
        for _ in range(10000):
            w = _syllable_word(rng, spec.onsets, spec.vowels, spec.codas, rng.randint(*n_syl))
            if w not in taken and all(w + s not in english for s in suffixes):
                taken.add(w)
                return w
        raise ConfigError(
            f"{spec.code}: syllable inventory too small for the vocabulary; add onsets/vowels"
        )

    lexicon: dict[str, tuple[str, ...]] = {}
    for w in _FUNCTION_WORDS:
        lexicon[w] = (w,) if rng.random() < spec.cognate_rate else (fresh((1, 1)),)
    for w, _ in eng.content_words():
        forms = [w] if rng.random() < spec.cognate_rate else [fresh(spec.syllables)]
        if rng.random() < spec.synonym_rate:
            forms.append(fresh(spec.syllables))
        lexicon[w] = tuple(forms)
    letters = "".join(sorted({ch for part in spec.onsets + spec.vowels for ch in part}))
    return _Language(spec, lexicon, letters)


def _inflect(lang: _Language, rng, text: str, cls: str, role: str) -> str:
    if cls in ("name", "num"):
        return text
    forms = lang.lexicon[text]
    w = forms[0] if len(forms) == 1 else rng.choice(forms)
    s = lang.spec
    if cls == "noun":
        w += s.case_suffixes[("subj", "obj", "obl").index(role)]
    elif cls == "verb":
        w += s.verb_suffix
    elif cls == "adj":
        w += s.adjective_suffix
    if cls in _CONTENT and len(w) > 3 and rng.random() < s.typo_rate:
        w = _typo(rng, w, lang.letters)
    return w


def _typo(rng, w: str, letters: str) -> str:
    i = rng.randrange(1, len(w))
    op = rng.randrange(3)
    if op == 0:
        return w[:i] + rng.choice(letters) + w[i + 1 :]
    if op == 1:
        return w[:i] + w[i + 1 :]
    return w[:i] + w[i] + w[i:]


def _translate_sentence(lang: _Language, rng, sent: _Sentence) -> list[str]:
    s = lang.spec
    phrases: list[list[str]] = []
    verb: list[str] = []
    for kind, role, toks in sent:
        out: list[str] = []
        prep = None
        adjs: list[str] = []
        head: list[str] = []
        for text, cls in toks:
            if cls == "det" and not s.articles and text in _ARTICLES:
                continue
            if cls in ("det", "prep") and rng.random() < s.drop_rate:
                continue
            w = _inflect(lang, rng, text, cls, role)
            if cls == "prep":
                prep = w
            elif cls == "adj":
                adjs.append(w)
            elif cls == "det":
                out.append(w)
            else:
                head.append(w)
        out += head + adjs if s.adjective_after_noun else adjs + head
        if prep is not None:
            out = out + [prep] if s.postpositions else [prep] + out
        if kind == "v":
            verb = out
        else:
            phrases.append(out)
    if s.verb_final:
        phrases.append(verb)
    else:
        phrases.insert(1, verb)
    words = [w for ph in phrases for w in ph]
    if s.insert_rate:
        noisy = []
        for w in words:
            noisy.append(w)
            if rng.random() < s.insert_rate:
                noisy.append(rng.choice(s.particles))
        words = noisy
    for i in range(len(words) - 1):
        if rng.random() < s.swap_rate:
            words[i], words[i + 1] = words[i + 1], words[i]
    return words


def _translate(lang: _Language, rng, sents: list[_Sentence]) -> str:
    return " ".join(" ".join(_translate_sentence(lang, rng, s)) + "." for s in sents)


def _translate_query(lang: _Language, rng, query: list[_Tok]) -> str:
    """Keywords translate in citation form (subject case); word order is kept."""
    return " ".join(_inflect(lang, rng, t, c, "subj") for t, c in query)


# ----------------------------------------------------------------------- collections


@dataclass
class _Collection:
    docs: list[tuple[str, int, list[_Sentence]]]  # (docid, topic, passage)
    queries: list[tuple[str, list[_Tok]]]  # (qid, keywords)
    qrels: dict[str, dict[str, int]]
    sources: dict[str, int]  # qid -> index of the passage the query was made from


def _collection(rng, eng: _English, prefix: str, n_docs: int, n_queries: int) -> _Collection:
    """Passages, queries made from ``n_queries`` of them, and honest qrels: the source
    passage, plus any other passage holding every (English) query word."""
    docs = []
    for i in range(n_docs):
        topic = rng.randrange(len(eng.topics))
        docs.append((f"{prefix}-d{i:06d}", topic, _passage(rng, eng, topic)))
    postings: dict[str, set[int]] = {}
    for i, (_, _, sents) in enumerate(docs):
        for text, _ in _tokens(sents):
            postings.setdefault(text, set()).add(i)
    queries, qrels, sources = [], {}, {}
    for j, i in enumerate(sorted(rng.sample(range(n_docs), n_queries))):
        docid, topic, sents = docs[i]
        q = _query(rng, eng, topic, sents)
        qid = f"{prefix}-q{j:05d}"
        queries.append((qid, q))
        sources[qid] = i
        sets = [postings.get(t, set()) for t, c in q if c != "q"]
        also = set.intersection(*sets) if sets else set()
        qrels[qid] = {docs[k][0]: 1 for k in sorted(also | {i})}
    return _Collection(docs, queries, qrels, sources)


def _hard_negatives(rng, coll: _Collection, k: int) -> Iterator[dict[str, Any]]:
    """Per query: its source passage as the positive, and as negatives the same-topic
    passages sharing the most query words that are not judged relevant (ties and any
    shortfall filled at random)."""
    postings: dict[tuple[int, str], list[int]] = {}  # (topic, word) -> docs
    for i, (_, topic, sents) in enumerate(coll.docs):
        for t in dict.fromkeys(t for t, _ in _tokens(sents)):
            postings.setdefault((topic, t), []).append(i)
    for qid, q in coll.queries:
        rel = coll.qrels[qid]
        source = coll.sources[qid]
        topic = coll.docs[source][1]
        overlap: dict[int, int] = {}
        for t in dict.fromkeys(t for t, _ in q):
            for i in postings.get((topic, t), ()):
                if coll.docs[i][0] not in rel:
                    overlap[i] = overlap.get(i, 0) + 1
        cands = sorted(overlap, key=lambda i: (-overlap[i], rng.random()))
        neg = cands[:k]
        while len(neg) < k:
            i = rng.randrange(len(coll.docs))
            if coll.docs[i][0] not in rel and i not in neg:
                neg.append(i)
        yield {"qid": qid, "pos": [coll.docs[source][0]], "neg": [coll.docs[i][0] for i in neg]}


def _snippet(rng, eng: _English) -> list[_Sentence]:
    topic = rng.randrange(len(eng.topics))
    return _passage(
        rng,
        eng,
        topic,
        n_sentences=(1, 2) if rng.random() < 0.3 else (1, 1),
        max_words=30,
        min_words=1,
    )


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
    from optical_ray.tiny import train_tokenizer  # tiny imports transformers: keep it lazy

    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"seed={seed!r}: must be an integer")
    sc, specs, bitext_n = _resolve(languages, bitext_sizes, scale)
    out = Path(out_dir)
    _prepare_dir(out, overwrite)
    eng = _make_english(seed, sc)
    langs = {s.code: _make_language(seed, s, eng) for s in specs}
    texts: list[str] = []  # everything written, for the tokenizer

    def lines(items: list[str]) -> list[str]:
        texts.extend(items)
        return items

    # English ranking training data
    train = _collection(
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
            for (d, _, _), t in zip(train.docs, lines([_english_text(s) for _, _, s in train.docs]))
        ),
    )
    write_qrels(tdir / "qrels.txt", train.qrels)
    n_triples = write_triples(
        tdir / "triples.jsonl",
        _hard_negatives(random.Random(f"{seed}:negatives"), train, sc.negatives),
    )

    # Evaluation collections: one English collection per split, translated per language
    pairs = ["en-en"] + [p for c in langs for p in (f"en-{c}", f"{c}-en")]
    for split in _SPLITS:
        coll = _collection(
            random.Random(f"{seed}:eval:{split}"), eng, split, sc.eval_corpus, sc.eval_queries
        )
        en_docs = lines([_english_text(s) for _, _, s in coll.docs])
        en_queries = lines([" ".join(t for t, _ in q) for _, q in coll.queries])
        qids = [q for q, _ in coll.queries]
        docids = [d for d, _, _ in coll.docs]
        variants = {"en": (en_queries, en_docs)}
        for code, lang in langs.items():
            rng = random.Random(f"{seed}:eval:{split}:{code}")
            variants[code] = (
                lines([_translate_query(lang, rng, q) for _, q in coll.queries]),
                lines([_translate(lang, rng, s) for _, _, s in coll.docs]),
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
            snippets = [_snippet(rng, eng) for _ in range(n)]
            src = lines([_english_text(s) for s in snippets])
            tgt = lines([_translate(lang, rng, s) for s in snippets])
            write_bitext(out / "bitext" / f"en-{code}" / f"{split}.tsv", zip(src, tgt))
    for code in ["en", *langs]:
        rng = random.Random(f"{seed}:mono:{code}")
        passages = [_passage(rng, eng, rng.randrange(sc.n_topics)) for _ in range(sc.mono)]
        rendered = [
            _english_text(p) if code == "en" else _translate(langs[code], rng, p) for p in passages
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
            "function_words": len(_FUNCTION_WORDS),
            "names": len(eng.names),
            "numbers": len(eng.numbers),
        },
        "train": {
            "queries": len(train.queries),
            "corpus": len(train.docs),
            "triples": n_triples,
            "negatives_per_query": sc.negatives,
        },
        "eval": {
            split: {"queries": sc.eval_queries, "corpus": sc.eval_corpus} for split in _SPLITS
        },
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
