"""A study's plan, no Ray: a design and a base config become the sweep config, the
search space its runs resolve through (the design's base as fixed values, each factor
key and the seed as a categorical parameter) and the fixed list of runs per pair,
checked all at once before anything starts.

The runs go through the sweep machinery unchanged (:func:`optical_ray.distributed.driver.run`
with ``points``): one Tune experiment per pair named ``<study>-<pair>``, FIFO, the
shared concurrency budget, catalog records, resume and signed state.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from optical_ray.config import PAIR_RE, Config, from_flat, to_flat
from optical_ray.errors import ConfigError
from optical_ray.studies.design import SEED_KEY, StudyDesign
from optical_ray.sweeps.plan import experiment_name, sweep_config
from optical_ray.sweeps.protocol import ORIGIN_KEY
from optical_ray.sweeps.space import SearchSpace, parse_space, pin_overrides, trial_config

__all__ = ["StudyPlan", "plan_study", "MAX_RUNS", "PATH_KEYS"]

#: The default cap on a study's runs (``--max-runs``).
MAX_RUNS = 200
#: Config keys holding local paths, made absolute so every Ray worker reads the same.
PATH_KEYS = ("model.name_or_path", "model.tokenizer", "train.teacher", "distill.init", "data.root")


@dataclass
class StudyPlan:
    """What a study runs: ``cfg`` (the sweep config every run builds on), ``space``
    (resolves a run's config: :func:`~optical_ray.sweeps.plan.resolve_trial_config`),
    ``points`` (per pair, every run's sampled values in order, with its origin),
    ``tasks`` and ``reference`` (per pair: the test tasks, ``{task: reference pair}``)."""

    design: StudyDesign
    cfg: Config
    space: SearchSpace
    pairs: list[str]
    points: dict[str, list[dict[str, Any]]]
    tasks: dict[str, list[str]]
    reference: dict[str, dict[str, str]]

    @property
    def name(self) -> str:
        return self.cfg.name

    @property
    def runs(self) -> int:
        return sum(len(p) for p in self.points.values())

    def experiment(self, pair: str) -> str:
        return experiment_name(self.name, pair)

    def run_config(self, pair: str, point: Mapping[str, Any]) -> Config:
        """The config a run of ``pair`` trains on (as its trial resolves it, less its name)."""
        values = {k: v for k, v in point.items() if k != ORIGIN_KEY}
        return trial_config(self.space, pair, values, self.cfg)

    def doc(self) -> dict[str, Any]:
        """What the study stores beside its runs (``studies/<name>/design.json``): the
        design, the pairs, cells and seeds that run, the tasks and the references. The
        report and :func:`~optical_ray.studies.effects.study_effects` read it back."""
        d = self.design
        return {
            "name": self.name,
            "design": d.to_dict(),
            "pairs": list(self.pairs),
            "seeds": list(d.seeds),
            "cells": [c.name for c in d.cells()],
            "factors": [
                {"name": f.name, "levels": [lv.label for lv in f.levels]} for f in d.factors
            ],
            "tasks": self.tasks,
            "reference": self.reference,
            "metrics": list(self.cfg.eval.metrics),
            "aliases": d.aliases(),
        }


def _absolute(values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` with relative local paths under :data:`PATH_KEYS` made absolute (a
    Ray worker's working directory is not the driver's)."""
    out = dict(values)
    if isinstance(out.get("output_dir"), str):  # where a synthetic world is made
        out["output_dir"] = str(Path(out["output_dir"]).expanduser().resolve())
    for key in PATH_KEYS:
        v = out.get(key)
        if isinstance(v, str) and v and "://" not in v and "{" not in v and Path(v).exists():
            out[key] = str(Path(v).expanduser().resolve())
    return out


def study_space(design: StudyDesign) -> SearchSpace:
    """The design as a search space: its base as fixed values, each factor key (and the
    seed) a categorical over the values its levels give (what resolves a run's config
    and validates every level against the config's limits)."""
    choices: dict[str, list[Any]] = {}
    for f in design.factors:
        for lv in f.levels:
            for k, v in lv.values.items():
                if v not in choices.setdefault(k, []):
                    choices[k].append(v)
    choices[SEED_KEY] = list(design.seeds)
    params = {k: {"type": "categorical", "choices": c} for k, c in choices.items()}
    return parse_space({"base": _absolute(design.base), "params": params}, source=design.source)


def _cell_problems(
    design: StudyDesign, space: SearchSpace, cfg: Config, pairs: Sequence[str]
) -> list[str]:
    """Every cell's whole config, for every pair: cross-field rules (a level that needs
    another key), and the rules of a study (selection on dev; hybrid batches that
    weigh the ranking loss)."""
    problems: dict[str, list[str]] = {}
    for pair in pairs:
        for cell in design.cells():
            where = f"cell {cell.name}"
            try:
                rc = trial_config(
                    space, pair, {**design.cell_values(cell), SEED_KEY: design.seeds[0]}, cfg
                )
            except ConfigError as exc:
                for p in exc.problems:
                    problems.setdefault(f"{where}: {p}", []).append(pair)
                continue
            if rc.eval.split != "dev":
                problems.setdefault(
                    f"{where}: eval.split is {rc.eval.split!r}; a study selects on dev only "
                    "and evaluates its test tasks once at the end (set eval.split: dev)",
                    [],
                ).append(pair)
            d = rc.distill
            if "distill" in rc.train.stages and d.rank_batch_size > 0 and d.weight >= 1.0:
                problems.setdefault(
                    f"{where}: distill.rank_batch_size={d.rank_batch_size} with "
                    f"distill.weight={d.weight:g}: the ranking loss is weighed by 1 - weight = "
                    "0, so hybrid batches change nothing; set distill.weight below 1",
                    [],
                ).append(pair)
    return [
        p if len(ps) == len(pairs) else f"{p} (pair {', '.join(ps)})" for p, ps in problems.items()
    ]


def plan_study(
    design: StudyDesign,
    base: Config | None = None,
    *,
    pairs: Sequence[str],
    seeds: int | None = None,
    max_runs: int = MAX_RUNS,
    name: str | None = None,
    max_concurrent: int | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> StudyPlan:
    """The plan of ``design`` over ``pairs`` on ``base`` (defaults if None).

    ``seeds`` replaces the design's seeds with ``0..seeds-1``; ``overrides`` (flat config
    values, e.g. from ``key=value`` on the command line) win over the design's base but
    may not name a factor's key. Refused, all problems in one :class:`ConfigError`: more
    than ``max_runs`` runs (with the count), a bad pair, a cell whose config is invalid
    for some pair, selection on test, hybrid batches with ``distill.weight`` 1."""
    problems: list[str] = []
    if seeds is not None:
        if seeds < 1:
            raise ConfigError(f"--seeds: got {seeds}, expected at least 1")
        design = dataclasses.replace(design, seeds=list(range(seeds)))
    pairs = list(pairs)
    if not pairs:
        problems.append("pairs: got none, expected pairs such as swa-en,hau-en")
    bad = [p for p in pairs if not PAIR_RE.match(p)]
    problems += [f"pairs: got {p!r}, expected <query_lang>-<doc_lang> such as swa-en" for p in bad]
    dup = sorted({p for p in pairs if pairs.count(p) > 1})
    if dup:
        problems.append(f"pairs: {', '.join(dup)} given more than once")
    cells = design.cells()
    runs = len(cells) * len(design.seeds) * len(pairs)
    if max_runs < 1:
        problems.append(f"--max-runs: got {max_runs}, expected at least 1")
    elif runs > max_runs:
        problems.append(
            f"the design runs {len(cells)} cells x {len(design.seeds)} seeds x {len(pairs)} "
            f"pair(s) = {runs} runs, more than --max-runs {max_runs}; use fewer seeds or "
            "pairs, a fraction (fraction: 1/2), or raise --max-runs"
        )
    if problems:
        raise ConfigError(problems, source=design.source)
    space = study_space(design)
    over = dict(overrides or {})
    factor_keys = {k for f in design.factors for k in f.keys} | {SEED_KEY}
    clash = sorted(set(over) & factor_keys)
    if clash:
        raise ConfigError(
            [f"override {k}: a factor of the study sets {k}; change the design" for k in clash]
        )
    base = from_flat(over, base or Config())
    if over:
        flat = to_flat(base)
        space = pin_overrides(space, {k: flat[k] for k in over if k in flat})
    base = from_flat(_absolute(to_flat(base)), base)
    points = design.points()
    cfg = sweep_config(
        base,
        pairs=pairs,
        name=name or design.name,
        samples=max(1, len(points)),
        scheduler="none",
        max_concurrent=max_concurrent,
    )
    # A fixed list of runs: no Optuna study, no warm start.
    cfg = from_flat({"sweep.optuna_storage": "memory", "sweep.warm_start": "none"}, cfg)
    problems = _cell_problems(design, space, cfg, pairs)
    if problems:
        raise ConfigError(problems, source=design.source)
    return StudyPlan(
        design=design,
        cfg=cfg,
        space=space,
        pairs=pairs,
        points={p: [dict(x) for x in points] for p in pairs},
        tasks={p: design.tasks_for(p) for p in pairs},
        reference={p: design.reference_for(p) for p in pairs},
    )
