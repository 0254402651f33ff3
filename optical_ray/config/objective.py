"""The sweep's dev objective (``sweep.objective``): a weighted mean of dev metrics over
a pair's tasks, e.g. ``mean({lang}-en/map, en-{lang}/map, {lang}-en_doc/map)``.

Grammar: ``mean(TERM, ...)`` or one ``TERM``, with ``TERM = [WEIGHT*][TASK/]METRIC``: a
positive weight (default 1), a task (an evaluated pair such as ``swa-en``, ``en-swa``
or ``swa-en_doc``; pair templates such as ``{lang}`` are filled per pair by the sweep
planner, :func:`optical_ray.sweeps.plan.pair_base`; none: the trial's own pair) and a
metric (``map``, ``ndcg@10``, ...). A trial reports the objective under the result key
``objective``, which then is ``sweep.metric`` for the searcher, ASHA, the catalog and
``best``. Here beside the schema because validation needs it and sits below every
layer that uses it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Mapping

from optical_ray.config.schema import METRIC_RE
from optical_ray.errors import ConfigError

__all__ = [
    "OBJECTIVE_KEY",
    "Term",
    "WeightedObjective",
    "finalists_of",
    "objective_problems",
    "objective_task_problems",
    "parse_objective",
    "search_terms",
]

#: The result key (and catalog metric) a trial reports ``sweep.objective`` under.
OBJECTIVE_KEY = "objective"
_NUMBER = r"(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?"
# A task is an evaluated pair (swa-en, en-swa, swa-en_doc); braces: a pair template.
_TASK = r"[A-Za-z0-9_{}]+-[A-Za-z0-9_{}]+"
_TERM_RE = re.compile(rf"^\s*(?:({_NUMBER})\s*\*\s*)?(?:({_TASK})/)?([A-Za-z0-9@]+)\s*$")
_MEAN_RE = re.compile(r"^\s*mean\s*\((.*)\)\s*$", re.DOTALL)
_OBJECTIVE_FORM = (
    "mean(TERM, ...) with TERM = [WEIGHT*][TASK/]METRIC, e.g. "
    "mean({lang}-en/map, en-{lang}/map) or mean(2*map, en-en/map)"
)


@dataclass(frozen=True)
class Term:
    """One dev metric of the objective: ``metric`` on ``task`` (an evaluated pair; None:
    the trial's own pair), with a positive ``weight``."""

    task: str | None
    metric: str
    weight: float = 1.0

    @property
    def key(self) -> str:
        """The key a dev evaluation reports it under (``<task>/<metric>``)."""
        return f"{self.task}/{self.metric}" if self.task else self.metric


@dataclass(frozen=True)
class WeightedObjective:
    """A weighted mean of dev metrics over tasks:

    .. math:: O = \\sum_t w_t m_t / \\sum_t w_t

    where :math:`m_t` is the mean of a metric over task :math:`t`'s queries. Because
    every :math:`m_t` is itself a mean over queries, :math:`O` is a sum over (task,
    query) units with coefficient :math:`w_t / (W n_t)` each: the form the paired tests
    use (:mod:`optical_ray.evaluation.stratified`)."""

    terms: tuple[Term, ...]

    def __str__(self) -> str:
        parts = [
            (f"{t.weight:g}*" if t.weight != 1 else "") + (t.key if t.task else t.metric)
            for t in self.terms
        ]
        return f"mean({', '.join(parts)})"

    @property
    def tasks(self) -> list[str]:
        """The tasks, in order (each once)."""
        return list(dict.fromkeys(t.task or "" for t in self.terms))

    def resolved(self, pair: str) -> WeightedObjective:
        """Bare metrics (no task) bound to ``pair``."""
        return WeightedObjective(
            tuple(Term(t.task or pair, t.metric, t.weight) for t in self.terms)
        )

    def weights(self) -> dict[str, float]:
        """``{key: w_t / W}`` (summing to 1)."""
        total = sum(t.weight for t in self.terms)
        out: dict[str, float] = {}
        for t in self.terms:  # a bare metric and its pair's key are one term
            out[t.key] = out.get(t.key, 0.0) + t.weight / total
        return out

    def value(self, metrics: Mapping[str, Any]) -> float | None:
        """The objective from a dev evaluation's ``{"<task>/<metric>": value}``; None
        when a term is missing or not a finite number."""
        out = 0.0
        for key, w in self.weights().items():
            v = metrics.get(key)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                return None
            out += w * float(v)
        return out


def _objective(text: str) -> tuple[WeightedObjective | None, list[str]]:
    m = _MEAN_RE.match(text)
    items = [x for x in (m.group(1) if m else text).split(",")]
    problems, terms = [], []
    for raw in items:
        t = _TERM_RE.match(raw)
        if t is None:
            problems.append(
                f"sweep.objective: term {raw.strip()!r} of {text!r}, expected {_OBJECTIVE_FORM}"
            )
            continue
        weight, task, metric = t.groups()
        if not METRIC_RE.match(metric):
            problems.append(
                f"sweep.objective: {raw.strip()!r}: metric {metric!r}, expected map, ndcg@K, "
                "mrr@K, recall@K or p@K"
            )
        elif weight is not None and float(weight) <= 0:
            problems.append(f"sweep.objective: {raw.strip()!r}: weights must be > 0")
        else:
            terms.append(Term(task, metric, float(weight) if weight is not None else 1.0))
    keys = [t.key for t in terms]
    dup = sorted({k for k in keys if keys.count(k) > 1})
    if dup:
        problems.append(
            f"sweep.objective: {', '.join(dup)} given more than once in {text!r}; "
            "give it a weight instead (2*...)"
        )
    return (WeightedObjective(tuple(terms)) if not problems else None), problems


def objective_problems(text: str) -> list[str]:
    """Problems of a ``sweep.objective`` string ('' is the default: none)."""
    return _objective(text)[1] if text.strip() else []


def parse_objective(text: str, pair: str | None = None) -> WeightedObjective:
    """``sweep.objective`` as a :class:`WeightedObjective`, its bare metrics bound to
    ``pair`` when given; :class:`ConfigError` naming every bad term."""
    objective, problems = _objective(text)
    if problems or objective is None:
        raise ConfigError(problems)
    return objective.resolved(pair) if pair else objective


def search_terms(cfg: Any) -> WeightedObjective:
    """What a trial of ``cfg`` (a pair's resolved config) is judged on: its
    ``sweep.objective``, else ``sweep.metric`` on its own pair (one term). Paired tests
    (promotion, finalists) compare its per-query values either way."""
    sw = cfg.sweep
    if sw.objective.strip():
        return parse_objective(sw.objective, cfg.pair)
    return WeightedObjective((Term(cfg.pair, sw.metric),))


def objective_task_problems(cfg: Any) -> list[str]:
    """One line when ``cfg``'s objective (templates filled for ``cfg.pair``) names a
    task its trials do not evaluate (not in ``eval.pairs``, not the pair itself),
    listing the tasks it has; one when it names a metric ``eval.metrics`` lacks."""
    if not cfg.sweep.objective.strip():
        return []
    objective = parse_objective(cfg.sweep.objective, cfg.pair)
    have = list(dict.fromkeys([cfg.pair, *cfg.eval.pairs]))
    problems = []
    missing = [t for t in objective.tasks if t not in have]
    if missing:
        problems.append(
            f"sweep.objective: {cfg.pair} has no task {', '.join(missing)}; its tasks: "
            f"{', '.join(have)} (add the task to eval.pairs with its data.eval source)"
        )
    metrics = sorted({t.metric for t in objective.terms} - set(cfg.eval.metrics))
    if metrics:
        problems.append(
            f"sweep.objective: metric {', '.join(metrics)} is not among eval.metrics "
            f"{cfg.eval.metrics}"
        )
    return problems


def finalists_of(sw: Any) -> int:
    """How many finalists a sweep re-trains: ``sweep.finalists``, or by default 2 when
    it declares ``sweep.objective`` (at most ``sweep.samples``) and 0 without."""
    if sw.finalists is not None:
        return int(sw.finalists)
    return min(2, sw.samples) if sw.objective.strip() else 0
