"""The typed config schema: one dataclass per concern, with each field's default, help
and bounds (``_f``), and the names and formats the validation checks against.

Building, validation and I/O live in :mod:`optical_ray.config.build`; import both from
:mod:`optical_ray.config`.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "PAIR_RE",
    "NAME_RE",
    "METRIC_RE",
    "REAL_BITEXT_FORMATS",
    "REAL_EVAL_FORMATS",
    "REAL_RANK_FORMATS",
    "REAL_MONO_FORMATS",
    "REAL_FORMATS",
    "MAIN_HYPERPARAMETERS",
    "HYPERPARAMETERS",
    "TinyModelConfig",
    "ModelConfig",
    "SourceConfig",
    "DataConfig",
    "RankConfig",
    "AdaptConfig",
    "DistillConfig",
    "TrainConfig",
    "EvalConfig",
    "ScalingConfig",
    "StorageConfig",
    "SweepConfig",
    "Config",
]

#: A language pair: ``<query_lang>-<doc_lang>`` (``en-sw``, ``swa-en``).
PAIR_RE = re.compile(r"^[A-Za-z0-9_]+-[A-Za-z0-9_]+$")
#: Run and sweep names become one directory (``<output_dir>/<name>``, ``<storage>/<name>-<pair>``).
NAME_RE = re.compile(r"^[A-Za-z0-9._-]+$")
#: Metric names as users write them: map, ndcg@10, mrr@10, recall@100, p@1, ...
METRIC_RE = re.compile(r"^(map|ndcg|mrr|recall|p)(@[1-9][0-9]*)?$")
#: Source formats of the real data samples (optical_ray.data.real): bitext, evaluation,
#: ranking (the English teacher's training pairs), monolingual text (the foreign side
#: of MAFAND-MT's train split, for stage adapt).
REAL_BITEXT_FORMATS = ("mafand",)
#: Real evaluation sources (``data.eval``): sentences, documents, passages.
REAL_EVAL_FORMATS = ("ntrex", "ntrex_doc", "afriqa", "xquad_r")
#: Real English ranking pairs for the teacher's ``rank`` stage (``data.rank``).
REAL_RANK_FORMATS = ("english_train",)
#: Real monolingual text for stage ``adapt`` (``data.mono``): MAFAND-MT's train split,
#: foreign side (already a bitext format, so not repeated in REAL_FORMATS).
REAL_MONO_FORMATS = ("mafand",)
#: Every real source format, in the order above.
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
#: Plain columns of the main hyperparameters (column -> flat config key), for fast
#: queries and the report's plots.
HYPERPARAMETERS = {key.rsplit(".", 1)[-1]: key for key in MAIN_HYPERPARAMETERS}


def _f(
    default: Any = dataclasses.MISSING,
    *,
    help: str = "",
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    factory: Any = None,
) -> Any:
    """A dataclass field carrying its help text and numeric bounds for validation."""
    meta = {"help": help, "ge": ge, "gt": gt, "le": le, "lt": lt}
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
        "mafand (bitext; data.mono: its train split's foreign side), ntrex | "
        "ntrex_doc | afriqa | xquad_r (evaluation), english_train (ranking)",
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
        help="per language: unlabelled text for adapt (default <root>/mono/<lang>.txt): "
        "any text file (one text a line), or {format: mafand} for the foreign side of "
        "MAFAND-MT's train split",
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
        "map",
        help="dev metric of `pair` for keep_best and patience; one of eval.metrics, or "
        "objective (sweep.objective)",
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
    retention: bool = _f(
        True,
        help="English retention: also evaluate the reference pair (eval.reference) "
        "when it has an evaluation set, and record each trial's metric there over the "
        "zero-shot teacher's (catalog column retention); false = the trial's pairs only",
    )
    reference: str = _f("", help="reference pair of retention; '' = the teacher's own (en-en)")


@dataclass
class ScalingConfig:
    """Ray Train scaling: workers per run and resources per worker."""

    workers: int = _f(1, ge=1)
    cpus_per_worker: float = _f(1.0, gt=0)
    gpus_per_worker: float = _f(0.0, ge=0)
    backend: Literal["auto", "nccl", "gloo"] = _f(
        "auto",
        help="torch.distributed backend; auto = nccl when the GPU workers see CUDA, else gloo",
    )
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
    max_concurrent_per_pair: int = _f(
        0,
        ge=0,
        help="cap per pair (0: only its share of max_concurrent, split between running pairs)",
    )
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
    objectives: list[str] = _f(
        factory=list,
        help="several objectives (e.g. [map, en-en/map] or [map, cost]): Optuna's "
        "multi-objective TPE under FIFO scheduling (sweep.scheduler none); [] = sweep.metric",
    )
    constraints: list[str] = _f(
        factory=list,
        help="constraints such as 'retention>=0.98' told to Optuna with each trial "
        "(set_constraint): TPE samples from the feasible trials; ASHA still applies",
    )
    optuna_storage: str | None = _f(
        None,
        help="Optuna studies (<name>-<pair>): an RDB URL or "
        "journal:PATH; default sqlite:///<storage>/optuna.db for "
        "local storage, in memory for s3://; 'memory' = not kept",
    )
    warm_start: str = _f(
        "none",
        help="seed each pair's search from related pairs in the catalog: none, auto, "
        "or source pairs (en-sw,en-ha)",
    )
    warm_start_from: str | None = _f(
        None, help="catalog storage of the source pairs (default: this sweep's storage)"
    )
    warm_start_top: int = _f(
        3, ge=1, help="source pairs' best configs run first, in all (in turns across sources)"
    )
    objective: str = _f(
        "",
        help="what a pair's trials are searched, stopped, kept and answered on: a "
        "weighted mean of dev metrics over the pair's tasks, e.g. 'mean({lang}-en/map, "
        "en-{lang}/map, {lang}-en_doc/map)' or 'mean(2*map, en-en/map)' (pair templates "
        "allowed; a bare metric is the pair's own task; every task must be in eval.pairs); "
        "trials report it as the metric 'objective'. '' = sweep.metric on the pair itself",
    )
    promotion: Literal["paired", "mean"] = _f(
        "paired",
        help="ASHA at a rung: paired = stop a trial only when its per-query dev values "
        "are significantly below the rung's cut-off trial (one-sided paired test at "
        "sweep.promotion_alpha; a tie goes through); mean = Ray's ASHA on means alone",
    )
    promotion_alpha: float = _f(
        0.1, gt=0, lt=1, help="level of the paired test that stops a trial at an ASHA rung"
    )
    finalists: int | None = _f(
        None,
        ge=0,
        help="after the search, the top finished configs re-trained with "
        "sweep.finalist_seeds new seeds beside the space's base config; the answer is a "
        "finalist only when it beats the base significantly (Holm), else the base. "
        "None = 2 with sweep.objective, 0 without; 0 = no finalists (one-seed answer)",
    )
    finalist_seeds: int = _f(
        2, ge=1, help="new seeds (train.seed+1 .. +N) each finalist and the base train with"
    )
    finalist_alpha: float = _f(
        0.05,
        gt=0,
        lt=1,
        help="level (one-sided, Holm over the finalists) at which a finalist must beat "
        "the base to be the answer",
    )
    memory_budget: str | None = _f(
        None,
        help="memory one training step may take, e.g. 8GiB or 500M (binary units): before "
        "any trial starts, the driver measures one step of each stage at the space's "
        "largest batch sizes and lengths and warns per pair and stage when it does not "
        "fit. None = the GPU's total memory on a CUDA driver; no check on CPU",
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
