"""YAML search spaces: distributions over config keys, conditions, per-pair overrides.

A search space file (``search_spaces/*.yaml``)::

    base:                         # fixed config values for every trial (dotted keys)
      train.stages: [distill]
      distill.steps: 300
    params:                       # sampled per trial, in this order
      distill.epsilon: {type: loguniform, low: 1.0e-3, high: 1.0}
      distill.rank_batch_size: {type: categorical, choices: [0, 8]}
      distill.weight: {type: uniform, low: 0.0, high: 1.0,
                       when: {distill.rank_batch_size: [8]}}     # conditional
      distill.layers: {type: layers, strategies: [last, one, set],
                       max_k: 2, sets: [[1, 2]]}
    pairs:                        # per-pair overrides of base and params
      en-xc:
        base: {distill.steps: 600}
        params:
          distill.epsilon: {type: loguniform, low: 1.0e-2, high: 1.0}

Pair templates: ``{pair}``, ``{lang}`` (the non-English side), ``{src}`` and ``{tgt}``
in any string or mapping key of ``base``/``params`` are filled in for each pair
(:mod:`optical_ray.sweeps.templates`), e.g. ``data.bitext: {"en-{lang}": {format: mafand}}``;
a pair's own section still overrides what the template gives.

Distribution types: ``loguniform`` / ``uniform`` (``low``, ``high``), ``int``
(``low``, ``high``, optional ``log``), ``categorical`` (``choices``), ``fixed``
(``value``), and ``layers``: which encoder layers to align, given the model depth —
``last`` (the last k layers, k in 1..max_k), ``one`` (a single layer 1..depth), ``set``
(one of the explicit ``sets``). A ``when`` condition samples a parameter only when an
earlier parameter took one of the listed values; otherwise the config keeps its value
from ``base``/defaults. A key may be in both ``base`` and ``params``: trials get the
sample, and the base value serves readers of the base alone (e.g. a benchmark). Every key must be a config field (see :mod:`optical_ray.config.build`);
a file is validated whole and every problem is reported at once.

The space becomes an Optuna define-by-run function (``define_by_run``), which is what
Ray Tune's ``OptunaSearch`` takes for conditional spaces.
"""

from __future__ import annotations

import math
import typing
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping


from optical_ray.config import (
    PAIR_RE,
    Config,
    apply_overrides,
    field_info,
    from_dict,
    read_yaml,
    to_dict,
    to_flat,
)
from optical_ray.errors import ConfigError
from optical_ray.sweeps.templates import SAMPLE_PAIR, expand, has_template, template_problems

__all__ = [
    "Param",
    "SearchSpace",
    "load_space",
    "parse_space",
    "validate_space",
    "layers_from_choice",
    "pin_overrides",
]

TYPES = ("loguniform", "uniform", "int", "categorical", "fixed", "layers")
#: Config keys holding encoder layer numbers (1-based, negative from the top, 0 = embeddings).
LAYER_KEYS = ("distill.layers",)
LAYER_STRATEGIES = ("last", "one", "set")
_KEYS = {
    "loguniform": {"low", "high"},
    "uniform": {"low", "high"},
    "int": {"low", "high", "log"},
    "categorical": {"choices"},
    "fixed": {"value"},
    "layers": {"strategies", "max_k", "sets"},
}


@dataclass
class Param:
    """One searched config key."""

    key: str
    type: str
    spec: dict[str, Any]
    when: dict[str, list[Any]] = field(default_factory=dict)


@dataclass
class SearchSpace:
    """A parsed, validated search space."""

    base: dict[str, Any]
    params: list[Param]
    pairs: dict[str, tuple[dict[str, Any], list[Param]]]
    source: str = "<space>"

    def for_pair(self, pair: str) -> tuple[dict[str, Any], list[Param]]:
        """Base values and params for ``pair``: the pair templates (``{pair}``,
        ``{lang}``, ...; :mod:`optical_ray.sweeps.templates`) filled in, then the pair's own
        section applied over them."""
        return self._resolve(pair, pair)

    def _resolve(self, fill: str, section: str) -> tuple[dict[str, Any], list[Param]]:
        """Templates filled for pair ``fill`` (none if empty), section ``section``."""
        base = expand(self.base, fill) if fill else dict(self.base)
        params = {p.key: _fill_param(p, fill) for p in self.params}
        if section in self.pairs:
            extra_base, extra_params = self.pairs[section]
            base.update(expand(extra_base, fill) if fill else extra_base)
            for p in extra_params:
                params[p.key] = _fill_param(p, fill)
        return base, list(params.values())

    @property
    def templated(self) -> bool:
        """Whether the space names its data through pair templates."""
        return has_template(self.base) or any(has_template(p.spec) for p in self.params)

    def define_by_run(self, pair: str, depth: int) -> "DefineByRun":
        """An Optuna define-by-run function sampling this space for ``pair``.

        It returns the pair's fixed ``base`` values as constants; Ray's ``OptunaSearch``
        merges them into the trial config. Picklable (the searcher's saved state holds
        it, for resume).
        """
        base, params = self.for_pair(pair)
        return DefineByRun(base, params, depth)


def _fill_param(p: Param, pair: str) -> Param:
    """``p`` with its distribution's and condition's templates filled for ``pair``."""
    if not pair or not (has_template(p.spec) or has_template(p.when)):
        return p
    return Param(p.key, p.type, expand(p.spec, pair), expand(p.when, pair))


class DefineByRun:
    """A picklable define-by-run sampler over ``params`` (see
    :meth:`SearchSpace.define_by_run`)."""

    def __init__(self, base: dict[str, Any], params: list[Param], depth: int) -> None:
        self.base, self.params, self.depth = base, params, depth
        # A condition on a key no parameter samples sees its fixed or default value.
        self.known = {**to_flat(from_dict({})), **base}

    def __call__(self, trial: Any) -> dict[str, Any]:
        taken: dict[str, Any] = {}
        for p in self.params:
            if any(taken.get(k, self.known.get(k)) not in allowed for k, allowed in p.when.items()):
                continue
            taken[p.key] = _suggest(trial, p, self.depth)
        # Ray merges these constants over the sampled values: a key the trial sampled
        # keeps its sample (the base value is only its default when not sampled).
        return {k: v for k, v in self.base.items() if k not in taken}


def _suggest(trial: Any, p: Param, depth: int) -> Any:
    s = p.spec
    if p.type == "loguniform":
        return trial.suggest_float(p.key, float(s["low"]), float(s["high"]), log=True)
    if p.type == "uniform":
        return trial.suggest_float(p.key, float(s["low"]), float(s["high"]))
    if p.type == "int":
        return trial.suggest_int(p.key, int(s["low"]), int(s["high"]), log=bool(s.get("log")))
    if p.type == "categorical":
        # Optuna stores categorical choices as plain scalars; lists become strings.
        choices = [c if not isinstance(c, list) else str(c) for c in s["choices"]]
        return trial.suggest_categorical(p.key, choices)
    if p.type == "fixed":
        return s["value"]
    strategies = s.get("strategies", list(LAYER_STRATEGIES))
    strategy = trial.suggest_categorical(f"{p.key}.strategy", strategies)
    if strategy == "last":
        k = trial.suggest_int(f"{p.key}.k", 1, min(int(s.get("max_k", depth)), depth))
        return {"strategy": "last", "k": k}
    if strategy == "one":
        return {"strategy": "one", "layer": trial.suggest_int(f"{p.key}.layer", 1, depth)}
    idx = trial.suggest_categorical(f"{p.key}.set", list(range(len(s["sets"]))))
    return {"strategy": "set", "set": idx}


def layers_from_choice(
    flat: Mapping[str, Any],
    key: str,
    spec: Mapping[str, Any],
) -> list[int] | None:
    """Turn the sampled ``<key>.strategy``/``.k``/``.layer``/``.set`` into a layer list."""
    strategy = flat.get(f"{key}.strategy")
    if strategy == "last":
        k = int(flat[f"{key}.k"])
        return list(range(-k, 0))
    if strategy == "one":
        return [int(flat[f"{key}.layer"])]
    if strategy == "set":
        return [int(x) for x in spec["sets"][int(flat[f"{key}.set"])]]
    return None


def trial_config(
    space: SearchSpace,
    pair: str,
    sampled: Mapping[str, Any],
    base: Config | Mapping[str, Any] | None = None,
) -> Config:
    """The full validated :class:`Config` of one trial: defaults ← ``base`` ← the space's
    fixed values ← the sampled values."""
    fixed, params = space.for_pair(pair)
    data = to_dict(base) if isinstance(base, Config) else dict(base or {})
    values: dict[str, Any] = {**fixed, "pair": pair}
    for p in params:
        if p.type == "layers":
            layers = layers_from_choice(sampled, p.key, p.spec)
            if layers is not None:
                values[p.key] = layers
        elif p.type == "fixed":
            values[p.key] = p.spec["value"]  # never suggested, so not in ``sampled``
        elif p.key in sampled:
            value = sampled[p.key]
            if p.type == "categorical":
                value = next((c for c in p.spec["choices"] if str(c) == str(value)), value)
            values[p.key] = value
    return from_dict(apply_overrides(data, values), source=f"trial of {space.source}")


def _parse_params(raw: Any, where: str, problems: list[str], known: set[str]) -> list[Param]:
    if raw is None:
        return []
    if not isinstance(raw, Mapping):
        problems.append(f"{where}: expected a mapping of config keys to distributions")
        return []
    out: list[Param] = []
    for key, spec in raw.items():
        at = f"{where}.{key}"
        if key not in known:
            problems.append(f"{at}: not a config key (e.g. distill.epsilon, rank.lr)")
        if not isinstance(spec, Mapping) or "type" not in spec:
            problems.append(f"{at}: expected {{type: <{'|'.join(TYPES)}>, ...}}")
            continue
        kind = spec["type"]
        if kind not in TYPES:
            problems.append(f"{at}.type: got {kind!r}, expected one of {', '.join(TYPES)}")
            continue
        extra = set(spec) - _KEYS[kind] - {"type", "when"}
        if extra:
            problems.append(
                f"{at}: unknown field(s) {sorted(extra)} for type {kind} "
                f"(allowed: {sorted(_KEYS[kind] | {'when'})})"
            )
        missing = {"low", "high"} & _KEYS[kind] - set(spec)
        missing |= {k for k in ("choices", "value") if k in _KEYS[kind] and k not in spec}
        if missing:
            problems.append(f"{at}: type {kind} needs {sorted(missing)}")
            continue
        if kind in ("loguniform", "uniform", "int"):
            try:
                low, high = float(spec["low"]), float(spec["high"])
            except (TypeError, ValueError):
                problems.append(
                    f"{at}: low/high must be numbers, got {spec['low']!r}, {spec['high']!r}"
                )
                continue
            if not (math.isfinite(low) and math.isfinite(high)) or low >= high:
                problems.append(f"{at}: need low < high, got low={low:g}, high={high:g}")
            if kind == "loguniform" and low <= 0:
                problems.append(f"{at}: loguniform needs low > 0, got {low:g}")
            if kind == "int" and (low != int(low) or high != int(high)):
                problems.append(f"{at}: int bounds must be integers, got {low:g}, {high:g}")
        if kind == "categorical" and (not isinstance(spec["choices"], list) or not spec["choices"]):
            problems.append(f"{at}.choices: expected a non-empty list")
        if kind == "layers":
            strategies = spec.get("strategies", list(LAYER_STRATEGIES))
            bad = (
                [s for s in strategies if s not in LAYER_STRATEGIES]
                if isinstance(strategies, list)
                else [strategies]
            )
            if bad or not strategies:
                problems.append(
                    f"{at}.strategies: got {strategies!r}, expected a list of "
                    f"{', '.join(LAYER_STRATEGIES)}"
                )
            sets = spec.get("sets", [])
            if "set" in (strategies or []) and (
                not isinstance(sets, list)
                or not sets
                or not all(
                    isinstance(s, list) and s and all(isinstance(i, int) for i in s) for s in sets
                )
            ):
                problems.append(
                    f"{at}.sets: strategy 'set' needs a list of layer lists, "
                    f"e.g. [[1, 2], [-1]]; got {sets!r}"
                )
            if "max_k" in spec and (not isinstance(spec["max_k"], int) or spec["max_k"] < 1):
                problems.append(f"{at}.max_k: got {spec['max_k']!r}, expected an integer >= 1")
        problems.extend(template_problems(dict(spec), at))
        when = spec.get("when", {})
        if not isinstance(when, Mapping):
            problems.append(f"{at}.when: expected a mapping of key to allowed values")
            when = {}
        when = {k: (v if isinstance(v, list) else [v]) for k, v in when.items()}
        for k in when:
            if k not in known:
                problems.append(f"{at}.when: {k!r} is not a config key")
        out.append(Param(key, kind, dict(spec), when))
    return out


def _check_base(raw: Any, where: str, problems: list[str], known: set[str]) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        problems.append(f"{where}: expected a mapping of config keys to values")
        return {}
    for key in raw:
        if key not in known and key.split(".")[0] not in ("data",):
            problems.append(f"{where}.{key}: not a config key")
        problems.extend(template_problems({key: raw[key]}, f"{where}.{key}"))
    return dict(raw)


def parse_space(raw: Any, *, source: str = "<space>") -> SearchSpace:
    """Validate a parsed YAML search space; raise :class:`ConfigError` with every
    problem at once."""
    problems: list[str] = []
    if not isinstance(raw, Mapping):
        raise ConfigError("top level: expected a mapping with base/params/pairs", source=source)
    extra = set(raw) - {"base", "params", "pairs", "description"}
    if extra:
        problems.append(
            f"top level: unknown section(s) {sorted(extra)} (allowed: base, "
            "params, pairs, description)"
        )
    known = set(to_flat(from_dict({})))
    base = _check_base(raw.get("base"), "base", problems, known)
    params = _parse_params(raw.get("params"), "params", problems, known)
    pairs: dict[str, tuple[dict[str, Any], list[Param]]] = {}
    raw_pairs = raw.get("pairs") or {}
    if not isinstance(raw_pairs, Mapping):
        problems.append("pairs: expected a mapping of language pair to overrides")
        raw_pairs = {}
    for pair, over in raw_pairs.items():
        if not PAIR_RE.match(str(pair)):
            problems.append(f"pairs.{pair}: expected <query_lang>-<doc_lang> such as en-sw")
        if not isinstance(over, Mapping) or set(over) - {"base", "params"}:
            problems.append(f"pairs.{pair}: expected a mapping with base and/or params")
            continue
        pairs[str(pair)] = (
            _check_base(over.get("base"), f"pairs.{pair}.base", problems, known),
            _parse_params(over.get("params"), f"pairs.{pair}.params", problems, known),
        )
    space = SearchSpace(base, params, pairs, source)
    problems.extend(_space_problems(space, None, known))
    if problems:
        raise ConfigError(problems, source=source)
    return space


def validate_space(space: SearchSpace, depth: int | None = None) -> SearchSpace:
    """Check every value ``space`` can give a trial against the config's limits, for
    every pair: the fixed values make a valid config, and each distribution's whole
    support stays within its field's bounds (``ge``/``gt``/``le``), enumerations and
    type (``int`` for integer fields). With the model ``depth``, layer numbers (fixed,
    categorical choices, ``layers`` sets) must exist in the model too. Raises one
    :class:`ConfigError` listing every problem; returns ``space``.

    :func:`parse_space` (so :func:`load_space`) runs the checks that need no depth; a
    sweep calls this with the depth before its first trial.
    """
    problems = _space_problems(space, depth, set(to_flat(from_dict({}))))
    if problems:
        raise ConfigError(problems, source=space.source)
    return space


def _space_problems(space: SearchSpace, depth: int | None, known: set[str]) -> list[str]:
    problems: list[str] = []
    fields = field_info()
    # A template space is checked as it would run for a stand-in pair (xx-en).
    sample = SAMPLE_PAIR if space.templated else ""
    for pair in [None, *space.pairs]:
        if pair and not PAIR_RE.match(pair):
            continue  # reported by the parser
        label = f"pairs.{pair}" if pair else ""
        try:
            fixed, _ = space._resolve(pair or sample, pair or "")
        except ConfigError as exc:  # e.g. {lang} for a pair without English
            problems.extend(f"{label or 'base'}: {p}" for p in exc.problems)
            continue
        fixed = {k: v for k, v in fixed.items() if k in known or k.split(".")[0] == "data"}
        own = [
            _fill_param(p, pair or sample) for p in (space.pairs[pair][1] if pair else space.params)
        ]
        # The fixed values must make a valid config on their own, for every pair.
        try:
            from_dict(apply_overrides({}, fixed))
        except ConfigError as exc:
            problems.extend(f"{label + '.' if label else ''}base: {p}" for p in exc.problems)
        if depth is not None:
            for key in LAYER_KEYS:
                if key in fixed and (pair is None or key in space.pairs[pair][0]):
                    problems.extend(
                        _depth_problems(
                            f"{label + '.' if label else ''}base.{key}", fixed[key], depth
                        )
                    )
        for p in own:
            if p.key not in fields:
                continue  # reported by the parser
            at = f"{label + '.' if label else ''}params.{p.key}"
            problems.extend(_param_problems(p, at, fields[p.key][0], fixed, depth))
    return problems


def _numeric(tp: Any) -> type | None:
    """``int`` or ``float`` for a numeric field (``int | None`` counts), else None."""
    args = [a for a in typing.get_args(tp) if a is not type(None)] or [tp]
    return args[0] if len(args) == 1 and args[0] in (int, float) else None


def _param_problems(
    p: Param, at: str, tp: Any, fixed: Mapping[str, Any], depth: int | None
) -> list[str]:
    s = p.spec
    values: list[tuple[str, Any]] = []
    out: list[str] = []
    if p.type in ("loguniform", "uniform", "int"):
        kind = _numeric(tp)
        if kind is None:
            return [
                f"{at}: type {p.type} samples numbers, but {p.key} is not a number "
                "field; use categorical or fixed"
            ]
        if kind is int and p.type != "int":
            out.append(
                f"{at}: type {p.type} samples fractions, but {p.key} is an integer; use type int"
            )
        try:
            values = [("low", float(s["low"])), ("high", float(s["high"]))]
        except (TypeError, ValueError):
            return out  # reported by the parser
        if p.type == "loguniform":
            values = [(k, v) for k, v in values if v > 0]  # low <= 0: the parser says so
        if p.type == "int" or kind is int:
            values = [(k, int(v)) if float(v).is_integer() else (k, v) for k, v in values]
    elif p.type == "categorical" and isinstance(s.get("choices"), list):
        values = [(f"choice {c!r}", c) for c in s["choices"]]
    elif p.type == "fixed":
        values = [("value", s.get("value"))]
    elif p.type == "layers":
        if p.key not in LAYER_KEYS:
            return [
                f"{at}: type layers is for layer numbers ({', '.join(LAYER_KEYS)}), "
                f"not {p.key}; use categorical or fixed"
            ]
        sets = s.get("sets")
        if "set" in s.get("strategies", []) and isinstance(sets, list):
            values = [
                (f"sets[{i}]", v)
                for i, v in enumerate(sets)
                if isinstance(v, list) and v and all(isinstance(x, int) for x in v)
            ]
    rest = {k: v for k, v in fixed.items() if k != p.key}
    for label, value in values:
        try:
            from_dict(apply_overrides({}, {**rest, p.key: value}))
        except ConfigError as exc:
            # Only what this value breaks: the fixed values are checked on their own.
            for line in exc.problems:
                if line.startswith(f"{p.key}: "):
                    out.append(f"{at}: {label}: {line[len(p.key) + 2 :]}")
                elif line.startswith(f"{p.key}["):
                    out.append(f"{at}: {label}: {line}")
        if depth is not None and p.key in LAYER_KEYS:
            out.extend(_depth_problems(f"{at}: {label}", value, depth))
    return out


def _depth_problems(at: str, value: Any, depth: int) -> list[str]:
    """Layer numbers in ``value`` that a ``depth``-layer model does not have."""
    layers = value if isinstance(value, list) else [value]
    bad = [
        x
        for x in layers
        if isinstance(x, int) and not isinstance(x, bool) and not -depth <= x <= depth
    ]
    if not bad:
        return []
    return [
        f"{at}: layer{'s' if len(bad) > 1 else ''} {', '.join(map(str, bad))} "
        f"{'are' if len(bad) > 1 else 'is'} beyond the model depth {depth} (allowed: "
        f"1..{depth}, -{depth}..-1 from the top, 0 = embeddings)"
    ]


def pin_overrides(space: SearchSpace, values: Mapping[str, Any]) -> SearchSpace:
    """``space`` with the fixed values (``base`` and per-pair ``base``) of the keys in
    ``values`` replaced: a user's ``key=value`` on the command line wins over the space's
    fixed values. A key the space searches raises :class:`ConfigError` (an override
    cannot both fix and search it)."""
    searched = sorted(
        {p.key for p in space.params} | {p.key for _, ps in space.pairs.values() for p in ps}
    )
    clash = sorted(set(values) & set(searched))
    if clash:
        raise ConfigError(
            [
                f"override {k}={values[k]!r}: the search space {space.source} "
                f"searches {k}; drop the override or make it fixed in the space"
                for k in clash
            ]
        )

    def pinned(fixed: dict[str, Any]) -> dict[str, Any]:
        return {**fixed, **{k: v for k, v in values.items() if k in fixed}}

    return replace(
        space,
        base=pinned(space.base),
        pairs={pair: (pinned(b), ps) for pair, (b, ps) in space.pairs.items()},
    )


def load_space(path: str | Path) -> SearchSpace:
    """Load and validate a YAML search space file."""
    p = Path(path)
    if not p.exists():
        shipped = sorted(
            x.name for x in (Path(__file__).resolve().parents[2] / "search_spaces").glob("*.yaml")
        )
        hint = f" (shipped: {', '.join(shipped)})" if shipped else ""
        raise ConfigError(f"search space {str(path)!r} does not exist{hint}")
    return parse_space(read_yaml(p, "search space"), source=str(p))
