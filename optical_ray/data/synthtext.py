"""The text of a synthetic world: a small topical English (topics with their own
Zipf-distributed nouns, verbs and adjectives, real function words, names and numbers),
its passages and queries, the foreign languages derived from it by a
:class:`~optical_ray.data.world.LanguageSpec` (lexicon, morphology, word order, noise),
translation into them, and the retrieval collections built from the English passages.
:func:`optical_ray.data.synthetic.synthesize_world` writes a world from these.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from optical_ray.data.world import LanguageSpec, WorldScale
from optical_ray.errors import ConfigError

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
FUNCTION_WORDS = _DETERMINERS + _PREPOSITIONS + _QUESTION_WORDS
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


def make_english(seed: int, sc: WorldScale) -> _English:
    rng = random.Random(f"{seed}:english")
    taken = set(FUNCTION_WORDS)

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


def make_passage(
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


def english_text(sents: list[_Sentence]) -> str:
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


def make_language(seed: int, spec: LanguageSpec, eng: _English) -> _Language:
    rng = random.Random(f"{seed}:lexicon:{spec.code}")
    english = {w.lower() for w, _ in eng.content_words()} | set(FUNCTION_WORDS)
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
    for w in FUNCTION_WORDS:
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


def translate(lang: _Language, rng, sents: list[_Sentence]) -> str:
    return " ".join(" ".join(_translate_sentence(lang, rng, s)) + "." for s in sents)


def translate_query(lang: _Language, rng, query: list[_Tok]) -> str:
    """Keywords translate in citation form (subject case); word order is kept."""
    return " ".join(_inflect(lang, rng, t, c, "subj") for t, c in query)


# ----------------------------------------------------------------------- collections


@dataclass
class _Collection:
    docs: list[tuple[str, int, list[_Sentence]]]  # (docid, topic, passage)
    queries: list[tuple[str, list[_Tok]]]  # (qid, keywords)
    qrels: dict[str, dict[str, int]]
    sources: dict[str, int]  # qid -> index of the passage the query was made from


def make_collection(rng, eng: _English, prefix: str, n_docs: int, n_queries: int) -> _Collection:
    """Passages, queries made from ``n_queries`` of them, and honest qrels: the source
    passage, plus any other passage holding every (English) query word."""
    docs = []
    for i in range(n_docs):
        topic = rng.randrange(len(eng.topics))
        docs.append((f"{prefix}-d{i:06d}", topic, make_passage(rng, eng, topic)))
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


def hard_negatives(rng, coll: _Collection, k: int) -> Iterator[dict[str, Any]]:
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


def snippet(rng, eng: _English) -> list[_Sentence]:
    topic = rng.randrange(len(eng.topics))
    return make_passage(
        rng,
        eng,
        topic,
        n_sentences=(1, 2) if rng.random() < 0.3 else (1, 1),
        max_words=30,
        min_words=1,
    )
