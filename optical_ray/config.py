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
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence, Union

import yaml

from optical_ray.errors import ConfigError

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

PAIR_RE = re.compile(r"^[A-Za-z0-9_]+-[A-Za-z0-9_]+$")
#: Run and sweep names become one directory (``<output_dir>/<name>``, ``<storage>/<name>-<pair>``).
NAME_RE = re.compile(r"^[A-Za-z0-9._-]+$")
# Metric names as users write them: map, ndcg@10, mrr@10, recall@100, p@1, ...
METRIC_RE = re.compile(r"^(map|ndcg|mrr|recall|p)(@[1-9][0-9]*)?$")
#: Source formats of the real data samples (optical_ray.data.real): bitext, evaluation,
#: ranking (the English teacher's training pairs).
REAL_BITEXT_FORMATS = ("mafand",)
REAL_EVAL_FORMATS = ("ntrex", "ntrex_doc", "afriqa", "xquad_r")
REAL_RANK_FORMATS = ("english_train",)
REAL_FORMATS = REAL_BITEXT_FORMATS + REAL_EVAL_FORMATS + REAL_RANK_FORMATS
#: The main searched knobs (flat keys), in the order tables show them: the catalog keeps
#: each as a plain column (named after its last part) and the report lists them.
MAIN_HYPERPARAMETERS = (
    "distill.epsilon",
    "distill.weight",
    "distill.layers",
    "distill.lr",
    "distill.method",
)


def _f(
    default: Any = dataclasses.MISSING,
    *,
    help: str = "",
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    factory: Any = None,
) -> Any:
    """A dataclass field carrying its help text and numeric bounds for validation."""
    meta = {"help": help, "ge": ge, "gt": gt, "le": le}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class TinyModelConfig:
    """Shape of a BERT-style encoder built from scratch (tests, demo)."""

    num_layers: int = _f(2, ge=1, help="transformer layers")
    hidden_size: int = _f(64, ge=8, help="hidden size")
    num_heads: int = _f(2, ge=1, help="attention heads (must divide hidden_size)")
    intermediate_size: int = _f(128, ge=8, help="feed-forward size")
    max_position_embeddings: int = _f(128, ge=16, help="longest input in tokens")
    dropout: float = _f(0.1, ge=0, le=0.9, help="hidden and attention dropout")


@dataclass
class ModelConfig:
    """The retrieval encoder: which weights, how it scores, how long inputs may be."""

    name_or_path: str = _f(
        "tiny",
        help="'tiny' (built from model.tiny), a preset name, "
        "a Hugging Face hub id, or a local directory",
    )
    tokenizer: str | None = _f(
        None,
        help="tokenizer directory; default: the model's own, or <data.root>/tokenizer for 'tiny'",
    )
    tiny: TinyModelConfig = _f(factory=TinyModelConfig)
    scoring: Literal["late_interaction", "pooled"] = _f(
        "late_interaction", help="ColBERT MaxSim over token vectors, or a pooled dual encoder"
    )
    pooling: Literal["mean", "cls"] = _f("mean", help="pooling for scoring=pooled")
    projection_dim: int = _f(
        0,
        ge=0,
        help="linear projection of token vectors for late "
        "interaction (ColBERT uses 128); 0 = hidden size, no projection",
    )
    temperature: float = _f(0.05, gt=0, help="softmax temperature of the ranking loss")
    max_query_length: int = _f(32, ge=4)
    max_doc_length: int = _f(128, ge=4)
    max_bitext_length: int = _f(64, ge=4, help="tokens per side of a bitext pair")
    fold_letters: bool = _f(
        True,
        help="before tokenising, replace Latin letters the "
        "tokenizer can only read as [UNK] by their base letter (Hausa "
        "ɗ ƙ ɓ ƴ -> d k b y) instead of losing the whole word",
    )


@dataclass
class SourceConfig:
    """Where one dataset comes from: a file/directory, or a Hugging Face dataset."""

    path: str = _f(
        help="file or directory (standard layout), or a HF dataset name/dir; "
        "for the real-data formats the shared data folder ('' = "
        "$OPTICAL_RAY_SHARED_DATA, else ../shared/data)"
    )
    format: str = _f(
        "auto",
        help="auto | tsv | jsonl | text | hf; real data samples: "
        "mafand (bitext), ntrex | ntrex_doc | afriqa | xquad_r (evaluation), "
        "english_train (ranking)",
    )
    preset: str | None = _f(
        None, help="HF field mapping preset (mmarco, miracl, mrtydi, xor_tydi, opus)"
    )
    split: str | None = _f(None, help="HF split")
    field_map: dict[str, str] = _f(factory=dict, help="HF field renames")


@dataclass
class DataConfig:
    """Data sources. ``root`` is a directory in the standard layout; explicit sources
    override its parts per language pair."""

    root: str | None = _f(
        None,
        help="dataset root in the standard layout; None = a "
        "synthetic world generated into the run directory",
    )
    synthetic_seed: int = _f(0, help="seed of the synthetic world when root is None")
    synthetic_scale: Literal["tiny", "default"] = _f("default")
    teacher_lang: str = _f("en", help="language the teacher was trained on")
    rank: SourceConfig | None = _f(
        None, help="ranking training collection (default <root>/train/<teacher_lang>)"
    )
    bitext: dict[str, SourceConfig] = _f(
        factory=dict,
        help="per pair, e.g. en-sw: "
        "bitext file (default <root>/bitext/<pair>/"
        "train.tsv, or line-aligned train.<lang> files)",
    )
    eval: dict[str, SourceConfig] = _f(
        factory=dict, help="per pair: evaluation collection (default <root>/eval/<pair>/<split>)"
    )
    mono: dict[str, SourceConfig] = _f(
        factory=dict,
        help="per language: unlabelled text for adapt (default <root>/mono/<lang>.txt)",
    )


@dataclass
class RankConfig:
    """Stage ``rank``: contrastive retrieval fine-tuning (in-batch + hard negatives)."""

    lr: float = _f(5e-5, gt=0)
    batch_size: int = _f(32, ge=1, help="queries per batch per worker")
    steps: int = _f(0, ge=0, help="optimizer steps; 0 = use epochs")
    epochs: float = _f(1.0, gt=0)
    hard_negatives: int = _f(1, ge=0, help="hard negatives per query")


@dataclass
class AdaptConfig:
    """Stage ``adapt``: continued masked-LM training on unlabelled text."""

    lr: float = _f(5e-5, gt=0)
    batch_size: int = _f(32, ge=1)
    steps: int = _f(0, ge=0, help="optimizer steps; 0 = use epochs")
    epochs: float = _f(1.0, gt=0)
    mlm_probability: float = _f(0.15, gt=0, le=1)
    langs: list[str] = _f(
        factory=list, help="languages to adapt on; default: the pair's foreign language"
    )


@dataclass
class DistillConfig:
    """Stage ``distill`` (OPTICAL): teacher on English, student on the foreign side."""

    method: Literal["ot", "mse_token", "mse_sentence", "contrastive", "none"] = _f(
        "ot",
        help="ot = OPTICAL; mse_token = token MSE after greedy hard alignment; "
        "mse_sentence = Reimers & Gurevych 2020; contrastive = the distill.contrastive "
        "term alone (no distillation loss; the ablation); none = zero-shot teacher",
    )
    epsilon: float = _f(0.05, gt=0, help="Sinkhorn entropic regularisation")
    weight: float = _f(
        1.0,
        ge=0,
        le=1,
        help="lambda: loss = lambda*L_distill + (1-lambda)*L_rank on hybrid batches",
    )
    layers: list[int] = _f(
        factory=lambda: [-1],
        help="encoder layers to align (1-based, negative counts from the top; 0 = embeddings)",
    )
    layer_weights: list[float] | None = _f(None, help="one weight per layer; default uniform")
    cost: Literal["cosine", "sqeuclidean"] = _f("cosine")
    trainable: Literal["all", "embeddings"] = _f(
        "all",
        help="student parameters the stage trains: all, or only the input "
        "embeddings with the transformer frozen (a foreign language the model barely "
        "reads, little bitext: the transformer keeps what zero-shot transfer rode on)",
    )
    sinkhorn_iters: int = _f(100, ge=1, help="maximum Sinkhorn iterations")
    sinkhorn_tol: float = _f(1e-3, gt=0, help="marginal-error tolerance")
    rank_batch_size: int = _f(
        0, ge=0, help="ranking examples per hybrid batch; 0 = bitext-only batches"
    )
    lr: float = _f(5e-5, gt=0)
    batch_size: int = _f(32, ge=1, help="bitext pairs per batch per worker")
    steps: int = _f(0, ge=0, help="optimizer steps; 0 = use epochs")
    epochs: float = _f(1.0, gt=0)
    init: str = _f("teacher", help="student initialisation: 'teacher' or a checkpoint dir")
    long_pairs: Literal["truncate", "drop"] = _f(
        "truncate",
        help="bitext pairs with a side longer than model.max_bitext_length "
        "tokens: truncate both sides (cuts different content on each side) or drop the pair",
    )
    max_length_ratio: float = _f(
        0.0,
        ge=0,
        help="drop bitext pairs whose token counts "
        "differ by more than this factor (longer/shorter, e.g. 2.0); "
        "0 = keep all",
    )
    english_fraction: float = _f(
        0.0,
        ge=0,
        le=1,
        help="English retention: the share of "
        "each batch's pairs on which the student reads the English "
        "side (distilled en->en to the teacher) instead of the foreign one",
    )
    l2sp: float = _f(
        0.0,
        ge=0,
        help="L2-SP (Li et al. 2018): adds l2sp * sum of squared "
        "differences between the student's and the teacher's weights to the loss",
    )
    contrastive: float = _f(
        0.0,
        ge=0,
        help="adds contrastive * InfoNCE between the "
        "student's ranking vectors of each pair's foreign side and the "
        "teacher's of its English side (in-batch negatives, both "
        "directions, model.temperature): keeps sentences apart where a "
        "student that barely reads the language would be pulled to one point",
    )


@dataclass
class TrainConfig:
    """What runs, in which order, and the optimisation knobs shared by all stages."""

    stages: list[Literal["rank", "adapt", "distill"]] = _f(
        factory=lambda: ["rank", "distill"], help="stages in order"
    )
    teacher: str | None = _f(None, help="trained teacher checkpoint; skips 'rank'")
    seed: int = _f(0)
    device: Literal["auto", "cpu", "cuda"] = _f("auto")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = _f(
        "auto", help="auto = bf16 on GPUs that support it, fp32 on CPU"
    )
    grad_accum: int = _f(1, ge=1)
    grad_clip: float = _f(1.0, ge=0, help="max grad norm; 0 = off")
    warmup_ratio: float = _f(0.1, ge=0, le=1)
    weight_decay: float = _f(0.01, ge=0)
    log_every: int = _f(20, ge=1, help="steps between progress lines")
    eval_every: int = _f(0, ge=0, help="steps between dev evaluations; 0 = end of stage")
    checkpoint_every: int = _f(0, ge=0, help="steps between checkpoints; 0 = end of stage")
    keep_best: bool = _f(
        False,
        help="distill stage: evaluate the starting model too and end "
        "with the weights of the best dev evaluation (train.select_metric)",
    )
    patience: int = _f(
        0,
        ge=0,
        help="distill stage: stop after this many dev evaluations "
        "without improvement (needs train.eval_every > 0); 0 = never",
    )
    select_metric: str = _f(
        "map", help="dev metric of `pair` for keep_best and patience; one of eval.metrics"
    )
    tracking: list[str] = _f(
        factory=list,
        help="views of the run: mlflow (or mlflow=URI), "
        "tensorboard, wandb (offline unless WANDB_MODE says otherwise)",
    )


@dataclass
class EvalConfig:
    """Evaluation: which pairs, which split, which metrics."""

    pairs: list[str] = _f(
        factory=list,
        help="pairs to evaluate; default: teacher pair (e.g. en-en) and the distilled pair(s)",
    )
    split: Literal["dev", "test"] = _f("dev", help="tune on dev; report test once")
    metrics: list[str] = _f(factory=lambda: ["map", "ndcg@10", "mrr@10", "recall@100"])
    depth: int = _f(1000, ge=1, help="documents ranked per query")
    batch_size: int = _f(64, ge=1, help="texts encoded per batch")
    candidates: int = _f(
        0,
        ge=0,
        help="first-stage candidates per query for late "
        "interaction on large corpora; 0 = exact scoring of every doc",
    )


@dataclass
class ScalingConfig:
    """Ray Train scaling: workers per run and resources per worker."""

    workers: int = _f(1, ge=1)
    cpus_per_worker: float = _f(1.0, gt=0)
    gpus_per_worker: float = _f(0.0, ge=0)
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = _f("PACK")
    max_failures: int = _f(2, ge=-1, help="worker-group restarts; -1 = unlimited")


@dataclass
class StorageConfig:
    """Where results and checkpoints go: a local path or s3://bucket/prefix."""

    uri: str = _f("optical_runs", help="local directory or s3://bucket/prefix")
    endpoint: str | None = _f(None, help="S3 endpoint URL (default: AWS_ENDPOINT_URL)")
    region: str | None = _f(None)


@dataclass
class SweepConfig:
    """Ray Tune + Optuna search over a YAML search space."""

    space: str = _f("search_spaces/default.yaml")
    pairs: list[str] = _f(factory=list)
    samples: int = _f(8, ge=1, help="trials per pair")
    metric: str = _f("map")
    mode: Literal["max", "min"] = _f("max")
    search: Literal["tpe", "random"] = _f(
        "tpe",
        help="Optuna sampler: seeded TPE, or random search (the baseline TPE is measured against)",
    )
    scheduler: Literal["asha", "none"] = _f("asha")
    max_concurrent: int = _f(1, ge=1, help="trials in flight across all pairs of the sweep")
    max_concurrent_per_pair: int = _f(0, ge=0, help="cap per pair (0: only the total)")
    pair_order: Literal["concurrent", "sequential"] = _f(
        "concurrent", help="run the pairs' experiments at the same time, or one after another"
    )
    max_failures: int = _f(
        2, ge=0, help="restarts of a trial whose process or node dies, from its last checkpoint"
    )
    grace_period: int = _f(1, ge=1, help="ASHA: evaluations before a trial may be stopped")
    reduction_factor: float = _f(2.0, gt=1)
    seed: int = _f(0)
    tracking: list[str] = _f(
        factory=list,
        help="views of the sweep as it runs: mlflow (or "
        "mlflow=URI; default MLFLOW_TRACKING_URI, else <storage>/mlflow.db),"
        " tensorboard (<storage>/tensorboard), wandb (offline)",
    )
    optuna_storage: str | None = _f(
        None,
        help="Optuna studies (<name>-<pair>): an RDB URL or "
        "journal:PATH; default sqlite:///<storage>/optuna.db for "
        "local storage, in memory for s3://; 'memory' = not kept",
    )


@dataclass
class Config:
    """The whole resolved config of a run."""

    name: str = _f("run", help="run / experiment name")
    pair: str = _f("en-xa", help="language pair to distill, <query_lang>-<doc_lang>")
    output_dir: str = _f("optical_runs", help="local working directory of a run")
    model: ModelConfig = _f(factory=ModelConfig)
    data: DataConfig = _f(factory=DataConfig)
    train: TrainConfig = _f(factory=TrainConfig)
    rank: RankConfig = _f(factory=RankConfig)
    adapt: AdaptConfig = _f(factory=AdaptConfig)
    distill: DistillConfig = _f(factory=DistillConfig)
    eval: EvalConfig = _f(factory=EvalConfig)
    scaling: ScalingConfig = _f(factory=ScalingConfig)
    storage: StorageConfig = _f(factory=StorageConfig)
    sweep: SweepConfig = _f(factory=SweepConfig)

    @property
    def foreign_lang(self) -> str:
        """The side of ``pair`` that is not the teacher's language (its query side for
        ``en-en``)."""
        q, d = self.pair.split("-", 1)
        return d if q == self.data.teacher_lang else q


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
        if ge is not None and value < ge:
            problems.append(f"{key}: got {value!r}, must be >= {ge}")
        if gt is not None and value <= gt:
            problems.append(f"{key}: got {value!r}, must be > {gt}")
        if le is not None and value > le:
            problems.append(f"{key}: got {value!r}, must be <= {le}")


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
    if not METRIC_RE.match(cfg.sweep.metric):
        problems.append(
            f"sweep.metric: got {cfg.sweep.metric!r}, expected map, ndcg@K, mrr@K, recall@K or p@K"
        )
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
    if tc.keep_best or tc.patience:
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
    for section, allowed in (("bitext", REAL_BITEXT_FORMATS), ("eval", REAL_EVAL_FORMATS)):
        for key, src in getattr(cfg.data, section).items():
            if src.format in REAL_FORMATS and src.format not in allowed:
                problems.append(
                    f"data.{section}.{key}.format: got {src.format!r}, not a "
                    f"format for data.{section}; allowed here: {', '.join(allowed)}"
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
    # Tracking targets and study storage: rules live beside the code that uses them.
    from optical_ray.tracking import optuna_storage_problems, tracking_problems

    problems += tracking_problems("train.tracking", cfg.train.tracking)
    problems += tracking_problems("sweep.tracking", cfg.sweep.tracking)
    problems += optuna_storage_problems(cfg.sweep.optuna_storage)
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
        if line:
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
        try:
            out[key.strip()] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            out[key.strip()] = raw
    if problems:
        raise ConfigError(problems)
    return out


def apply_overrides(data: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Return a deep copy of nested ``data`` with dotted ``overrides`` applied."""
    out = json.loads(json.dumps(dict(data)))
    for key, value in overrides.items():
        _set_path(out, key, value)
    return out


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping (plain YAML keeps
    the last value without a word, so the first one would be silently ignored)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *base` then explicit keys: overriding is the point
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: SafeLoader reports it itself
                continue
            if first is not None:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"duplicate key {key!r} (first at line {first + 1}); give each key once",
                    key_node.start_mark,
                )
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: str | Path, what: str = "config file") -> Any:
    """Parse the YAML file ``path`` (safe loader, UTF-8, no duplicate keys); every
    problem (missing, a directory, not UTF-8, bad YAML) is a one-line :class:`ConfigError`
    naming the file, and the line where YAML can tell."""
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"{what} {str(path)!r} is a directory; expected a YAML file")
    if not p.is_file():
        raise ConfigError(f"{what} {str(path)!r} does not exist")
    raw = p.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(
            f"not UTF-8 text: byte 0x{raw[exc.start]:02x} at line {line}; save the file as UTF-8",
            source=str(path),
        ) from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        where = f" at line {line + 1}" if line is not None else ""
        raise ConfigError(
            f"not valid YAML{where}: {getattr(exc, 'problem', exc)}", source=str(path)
        ) from None


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
