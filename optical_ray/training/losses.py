"""Training losses: InfoNCE ranking, the distillation losses (OPTICAL's OT loss and the
two MSE baselines), the L2-SP penalty, and how the distill stage mixes them
(:func:`mix_distill_losses`). Pure functions of tensors and a config.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from optical_ray.config import Config, DistillConfig
from optical_ray.errors import TrainingError
from optical_ray.models.encoder import Encoded, RetrievalModel
from optical_ray.ot import normalize_layer_weights, ot_distillation_loss

__all__ = [
    "rank_loss",
    "pair_contrastive_loss",
    "token_mse_loss",
    "sentence_mse_loss",
    "distill_loss",
    "l2sp_penalty",
    "mix_distill_losses",
]


def rank_loss(
    model: RetrievalModel, q: Encoded, d: Encoded, n_docs_per_query: int, temperature: float
) -> Tensor:
    """InfoNCE over in-batch and hard negatives.

    ``q``: Encoded queries ``[B, ...]``; ``d``: Encoded documents ``[B * k, ...]`` laid
    out as ``[pos_0, neg_0.., pos_1, neg_1.., ...]`` (``k = n_docs_per_query``). Every
    query is scored against every document of the batch; the target is its positive.
    Late-interaction scores are divided by the query's token count first: a MaxSim sum
    over 30 tokens divided by a temperature of 0.05 would make logits of ~600 and a
    one-hot softmax, whereas the mean MaxSim is a cosine in [-1, 1] like a pooled score.
    """
    logits = _logits(model, q, d, temperature)  # [B, B * k]
    labels = torch.arange(logits.shape[0], device=logits.device) * n_docs_per_query
    return F.cross_entropy(logits, labels)


def _logits(model: RetrievalModel, q: Encoded, d: Encoded, temperature: float) -> Tensor:
    """fp32 ``score(q, d) / temperature``, late-interaction scores first divided by the
    query's token count (see :func:`rank_loss`)."""
    scores = model.score(q, d)
    if q.late:
        scores = scores / q.mask.sum(1, keepdim=True).clamp_min(1).to(scores.dtype)
    return scores.float() / temperature


def pair_contrastive_loss(
    model: RetrievalModel, student: Encoded, teacher: Encoded, temperature: float
) -> Tensor:
    r"""Symmetric in-batch InfoNCE between aligned rows: ``student[i]`` (the foreign
    side of pair ``i``, encoded by the student) must score its own ``teacher[i]`` (the
    English side, encoded by the frozen teacher) above every other row's, and the other
    way round. ``L = (CE(S / tau) + CE(S'^T / tau)) / 2`` with ``S = score(student,
    teacher)`` and ``S' = score(teacher, student)`` (the same matrix transposed for
    pooled scoring), late-interaction scores divided by the query's token count as in
    :func:`rank_loss`. The teacher side carries no gradient."""
    labels = torch.arange(len(student), device=student.vectors.device)
    forward = F.cross_entropy(_logits(model, student, teacher, temperature), labels)
    backward = F.cross_entropy(_logits(model, teacher, student, temperature), labels)
    return 0.5 * (forward + backward)


def _weights(layer_weights: Sequence[float] | None, n: int) -> list[float]:
    """The OT loss's layer weights (same checks: one per layer, >= 0, positive sum)."""
    return normalize_layer_weights(layer_weights, n).tolist()


def token_mse_loss(
    teacher_states: Sequence[Tensor],
    student_states: Sequence[Tensor],
    teacher_mask: Tensor,
    student_mask: Tensor,
    layer_weights: Sequence[float] | None = None,
) -> Tensor:
    r"""Token MSE after greedy hard alignment (the non-OT token baseline).

    Each real student token ``j`` is paired with its most similar real teacher token
    ``a(j) = argmax_i cos(s_j, t_i)`` (no gradient through the argmax) and
    ``L = sum_l w_l mean_b mean_j mean_d (s_{l,b,j} - t_{l,b,a(j)})^2``.
    Shapes: teacher ``[B, n, d]``, student ``[B, m, d]`` per layer, masks ``[B, n]``/``[B, m]``.
    """
    t_mask, s_mask = teacher_mask.bool(), student_mask.bool()
    loss = student_states[0].new_zeros((), dtype=torch.float32)
    for w, t, s in zip(
        _weights(layer_weights, len(student_states)), teacher_states, student_states
    ):
        t, s = t.detach().float(), s.float()
        with torch.no_grad():
            sim = torch.bmm(
                F.normalize(s, dim=-1), F.normalize(t, dim=-1).transpose(1, 2)
            )  # [B, m, n]
            best = sim.masked_fill(~t_mask[:, None, :], float("-inf")).argmax(-1)  # [B, m]
        aligned = t.gather(1, best.unsqueeze(-1).expand(-1, -1, t.shape[-1]))  # [B, m, d]
        err = (s - aligned).pow(2).mean(-1)  # [B, m]
        m = s_mask.to(err.dtype)
        loss = loss + w * ((err * m).sum(1) / m.sum(1).clamp_min(1)).mean()
    return loss


def sentence_mse_loss(
    teacher_states: Sequence[Tensor],
    student_states: Sequence[Tensor],
    teacher_mask: Tensor,
    student_mask: Tensor,
    layer_weights: Sequence[float] | None = None,
) -> Tensor:
    r"""Reimers & Gurevych (2020): MSE between mean-pooled sentence embeddings,
    ``L = sum_l w_l mean_b mean_d (mean_j s_{l,b,j} - mean_i t_{l,b,i})^2``."""

    def pool(x: Tensor, mask: Tensor) -> Tensor:
        m = mask.to(x.dtype).unsqueeze(-1)
        return (x * m).sum(1) / m.sum(1).clamp_min(1)  # [B, d]

    loss = student_states[0].new_zeros((), dtype=torch.float32)
    for w, t, s in zip(
        _weights(layer_weights, len(student_states)), teacher_states, student_states
    ):
        diff = pool(s.float(), student_mask) - pool(t.detach().float(), teacher_mask)
        loss = loss + w * diff.pow(2).mean()
    return loss


def distill_loss(
    method: str,
    teacher_states: Sequence[Tensor],
    student_states: Sequence[Tensor],
    teacher_mask: Tensor,
    student_mask: Tensor,
    cfg: Config,
) -> Tensor:
    """The distillation loss ``cfg.distill.method`` names (``ot``, ``mse_token``,
    ``mse_sentence``; ``contrastive`` has none: 0), computed in fp32 whatever the
    autocast dtype."""
    d = cfg.distill
    if method == "contrastive":
        return student_states[0].new_zeros((), dtype=torch.float32)
    _check_finite_states(teacher_states, student_states)
    if method == "ot":
        return ot_distillation_loss(
            [t.float() for t in teacher_states],
            [s.float() for s in student_states],
            teacher_mask,
            student_mask,
            d.epsilon,
            cost=d.cost,
            layer_weights=d.layer_weights,
            max_iter=d.sinkhorn_iters,
            tol=d.sinkhorn_tol,
        )
    if method == "mse_token":
        return token_mse_loss(
            teacher_states, student_states, teacher_mask, student_mask, d.layer_weights
        )
    if method == "mse_sentence":
        return sentence_mse_loss(
            teacher_states, student_states, teacher_mask, student_mask, d.layer_weights
        )
    raise ValueError(
        f"distill.method {method!r}: allowed ot, mse_token, mse_sentence, contrastive, none"
    )


def _check_finite_states(teacher: Sequence[Tensor], student: Sequence[Tensor]) -> None:
    """Under fp16 autocast, one line (not Sinkhorn's error on a NaN cost) when hidden
    states overflowed fp16's range (65504). Other precisions have fp32's range: a
    non-finite loss there is the loop's own one line, and nothing is checked per step."""
    device = student[0].device.type
    if not torch.is_autocast_enabled(device) or torch.get_autocast_dtype(device) != torch.float16:
        return
    for side, states in (("teacher", teacher), ("student", student)):
        if not all(bool(torch.isfinite(t).all()) for t in states):
            raise TrainingError(
                f"distill: the {side}'s hidden states hold inf or NaN under "
                "train.precision=fp16: they overflowed fp16's range (65504); use "
                "train.precision=bf16 (fp32's range) or fp32"
            )


def l2sp_penalty(pairs: Sequence[tuple[Tensor, Tensor]]) -> Tensor:
    r"""L2-SP (Li, Grandvalet & Davoine, ICML 2018): ``sum_k ||theta_k - theta0_k||^2``
    over ``(parameter, reference)`` pairs whose parameter is trained (``requires_grad``).

    With the teacher's weights as ``theta0`` it pulls the student back towards the
    teacher instead of towards 0 (weight decay), so a small bitext cannot drag it far
    from what zero-shot transfer rode on."""
    terms = [(p.float() - ref.float()).pow(2).sum() for p, ref in pairs if p.requires_grad]
    if not terms:
        return torch.zeros(())
    return torch.stack(terms).sum()


def mix_distill_losses(
    distill: Tensor,
    d: DistillConfig,
    *,
    contrastive: Tensor | None = None,
    l2sp: Tensor | None = None,
    rank: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    r"""The loss of one distill step from its terms, and the parts it logs.

    ``L = lambda (L_d + c L_con) + (1 - lambda) L_rank + s P`` on hybrid batches
    (``rank`` given), else ``L = L_d + c L_con + s P``, with ``L_d`` = ``distill`` (the
    ``d.method`` loss), ``c`` = ``d.contrastive`` (its term ``contrastive`` is left out
    when None), ``lambda`` = ``d.weight``, ``s`` = ``d.l2sp`` and ``P`` = ``l2sp`` (the
    unweighted :func:`l2sp_penalty`; None = 0). Parts: ``{d.method: L_d,
    "contrastive": L_con, "l2sp": s P, "rank": L_rank}``, each only when present (for
    ``method=contrastive`` the zero ``L_d`` gives way to ``L_con`` under that name).
    """
    parts = {d.method: distill}
    if contrastive is not None:
        parts["contrastive"] = contrastive
        distill = distill + d.contrastive * contrastive
    penalty = distill.new_zeros(())
    if l2sp is not None:
        penalty = d.l2sp * l2sp.to(distill.device)
        parts["l2sp"] = penalty
    if rank is None:
        return distill + penalty, parts
    parts["rank"] = rank
    return d.weight * distill + (1.0 - d.weight) * rank + penalty, parts
