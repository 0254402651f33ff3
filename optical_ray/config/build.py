"""Typed configs: one dataclass per concern, loaded from YAML, overridden from the CLI.

A config is built once at the entry point (``load_config``), validated all at once
(every bad key or value in one :class:`~optical_ray.errors.ConfigError`, each naming the
key, the value and what is allowed), saved as JSON beside every output, and handed to
Ray Tune as the same flat ``{"distill.epsilon": 0.05, ...}`` dict (``to_flat`` /
``from_flat``). Unknown keys are errors: a typo must never be silently ignored.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import types
import typing
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence, Union


from optical_ray.config.objective import OBJECTIVE_KEY, objective_problems
from optical_ray.config.rules import (
    optuna_storage_problems,
    parse_bytes,
    search_problems,
    tracking_problems,
    warm_start_problems,
)
from optical_ray.config.loader import read_yaml, yaml_value
from optical_ray.errors import ConfigError
from optical_ray.config.schema import (
    MAIN_HYPERPARAMETERS,
    METRIC_RE,
    NAME_RE,
    PAIR_RE,
    REAL_BITEXT_FORMATS,
    REAL_EVAL_FORMATS,
    REAL_FORMATS,
    REAL_MONO_FORMATS,
    REAL_RANK_FORMATS,
    AdaptConfig,
    Config,
    DataConfig,
    DistillConfig,
    EvalConfig,
    ModelConfig,
    RankConfig,
    ScalingConfig,
    SourceConfig,
    StorageConfig,
    SweepConfig,
    TinyModelConfig,
    TrainConfig,
)

__all__ = [
    "ModelConfig",
    "TinyModelConfig",
    "DataConfig",
    "SourceConfig",
    "RankConfig",
    "AdaptConfig",
    "DistillConfig",
    "TrainConfig",
    "EvalConfig",
    "ScalingConfig",
    "StorageConfig",
    "SweepConfig",
    "Config",
    "load_config",
    "from_dict",
    "to_dict",
    "to_flat",
    "from_flat",
    "apply_overrides",
    "parse_overrides",
    "save_config",
    "validate",
    "PAIR_RE",
    "METRIC_RE",
    "REAL_FORMATS",
    "MAIN_HYPERPARAMETERS",
    "NAME_RE",
    "name_problem",
    "read_yaml",
    "field_info",
]


# --------------------------------------------------------------------------- building


def _describe(tp: Any) -> str:
    """Human-readable name of a type annotation, for error messages."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if origin is list:
        return f"a list of {_describe(typing.get_args(tp)[0])}"
    if origin is dict:
        return f"a mapping to {_describe(typing.get_args(tp)[1])}"
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {int: "an integer", float: "a number", str: "a string", bool: "true/false"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def _coerce(value: Any, tp: Any, key: str, problems: list[str]) -> Any:
    """Convert ``value`` to annotation ``tp``; record a problem and return None if not."""
    origin = typing.get_origin(tp)
    bad = f"{key}: got {value!r}, expected {_describe(tp)}"
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            trial: list[str] = []
            out = _coerce(value, arg, key, trial)
            if not trial:
                return out
        problems.append(bad)
        return None
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        problems.append(bad)
        return None
    if origin is list:
        (inner,) = typing.get_args(tp)
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = [value]  # `layers=-1` on the command line means [-1]
        if not isinstance(value, (list, tuple)):
            problems.append(bad)
            return None
        return [_coerce(v, inner, f"{key}[{i}]", problems) for i, v in enumerate(value)]
    if origin is dict:
        _, inner = typing.get_args(tp)
        if not isinstance(value, Mapping):
            problems.append(bad)
            return None
        return {str(k): _coerce(v, inner, f"{key}.{k}", problems) for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if isinstance(tp, type) and isinstance(value, tp):
            return value
        if tp is SourceConfig and isinstance(value, str):
            value = {"path": value}  # `bitext: {en-sw: file.tsv}` is the common short form
        if not isinstance(value, Mapping):
            problems.append(bad)
            return None
        return _build(tp, value, key, problems)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        problems.append(bad)
        return None
    if tp is int:
        if isinstance(value, bool):
            problems.append(bad)
            return None
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        problems.append(bad)
        return None
    if tp is float:
        if isinstance(value, bool):
            problems.append(bad)
            return None
        try:
            out = float(value)  # YAML reads 1e-3 (no dot) as a string: accept it
        except (TypeError, ValueError):
            problems.append(bad)
            return None
        if not math.isfinite(out):
            problems.append(f"{key}: got {value!r}, expected a finite number")
            return None
        return out
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        problems.append(bad)
        return None
    return value


def _build(cls: type, data: Mapping[str, Any], prefix: str, problems: list[str]) -> Any:
    """Build dataclass ``cls`` from a mapping, recording every problem."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            allowed = ", ".join(sorted(fields))
            problems.append(f"{full}: unknown key{hint} (allowed: {allowed})")
            continue
        before = len(problems)
        coerced = _coerce(value, hints[key], full, problems)
        if len(problems) == before or dataclasses.is_dataclass(coerced):
            kwargs[key] = coerced  # a section keeps its good fields despite a bad one
        # else: keep the default so the remaining checks still run on a whole object
    missing = [
        n
        for n, f in fields.items()
        if n not in kwargs
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]  # type: ignore[misc]
    for name in missing:
        problems.append(f"{prefix + '.' if prefix else ''}{name}: required, not given")
    if missing:
        return None
    return cls(**kwargs)


def _check_bounds(obj: Any, prefix: str, problems: list[str]) -> None:
    """Numeric bounds declared on fields (ge/gt/le), recursively."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        key = f"{prefix}.{f.name}" if prefix else f.name
        if dataclasses.is_dataclass(value):
            _check_bounds(value, key, problems)
            continue
        if isinstance(value, dict):
            for k, v in value.items():
                if dataclasses.is_dataclass(v):
                    _check_bounds(v, f"{key}.{k}", problems)
            continue
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        ge, gt, le = f.metadata.get("ge"), f.metadata.get("gt"), f.metadata.get("le")
        lt = f.metadata.get("lt")
        if ge is not None and value < ge:
            problems.append(f"{key}: got {value!r}, must be >= {ge}")
        if gt is not None and value <= gt:
            problems.append(f"{key}: got {value!r}, must be > {gt}")
        if le is not None and value > le:
            problems.append(f"{key}: got {value!r}, must be <= {le}")
        if lt is not None and value >= lt:
            problems.append(f"{key}: got {value!r}, must be < {lt}")


def _check_semantics(cfg: Config, problems: list[str]) -> None:
    """Rules that span several fields."""
    pairs = [("pair", cfg.pair)] + [(f"eval.pairs[{i}]", p) for i, p in enumerate(cfg.eval.pairs)]
    pairs += [(f"sweep.pairs[{i}]", p) for i, p in enumerate(cfg.sweep.pairs)]
    for section in ("bitext", "eval"):
        pairs += [(f"data.{section}.{p}", p) for p in getattr(cfg.data, section)]
    for key, pair in pairs:
        if not PAIR_RE.match(pair):
            problems.append(
                f"{key}: got {pair!r}, expected <query_lang>-<doc_lang> such as en-sw or sw-en"
            )
    for i, metric in enumerate(cfg.eval.metrics):
        if not METRIC_RE.match(metric):
            problems.append(
                f"eval.metrics[{i}]: got {metric!r}, expected map, ndcg@K, mrr@K, recall@K or p@K"
            )
    sw = cfg.sweep
    objective = bool(sw.objective.strip())
    if not METRIC_RE.match(sw.metric) and not (objective and sw.metric == OBJECTIVE_KEY):
        problems.append(
            f"sweep.metric: got {sw.metric!r}, expected map, ndcg@K, mrr@K, recall@K or p@K"
            + (" (or objective, with sweep.objective)" if sw.metric == OBJECTIVE_KEY else "")
        )
    problems += objective_problems(sw.objective)
    if objective and sw.objectives:
        problems.append(
            f"sweep.objective: set together with sweep.objectives {sw.objectives}; give "
            "one weighted objective or several Pareto objectives, not both"
        )
    if sw.finalists is not None and sw.finalists > sw.samples:
        problems.append(
            f"sweep.finalists: got {sw.finalists}, but a pair runs only {sw.samples} "
            f"trials (sweep.samples); at most {sw.samples}"
        )
    if cfg.eval.reference and not PAIR_RE.match(cfg.eval.reference):
        problems.append(
            f"eval.reference: got {cfg.eval.reference!r}, expected a pair such as en-en, or ''"
        )
    problems += search_problems(cfg.sweep)
    d = cfg.distill
    if not d.layers:
        problems.append("distill.layers: got [], expected at least one layer")
    if d.layer_weights is not None:
        if len(d.layer_weights) != len(d.layers):
            problems.append(
                f"distill.layer_weights: got {len(d.layer_weights)} weights for "
                f"{len(d.layers)} layers {d.layers}; give one per layer"
            )
        elif any(w < 0 for w in d.layer_weights) or sum(d.layer_weights) <= 0:
            problems.append(
                f"distill.layer_weights: got {d.layer_weights}, expected "
                "non-negative weights with a positive sum"
            )
    if d.method == "contrastive" and d.contrastive <= 0:
        problems.append(
            "distill.contrastive: got 0 with distill.method=contrastive, which "
            "trains on that term alone; set a weight > 0 such as 1.0"
        )
    if d.max_length_ratio and d.max_length_ratio < 1:
        problems.append(
            f"distill.max_length_ratio: got {d.max_length_ratio}, expected 0 "
            "(off) or a ratio >= 1 such as 2.0"
        )
    tc = cfg.train
    if (tc.keep_best or tc.patience) and tc.select_metric == OBJECTIVE_KEY:
        if not objective:
            problems.append(
                "train.select_metric: got 'objective' without sweep.objective; declare "
                "the objective or select on a metric such as map"
            )
    elif tc.keep_best or tc.patience:
        if not METRIC_RE.match(tc.select_metric):
            problems.append(
                f"train.select_metric: got {tc.select_metric!r}, expected map, "
                "ndcg@K, mrr@K, recall@K or p@K"
            )
        elif tc.select_metric not in cfg.eval.metrics:
            problems.append(
                f"train.select_metric: got {tc.select_metric!r}, not among "
                f"eval.metrics {cfg.eval.metrics}; add it there or pick one of them"
            )
    if (tc.keep_best or tc.patience) and "distill" not in tc.stages:
        problems.append(
            f"train.keep_best/train.patience: set with train.stages={tc.stages}, but "
            "they select the distill stage's weights on dev; add distill to "
            "train.stages or turn them off"
        )
    if tc.patience and not tc.eval_every:
        problems.append(
            f"train.patience: got {tc.patience} with train.eval_every=0; early "
            "stopping needs dev evaluations during the stage (train.eval_every > 0)"
        )
    for section, allowed in (
        ("bitext", REAL_BITEXT_FORMATS),
        ("eval", REAL_EVAL_FORMATS),
        ("mono", REAL_MONO_FORMATS),
    ):
        for key, src in getattr(cfg.data, section).items():
            if src.format in REAL_FORMATS and src.format not in allowed:
                problems.append(
                    f"data.{section}.{key}.format: got {src.format!r}, not a "
                    f"format for data.{section}; allowed here: {', '.join(allowed)}"
                )
    for lang, src in cfg.data.mono.items():
        if src.format in REAL_MONO_FORMATS and src.split not in (None, "train"):
            problems.append(
                f"data.mono.{lang}.split: got {src.split!r}; monolingual text comes from "
                "the train split only (never a dev or test sentence): leave it unset"
            )
    rank_src = cfg.data.rank
    if (
        rank_src is not None
        and rank_src.format in REAL_FORMATS
        and rank_src.format not in REAL_RANK_FORMATS
    ):
        problems.append(
            f"data.rank.format: got {rank_src.format!r}, not a format for "
            f"data.rank; allowed here: {', '.join(REAL_RANK_FORMATS)}"
        )
    if len(set(cfg.train.stages)) != len(cfg.train.stages):
        problems.append(f"train.stages: got {cfg.train.stages}, each stage at most once")
    if not cfg.train.stages:
        problems.append("train.stages: got [], expected some of rank, adapt, distill")
    t = cfg.model.tiny
    if t.num_heads and t.hidden_size % t.num_heads:
        problems.append(
            f"model.tiny.num_heads: got {t.num_heads}, must divide "
            f"model.tiny.hidden_size ({t.hidden_size})"
        )
    if cfg.scaling.gpus_per_worker > 0 and cfg.train.device == "cpu":
        problems.append(
            "train.device: got 'cpu' with scaling.gpus_per_worker > 0; use 'auto' or 'cuda'"
        )
    if cfg.scaling.backend == "nccl" and cfg.scaling.gpus_per_worker == 0:
        problems.append(
            "scaling.backend: got 'nccl' with scaling.gpus_per_worker=0 (NCCL needs a GPU "
            "per worker); use 'auto' or 'gloo', or set scaling.gpus_per_worker"
        )
    problems += tracking_problems("train.tracking", cfg.train.tracking)
    problems += tracking_problems("sweep.tracking", cfg.sweep.tracking)
    problems += optuna_storage_problems(cfg.sweep.optuna_storage)
    if sw.memory_budget is not None:
        try:
            parse_bytes(sw.memory_budget, "sweep.memory_budget")
        except ConfigError as exc:
            problems += exc.problems
    problems += warm_start_problems(cfg.sweep.warm_start)
    uri = cfg.storage.uri
    if "://" in uri and not uri.startswith(("s3://", "file://")):
        problems.append(
            f"storage.uri: got {uri!r}, expected a local path, file://... or s3://bucket/prefix"
        )


def name_problem(name: Any, key: str = "name") -> str | None:
    """One line if ``name`` is not a single path segment (letters, digits, ``.``, ``_``,
    ``-``; not ``.`` or ``..``), else None: a name is a directory under ``output_dir``
    or the storage root, and ``../x`` would write outside it."""
    if isinstance(name, str) and NAME_RE.match(name) and name not in (".", ".."):
        return None
    return (
        f"{key}: got {name!r}, expected one path segment: letters, digits, '.', '_', "
        "'-' (not '.' or '..'), such as run-1"
    )


def _strings(value: Any, key: str) -> typing.Iterator[tuple[str, str]]:
    """Every string in a nested dict/list, with its dotted key."""
    if isinstance(value, str):
        yield key, value
    elif isinstance(value, Mapping):
        for k, v in value.items():
            yield from _strings(v, f"{key}.{k}" if key else str(k))
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from _strings(v, f"{key}[{i}]")


def _check_inputs(cfg: Config, problems: list[str]) -> None:
    """Names that become directories, and URIs: no credentials anywhere in a config
    (they would be printed, saved beside checkpoints and sent to every worker)."""
    from optical_ray.redaction import credentials_problem

    bad_name = name_problem(cfg.name)
    if bad_name:
        problems.append(bad_name)
    for key, value in _strings(to_dict(cfg), ""):
        line = credentials_problem(key, value, bare_host=key == "storage.endpoint")
        # A key whose own rule already refused it (a tracking or study URI, with the
        # right place for its password) gets one line, not a second one pointing to
        # the AWS chain.
        if line and not any(p.startswith(f"{key}:") for p in problems):
            problems.append(line)


def from_dict(data: Mapping[str, Any] | None, *, source: str | None = None) -> Config:
    """Build and validate a :class:`Config` from a nested mapping (e.g. parsed YAML).

    Raises :class:`ConfigError` listing every problem at once.
    """
    problems: list[str] = []
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(
            f"top level: got {type(data).__name__}, expected a mapping", source=source
        )
    cfg = _build(Config, data, "", problems)
    if cfg is not None:
        _check_bounds(cfg, "", problems)
        _check_semantics(cfg, problems)
        _check_inputs(cfg, problems)
    if problems:
        raise ConfigError(problems, source=source)
    return cfg


def validate(cfg: Config) -> Config:
    """Re-validate a config built or mutated in Python; returns it unchanged."""
    return from_dict(to_dict(cfg))


def field_info() -> dict[str, tuple[Any, Mapping[str, Any]]]:
    """Every config field by flat key (as :func:`to_flat` names them): its type
    annotation and its metadata (``help``, bounds ``ge``/``gt``/``le``). Search spaces
    check their distributions against these."""
    out: dict[str, tuple[Any, Mapping[str, Any]]] = {}

    def walk(cls: type, prefix: str) -> None:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            tp = hints[f.name]
            if dataclasses.is_dataclass(tp):
                walk(tp, f"{prefix}{f.name}.")  # type: ignore[arg-type]
            else:
                out[prefix + f.name] = (tp, f.metadata)

    walk(Config, "")
    return out


def to_dict(cfg: Any) -> dict[str, Any]:
    """Nested plain-dict form (JSON/YAML serialisable)."""
    return dataclasses.asdict(cfg)


def _flatten(data: Mapping[str, Any], prefix: str, out: dict[str, Any]) -> None:
    for key, value in data.items():
        full = f"{prefix}.{key}" if prefix else key
        # Mappings keyed by user names (data.bitext.en-sw) stay whole: their keys are
        # not config fields, and Tune needs a fixed set of flat keys. The top-level
        # `eval` section is a config section like the others (eval.pairs, eval.split).
        user_keyed = (prefix == "data" and key in ("bitext", "eval", "mono")) or key == "field_map"
        if isinstance(value, dict) and not user_keyed:
            _flatten(value, full, out)
        else:
            out[full] = value


def to_flat(cfg: Config) -> dict[str, Any]:
    """Flat ``{"section.key": value}`` form, as handed to Ray Tune."""
    out: dict[str, Any] = {}
    _flatten(to_dict(cfg), "", out)
    return out


def _set_path(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def from_flat(flat: Mapping[str, Any], base: Config | Mapping[str, Any] | None = None) -> Config:
    """Rebuild a validated :class:`Config` from a flat dict, on top of ``base``."""
    data = to_dict(base) if isinstance(base, Config) else dict(base or {})
    data = json.loads(json.dumps(data))  # deep copy
    for key, value in flat.items():
        _set_path(data, key, value)
    return from_dict(data)


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """Parse CLI ``key=value`` items; values are YAML scalars/lists (``layers=[-1,-2]``)."""
    out: dict[str, Any] = {}
    problems = []
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            problems.append(f"override {item!r}: expected key=value, e.g. distill.epsilon=0.05")
            continue
        out[key.strip()] = yaml_value(raw, key.strip()) if raw.strip() else ""
    if problems:
        raise ConfigError(problems)
    return out


def apply_overrides(data: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Return a deep copy of nested ``data`` with dotted ``overrides`` applied."""
    out = json.loads(json.dumps(dict(data)))
    for key, value in overrides.items():
        _set_path(out, key, value)
    return out


def load_config(
    path: str | Path | None = None,
    overrides: Sequence[str] | Mapping[str, Any] = (),
) -> Config:
    """Load YAML (:func:`read_yaml`), apply ``key=value`` overrides, validate once."""
    data: Any = {}
    source = None
    if path is not None:
        source = str(path)
        data = read_yaml(path) or {}
        if not isinstance(data, Mapping):
            raise ConfigError(
                f"top level: got {type(data).__name__}, expected a mapping", source=source
            )
    if not isinstance(overrides, Mapping):
        overrides = parse_overrides(overrides)
    return from_dict(apply_overrides(data, overrides), source=source)


def save_config(cfg: Config, path: str | Path) -> Path:
    """Write the resolved config as JSON (beside every output), secrets masked
    (:func:`~optical_ray.redaction.redact`; a validated config holds none)."""
    from optical_ray.redaction import redact

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(
        redact(json.dumps(to_dict(cfg), indent=2, sort_keys=True)) + "\n", encoding="utf-8"
    )
    return p
