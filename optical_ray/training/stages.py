"""The three training stages of OPTICAL, each a plain function on a Config that returns
its history (and trains its model in place).

- ``rank`` (:func:`train_rank`): contrastive retrieval training of the English teacher
  (InfoNCE over in-batch and hard negatives, Karpukhin et al. 2020; ColBERT scoring by
  default). Given a translated collection it is translate-train CLIR fine-tuning.
- ``adapt`` (:func:`train_adapt`): continued masked-LM training on unlabelled text
  (Devlin et al. 2019's 80/10/10 masking, :class:`MLMHead`) of the model that becomes
  the student; the encoder is kept, the MLM head is thrown away.
- ``distill`` (:func:`train_distill`): OPTICAL (Huang, Yu & Allan, WSDM 2023): the
  frozen teacher encodes the English side of a bitext pair, the student the foreign
  side, and the student's token states are pulled to the teacher's through an entropic
  OT plan (:func:`optical_ray.ot.ot_distillation_loss`). Baselines: token MSE after
  greedy hard alignment, sentence-embedding MSE (Reimers & Gurevych 2020), none
  (zero-shot). :func:`~optical_ray.training.losses.mix_distill_losses` adds the optional terms.

Each builds a :class:`~optical_ray.training.loop.Stage` (what to optimise, a loss per batch)
and hands it to :func:`~optical_ray.training.loop.run_stage`.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from optical_ray.training.batches import (
    Batches,
    RankExamples,
    english_rows,
    filter_bitext,
    to_device,
)
from optical_ray.training.checkpoint import load_module
from optical_ray.config import Config
from optical_ray.training.context import History, TrainContext, mix_seed, resolve_device
from optical_ray.errors import ConfigError, DataError
from optical_ray.training.loop import (
    EvalFn,
    Stage,
    finish_without_training,
    restore_model,
    run_stage,
)
from optical_ray.training.losses import (
    distill_loss,
    l2sp_penalty,
    mix_distill_losses,
    pair_contrastive_loss,
    rank_loss,
)
from optical_ray.models.encoder import RetrievalModel, resolve_layers

__all__ = ["train_rank", "train_adapt", "train_distill", "init_student", "MLMHead"]


# --------------------------------------------------------------------------- MLM


class MLMHead(nn.Module):
    """BERT's MLM head (dense, GELU, LayerNorm, decoder tied to the input embeddings),
    usable on any encoder with ``get_input_embeddings``."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        c = encoder.config
        emb = encoder.get_input_embeddings()
        self.dense = nn.Linear(c.hidden_size, c.hidden_size)
        self.norm = nn.LayerNorm(c.hidden_size, eps=getattr(c, "layer_norm_eps", 1e-12))
        self.bias = nn.Parameter(torch.zeros(emb.weight.shape[0]))
        self._embedding = [emb]  # a list: tied, not registered twice as a submodule

    def forward(self, hidden: Tensor) -> Tensor:
        h = self.norm(F.gelu(self.dense(hidden)))
        return F.linear(h, self._embedding[0].weight, self.bias)  # [B, L, vocab]


class _MaskedLM(nn.Module):
    """Encoder + MLM head as one module, so a DDP wrapper syncs both."""

    def __init__(self, encoder: nn.Module, head: MLMHead) -> None:
        super().__init__()
        self.encoder, self.head = encoder, head

    def forward(self, input_ids: Tensor, attention_mask: Tensor, labels: Tensor) -> Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        rows = labels != -100  # score only masked positions: the vocab projection dominates
        logits = self.head(hidden[rows])
        return F.cross_entropy(logits.float(), labels[rows])


def _mask_tokens(
    input_ids: Tensor, attention_mask: Tensor, tokenizer: Any, probability: float
) -> tuple[Tensor, Tensor]:
    """BERT masking: of the chosen tokens 80% -> [MASK], 10% -> random, 10% kept.

    Special tokens and padding are never chosen; at least one token per batch is, so
    the loss is never a mean over nothing.
    """
    ids = input_ids.clone()
    special = torch.zeros_like(ids, dtype=torch.bool)
    for sid in tokenizer.all_special_ids:
        special |= ids == sid
    candidates = attention_mask.bool() & ~special
    chosen = (torch.rand(ids.shape) < probability) & candidates
    if not chosen.any():
        first = candidates.flatten().nonzero()
        if len(first):
            chosen.view(-1)[first[0]] = True
    labels = torch.where(chosen, ids, torch.full_like(ids, -100))
    roll = torch.rand(ids.shape)
    ids[chosen & (roll < 0.8)] = tokenizer.mask_token_id
    swap = chosen & (roll >= 0.8) & (roll < 0.9)
    ids[swap] = torch.randint(len(tokenizer), (int(swap.sum()),))
    return ids, labels


# --------------------------------------------------------------------------- stages


def train_rank(
    model: RetrievalModel,
    collection: Any,
    cfg: Config,
    ctx: TrainContext | None = None,
    *,
    history: History | None = None,
    resume: str | None = None,
    stage_index: int = 0,
    eval_fn: EvalFn | None = None,
) -> History:
    """Stage ``rank``: InfoNCE with temperature ``model.temperature`` over in-batch
    negatives plus ``rank.hard_negatives`` hard negatives per query.

    Trains ``model`` in place (the English teacher, or translate-train CLIR when
    ``collection`` is a translated one) and returns the history.
    """
    ctx = ctx or TrainContext()
    history = history if history is not None else History()
    rc = cfg.rank
    device = resolve_device(cfg, ctx)
    model.to(device)
    data = collection if isinstance(collection, RankExamples) else RankExamples(collection)
    n_docs = 1 + rc.hard_negatives

    def loss_fn(
        fwd: nn.Module, indices: list[int], batch_no: int
    ) -> tuple[Tensor, dict[str, Tensor]]:
        queries, docs = data.batch(indices, rc.hard_negatives)
        q = fwd(**to_device(model.tokenize(queries, "query"), device))
        d = fwd(**to_device(model.tokenize(docs, "doc"), device))
        loss = rank_loss(model, q, d, n_docs, cfg.model.temperature)
        return loss, {"rank": loss}

    stage = Stage(
        "rank",
        stage_index,
        model,
        model,
        rc.lr,
        rc.steps,
        rc.epochs,
        Batches(ctx, len(data), rc.batch_size, mix_seed(cfg.train.seed, stage_index), "rank"),
        rc.batch_size,
        loss_fn,
    )
    if resume is not None:
        restore_model(resume, model)
    return run_stage(stage, cfg, ctx, history, resume, eval_fn)


def train_adapt(
    model: RetrievalModel,
    texts: Sequence[str],
    cfg: Config,
    ctx: TrainContext | None = None,
    *,
    history: History | None = None,
    resume: str | None = None,
    stage_index: int = 0,
    eval_fn: EvalFn | None = None,
    teacher: RetrievalModel | None = None,
) -> History:
    """Stage ``adapt``: masked-LM continued pre-training of ``model``'s encoder on
    ``texts`` (``adapt.mlm_probability``). A fresh MLM head, tied to the input
    embeddings, is trained alongside and dropped at the end. ``teacher`` only rides
    along in checkpoints (the frozen teacher of a later distill stage)."""
    ctx = ctx or TrainContext()
    history = history if history is not None else History()
    ac = cfg.adapt
    device = resolve_device(cfg, ctx)
    model.to(device)
    texts = list(texts)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(mix_seed(cfg.train.seed, stage_index, 0xAD))
        head = MLMHead(model.encoder).to(device)
    mlm = _MaskedLM(model.encoder, head)

    def loss_fn(
        fwd: nn.Module, indices: list[int], batch_no: int
    ) -> tuple[Tensor, dict[str, Tensor]]:
        batch = model.tokenize([texts[i] for i in indices], "doc")
        ids, labels = _mask_tokens(
            batch["input_ids"], batch["attention_mask"], model.tokenizer, ac.mlm_probability
        )
        loss = fwd(ids.to(device), batch["attention_mask"].to(device), labels.to(device))
        return loss, {"mlm": loss}

    stage = Stage(
        "adapt",
        stage_index,
        mlm,
        model,
        ac.lr,
        ac.steps,
        ac.epochs,
        Batches(ctx, len(texts), ac.batch_size, mix_seed(cfg.train.seed, stage_index), "adapt"),
        ac.batch_size,
        loss_fn,
        teacher=teacher,
        extra={"mlm_head": head},
    )
    if resume is not None:
        restore_model(resume, model)
        load_module(Path(resume), "mlm_head", head, device)
    return run_stage(stage, cfg, ctx, history, resume, eval_fn)


def init_student(teacher: RetrievalModel, cfg: Config) -> RetrievalModel:
    """The student a distill stage starts from: a copy of the teacher
    (``distill.init: teacher``) or a saved model directory."""
    init = cfg.distill.init
    if init == "teacher":
        return teacher.copy()
    if not Path(init).is_dir():
        raise ConfigError(
            f"distill.init: got {init!r}, expected 'teacher' or a saved model directory"
        )
    return RetrievalModel.load(init)


@contextlib.contextmanager
def _frozen_unreachable(
    student: RetrievalModel, layers: list[int], reaches_top: bool, trainable: str = "all"
):
    """Freeze parameters no distillation gradient reaches (layers above the deepest
    aligned one, the ColBERT projection) unless ranking data or the contrastive term
    (``reaches_top``) trains them too; with
    ``trainable="embeddings"`` everything but the encoder's input embeddings.

    DDP without ``find_unused_parameters`` fails on parameters that get no gradient;
    AdamW skips parameters without a gradient either way, so results are unchanged.
    """
    frozen: list[nn.Parameter] = []
    if trainable == "embeddings":
        embeddings = (
            getattr(student.encoder, "embeddings", None) or student.encoder.get_input_embeddings()
        )
        keep = {id(p) for p in embeddings.parameters()}
        frozen = [p for p in student.parameters() if p.requires_grad and id(p) not in keep]
    elif not reaches_top:
        deepest = max(resolve_layers(layers, student.depth))
        blocks = getattr(getattr(student.encoder, "encoder", None), "layer", None)
        modules: list[nn.Module] = (
            list(blocks[deepest:]) if isinstance(blocks, nn.ModuleList) else []
        )
        if student.projection is not None:
            modules.append(student.projection)
        frozen = [p for mod in modules for p in mod.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in frozen:
            p.requires_grad_(True)


class _SinkhornNotes:
    """Collects Sinkhorn's non-convergence warnings over a stage: the first one is
    printed, the rest are counted and summed up once at the end of the stage, instead of
    one warning per step (hundreds of lines in a sweep's log)."""

    def __init__(self, ctx: TrainContext, cfg: Config) -> None:
        self.ctx, self.cfg = ctx, cfg
        self.steps = self.unconverged = 0
        self.last_error = 0.0  # worst marginal error of the last call (0: converged)

    @contextlib.contextmanager
    def watch(self):
        from optical_ray.ot import SinkhornConvergenceWarning

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", SinkhornConvergenceWarning)
            yield
        self.steps += 1
        hits = [w for w in caught if issubclass(w.category, SinkhornConvergenceWarning)]
        self.last_error = max(
            (float(getattr(w.message, "marginal_error", math.nan)) for w in hits), default=0.0
        )
        for w in caught:
            if not issubclass(w.category, SinkhornConvergenceWarning):
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        if hits:
            self.unconverged += 1
            if self.unconverged == 1:
                self.ctx.print0(
                    f"[distill] {hits[0].message} (further steps like this are "
                    "counted and reported at the end of the stage)"
                )

    def summary(self) -> None:
        if self.unconverged:
            d = self.cfg.distill
            self.ctx.print0(
                f"[distill] Sinkhorn stopped at distill.sinkhorn_iters="
                f"{d.sinkhorn_iters} before distill.sinkhorn_tol={d.sinkhorn_tol} "
                f"in {self.unconverged} of {self.steps} steps (epsilon {d.epsilon}); "
                "raise distill.sinkhorn_iters or distill.epsilon for exact plans"
            )

    def parts(self, like: Tensor) -> dict[str, Tensor]:
        """This step's convergence as loss parts, so they travel in the step history
        (and through a resume) like the loss: 1 when the plan did not converge, and its
        worst marginal error."""
        return {
            "sinkhorn_unconverged": like.new_tensor(float(self.last_error > 0)),
            "sinkhorn_error": like.new_tensor(self.last_error),
        }


def sinkhorn_convergence(history: History) -> dict[str, float]:
    """The distill stage's Sinkhorn convergence so far: the fraction of its steps whose
    plan stopped before ``distill.sinkhorn_tol`` (``sinkhorn_unconverged``) and the worst
    marginal error among them (``sinkhorn_max_error``, 0 when all converged). Recorded
    with every report, hence in the catalog."""
    steps = [
        s for s in history.steps if s.get("stage") == "distill" and "sinkhorn_unconverged" in s
    ]
    if not steps:
        return {}
    return {
        "sinkhorn_unconverged": sum(s["sinkhorn_unconverged"] > 0 for s in steps) / len(steps),
        "sinkhorn_max_error": max(s.get("sinkhorn_error", 0.0) for s in steps),
    }


def train_distill(
    student: RetrievalModel | None,
    teacher: RetrievalModel,
    bitext: Sequence[tuple[str, str]],
    cfg: Config,
    ctx: TrainContext | None = None,
    rank_data: Any = None,
    *,
    history: History | None = None,
    resume: str | None = None,
    stage_index: int = 0,
    eval_fn: EvalFn | None = None,
) -> tuple[RetrievalModel, History]:
    """Stage ``distill``: align the student's token states on the foreign side of
    ``bitext`` (``(english, foreign)`` pairs) to the frozen teacher's on the English side.

    ``student`` None starts from :func:`init_student`. With ``distill.rank_batch_size >
    0`` each step also draws that many ranking examples from ``rank_data`` (a
    collection) and the loss is ``weight * L_distill + (1 - weight) * L_rank``. Method
    ``none`` trains nothing (the zero-shot baseline). Returns the student and history.

    Regularisation: ``distill.long_pairs`` / ``distill.max_length_ratio`` filter the
    bitext (:func:`filter_bitext`); ``distill.english_fraction`` of the rows show the
    student the English side (English retention); ``distill.l2sp`` adds
    :func:`l2sp_penalty` towards the teacher's weights; ``train.keep_best`` and
    ``train.patience`` select the final weights on dev (``eval_fn``).
    """
    ctx = ctx or TrainContext()
    history = history if history is not None else History()
    dc = cfg.distill
    device = resolve_device(cfg, ctx)
    teacher.to(device).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    if student is None:
        student = init_student(teacher, cfg)
    student.to(device)
    for p in student.parameters():
        p.requires_grad_(True)
    pairs = list(bitext)
    if dc.method != "none":
        pairs, counts = filter_bitext(pairs, teacher, student, cfg)
        if counts["too_long"] or counts["bad_ratio"]:
            ctx.print0(
                f"[distill] bitext: kept {counts['kept']} pairs, dropped "
                f"{counts['too_long']} longer than model.max_bitext_length="
                f"{cfg.model.max_bitext_length} tokens and {counts['bad_ratio']} with a "
                f"length ratio over {dc.max_length_ratio}"
            )
        if not pairs:
            raise DataError(
                "distill: every bitext pair was filtered out; raise "
                "model.max_bitext_length, set distill.long_pairs=truncate or "
                "raise distill.max_length_ratio"
            )
    select = cfg.train.keep_best or cfg.train.patience > 0
    hybrid = dc.rank_batch_size > 0 and dc.method != "none"
    _check_distill_inputs(select and dc.method != "none", eval_fn, hybrid, rank_data)
    reference = _l2sp_reference(student, teacher) if dc.l2sp > 0 else []
    ranked = None
    if hybrid:
        ranked = rank_data if isinstance(rank_data, RankExamples) else RankExamples(rank_data)
    rank_batches = (
        Batches(
            ctx,
            len(ranked),
            dc.rank_batch_size,
            mix_seed(cfg.train.seed, stage_index, 1),
            "distill (ranking part)",
        )
        if ranked is not None
        else None
    )
    n_docs = 1 + cfg.rank.hard_negatives
    sinkhorn_notes = _SinkhornNotes(ctx, cfg)

    def loss_fn(
        fwd: nn.Module, indices: list[int], batch_no: int
    ) -> tuple[Tensor, dict[str, Tensor]]:
        english = [pairs[i][0] for i in indices]
        # English retention: the first k rows (the batch is shuffled) show the student
        # the English side, so en->en stays matched to the teacher.
        k = english_rows(batch_no, len(indices), dc.english_fraction)
        foreign = english[:k] + [pairs[i][1] for i in indices[k:]]
        t_batch = to_device(teacher.tokenize(english, "bitext"), device)
        s_batch = to_device(student.tokenize(foreign, "bitext"), device)
        with torch.no_grad():
            t_enc = teacher.encode(
                t_batch["input_ids"], t_batch["attention_mask"], layers=dc.layers
            )
        s_enc = fwd(s_batch["input_ids"], s_batch["attention_mask"], layers=dc.layers)
        with sinkhorn_notes.watch():
            l_dist = distill_loss(
                dc.method,
                t_enc.layer_states,
                s_enc.layer_states,
                t_batch["attention_mask"],
                s_batch["attention_mask"],
                cfg,
            )
        l_con = (
            pair_contrastive_loss(student, s_enc, t_enc, cfg.model.temperature)
            if dc.contrastive > 0
            else None
        )
        # before the ranking forward: autograd sums gradients in the order the graph
        # was built, and this order keeps results bit-identical to earlier versions
        l2sp = l2sp_penalty(reference) if reference else None
        l_rank = None
        if rank_batches is not None:
            r_idx, _, _ = rank_batches(batch_no)
            queries, docs = ranked.batch(r_idx, cfg.rank.hard_negatives)
            q = fwd(**to_device(student.tokenize(queries, "query"), device))
            d = fwd(**to_device(student.tokenize(docs, "doc"), device))
            l_rank = rank_loss(student, q, d, n_docs, cfg.model.temperature)
        loss, parts = mix_distill_losses(l_dist, dc, contrastive=l_con, l2sp=l2sp, rank=l_rank)
        if dc.method == "ot":
            parts.update(sinkhorn_notes.parts(l_dist.detach()))
        return loss, parts

    stage = Stage(
        "distill",
        stage_index,
        student,
        student,
        dc.lr,
        dc.steps,
        dc.epochs,
        Batches(ctx, len(pairs), dc.batch_size, mix_seed(cfg.train.seed, stage_index), "distill"),
        dc.batch_size,
        loss_fn,
        teacher=teacher,
        select=select,
        summary=sinkhorn_convergence if dc.method == "ot" else None,
    )
    if dc.method == "none":
        return student, finish_without_training(stage, cfg, ctx, history, eval_fn)
    if resume is not None:
        restore_model(resume, student)
    with _frozen_unreachable(student, dc.layers, hybrid or dc.contrastive > 0, dc.trainable):
        run_stage(stage, cfg, ctx, history, resume, eval_fn)
    sinkhorn_notes.summary()
    return student, history


def _check_distill_inputs(
    select: bool, eval_fn: EvalFn | None, hybrid: bool, rank_data: Any
) -> None:
    """What :func:`train_distill`'s arguments must provide for the config: these depend
    on the arguments, so they are checked here; the rules the config alone decides are
    in :mod:`optical_ray.config.build`'s validation."""
    if select and eval_fn is None:
        raise ConfigError(
            "train.keep_best/train.patience select weights on dev evaluations: "
            "pass eval_fn, or turn them off"
        )
    if hybrid and rank_data is None:
        raise ConfigError(
            "distill.rank_batch_size > 0 needs ranking data: pass rank_data "
            "(the rank collection), or set distill.rank_batch_size=0"
        )


def _l2sp_reference(
    student: RetrievalModel, teacher: RetrievalModel
) -> list[tuple[Tensor, Tensor]]:
    """``(student parameter, teacher's value)`` pairs for :func:`l2sp_penalty`."""
    t_params = dict(teacher.named_parameters())
    reference = []
    for name, p in student.named_parameters():
        ref = t_params.get(name)
        if ref is None or ref.shape != p.shape:
            raise ConfigError(
                f"distill.l2sp: the student's {name} has no counterpart of the "
                "same shape in the teacher; L2-SP needs the teacher's "
                "architecture (distill.init) or distill.l2sp=0"
            )
        reference.append((p, ref.detach()))
    return reference
