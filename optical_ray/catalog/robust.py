"""One config for many languages: ``optical-ray best --across-pairs P1,P2,...``.

A user who ships one setting for 20 languages wants the config that is good
everywhere, not the best somewhere. Among the configs that ran to the end on *every*
given pair (the same hyperparameters: :func:`~optical_ray.catalog.identity.config_identity`
without the keys that name the pair or the run; several runs of one config, e.g. its
seeds, count as their mean), :func:`robust_config` picks by

* ``worst``: the smallest worst-case shortfall from each pair's own best config,
  :math:`\\min_c \\max_p (\\mathrm{best}_p - v_{pc})`. Shortfalls, not raw values,
  because languages differ in scale (Hausa's dev MAP is not Swahili's): the raw worst
  case would be the hardest language's value and nothing else;
* ``mean-rank``: the best mean rank, each pair ranking every config it ran (1 = its own
  best).

Ties go to the higher mean value. The answer says how far the config is from each
pair's own best. Pairs that share no config are one error naming them.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import pandas as pd

from optical_ray.catalog.identity import config_identity
from optical_ray.catalog.records import HYPERPARAMETERS, metric_values
from optical_ray.catalog.store import Catalog
from optical_ray.config import PAIR_RE, from_flat, to_dict
from optical_ray.errors import ConfigError, StorageError

__all__ = ["RULES", "PairStanding", "RobustAnswer", "robust_config"]

RULES = ("worst", "mean-rank")


@dataclass
class PairStanding:
    """Where the chosen config stands on one pair."""

    pair: str
    value: float
    own_best: float
    shortfall: float
    rank: float
    configs: int
    runs: int
    trials: list[str]


@dataclass
class RobustAnswer:
    """The config chosen across ``pairs`` by ``rule``, with its standing per pair."""

    pairs: list[str]
    rule: str
    metric: str
    shared: int
    flat_config: dict[str, Any]
    standings: list[PairStanding]

    @property
    def worst_shortfall(self) -> float:
        return max(s.shortfall for s in self.standings)

    @property
    def mean_rank(self) -> float:
        return sum(s.rank for s in self.standings) / len(self.standings)

    @property
    def hyperparameters(self) -> dict[str, Any]:
        return {c: self.flat_config.get(k) for c, k in HYPERPARAMETERS.items()}

    @property
    def config(self) -> dict[str, Any]:
        """The config (as it ran on the first pair), nested."""
        return to_dict(from_flat(self.flat_config))

    def to_dict(self) -> dict[str, Any]:
        return {
            "pairs": self.pairs,
            "rule": self.rule,
            "metric": self.metric,
            "shared_configs": self.shared,
            "worst_shortfall": self.worst_shortfall,
            "mean_rank": self.mean_rank,
            "hyperparameters": self.hyperparameters,
            "per_pair": [asdict(s) for s in self.standings],
            "config": self.config,
        }

    def to_text(self) -> str:
        hp = ", ".join(f"{k}={v}" for k, v in self.hyperparameters.items() if v is not None)
        lines = [
            f"one config for {', '.join(self.pairs)} (rule {self.rule}, {self.metric}; "
            f"{self.shared} config(s) ran on every pair): {hp}",
            f"  worst shortfall from a pair's own best {self.worst_shortfall:.4f}, "
            f"mean rank {self.mean_rank:.2f}",
        ]
        for s in self.standings:
            lines.append(
                f"  {s.pair}: {s.value:.4f}, own best {s.own_best:.4f} "
                f"({-s.shortfall:+.4f}), rank {s.rank:g} of {s.configs}, {s.runs} run(s) "
                f"({', '.join(s.trials)})"
            )
        return "\n".join(lines)


def robust_config(
    pairs: Sequence[str],
    storage: Any = "optical_runs",
    *,
    rule: str = "worst",
    metric: str | None = None,
    experiment: str | None = None,
) -> RobustAnswer:
    """The one config that ran to the end on every pair of ``pairs`` and is best under
    ``rule`` (``worst`` or ``mean-rank``, see the module docstring) by ``metric``
    (default: each record's own, i.e. each pair's sweep objective or metric).
    :class:`ConfigError` for a bad rule or pair list; :class:`StorageError` for pairs
    without finished records or pairs that share no config."""
    pairs = list(dict.fromkeys(pairs))
    problems = []
    if rule not in RULES:
        problems.append(f"--rule: got {rule!r}, expected one of {', '.join(RULES)}")
    bad = [p for p in pairs if not PAIR_RE.match(p)]
    if bad:
        problems.append(
            f"--across-pairs: got {', '.join(map(repr, bad))}, expected pairs such as swa-en"
        )
    if len(pairs) < 2:
        problems.append(f"--across-pairs: got {pairs}, expected at least two pairs")
    if problems:
        raise ConfigError(problems)
    catalog = Catalog.of(storage)
    columns = [
        "experiment",
        "pair",
        "trial_id",
        "status",
        "metric",
        "best_value",
        "best_metrics",
        "config",
    ]
    df = catalog.records(None, experiment, columns=columns, status="finished")
    df = df[df["pair"].isin(pairs)]
    missing = [p for p in pairs if p not in set(df["pair"])]
    if missing:
        raise StorageError(
            f"--across-pairs: no finished trial of {', '.join(missing)} in "
            f"{catalog.storage.where()}; pairs with records: {', '.join(catalog.pairs(experiment))}"
        )
    values = df["best_value"] if metric is None else metric_values(df, metric)
    df = df.assign(
        value=values.astype("float64"),
        ident=[config_identity(json.loads(c), drop_pair=True) for c in df["config"]],
    ).dropna(subset=["value"])
    table = df.groupby(["ident", "pair"])["value"].mean().unstack("pair")
    shared = table.dropna(subset=pairs)
    if shared.empty:
        raise StorageError(
            f"--across-pairs: {', '.join(pairs)} share no config (no config ran to the end "
            "on every one of them; configs meet across pairs through warm starts, the "
            "finalists' base config, or a space without continuous dimensions)"
        )
    best = table.max()
    ranks = table.rank(ascending=False, method="average")
    shortfall = (best - shared[pairs]).max(axis=1)
    mean_rank = ranks.loc[shared.index, pairs].mean(axis=1)
    score = shortfall if rule == "worst" else mean_rank
    order = pd.DataFrame({"score": score, "mean": -shared[pairs].mean(axis=1)})
    chosen = order.sort_values(["score", "mean"], kind="stable").index[0]
    rows = df[df["ident"] == chosen]
    standings = [
        PairStanding(
            pair=p,
            value=float(shared.loc[chosen, p]),
            own_best=float(best[p]),
            shortfall=float(best[p] - shared.loc[chosen, p]),
            rank=float(ranks.loc[chosen, p]),
            configs=int(table[p].notna().sum()),
            runs=int((rows["pair"] == p).sum()),
            trials=[str(t) for t in rows.loc[rows["pair"] == p, "trial_id"]],
        )
        for p in pairs
    ]
    first = rows[rows["pair"] == pairs[0]].iloc[0]
    used = metric or ", ".join(sorted(set(df["metric"].dropna())))
    return RobustAnswer(pairs, rule, used, len(shared), json.loads(first["config"]), standings)
