"""Scoring: what the encoder produces for a batch of texts (:class:`Encoded`) and the
late-interaction score over token vectors (:func:`maxsim`, ColBERT: Khattab & Zaharia
2020). Pure tensor functions."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["Encoded", "maxsim"]

# Query x doc x token x token similarities held at once by `score`; bounds its memory
# (~256 MB of fp32) when evaluation hands it a whole corpus.
_SCORE_BUDGET = 1 << 26


@dataclass
class Encoded:
    """What the encoder produced for a batch of texts.

    ``vectors``: ``[B, L, D]`` L2-normalised token vectors (late interaction, padding
    rows zero) or ``[B, D]`` normalised pooled vectors. ``mask``: ``[B, L]`` bool, True on
    real tokens. ``layer_states``: hidden states ``[B, L, H]`` of the requested layers.
    """

    vectors: Tensor
    mask: Tensor
    layer_states: list[Tensor] | None = None

    def __len__(self) -> int:
        return self.vectors.shape[0]

    @property
    def late(self) -> bool:
        """True for token vectors (late interaction), False for pooled vectors."""
        return self.vectors.dim() == 3

    def __getitem__(self, rows: slice | Tensor | list[int]) -> Encoded:
        states = None if self.layer_states is None else [s[rows] for s in self.layer_states]
        return Encoded(self.vectors[rows], self.mask[rows], states)

    def to(self, device: torch.device | str) -> Encoded:
        states = None if self.layer_states is None else [s.to(device) for s in self.layer_states]
        return Encoded(self.vectors.to(device), self.mask.to(device), states)


def maxsim(q: Tensor, q_mask: Tensor, d: Tensor, d_mask: Tensor, *, pairs: bool = False) -> Tensor:
    """ColBERT late-interaction score ``s(q, d) = sum_i max_j cos(q_i, d_j)``.

    ``q``: ``[Bq, Lq, D]``, ``d``: ``[Bd, Ld, D]`` normalised token vectors; masks
    ``[B, L]`` bool. Only real query tokens are summed and only real document tokens
    are maximised over, so padding never changes a score. Returns ``[Bq, Bd]`` (all
    pairs) or, with ``pairs=True`` and ``Bq == Bd``, ``[B]`` (row i against row i).
    """
    q_mask, d_mask = q_mask.bool(), d_mask.bool()
    if pairs:
        sim = torch.einsum("bid,bjd->bij", q, d)  # [B, Lq, Ld]
        sim = sim.masked_fill(~d_mask[:, None, :], float("-inf"))
        return sim.amax(-1).masked_fill(~q_mask, 0.0).sum(-1)
    if not torch.is_grad_enabled() or not (q.requires_grad or d.requires_grad):
        return _maxsim_trimmed(q, q_mask, d, d_mask)
    bq, lq, _ = q.shape
    bd, ld, _ = d.shape
    chunk = max(1, _SCORE_BUDGET // max(1, bq * lq * ld))
    out = []
    for s in range(0, bd, chunk):
        dc, mc = d[s : s + chunk], d_mask[s : s + chunk]
        sim = torch.einsum("qid,pjd->qpij", q, dc)  # [Bq, Bd_chunk, Lq, Ld]
        sim = sim.masked_fill(~mc[None, :, None, :], float("-inf"))
        best = sim.amax(-1).masked_fill(~q_mask[:, None, :], 0.0)  # [Bq, Bd_chunk, Lq]
        out.append(best.sum(-1))
    return torch.cat(out, dim=1) if out else q.new_zeros(bq, 0)


def _maxsim_trimmed(q: Tensor, q_mask: Tensor, d: Tensor, d_mask: Tensor) -> Tensor:
    """All-pairs MaxSim without gradient, in blocks of length-sorted queries and
    documents, each block cut to its longest real text. Evaluation pads every query to
    the longest of the collection (NTREX: ~128 tokens against ~35 on average), and the
    padded einsum did ~10x the work; the scores are the same (padding only ever
    contributed masked entries)."""
    bq, bd = q.shape[0], d.shape[0]
    out = q.new_zeros(bq, bd)
    if bq == 0 or bd == 0:
        return out
    q_order = q_mask.sum(1).argsort()
    d_order = d_mask.sum(1).argsort()

    def cut(mask: Tensor) -> int:
        cols = mask.any(0).nonzero()
        return int(cols.max()) + 1 if len(cols) else 1

    for qs in range(0, bq, 256):
        qi = q_order[qs : qs + 256]
        lq = cut(q_mask[qi])
        qc, qm = q[qi, :lq], q_mask[qi, :lq]
        s = 0
        while s < bd:
            ld = cut(d_mask[d_order[s : s + 64]])  # the block's longest doc bounds its width
            n = max(1, min(bd - s, _SCORE_BUDGET // max(1, len(qi) * lq * ld)))
            dj = d_order[s : s + n]
            ld = cut(d_mask[dj])
            dc, dm = d[dj, :ld], d_mask[dj, :ld]
            sim = torch.einsum("qid,pjd->qpij", qc, dc)
            sim = sim.masked_fill(~dm[None, :, None, :], float("-inf"))
            best = sim.amax(-1).masked_fill(~qm[:, None, :], 0.0)
            out[qi[:, None], dj[None, :]] = best.sum(-1)
            s += n
    return out
