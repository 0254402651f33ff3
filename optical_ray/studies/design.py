"""A study's design: factors with levels, a base config, seeds, test tasks and the
reference the gap is measured to; parsed and validated at once, every problem one line.

A design file (``studies/*.yaml``)::

    name: domain_adaptation
    base:                        # fixed config values of every run (dotted keys),
      train.stages: [distill]    # pair templates ({pair}, {lang}, ...) allowed
      distill.steps: 80
    factors:
      adapt:                     # a factor: one config key, levels as label: value
        key: train.stages
        levels: {off: [distill], on: [adapt, distill]}
      distill.method: [ot, mse_sentence]   # short form: the key, levels as a list
      hybrid:                    # several keys per level
        levels:
          off: {distill.rank_batch_size: 0}
          on: {distill.rank_batch_size: 8, distill.weight: 0.8}
    seeds: 2                     # train.seed 0 and 1 (or a list: [0, 7])
    tasks: ["{pair}", "en-{lang}"]   # test tasks: evaluation pairs, evaluated once at the end
    reference: deu-en            # the gap to this pair (the teacher zero-shot on it),
                                 # on the first task; or {task: pair, ...}
    fraction: 1/2                # optional: a regular half fraction (two-level factors),
                                 # or {generators: {hybrid: [adapt, method]}}

The first level of each factor is its base: effects are "level vs base". A cell is
one level of every factor, named ``factor=label,...``; each cell runs once per seed.
"""

from __future__ import annotations

import difflib
import itertools
import re
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Mapping

from optical_ray.config import apply_overrides, field_info, from_dict, name_problem, read_yaml
from optical_ray.config.rules import study_origin
from optical_ray.errors import ConfigError
from optical_ray.sweeps.protocol import ORIGIN_KEY
from optical_ray.sweeps.templates import expand, template_problems

__all__ = [
    "Level",
    "Factor",
    "Cell",
    "StudyDesign",
    "SEED_KEY",
    "level_label",
    "parse_design",
    "load_design",
]

#: The config key a study's seeds set.
SEED_KEY = "train.seed"
_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")
_LABEL_RE = re.compile(r"^[A-Za-z0-9_.+-]+$")
_TOP = ("name", "description", "base", "factors", "seeds", "tasks", "reference", "fraction")


@dataclass(frozen=True)
class Level:
    """One level of a factor: its label and the config values it sets."""

    label: str
    values: dict[str, Any]


@dataclass(frozen=True)
class Factor:
    """A factor and its levels; the first level is the base its effects are measured from."""

    name: str
    levels: tuple[Level, ...]

    @property
    def keys(self) -> list[str]:
        """The config keys this factor sets."""
        return sorted({k for lv in self.levels for k in lv.values})

    def level(self, label: str) -> Level:
        return next(lv for lv in self.levels if lv.label == label)


@dataclass(frozen=True)
class Cell:
    """One combination of levels, ``(factor, label)`` in the design's factor order."""

    levels: tuple[tuple[str, str], ...]

    @property
    def name(self) -> str:
        """``factor=label,...``: the cell in origins, file names and tables."""
        return ",".join(f"{f}={lv}" for f, lv in self.levels)

    def label(self, factor: str) -> str:
        return dict(self.levels)[factor]


def level_label(value: Any) -> str:
    """The label of a level given as a bare value: lists joined by ``+``
    (``[adapt, distill]`` -> ``adapt+distill``), booleans in lower case."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "+".join(level_label(v) for v in value)
    return str(value)


@dataclass
class StudyDesign:
    """A parsed, validated design (:func:`parse_design`)."""

    name: str
    factors: list[Factor]
    base: dict[str, Any] = field(default_factory=dict)
    seeds: list[int] = field(default_factory=lambda: [0])
    tasks: list[str] = field(default_factory=lambda: ["{pair}"])
    reference: dict[str, str] = field(default_factory=dict)
    generators: dict[str, list[str]] = field(default_factory=dict)
    description: str = ""
    source: str = "<design>"

    def factor(self, name: str) -> Factor:
        return next(f for f in self.factors if f.name == name)

    def cells(self) -> list[Cell]:
        """Every cell the design runs: the full grid, or the fraction its generators
        define (each generated factor's level is the product of its generators' codes,
        -1 for the first level and +1 for the second)."""
        basic = [f for f in self.factors if f.name not in self.generators]
        out = []
        for combo in itertools.product(*(range(len(f.levels)) for f in basic)):
            chosen = {f.name: i for f, i in zip(basic, combo)}
            for name, words in self.generators.items():
                code = 1
                for w in words:
                    code *= 1 if chosen[w] == 1 else -1
                chosen[name] = 1 if code == 1 else 0
            out.append(Cell(tuple((f.name, f.levels[chosen[f.name]].label) for f in self.factors)))
        return out

    def cell_values(self, cell: Cell) -> dict[str, Any]:
        """The config values ``cell`` sets (its levels' values, merged)."""
        values: dict[str, Any] = {}
        for f, label in cell.levels:
            values.update(self.factor(f).level(label).values)
        return values

    def points(self) -> list[dict[str, Any]]:
        """The sampled values of every run, cell by cell and seed by seed, each with its
        origin ``study:<cell>/<seed>`` under ``ORIGIN_KEY`` (what a run's trial gets)."""
        return [
            {**self.cell_values(c), SEED_KEY: s, ORIGIN_KEY: study_origin(c.name, s)}
            for c in self.cells()
            for s in self.seeds
        ]

    def tasks_for(self, pair: str) -> list[str]:
        """The test tasks of ``pair`` (templates filled in)."""
        return list(dict.fromkeys(expand(t, pair) for t in self.tasks))

    def reference_for(self, pair: str) -> dict[str, str]:
        """``{task: reference pair}`` of ``pair``: the tasks the gap is measured on."""
        return {expand(t, pair): expand(r, pair) for t, r in self.reference.items()}

    def aliases(self) -> dict[str, list[str]]:
        """In a fraction, what each main effect and two-factor interaction is aliased
        with (effects of at most two factors, ``A`` or ``A:B``); {} for a full grid."""
        if not self.generators:
            return {}
        words = [frozenset([g, *ws]) for g, ws in self.generators.items()]
        group = set()
        for r in range(1, len(words) + 1):
            for combo in itertools.combinations(words, r):
                w: frozenset[str] = frozenset()
                for x in combo:
                    w = w ^ x
                group.add(w)
        names = [f.name for f in self.factors]
        effects = [frozenset([a]) for a in names] + [
            frozenset(p) for p in itertools.combinations(names, 2)
        ]
        out = {}
        for e in effects:
            found = sorted(
                ":".join(n for n in names if n in (e ^ w)) for w in group if 0 < len(e ^ w) <= 2
            )
            if found:
                out[":".join(n for n in names if n in e)] = found
        return out

    def to_dict(self) -> dict[str, Any]:
        """The design as plain data (stored with the study; :func:`parse_design` reads it
        back)."""
        out: dict[str, Any] = {
            "name": self.name,
            "description": self.description,
            "base": self.base,
            "factors": {
                f.name: {"levels": {lv.label: lv.values for lv in f.levels}} for f in self.factors
            },
            "seeds": list(self.seeds),
            "tasks": list(self.tasks),
            "reference": dict(self.reference),
        }
        if self.generators:
            out["fraction"] = {"generators": self.generators}
        return out


# --------------------------------------------------------------------------- parsing


def _key_problems(key: str, where: str, fields: Mapping[str, Any]) -> list[str]:
    if key == SEED_KEY:
        return [f"{where}: {SEED_KEY} is set by the study's seeds (seeds: N), not a factor"]
    if key in fields or key.split(".")[:2] in (
        ["data", "bitext"],
        ["data", "eval"],
        ["data", "mono"],
    ):
        return []
    close = difflib.get_close_matches(key, list(fields), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return [f"{where}: unknown config key {key!r}{hint}"]


def _value_problems(key: str, value: Any) -> list[str]:
    """What ``value`` breaks for ``key`` on its own (type, bounds, allowed values)."""
    try:
        from_dict(apply_overrides({}, {key: value}))
    except ConfigError as exc:
        return [
            line[len(key) + 2 :] if line.startswith(f"{key}: ") else line
            for line in exc.problems
            if line.startswith((f"{key}: ", f"{key}[", f"{key}."))
        ]
    return []


def _levels(name: str, raw: Any, problems: list[str], fields: Mapping[str, Any]) -> list[Level]:
    """A factor's levels from its three forms (see the module docstring)."""
    at = f"factors.{name}"
    key: str | None = name
    levels: Any = raw
    if isinstance(raw, Mapping):
        extra = sorted(set(raw) - {"key", "levels"})
        if extra or "levels" not in raw:
            problems.append(
                f"{at}: got keys {sorted(raw)}, expected levels (a list, or label: value) "
                "and optionally key (the config key they set)"
            )
            return []
        key, levels = raw.get("key"), raw["levels"]
        if key is not None and not isinstance(key, str):
            problems.append(f"{at}.key: got {key!r}, expected a config key such as distill.method")
            return []
    if key is not None:
        bad_key = _key_problems(key, at, fields)
        problems += bad_key
        if isinstance(levels, list):
            pairs = [(level_label(v), {key: v}) for v in levels]
        elif isinstance(levels, Mapping):
            pairs = [(str(lab), {key: v}) for lab, v in levels.items()]
        else:
            problems.append(f"{at}: got {levels!r}, expected a list of levels or label: value")
            return []
        if bad_key:
            return []
    else:
        if not isinstance(levels, Mapping) or not all(
            isinstance(v, Mapping) for v in levels.values()
        ):
            problems.append(
                f"{at}.levels: without a key, each level is a mapping of config keys to "
                "values (label: {distill.rank_batch_size: 8, ...})"
            )
            return []
        pairs = [(str(lab), dict(v)) for lab, v in levels.items()]
        for lab, values in pairs:
            if not values:
                problems.append(f"{at}.levels.{lab}: sets no config key")
            for k in values:
                problems += _key_problems(k, f"{at}.levels.{lab}", fields)
    out = []
    for label, values in pairs:
        if not _LABEL_RE.match(label):
            problems.append(
                f"{at}: level label {label!r} has characters other than letters, digits, "
                "'.', '_', '+', '-'; name the levels (levels: {label: value})"
            )
        for k, v in values.items():
            if k in fields:
                problems += [
                    f"{at}: level {label!r} ({k}={v!r}): {p}" for p in _value_problems(k, v)
                ]
        out.append(Level(label, values))
    labels = [lv.label for lv in out]
    if len(out) < 2:
        problems.append(f"{at}: got {len(out)} level(s), expected at least 2")
    dup = sorted({x for x in labels if labels.count(x) > 1})
    if dup:
        problems.append(f"{at}: level(s) {', '.join(dup)} given more than once")
    return out


def _seeds(raw: Any, problems: list[str]) -> list[int]:
    if isinstance(raw, bool) or raw is None:
        problems.append(f"seeds: got {raw!r}, expected a count such as 2 or a list of seeds")
        return [0]
    if isinstance(raw, int):
        if raw < 1:
            problems.append(f"seeds: got {raw}, expected at least 1")
            return [0]
        return list(range(raw))
    if (
        isinstance(raw, list)
        and raw
        and all(isinstance(s, int) and not isinstance(s, bool) for s in raw)
    ):
        if len(set(raw)) != len(raw):
            problems.append(f"seeds: got {raw}, each seed at most once")
        return list(dict.fromkeys(raw))
    problems.append(f"seeds: got {raw!r}, expected a count such as 2 or a list of seeds")
    return [0]


def _generators(raw: Any, factors: list[Factor], problems: list[str]) -> dict[str, list[str]]:
    """``fraction: 1/2`` (the last factor generated by all the others) or
    ``{generators: {factor: [factors]}}``."""
    if raw is None:
        return {}
    names = [f.name for f in factors]
    if isinstance(raw, Mapping) and set(raw) == {"generators"}:
        gens = raw["generators"]
        if not isinstance(gens, Mapping) or not all(isinstance(v, list) for v in gens.values()):
            problems.append(
                "fraction.generators: expected {factor: [factors]}, e.g. {hybrid: [adapt, method]}"
            )
            return {}
        out = {str(k): [str(x) for x in v] for k, v in gens.items()}
    else:
        try:
            frac = Fraction(str(raw))
        except (ValueError, ZeroDivisionError):
            frac = None
        if frac != Fraction(1, 2):
            problems.append(
                f"fraction: got {raw!r}, expected 1/2 or {{generators: {{factor: [factors]}}}}"
            )
            return {}
        if len(names) < 3:
            problems.append(
                f"fraction: 1/2 of {len(names)} factor(s) would alias main effects with "
                "each other; a half fraction needs at least 3 factors"
            )
            return {}
        out = {names[-1]: names[:-1]}
    for g, ws in out.items():
        where = f"fraction.generators.{g}"
        unknown = [x for x in [g, *ws] if x not in names]
        if unknown:
            problems.append(
                f"{where}: unknown factor(s) {', '.join(unknown)} (factors: {', '.join(names)})"
            )
        elif len(ws) < 2 or g in ws or len(set(ws)) != len(ws):
            problems.append(
                f"{where}: got {ws}, expected two or more other factors (fewer aliases "
                f"{g}'s main effect with another main effect)"
            )
        elif any(x in out for x in ws):
            problems.append(f"{where}: a generated factor cannot generate another")
    two = [
        f.name
        for f in factors
        if len(f.levels) != 2 and f.name in {x for g, ws in out.items() for x in [g, *ws]}
    ]
    if two:
        problems.append(
            f"fraction: factor(s) {', '.join(two)} have more than two levels; a regular "
            "fraction needs two-level factors"
        )
    return out


def parse_design(raw: Any, *, source: str = "<design>") -> StudyDesign:
    """Validate a parsed YAML design; raise one :class:`ConfigError` with every problem."""
    from optical_ray.sweeps.space import parse_space

    if not isinstance(raw, Mapping):
        raise ConfigError(
            "top level: expected a mapping with name, base, factors, ...", source=source
        )
    problems: list[str] = []
    extra = sorted(set(raw) - set(_TOP))
    if extra:
        problems.append(f"top level: unknown section(s) {extra} (allowed: {', '.join(_TOP)})")
    name = raw.get("name") or (Path(source).stem if source != "<design>" else None)
    bad = name_problem(name, "name") if name is not None else "name: required (the study's name)"
    if bad:
        problems.append(bad)
    base = raw.get("base") or {}
    try:
        parse_space({"base": base}, source=source)
    except ConfigError as exc:
        problems += exc.problems
    fields = field_info()
    factors: list[Factor] = []
    raw_factors = raw.get("factors")
    if not isinstance(raw_factors, Mapping) or not raw_factors:
        problems.append("factors: expected a mapping of factor names to levels (at least one)")
        raw_factors = {}
    for fname, spec in raw_factors.items():
        fname = str(fname)
        if not _NAME_RE.match(fname):
            problems.append(
                f"factors.{fname}: a factor name has letters, digits, '.', '_', '-' only"
            )
        factors.append(Factor(fname, tuple(_levels(fname, spec, problems, fields))))
    owner: dict[str, str] = {}
    for f in factors:
        for k in f.keys:
            if k in owner:
                problems.append(f"factors.{f.name}: {k} is set by factor {owner[k]} too")
            owner.setdefault(k, f.name)
    seeds = _seeds(raw.get("seeds", 1), problems)
    tasks = raw.get("tasks", ["{pair}"])
    if not isinstance(tasks, list) or not tasks or not all(isinstance(t, str) for t in tasks):
        problems.append(
            f"tasks: got {tasks!r}, expected a list of evaluation pairs such as ['{{pair}}']"
        )
        tasks = ["{pair}"]
    problems += template_problems(tasks, "tasks")
    ref = raw.get("reference")
    reference: dict[str, str] = {}
    if isinstance(ref, str):
        reference = {tasks[0]: ref}
    elif isinstance(ref, Mapping):
        reference = {str(k): str(v) for k, v in ref.items()}
        for t in reference:
            if t not in tasks:
                problems.append(f"reference.{t}: not one of the tasks ({', '.join(tasks)})")
    elif ref is not None:
        problems.append(f"reference: got {ref!r}, expected a pair such as deu-en or {{task: pair}}")
    problems += template_problems(reference, "reference")
    generators = _generators(raw.get("fraction"), factors, problems)
    if problems:
        raise ConfigError(problems, source=source)
    return StudyDesign(
        name=str(name),
        factors=factors,
        base=dict(base),
        seeds=seeds,
        tasks=list(tasks),
        reference=reference,
        generators=generators,
        description=str(raw.get("description") or ""),
        source=source,
    )


def load_design(path: str | Path) -> StudyDesign:
    """Load and validate a YAML design file."""
    p = Path(path)
    if not p.exists():
        shipped = sorted(
            x.name for x in (Path(__file__).resolve().parents[2] / "studies").glob("*.yaml")
        )
        hint = f" (shipped: {', '.join(shipped)})" if shipped else ""
        raise ConfigError(f"study design {str(path)!r} does not exist{hint}")
    return parse_design(read_yaml(p, "study design"), source=str(p))
