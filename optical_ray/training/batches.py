"""What the stage loops feed on: ranking examples, resumable sharded batches, and the
bitext length handling and English-retention share of the distill stage.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from optical_ray.config import Config
from optical_ray.training.context import TrainContext
from optical_ray.errors import DataError
from optical_ray.models.encoder import RetrievalModel

__all__ = ["RankExamples", "Batches", "english_rows", "filter_bitext", "to_device"]


def english_rows(batch_no: int, batch_size: int, fraction: float) -> int:
    """How many rows of batch ``batch_no`` carry English retention: ``floor((b + 1) f B)
    - floor(b f B)``, so the share over batches is exactly ``fraction`` even when
    ``fraction * batch_size`` is not a whole number (and is fixed per batch: resumable)."""
    if fraction <= 0:
        return 0
    total = fraction * batch_size
    return min(
        batch_size, math.floor((batch_no + 1) * total + 1e-9) - math.floor(batch_no * total + 1e-9)
    )


def _token_counts(tokenizer: Any, texts: list[str]) -> list[int]:
    counts: list[int] = []
    for s in range(0, len(texts), 4096):
        ids = tokenizer(texts[s : s + 4096], add_special_tokens=False, truncation=False)[
            "input_ids"
        ]
        counts += [len(x) for x in ids]
    return counts


def filter_bitext(
    pairs: Sequence[tuple[str, str]], teacher: RetrievalModel, student: RetrievalModel, cfg: Config
) -> tuple[list[tuple[str, str]], dict[str, int]]:
    """Length handling of bitext (``distill.long_pairs``, ``distill.max_length_ratio``).

    Truncating a long pair at ``model.max_bitext_length`` tokens cuts the two sides at
    different places in the sentence (a Hausa sentence takes more tokens than its
    English one), so the tails align content the other side no longer has. ``drop``
    removes pairs with a side over the limit (special tokens included); a ratio ``r >
    0`` removes pairs whose token counts (without special tokens) differ by more than a
    factor ``r`` (misaligned or loose translations). Returns the kept pairs, in order,
    and counts ``{"kept", "too_long", "bad_ratio"}``.
    """
    dc = cfg.distill
    pairs = list(pairs)
    if dc.long_pairs == "truncate" and not dc.max_length_ratio:
        return pairs, {"kept": len(pairs), "too_long": 0, "bad_ratio": 0}

    def limit(model: RetrievalModel) -> int:
        return min(
            cfg.model.max_bitext_length,
            int(getattr(model.encoder.config, "max_position_embeddings", 512)),
        )

    max_en, max_xx = limit(teacher), limit(student)
    n_en = _token_counts(teacher.tokenizer, teacher.normalize([e for e, _ in pairs]))
    n_xx = _token_counts(student.tokenizer, student.normalize([f for _, f in pairs]))
    special_en = teacher.tokenizer.num_special_tokens_to_add(pair=False)
    special_xx = student.tokenizer.num_special_tokens_to_add(pair=False)
    kept, too_long, bad_ratio = [], 0, 0
    for pair, a, b in zip(pairs, n_en, n_xx):
        if dc.long_pairs == "drop" and (a + special_en > max_en or b + special_xx > max_xx):
            too_long += 1
        elif dc.max_length_ratio and max(a, b) > dc.max_length_ratio * max(1, min(a, b)):
            bad_ratio += 1
        else:
            kept.append(pair)
    return kept, {"kept": len(kept), "too_long": too_long, "bad_ratio": bad_ratio}


class RankExamples:
    """Training examples of a ranking collection: a query, one positive, its hard
    negatives (triples when the collection has them, else judged positives from qrels
    with random negatives)."""

    def __init__(self, collection: Any) -> None:
        self.collection = collection
        items: list[tuple[str, tuple[str, ...], tuple[str, ...], bool]] = []
        for t in collection.iter_triples():
            items.append((t.query, tuple(t.pos), tuple(t.neg), bool(t.texts)))
        if not items:
            for qid, docs in collection.qrels.items():
                if qid in collection.queries:
                    items += [
                        (qid, (d,), (), False)
                        for d, rel in docs.items()
                        if rel > 0 and d in collection.corpus
                    ]
        if not items:
            raise DataError(
                "the ranking collection has no training example (no triples and "
                "no positive judgement of a known query and document)"
            )
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def _doc(self, docid: str) -> str:
        doc = self.collection.corpus.get(docid)
        return f"{doc.title} {doc.text}" if doc.title else doc.text

    def batch(self, indices: Sequence[int], n_neg: int) -> tuple[list[str], list[str]]:
        """Query texts ``[B]`` and document texts ``[B * (1 + n_neg)]`` (positive first).

        Missing hard negatives are filled with random documents, drawn from the torch
        RNG (re-seeded per step, so resume-safe).
        """
        corpus = self.collection.corpus
        queries, docs = [], []
        for i in indices:
            q, pos, neg, texts = self.items[i]
            queries.append(q if texts else self.collection.queries[q])
            docs.append(pos[0] if texts else self._doc(pos[0]))
            negs = list(neg[:n_neg])
            while len(negs) < n_neg:
                if neg:
                    negs.append(neg[len(negs) % len(neg)])
                else:
                    negs.append(corpus[int(torch.randint(len(corpus), ()))].docid)
            docs += negs if texts else [self._doc(n) for n in negs]
        return queries, docs


class Batches:
    """Batch number -> item indices: epochs of ``ctx.shard`` cut into fixed batches."""

    def __init__(
        self, ctx: TrainContext, n_items: int, batch_size: int, seed: int, what: str
    ) -> None:
        self.ctx, self.n_items, self.batch_size, self.seed = ctx, n_items, batch_size, seed
        self.per_epoch = (n_items // ctx.world_size) // batch_size
        if self.per_epoch == 0:
            raise DataError(
                f"{what}: {n_items} examples give no full batch of {batch_size} per "
                f"worker x {ctx.world_size} worker(s); lower the batch size"
            )
        self._epoch, self._order = -1, []

    def __call__(self, batch_no: int) -> tuple[list[int], int, int]:
        """Indices of batch ``batch_no``, its epoch and its position in the epoch."""
        epoch, pos = divmod(batch_no, self.per_epoch)
        if epoch != self._epoch:
            self._epoch, self._order = epoch, self.ctx.shard(self.n_items, epoch, self.seed)
        return self._order[pos * self.batch_size : (pos + 1) * self.batch_size], epoch, pos


def to_device(batch: dict[str, Tensor], device: torch.device) -> dict[str, Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}
