"""The answer to "what is the best config for this pair?", with its evidence.

After a pair's search, its finalists experiment (:mod:`optical_ray.sweeps.finalists`)
re-trains the top configs and the space's base config with the same new seeds. The
answer is read from those catalog records (a query, not a stored verdict):

1. each config's per-query dev values of every task of the objective are averaged
   over its seeds (:func:`~optical_ray.evaluation.stratified.pool_seeds`);
2. each finalist is tested against the base on the objective, one-sided (does it beat
   the base?), with the stratified sign-flip test over the pooled per-query values
   (:func:`~optical_ray.evaluation.stratified.paired_objective_test`); the p-values are
   Holm-adjusted over the finalists (:func:`~optical_ray.evaluation.compare.holm`);
3. the answer is the finalist with the best pooled objective among those that beat the
   base at ``sweep.finalist_alpha`` after Holm; when none does, it is the base, and it
   says so: "no config significantly better than the base (best candidate +0.004,
   p = 0.31)".

What it reports: the advantage over the base on dev and its p-value, the seed spread
(the chosen config's per-seed objectives), and the trials behind it (the search's
trials and the finalists' runs). :func:`pair_answer` is the Python API; ``optical-ray
best --pair P`` prints it (``--format json``: :meth:`Answer.to_dict`).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from optical_ray.catalog.identity import final_experiment, search_experiment
from optical_ray.catalog.records import HYPERPARAMETERS
from optical_ray.catalog.store import Catalog
from optical_ray.config import from_flat, to_dict
from optical_ray.config.objective import Term, WeightedObjective, parse_objective
from optical_ray.config.rules import BASE_ORIGIN, FINALIST_PREFIX
from optical_ray.errors import StorageError
from optical_ray.evaluation.compare import holm
from optical_ray.evaluation.perquery import decode_tasks
from optical_ray.evaluation.stratified import (
    objective_value,
    paired_objective_test,
    pool_seeds,
    term_values,
)

__all__ = [
    "Candidate",
    "Answer",
    "NoFinalists",
    "pair_answer",
    "answer_experiments",
    "answer_yaml",
    "answer_record",
    "recorded_metric",
    "run_objective",
]

_COLUMNS = [
    "record_id",
    "experiment",
    "pair",
    "trial_id",
    "status",
    "origin",
    "metric",
    "best_value",
    "config",
    "dev_per_query",
    "checkpoint_uri",
]


class NoFinalists(StorageError):
    """The pair has no sweep that ran finalists (its best is a single search trial)."""


@dataclass
class Candidate:
    """One config of the finalists: the base (``trial_id`` None) or a search trial's
    config, with its runs' seeds and dev objectives, its objective pooled over them,
    and (not for the base) its test against the base."""

    origin: str
    trial_id: str | None
    seeds: list[int]
    seed_values: list[float]
    value: float
    delta: float | None = None
    p_value: float | None = None
    p_holm: float | None = None
    units: int | None = None
    checkpoint_uri: str | None = None
    record_id: str | None = None  # the run with the best dev objective (its checkpoint)
    flat_config: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def label(self) -> str:
        return "base" if self.trial_id is None else f"trial {self.trial_id}"

    @property
    def seed_spread(self) -> float:
        """max - min of the per-seed objectives (0 with one seed)."""
        return max(self.seed_values) - min(self.seed_values) if self.seed_values else 0.0


@dataclass
class Answer:
    """A pair's answer: the chosen config (a finalist that beats the base, else the
    base) with its evidence. ``statement`` is the one line the summary and ``best``
    print."""

    pair: str
    experiment: str
    objective: str
    alpha: float
    chosen: Candidate
    base: Candidate
    candidates: list[Candidate]
    trials: int
    finalist_runs: int

    @property
    def is_base(self) -> bool:
        return self.chosen.trial_id is None

    @property
    def best_candidate(self) -> Candidate | None:
        """The finalist with the best pooled objective (chosen or not)."""
        return self.candidates[0] if self.candidates else None

    @property
    def statement(self) -> str:
        best = self.best_candidate
        if self.is_base:
            if best is None:
                return "the base config (no finalist to compare)"
            return (
                "no config significantly better than the base (best candidate "
                f"{_signed(best.delta)}, p = {_p(best.p_holm)})"
            )
        c = self.chosen
        return (
            f"{c.label} beats the base by {_signed(c.delta)} on the dev objective "
            f"(p = {_p(c.p_holm)}, Holm over {len(self.candidates)} finalist(s), "
            f"{len(c.seeds)} seeds each)"
        )

    @property
    def config(self) -> dict[str, Any]:
        """The chosen config, nested (``optical-ray train --config`` takes it)."""
        return to_dict(from_flat(self.chosen.flat_config))

    @property
    def hyperparameters(self) -> dict[str, Any]:
        """The main knobs, and every other key where a candidate differs from the base."""
        flat, base = self.chosen.flat_config, self.base.flat_config
        keys = list(HYPERPARAMETERS.values())
        for c in self.candidates:
            keys += [
                k
                for k, v in c.flat_config.items()
                if k.startswith(("distill.", "train.", "model.")) and base.get(k) != v
            ]
        skip = ("train.seed",)
        return {
            k: flat.get(k) for k in dict.fromkeys(keys) if k not in skip and flat.get(k) is not None
        }

    def to_dict(self) -> dict[str, Any]:
        c = self.chosen
        return {
            "pair": self.pair,
            "experiment": self.experiment,
            "objective": self.objective,
            "answer": "base" if self.is_base else c.trial_id,
            "is_base": self.is_base,
            "statement": self.statement,
            "value": c.value,
            "base_value": self.base.value,
            "advantage": None if self.is_base else c.delta,
            "p_value": None if self.is_base else c.p_holm,
            "alpha": self.alpha,
            "seeds": c.seeds,
            "seed_values": c.seed_values,
            "seed_spread": c.seed_spread,
            "trials": self.trials,
            "finalist_runs": self.finalist_runs,
            "hyperparameters": self.hyperparameters,
            "checkpoint_uri": c.checkpoint_uri,
            "config": self.config,
            "candidates": [
                {k: v for k, v in asdict(x).items() if k != "flat_config"}
                for x in [self.base, *self.candidates]
            ],
        }

    def to_text(self) -> str:
        c = self.chosen
        which = "the base config" if self.is_base else f"{c.label} (a finalist)"
        lines = [
            f"answer for {self.pair}: {which}",
            f"  {self.statement}",
            f"  objective {self.objective} = {c.value:.4f} on dev, pooled over seeds "
            f"{', '.join(map(str, c.seeds))} (base {self.base.value:.4f})",
            f"  seed spread: {c.seed_spread:.4f} ("
            + ", ".join(f"{v:.4f}" for v in c.seed_values)
            + ")",
            f"  behind it: {self.trials} search trials and {self.finalist_runs} finalist "
            f"runs (experiment {self.experiment!r})",
            "  config: " + ", ".join(f"{k}={_fmt(v)}" for k, v in self.hyperparameters.items()),
        ]
        if c.checkpoint_uri:
            lines.append(f"  checkpoint: {c.checkpoint_uri}")
        lines.append("  finalists (one-sided paired test vs the base, Holm-adjusted):")
        for x in self.candidates:
            lines.append(
                f"    {x.label}: {x.value:.4f} ({_signed(x.delta)}, p = {_p(x.p_holm)}, "
                f"{x.units} queries, seeds spread {x.seed_spread:.4f})"
            )
        return "\n".join(lines)


def _signed(v: float | None) -> str:
    return "n/a" if v is None else f"{v:+.4f}"


def _p(p: float | None) -> str:
    if p is None or math.isnan(p):
        return "n/a"
    return "<0.0001" if p < 1e-4 else f"{p:.4f}".rstrip("0").rstrip(".")


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def run_objective(flat: dict[str, Any], pair: str) -> WeightedObjective:
    """The objective a run of ``pair`` was judged on, from its recorded flat config:
    ``sweep.objective`` (its templates filled), else ``sweep.metric`` on the pair."""
    text = str(flat.get("sweep.objective") or "")
    if text.strip():
        return parse_objective(text, pair)
    return WeightedObjective((Term(pair, str(flat.get("sweep.metric") or "map")),))


def answer_experiments(
    catalog: Catalog, pair: str, experiment: str | None = None
) -> tuple[str, str]:
    """``(search, finalists)`` experiment names of ``pair``'s answer: those of
    ``experiment`` (either name), else the latest sweep of the pair that ran
    finalists. :class:`StorageError` when there is none."""
    df = catalog.records(pair, columns=["experiment"])
    finals = df[df["experiment"].str.endswith("-final")] if not df.empty else df
    if experiment is not None:
        search = search_experiment(experiment)
        final = final_experiment(search)
        if final not in (set(finals["experiment"]) if not finals.empty else set()):
            raise NoFinalists(
                f"no finalists of experiment {search!r} for pair {pair!r} in "
                f"{catalog.storage.where()}: that sweep ran none (sweep.finalists)"
            )
        return search, final
    if finals.empty:
        raise NoFinalists(
            f"no finalists for pair {pair!r} in {catalog.storage.where()}: no sweep of it "
            "re-trained its top configs against the base (sweep.objective, or "
            "sweep.finalists > 0)"
        )
    final = str(finals.sort_values("finished_at")["experiment"].iloc[-1])
    return search_experiment(final), final


def pair_answer(
    pair: str, storage: Any = "optical_runs", *, experiment: str | None = None
) -> Answer:
    """``pair``'s answer from the catalog in ``storage``: its latest sweep with
    finalists (or ``experiment``, the search's name or its finalists'). Raises
    :class:`StorageError` when the pair has no finalists or no finished run of the
    base."""
    catalog = Catalog.of(storage)
    search, final = answer_experiments(catalog, pair, experiment)
    runs = catalog.records(pair, final, columns=_COLUMNS)
    runs = runs[
        (runs["status"] == "finished") & runs["origin"].fillna("").str.startswith(FINALIST_PREFIX)
    ]
    trials = len(catalog.records(pair, search, columns=["trial_id"]))
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in runs.to_dict("records"):
        groups.setdefault(str(row["origin"]), []).append(row)
    if BASE_ORIGIN not in groups:
        raise StorageError(
            f"no finished run of the base config among the finalists of {search!r} "
            f"({pair}); resume the sweep (--resume) to finish them"
        )
    base_rows = groups.pop(BASE_ORIGIN)
    objective = run_objective(json.loads(base_rows[0]["config"]), pair)
    weights = objective.weights()
    base, base_values = _candidate(BASE_ORIGIN, base_rows, weights)
    candidates: list[Candidate] = []
    for origin, rows in groups.items():
        cand, values = _candidate(origin, rows, weights)
        if values and base_values:
            cand.delta, cand.p_value, cand.units = paired_objective_test(
                values, base_values, weights, alternative="greater"
            )
        candidates.append(cand)
    for cand, p in zip(
        candidates, holm([c.p_value if c.p_value is not None else 1.0 for c in candidates])
    ):
        cand.p_holm = p
    candidates.sort(key=lambda c: -c.value)
    alpha = float(json.loads(base_rows[0]["config"]).get("sweep.finalist_alpha") or 0.05)
    winners = [
        c for c in candidates if c.delta is not None and c.delta > 0 and (c.p_holm or 1) < alpha
    ]
    return Answer(
        pair=pair,
        experiment=search,
        objective=str(objective),
        alpha=alpha,
        chosen=winners[0] if winners else base,
        base=base,
        candidates=candidates,
        trials=trials,
        finalist_runs=len(runs),
    )


def recorded_metric(catalog: Catalog, pair: str) -> str:
    """What ``pair``'s latest sweep ranked its trials on (its ``sweep.metric``:
    ``objective`` for a sweep with an objective), else map."""
    df = catalog.records(pair, columns=["metric"])
    known = df.dropna(subset=["metric"]) if not df.empty else df
    if known.empty:
        return "map"
    return str(known.sort_values("finished_at")["metric"].iloc[-1])


def answer_record(answer: Answer, catalog: Catalog) -> Any:
    """The catalog record behind ``answer``'s config: its run with the best dev
    objective (a :class:`~optical_ray.catalog.records.BestRecord`, for its
    checkpoint and config)."""
    from optical_ray.catalog.records import best_record

    rid = answer.chosen.record_id
    row = catalog.records_by_id([rid])[rid]
    return best_record(
        row, 1, str(row.get("metric") or "objective"), max(answer.chosen.seed_values), "max"
    )


def answer_yaml(answer: Answer) -> str:
    """The chosen config as YAML that ``optical-ray train --config`` accepts, under a
    comment header with the evidence."""
    import yaml

    header = [
        f"# answer for {answer.pair}: {answer.statement}",
        f"# objective {answer.objective} = {answer.chosen.value:.4f} on dev over seeds "
        f"{', '.join(map(str, answer.chosen.seeds))}; {answer.trials} search trials, "
        f"{answer.finalist_runs} finalist runs (experiment {answer.experiment!r})",
    ]
    if answer.chosen.checkpoint_uri:
        header.append(f"# checkpoint: {answer.chosen.checkpoint_uri}")
    body = yaml.safe_dump(answer.config, sort_keys=False, default_flow_style=None, width=1000)
    return "\n".join(header) + "\n" + body


def _candidate(
    origin: str, rows: list[dict[str, Any]], weights: dict[str, float]
) -> tuple[Candidate, dict[str, dict[str, float]]]:
    """A config's candidate from its finalist runs, and its per-query values pooled
    over them (empty when its runs kept none)."""
    rows = sorted(rows, key=lambda r: json.loads(r["config"]).get("train.seed", 0))
    flats = [json.loads(r["config"]) for r in rows]
    per_run = [term_values(decode_tasks(r["dev_per_query"]), weights) for r in rows]
    per_run = [v for v in per_run if v]
    pooled = pool_seeds(per_run)
    values = [float(r["best_value"]) for r in rows]
    best = max(range(len(rows)), key=lambda i: values[i])
    trial = origin[len(FINALIST_PREFIX) :]
    return (
        Candidate(
            origin=origin,
            trial_id=None if origin == BASE_ORIGIN else trial,
            seeds=[int(f.get("train.seed", 0)) for f in flats],
            seed_values=values,
            value=objective_value(pooled, weights) if pooled else float(sum(values) / len(values)),
            checkpoint_uri=rows[best].get("checkpoint_uri"),
            record_id=rows[best].get("record_id"),
            flat_config=flats[0],
        ),
        pooled,
    )
