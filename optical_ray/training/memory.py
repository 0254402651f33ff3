"""How much memory one training step takes, measured by running one.

:class:`StepProbe` builds a stage's models as the recipe holds them and runs one
optimizer step of the stage through its own code (:func:`~optical_ray.training.stages.train_rank`
and its siblings, hence :func:`~optical_ray.training.loop.run_stage`: the real batches,
losses and AdamW state, the frozen teacher's forward and the OT/MSE loss of distill) on
one batch padded to the configured maximum lengths (the worst case), in a context that
writes nothing. What is read:

- CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, so the
  weights already on the device count too;
- CPU: the growth of the process's peak RSS (``VmHWM``, reset through
  ``/proc/self/clear_refs``) over its RSS once the models and texts are built; the
  weights are added to compare with a budget (:attr:`StepMemory.total_bytes`).

:func:`measure_step_memory` is the one-call form; fits and budgets are in
:mod:`optical_ray.training.sizing`.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import random
import resource
import sys
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch

from optical_ray.config import Config, from_flat
from optical_ray.data.collection import Collection, Corpus
from optical_ray.data.formats import Triple
from optical_ray.errors import ConfigError
from optical_ray.models.encoder import RetrievalModel, check_distill_layers
from optical_ray.training.context import TrainContext, resolve_device
from optical_ray.training.recipe import initial_model, stages_to_run
from optical_ray.training.stages import init_student, train_adapt, train_distill, train_rank

__all__ = ["StepMemory", "StepProbe", "measure_step_memory", "configured_batch", "format_bytes"]


def format_bytes(n: float) -> str:
    """``1.84 GiB``, ``12.3 MiB``, ``512 KiB`` or ``100 B``."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:.3g} {unit}" if n < 100 * size else f"{n / size:.0f} {unit}"
    return f"{int(n)} B"


@dataclass(frozen=True)
class StepMemory:
    """One measured step: ``stage`` at ``batch_size``, inputs of ``lengths`` tokens.

    ``peak_bytes`` is what ``measure`` read (CUDA: the peak allocated, weights included;
    CPU: the peak RSS growth over the built models and texts); ``weights_bytes`` the
    parameters and buffers of the models the step holds; ``total_bytes`` what the step
    needs in all (what a budget is compared with)."""

    stage: str
    batch_size: int
    lengths: dict[str, int]
    device: str
    measure: str
    peak_bytes: int
    weights_bytes: int

    @property
    def total_bytes(self) -> int:
        cpu = self.device == "cpu"
        return self.peak_bytes + (self.weights_bytes if cpu else 0)

    def describe(self) -> str:
        """``one step at batch 8, english 64 + foreign 64 tokens: peak 12 MiB (...)``."""
        tokens = " + ".join(f"{k} {v}" for k, v in self.lengths.items())
        head = f"one step at batch {self.batch_size}, {tokens} tokens: peak "
        if self.device != "cpu":
            return f"{head}{format_bytes(self.peak_bytes)} ({self.measure}, weights included)"
        return (
            f"{head}{format_bytes(self.peak_bytes)} ({self.measure}; with "
            f"{format_bytes(self.weights_bytes)} of weights: {format_bytes(self.total_bytes)})"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "batch_size": self.batch_size,
            "lengths": dict(self.lengths),
            "device": self.device,
            "measure": self.measure,
            "peak_bytes": self.peak_bytes,
            "weights_bytes": self.weights_bytes,
            "total_bytes": self.total_bytes,
        }


# --------------------------------------------------------------------------- reading memory


def _status_kib(field: str) -> int | None:
    """A ``/proc/self/status`` field in KiB (Linux), or None."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    """Reset the process's peak RSS (``VmHWM``) to its RSS now (Linux 4.0+)."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return _status_kib("VmHWM") is not None
    except OSError:
        return False


def _release_freed_memory() -> None:
    """Hand freed heap pages back to the OS (glibc), so the next step's growth is not
    hidden in pages an earlier step left mapped."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).malloc_trim(0)


def _max_rss_bytes() -> int:
    # ru_maxrss is in KiB on Linux, in bytes on macOS
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024


@contextlib.contextmanager
def _peak(device: torch.device) -> Iterator[dict[str, Any]]:
    """Measure the block: yields a dict that holds ``peak`` (bytes) and ``measure``."""
    out: dict[str, Any] = {}
    _release_freed_memory()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        yield out
        torch.cuda.synchronize(device)
        out.update(
            peak=torch.cuda.max_memory_allocated(device), measure="CUDA max_memory_allocated"
        )
        return
    base = _status_kib("VmRSS")
    if base is not None and _reset_peak_rss():
        yield out
        growth = ((_status_kib("VmHWM") or base) - base) * 1024
        out.update(peak=max(0, growth), measure="CPU peak RSS growth")
        return
    before = _max_rss_bytes()  # no resettable peak: the lifetime peak, a lower bound
    yield out
    out.update(
        peak=max(0, _max_rss_bytes() - before),
        measure="CPU growth of the lifetime peak RSS, a lower bound",
    )


@contextlib.contextmanager
def _rng_kept(device: torch.device) -> Iterator[None]:
    """Training steps reseed the global RNGs; the caller's draws go on unchanged."""
    py, np_state = random.getstate(), np.random.get_state()
    cuda = []
    if device.type == "cuda":
        cuda = [device.index if device.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=cuda):
        yield
    random.setstate(py)
    np.random.set_state(np_state)


class _Quiet(TrainContext):
    """One process, no run directory (so no checkpoint is written), no prints."""

    def print0(self, *args: Any) -> None:
        pass


# --------------------------------------------------------------------------- one step


def _long_text(model: RetrievalModel, kind: str) -> tuple[str, int]:
    """A text that fills ``kind``'s token limit (truncated there by ``model.tokenize``)
    and the width of its tokenised batch: ordinary vocabulary pieces, doubled until
    a longer text gives no longer batch."""
    tok = model.tokenizer
    special = set(tok.all_special_ids)
    ids = [i for i in range(len(tok)) if i not in special]
    n, text, width = 64, "", 0
    for _ in range(12):
        text = tok.decode([ids[(len(ids) // 2 + k) % len(ids)] for k in range(n)])
        width = int(model.tokenize([text], kind)["input_ids"].shape[1])
        if int(model.tokenize([f"{text} {text}"], kind)["input_ids"].shape[1]) == width:
            break
        n *= 2
    return text, width


def _ranking(
    query: tuple[str, int], doc: tuple[str, int], n: int, n_neg: int
) -> tuple[Collection, dict[str, int]]:
    """A ranking collection of ``n`` triples (texts) of a maximum-length ``query``, its
    document and ``n_neg`` hard negatives (each ``(text, tokens)``), and their lengths."""
    (query, q_len), (doc, d_len) = query, doc
    triples = tuple(Triple(query, (doc,), (doc,) * n_neg, True) for _ in range(n))
    return Collection({}, Corpus.from_docs([]), {}, triples), {"query": q_len, "doc": d_len}


def _step_config(cfg: Config, stage: str, batch_size: int) -> Config:
    """``cfg`` for one step of ``stage`` at ``batch_size``: one micro-batch, no dev
    selection (nothing is evaluated), bitext never dropped for its length (the step is
    measured on pairs of maximum length)."""
    return from_flat(
        {
            f"{stage}.steps": 1,
            f"{stage}.batch_size": batch_size,
            "train.grad_accum": 1,
            "train.keep_best": False,
            "train.patience": 0,
            "distill.long_pairs": "truncate",
            "distill.max_length_ratio": 0.0,
        },
        cfg,
    )


class StepProbe:
    """The models of ``stage`` (rank, adapt, distill) as the recipe holds them, built
    once on the device ``train.device`` resolves to; :meth:`measure` runs one step at any
    batch size. A warm-up step at batch 1 runs first: its one-time allocations (lazy
    imports, thread pools, kernels) are not the batch's."""

    def __init__(self, cfg: Config, stage: str) -> None:
        configured_batch(cfg, stage)  # a known stage
        if stage == "distill" and cfg.distill.method == "none":
            raise ConfigError(
                "distill.method: got 'none', which trains nothing: no step to measure"
            )
        self.cfg, self.stage = cfg, stage
        self.device = resolve_device(cfg)
        self.ctx = _Quiet(device=self.device)
        model = initial_model(cfg)
        self.teacher: RetrievalModel | None = None
        stages = stages_to_run(cfg)
        if stage == "distill":
            check_distill_layers(cfg)  # as a run does, before any stage
            self.teacher, model = model, init_student(model, cfg)
        elif stage == "adapt" and "distill" in stages[stages.index("adapt") + 1 :]:
            self.teacher = model.copy()  # the recipe keeps the teacher through adapt
        self.model = model
        self.models = [m.to(self.device) for m in (model, self.teacher) if m is not None]
        self._texts: dict[tuple[int, str], tuple[str, int]] = {}
        self._run(1)

    def _text(self, model: RetrievalModel, kind: str) -> tuple[str, int]:
        if (id(model), kind) not in self._texts:
            self._texts[id(model), kind] = _long_text(model, kind)
        return self._texts[id(model), kind]

    def weights_bytes(self) -> int:
        """Bytes of the parameters and buffers of the models the step holds."""
        seen: dict[int, int] = {}
        for m in self.models:
            for t in [*m.parameters(), *m.buffers()]:
                seen[t.data_ptr()] = t.numel() * t.element_size()
        return sum(seen.values())

    def _inputs(self, batch: int) -> tuple[dict[str, Any], dict[str, int]]:
        cfg = self.cfg
        if self.stage == "rank":
            data, lengths = _ranking(
                self._text(self.model, "query"),
                self._text(self.model, "doc"),
                batch,
                cfg.rank.hard_negatives,
            )
            return {"collection": data}, lengths
        if self.stage == "adapt":
            text, width = self._text(self.model, "doc")
            return {"texts": [text] * batch}, {"text": width}
        assert self.teacher is not None
        english, en_len = self._text(self.teacher, "bitext")
        foreign, xx_len = self._text(self.model, "bitext")
        lengths = {"english": en_len, "foreign": xx_len}
        rank_data = None
        if cfg.distill.rank_batch_size > 0:
            rank_data, r = _ranking(
                self._text(self.model, "query"),
                self._text(self.model, "doc"),
                cfg.distill.rank_batch_size,
                cfg.rank.hard_negatives,
            )
            lengths.update(r)
        return {"bitext": [(english, foreign)] * batch, "rank_data": rank_data}, lengths

    def _run(self, batch: int) -> dict[str, int]:
        cfg = _step_config(self.cfg, self.stage, batch)
        inputs, lengths = self._inputs(batch)
        with _rng_kept(self.device):
            if self.stage == "rank":
                train_rank(self.model, inputs["collection"], cfg, self.ctx)
            elif self.stage == "adapt":
                train_adapt(self.model, inputs["texts"], cfg, self.ctx, teacher=self.teacher)
            else:
                assert self.teacher is not None
                train_distill(
                    self.model, self.teacher, inputs["bitext"], cfg, self.ctx, inputs["rank_data"]
                )
        for m in self.models:  # this step's gradients are not the next one's baseline
            for p in m.parameters():
                p.grad = None
        return lengths

    def measure(self, batch: int) -> StepMemory:
        """One step at ``batch`` examples, measured."""
        with _peak(self.device) as read:
            lengths = self._run(batch)
        return StepMemory(
            self.stage,
            batch,
            lengths,
            str(self.device),
            read["measure"],
            int(read["peak"]),
            self.weights_bytes(),
        )


def configured_batch(cfg: Config, stage: str) -> int:
    """``<stage>.batch_size``: examples per step per worker. Raises ``ValueError``
    for a stage other than rank, adapt, distill."""
    if stage not in ("rank", "adapt", "distill"):
        raise ValueError(f"stage {stage!r}: allowed rank, adapt, distill")
    return int(getattr(cfg, stage).batch_size)


def measure_step_memory(cfg: Config, stage: str, batch_size: int | None = None) -> StepMemory:
    """The memory of one training step of ``stage`` at ``batch_size`` (default: the
    configured ``<stage>.batch_size``) on a batch of maximum-length inputs, on the
    device ``train.device`` resolves to. Nothing is written: no run directory, no
    checkpoint (the tiny model's synthetic world is generated when missing, as a run
    does). Raises ``ValueError`` for an unknown ``stage``."""
    batch = configured_batch(cfg, stage) if batch_size is None else batch_size
    return StepProbe(cfg, stage).measure(batch)
