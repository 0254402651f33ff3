"""Synthetic language families: N languages drawn from one seeded distribution over the
:class:`~optical_ray.data.world.LanguageSpec` knobs, for transfer-HPO tests and
benchmarks (``optical-ray data synth --family N --family-seed S``).

Each language gets a *distance from English* ``d`` in [0, 1]: the family's members are
spread evenly over [0, 1] (jittered, in a seeded order), so every family holds both
close relatives and distant ones. Every knob follows ``d`` plus a little seeded noise:
cognates fall (0.5 → 0), synonyms and per-token noise rise, and the typological
switches flip at seeded thresholds around ``d`` (adjectives after nouns, case and verb
suffixes, verb-final order, postpositions, no articles). The bitext size falls with
``d`` (log-uniform, ``bitext`` ± a factor of 2 around the tier's default): distant
languages are also the low-resource ones, as they tend to be. Two members with close
``d`` therefore have close specs (see :func:`optical_ray.sweeps.langsim.similarity`).

Codes are ``qa``, ``qb``, ... (the ISO 639 ``q`` range is reserved for local use, so
they never name a real language).
"""

from __future__ import annotations

import random
import string

from optical_ray.data.world import SCALES, LanguageSpec
from optical_ray.errors import ConfigError

__all__ = ["family_specs", "MAX_FAMILY"]

MAX_FAMILY = 26
_ONSETS = ("b", "d", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "h", "j", "w")
_CLUSTERS = ("pr", "tr", "kr", "dv", "sh", "kh", "ts", "ng")
_VOWELS = ("a", "e", "i", "o", "u", "y", "uu", "aa")
_CODAS = ("n", "r", "s", "l", "k", "t", "q", "x", "ng", "m")
_PARTICLES = ("jo", "ku", "xe", "ma", "te", "ri")


def _clip(x: float) -> float:
    return round(min(1.0, max(0.0, x)), 4)


def _noisy(rng: random.Random, value: float, spread: float = 0.02) -> float:
    return _clip(value + rng.uniform(-spread, spread))


def _flips(rng: random.Random, d: float, at: float) -> bool:
    """A typological switch that flips at a seeded threshold around ``at``."""
    return d > at + rng.uniform(-0.1, 0.1)


def family_specs(
    n: int, seed: int = 0, scale: str = "default"
) -> tuple[list[LanguageSpec], dict[str, int]]:
    """``n`` languages of family ``seed`` and their bitext sizes (pairs), for
    :func:`~optical_ray.data.synthetic.synthesize_world` (``languages=``,
    ``bitext_sizes=``). The same ``(n, seed)`` gives the same family; a larger ``n``
    spreads the same distribution more finely."""
    problems = []
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_FAMILY:
        problems.append(f"family: got {n!r}, expected an integer in 1..{MAX_FAMILY}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        problems.append(f"family_seed: got {seed!r}, expected an integer")
    if scale not in SCALES:
        problems.append(f"scale: got {scale!r}, expected one of {sorted(SCALES)}")
    if problems:
        raise ConfigError(problems)
    rng = random.Random(f"family:{seed}")
    slots = [(i + 0.5) / n for i in range(n)]
    rng.shuffle(slots)  # codes do not give the distance away
    base_bitext = SCALES[scale].bitext["medium"]
    specs, sizes = [], {}
    for code, slot in zip((f"q{c}" for c in string.ascii_lowercase), slots):
        d = _clip(slot + rng.uniform(-0.25, 0.25) / n)

        onsets = tuple(sorted(rng.sample(_ONSETS, 10))) + (
            tuple(rng.sample(_CLUSTERS, 2)) if d < 0.5 else ()
        )
        vowels = tuple(sorted(rng.sample(_VOWELS, 5)))
        codas = ("", "") + tuple(rng.sample(_CODAS, 4))
        inflects = _flips(rng, d, 0.35)
        inserts = _noisy(rng, 0.05 * d, 0.01) if d > 0.5 else 0.0
        spec = LanguageSpec(
            code=code,
            description=f"family {seed} member at distance {d:.2f} from English",
            onsets=onsets,
            vowels=vowels,
            codas=codas,
            syllables=(2, 3),
            cognate_rate=_noisy(rng, 0.5 * (1 - d)),
            synonym_rate=_noisy(rng, 0.15 * d),
            case_suffixes=("", "em", "u") if inflects else ("", "", ""),
            verb_suffix="at" if inflects else "",
            adjective_suffix="ny" if _flips(rng, d, 0.6) else "",
            verb_final=_flips(rng, d, 0.6),
            adjective_after_noun=_flips(rng, d, 0.2),
            postpositions=_flips(rng, d, 0.7),
            articles=not _flips(rng, d, 0.4),
            particles=tuple(rng.sample(_PARTICLES, 3)) if inserts else (),
            drop_rate=_noisy(rng, 0.03 + 0.07 * d),
            insert_rate=inserts,
            swap_rate=_noisy(rng, 0.05 * d),
            typo_rate=_noisy(rng, 0.01 + 0.03 * d),
            tier="high" if d < 0.3 else "medium" if d < 0.6 else "low",
        )
        specs.append(spec)
        # bitext: x2 at d=0 down to /2 at d=1 around the medium default, log-uniform jitter
        sizes[code] = max(50, int(base_bitext * 2 ** (1 - 2 * d + rng.uniform(-0.2, 0.2))))
    problems = [p for s in specs for p in s.problems()]
    if problems:  # a bug here, not the caller's: say which draw
        raise ConfigError([f"family {seed}: {p}" for p in problems])
    return specs, sizes
