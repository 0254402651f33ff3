"""Language similarity, for choosing the source pairs of a warm start
(``sweep.warm_start: auto``, see :mod:`optical_ray.sweeps.warmstart`).

With both languages' :class:`~optical_ray.data.world.LanguageSpec` known (a
synthetic world or family describes them in its manifest), similarity is 1 minus the
mean difference of their knobs; otherwise it falls back to language metadata (family
and branch) for real languages. Pairs in the other direction never match.
"""

from __future__ import annotations

from typing import Any, Mapping

from optical_ray.config import Config

__all__ = ["AUTO_SOURCES", "LANGUAGE_FAMILIES", "choose_sources", "language_specs", "similarity"]

#: Source pairs ``auto`` uses (the most similar ones).
AUTO_SOURCES = 2

#: Language metadata for real languages (ISO 639-1 and -3): family / branch.
LANGUAGE_FAMILIES = {
    **dict.fromkeys(("sw", "swa", "zu", "zul", "xh", "xho", "rw", "kin"), "Niger-Congo/Bantu"),
    **dict.fromkeys(("yo", "yor", "ig", "ibo"), "Niger-Congo/Volta-Niger"),
    **dict.fromkeys(("wo", "wol"), "Niger-Congo/Atlantic"),
    **dict.fromkeys(("ha", "hau"), "Afroasiatic/Chadic"),
    **dict.fromkeys(("so", "som", "om", "orm"), "Afroasiatic/Cushitic"),
    **dict.fromkeys(("am", "amh", "ar", "ara", "he", "heb"), "Afroasiatic/Semitic"),
    **dict.fromkeys(("de", "deu", "en", "eng", "nl", "nld"), "Indo-European/Germanic"),
    **dict.fromkeys(("fr", "fra", "es", "spa", "pt", "por", "it", "ita"), "Indo-European/Romance"),
    **dict.fromkeys(("fi", "fin", "et", "est", "hu", "hun"), "Uralic"),
}
# LanguageSpec knobs compared for synthetic languages: rates in [0, 1], booleans, tier.
_RATE_KNOBS = ("cognate_rate", "synonym_rate", "drop_rate", "insert_rate", "swap_rate", "typo_rate")
_BOOL_KNOBS = ("verb_final", "adjective_after_noun", "postpositions", "articles")
_TIERS = {"high": 0.0, "medium": 0.5, "low": 1.0}


def _foreign(pair: str) -> tuple[str, str]:
    """(direction, language): ``en-sw`` -> ("doc", "sw"), ``sw-en`` -> ("query", "sw")."""
    q, d = pair.split("-", 1)
    return ("doc", d) if q == "en" or q == d else ("query", q)


def _spec_vector(spec: Mapping[str, Any]) -> list[float]:
    morphology = float(any(spec.get("case_suffixes") or ()) or bool(spec.get("verb_suffix")))
    return [
        *(float(spec.get(k, 0.0)) for k in _RATE_KNOBS),
        *(float(bool(spec.get(k))) for k in _BOOL_KNOBS),
        morphology,
        _TIERS.get(str(spec.get("tier", "low")), 1.0),
    ]


def similarity(
    source: str, target: str, specs: Mapping[str, Mapping[str, Any]] | None = None
) -> tuple[float, str]:
    """How alike ``source`` and ``target`` are as language pairs, in [0, 1], and why.

    Pairs in opposite directions (``en-xx`` vs ``xx-en``) score 0. With both languages'
    ``LanguageSpec`` in ``specs`` (a synthetic world's manifest): 1 minus the mean
    absolute difference of their knobs (rates, word-order and article flags, whether
    they inflect, resource tier), each in [0, 1]. Otherwise by metadata: 0.75 for the
    same branch, 0.5 for the same family, 0.25 for unrelated or unknown languages.
    """
    (sd, sl), (td, tl) = _foreign(source), _foreign(target)
    if sd != td:
        return 0.0, f"the other direction ({sd}-side vs {td}-side foreign language)"
    specs = specs or {}
    if sl in specs and tl in specs:
        a, b = _spec_vector(specs[sl]), _spec_vector(specs[tl])
        score = 1.0 - sum(abs(x - y) for x, y in zip(a, b)) / len(a)
        return round(score, 4), f"language-spec similarity {score:.2f}"
    fa, fb = LANGUAGE_FAMILIES.get(sl), LANGUAGE_FAMILIES.get(tl)
    if fa and fa == fb:
        return 0.75, f"same branch {fa}"
    if fa and fb and fa.split("/")[0] == fb.split("/")[0]:
        return 0.5, f"same family {fa.split('/')[0]}"
    return 0.25, "no shared language metadata"


def choose_sources(
    candidates: Mapping[str, int],
    target: str,
    specs: Mapping[str, Mapping[str, Any]] | None = None,
    k: int = AUTO_SOURCES,
) -> list[tuple[str, float, str]]:
    """The ``k`` candidates (pair -> number of ranked trials) most similar to
    ``target`` as ``(pair, similarity, why)``, most similar first; ties go to the pair
    with more trials, then by name. Pairs of the other direction are never chosen."""
    scored = []
    for pair, n in candidates.items():
        score, why = similarity(pair, target, specs)
        if score > 0:
            scored.append((pair, score, f"{why}, {n} trial(s)", n))
    scored.sort(key=lambda s: (-s[1], -s[3], s[0]))
    return [(p, s, why) for p, s, why, _ in scored[:k]]


def language_specs(cfg: Config) -> dict[str, dict[str, Any]]:
    """The ``LanguageSpec`` of each language of the data root's world ({} if none)."""
    from dataclasses import asdict

    from optical_ray.data.world import LANGUAGE_PRESETS, load_manifest
    from optical_ray.errors import DataError

    if cfg.data.root is None:  # the embedded default world: the named presets
        return {code: asdict(spec) for code, spec in LANGUAGE_PRESETS.items()}
    try:
        return load_manifest(cfg.data.root).languages
    except (DataError, OSError, TypeError):
        return {}
