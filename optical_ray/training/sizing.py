"""Batch sizing from measured steps: the largest batch that fits a memory budget
(:func:`largest_batch`: ``memory = a + b * batch`` fitted through a few measured batch
sizes and solved for the budget), ``optical-ray train --dry-run`` (:func:`dry_run`) and
the sweep driver's check before any trial starts (:func:`warn_step_memory`). The steps
are measured by :mod:`optical_ray.training.memory`.
"""

from __future__ import annotations

import gc
import logging
import math
from dataclasses import dataclass
from typing import Any

import torch

from optical_ray.config import Config, to_flat
from optical_ray.config.rules import parse_bytes
from optical_ray.errors import OpticalRayError
from optical_ray.sweeps.space import SearchSpace, trial_config
from optical_ray.training.memory import (
    StepMemory,
    StepProbe,
    configured_batch,
    format_bytes,
    measure_step_memory,
)
from optical_ray.training.recipe import stages_to_run

__all__ = [
    "MEMORY_KEYS",
    "CHECK_UP_TO",
    "CHECKS",
    "BatchFit",
    "largest_batch",
    "dry_run",
    "largest_trial_config",
    "warn_step_memory",
]

log = logging.getLogger(__name__)

#: The config keys a stage's step memory grows with (``hybrid``: the ranking part of a
#: distill step, ``distill.rank_batch_size > 0``).
MEMORY_KEYS = {
    "rank": (
        "rank.batch_size",
        "rank.hard_negatives",
        "model.max_query_length",
        "model.max_doc_length",
    ),
    "adapt": ("adapt.batch_size", "model.max_doc_length"),
    "distill": ("distill.batch_size", "model.max_bitext_length"),
    "hybrid": (
        "distill.rank_batch_size",
        "rank.hard_negatives",
        "model.max_query_length",
        "model.max_doc_length",
    ),
}
#: A predicted largest batch is measured when it is at most this many times the largest
#: batch already measured (a step costs about its batch size).
CHECK_UP_TO = 4
#: At most this many measurements of predicted batches: one over the budget joins the
#: fit and the answer is solved again (late-interaction in-batch scores grow with the
#: square of the batch, so a line through small batches can promise too much).
CHECKS = 3


@dataclass(frozen=True)
class BatchFit:
    """``total = intercept + slope * batch`` through ``points`` and the largest batch
    it lets fit ``budget_bytes`` (0: not even one example; None: the measured memory did
    not grow with the batch, so the fit says nothing). ``checked`` is the measurement at
    that batch when it was cheap enough to make (:data:`CHECK_UP_TO`)."""

    stage: str
    budget_bytes: int
    points: tuple[StepMemory, ...]
    intercept: float
    slope: float
    batch: int | None
    checked: StepMemory | None

    def predicted(self, batch: int) -> float:
        """The fit's total bytes at ``batch``."""
        return self.intercept + self.slope * batch

    @property
    def margin_bytes(self) -> int | None:
        """Budget left at :attr:`batch`: measured when checked there, else by the fit."""
        if self.batch is None or self.batch == 0:
            return None
        if self.checked is not None and self.checked.batch_size == self.batch:
            return self.budget_bytes - self.checked.total_bytes
        return int(self.budget_bytes - self.predicted(self.batch))

    def describe(self) -> str:
        """``fits 8.00 GiB up to batch 151 (measured ...: margin ...)``."""
        budget = format_bytes(self.budget_bytes)
        if self.batch is None:
            sizes = ", ".join(str(p.batch_size) for p in self.points)
            return f"no fit for {budget}: the memory did not grow over batches {sizes}"
        if self.batch == 0:
            return (
                f"does not fit {budget} even at batch 1 (the fit gives "
                f"{format_bytes(self.predicted(1))})"
            )
        margin = format_bytes(self.margin_bytes or 0)
        c = self.checked
        if c is not None and c.batch_size == self.batch:
            how = f"measured there: {format_bytes(c.total_bytes)}, margin {margin}"
        else:
            how = f"by the fit, {format_bytes(self.slope)} per example: margin {margin}; " + (
                f"batch {c.batch_size} measured {format_bytes(c.total_bytes)}, over"
                if c is not None
                else f"not measured, over {CHECK_UP_TO}x the batches measured"
            )
        return f"fits {budget} up to batch {self.batch} ({how})"

    def to_dict(self) -> dict[str, Any]:
        return {
            "budget_bytes": self.budget_bytes,
            "largest_batch": self.batch,
            "intercept_bytes": self.intercept,
            "bytes_per_example": self.slope,
            "margin_bytes": self.margin_bytes,
            "points": [
                {"batch_size": p.batch_size, "total_bytes": p.total_bytes} for p in self.points
            ],
            "checked": (
                {"batch_size": self.checked.batch_size, "total_bytes": self.checked.total_bytes}
                if self.checked is not None
                else None
            ),
        }


def _fit(points: list[StepMemory]) -> tuple[float, float]:
    """Least squares ``total = a + b * batch``: ``(a, b)``."""
    xs = [p.batch_size for p in points]
    ys = [p.total_bytes for p in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    return my - b * mx, b


def _solve(a: float, b: float, budget: int) -> int | None:
    if b <= 0:
        return None
    return max(0, math.floor((budget - a) / b))


def _probe_sizes(batch: int) -> list[int]:
    """Three batch sizes up to ``batch`` (two distinct at least)."""
    sizes = sorted({max(1, batch // 4), max(1, batch // 2), batch})
    return sizes if len(sizes) > 1 else [batch, 2 * batch]


def largest_batch(
    cfg: Config,
    stage: str,
    budget_bytes: int,
    *,
    sizes: list[int] | None = None,
    probe: StepProbe | None = None,
) -> BatchFit:
    """The largest ``<stage>.batch_size`` whose step fits ``budget_bytes``: one step
    measured at each of ``sizes`` (default: a quarter, half and all of the configured
    batch; two distinct sizes at least), ``total = a + b * batch`` fitted through them
    and solved for the budget. The answer is measured too when it is at most
    :data:`CHECK_UP_TO` times the largest size; while that measurement is over the
    budget (:data:`CHECKS` times at most), it joins the fit and the answer is solved
    again, below the smallest batch measured over the budget. ``probe``: the stage's
    models already built (default: built here)."""
    if sizes is not None and len(set(sizes)) < 2:
        raise ValueError(f"sizes: got {sizes}, expected two distinct batch sizes at least")
    sizes = sizes or _probe_sizes(configured_batch(cfg, stage))
    return _largest(probe or StepProbe(cfg, stage), sizes, budget_bytes, [])


def _largest(
    step: StepProbe, sizes: list[int], budget_bytes: int, known: list[StepMemory]
) -> BatchFit:
    """:func:`largest_batch` on built models; ``known`` steps are not measured again."""
    done = {p.batch_size: p for p in known}
    points = [done.get(b) or step.measure(b) for b in sizes]
    a, b = _fit(points)
    batch, checked = _solve(a, b, budget_bytes), None
    for _ in range(CHECKS):
        if not batch or batch > CHECK_UP_TO * max(p.batch_size for p in points):
            break
        checked = next((p for p in points if p.batch_size == batch), None) or step.measure(batch)
        if checked.total_bytes <= budget_bytes:
            break
        if checked not in points:
            points.append(checked)
            a, b = _fit(points)
        # a batch measured over the budget is never the answer, whatever the line says
        over = min(p.batch_size for p in points if p.total_bytes > budget_bytes)
        solved = _solve(a, b, budget_bytes)
        batch = over - 1 if solved is None else min(solved, over - 1)
    return BatchFit(step.stage, budget_bytes, tuple(points), a, b, batch, checked)


# --------------------------------------------------------------------------- reports


def _stage_report(cfg: Config, stage: str, budget: int | None) -> dict[str, Any]:
    """One stage of :func:`dry_run`: its step at the configured batch, and the fit."""
    if stage == "distill" and cfg.distill.method == "none":
        why = "distill.method none trains nothing: no step to measure"
        return {"stage": stage, "skipped": why, "text": f"{stage}: {why}"}
    step = StepProbe(cfg, stage)
    batch = configured_batch(cfg, stage)
    memory = step.measure(batch)
    row: dict[str, Any] = {**memory.to_dict(), "skipped": None}
    text = f"{stage}: {memory.describe()}"
    if budget is not None:
        fit = _largest(step, _probe_sizes(batch), budget, [memory])
        fits = memory.total_bytes <= budget
        row.update(fits=fits, **fit.to_dict())
        over = "" if fits else f"; OVER the budget of {format_bytes(budget)} at batch {batch}"
        text += f"{over}; {fit.describe()}"
    row["text"] = text
    return row


def dry_run(cfg: Config, budget_bytes: int | None = None) -> list[dict[str, Any]]:
    """``optical-ray train --dry-run``: for each stage the config runs
    (:func:`~optical_ray.training.recipe.stages_to_run`), one step measured at the
    configured batch size (:class:`StepMemory` fields plus ``text``, the readable line,
    and ``skipped``, why a stage was not measured); with ``budget_bytes`` also whether
    it fits and the :class:`BatchFit` fields (``largest_batch``, ``margin_bytes``, ...).
    Trains nothing, writes no run."""
    return [_stage_report(cfg, s, budget_bytes) for s in stages_to_run(cfg)]


# --------------------------------------------------------------------------- sweeps


def _numeric_max(p: Any) -> Any:
    if p.type in ("int", "uniform", "loguniform"):
        return p.spec["high"]
    if p.type == "categorical":
        numbers = [c for c in p.spec["choices"] if isinstance(c, (int, float))]
        return max(numbers) if numbers else None
    return None


def largest_trial_config(cfg: Config, space: SearchSpace, pair: str) -> tuple[Config, set[str]]:
    """The trial of ``pair`` with the largest step: every searched batch size and
    length (:data:`MEMORY_KEYS`) at the largest value the space samples, whatever its
    condition, every other key at its base value. Returns the config and the keys
    taken at their maximum."""
    keys = {k for group in MEMORY_KEYS.values() for k in group}
    _, params = space.for_pair(pair)
    sampled = {p.key: _numeric_max(p) for p in params if p.key in keys and p.type != "fixed"}
    sampled = {k: v for k, v in sampled.items() if v is not None}
    return trial_config(space, pair, sampled, cfg), set(sampled)


def _budget(cfg: Config, budget_bytes: int | None) -> tuple[int | None, str]:
    if budget_bytes is not None:
        return budget_bytes, "the budget given"
    if cfg.sweep.memory_budget is not None:
        return parse_bytes(cfg.sweep.memory_budget, "sweep.memory_budget"), "sweep.memory_budget"
    if cfg.train.device != "cpu" and torch.cuda.is_available():
        total = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
        return int(total), "the GPU's total memory"
    return None, ""


def _cache_key(cfg: Config, stage: str) -> str:
    """What a step's memory depends on (not the pair, its data or where it is stored)."""
    skip = ("pair", "name", "output_dir", "data.", "eval.", "sweep.", "storage.", "scaling.")
    flat = to_flat(cfg)
    return stage + repr(sorted((k, repr(v)) for k, v in flat.items() if not k.startswith(skip)))


def warn_step_memory(cfg: Config, space: SearchSpace, budget_bytes: int | None = None) -> list[str]:
    """Before a sweep launches: one step of each stage of each pair's largest trial
    (:func:`largest_trial_config`) measured on this machine, and one warning (logged and
    returned) per pair and stage that does not fit the budget: ``budget_bytes``, else
    ``sweep.memory_budget``, else the GPU's total memory on CUDA; on CPU without a
    budget nothing is measured. A step that cannot be measured here is one warning too;
    the sweep runs either way."""
    budget, source = _budget(cfg, budget_bytes)
    if budget is None:
        return []
    lines: list[str] = []
    measured: dict[str, StepMemory | str] = {}
    for pair in cfg.sweep.pairs:
        try:
            trial, searched = largest_trial_config(cfg, space, pair)
        except OpticalRayError as exc:
            lines.append(f"{pair}: step memory not checked: {' '.join(str(exc).split())}")
            continue
        for stage in stages_to_run(trial):
            if stage == "distill" and trial.distill.method == "none":
                continue
            key = _cache_key(trial, stage)
            if key not in measured:
                try:
                    measured[key] = measure_step_memory(trial, stage)
                except OpticalRayError as exc:
                    measured[key] = " ".join(str(exc).split())
            got = measured[key]
            if isinstance(got, str):
                lines.append(f"{pair} {stage}: step memory not checked against {source}: {got}")
                continue
            if got.total_bytes <= budget:
                continue
            names = MEMORY_KEYS[stage] + (
                MEMORY_KEYS["hybrid"]
                if stage == "distill" and trial.distill.rank_batch_size
                else ()
            )
            flat = to_flat(trial)
            largest = " (the space's largest)"
            values = ", ".join(
                f"{k}={flat[k]}{largest if k in searched else ''}" for k in dict.fromkeys(names)
            )
            lines.append(
                f"{pair} {stage}: one step at {values} needs {format_bytes(got.total_bytes)} "
                f"({got.measure} on {got.device}), over the memory budget "
                f"{format_bytes(budget)} ({source}); lower them or raise sweep.memory_budget"
            )
    measured.clear()
    gc.collect()
    if torch.cuda.is_available():  # the trials need the GPU the measured steps cached
        torch.cuda.empty_cache()
    for line in lines:
        log.warning("%s", line)
    return lines
