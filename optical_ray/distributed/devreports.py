"""The per-query values a trial's reports carry (no Ray here; both Ray contexts use it).

Every dev evaluation (:func:`optical_ray.training.recipe.evaluate_dev`) leaves its
metrics and every evaluated pair's per-query values in ``keep["evals"]``. With each
report that carries the sweep's metric, :class:`DevReports` adds

* ``UNITS_KEY``: the objective's per-query values of that evaluation, compactly
  (:func:`~optical_ray.evaluation.perquery.encode_units`): what noise-aware promotion
  tests the trial on at an ASHA rung;
* ``PER_QUERY_KEY``, only when the metric improves on every value sent before: the
  whole evaluation of every task of the objective
  (:func:`~optical_ray.evaluation.perquery.encode_per_query`), which the catalog
  record keeps (finalists' paired tests, the report's runner-up test).

The evaluation behind a report is found by value, not by recency: with
``train.keep_best`` the stage's last report carries its best evaluation (maybe the
starting model's), not its last one.
"""

from __future__ import annotations

from typing import Any

from optical_ray.config.objective import search_terms
from optical_ray.evaluation.perquery import encode_per_query, encode_units
from optical_ray.evaluation.stratified import term_values
from optical_ray.sweeps.protocol import PER_QUERY_KEY, UNITS_KEY

__all__ = ["DevReports"]


class DevReports:
    """Adds per-query values to a trial's reports (see the module docstring).

    ``keep`` is the dict the training run fills (a context's ``dev_per_query``); only
    the best evaluation stays in it after each report."""

    def __init__(self, cfg: Any, keep: dict[str, Any] | None = None) -> None:
        self.pair = cfg.pair
        self.metric, self.mode = cfg.sweep.metric, cfg.sweep.mode
        objective = search_terms(cfg)
        self.weights = objective.weights()
        self.tasks = objective.tasks
        self.keep: dict[str, Any] = keep if keep is not None else {}
        self.best: float | None = None

    def attach(self, metrics: dict[str, Any], out: dict[str, Any]) -> None:
        """Add ``UNITS_KEY`` (and ``PER_QUERY_KEY`` when it improves) to ``out``, the
        report of ``metrics``."""
        evals = self.keep.get("evals") or []
        value = metrics.get(self.metric)
        if isinstance(value, (int, float)) and evals:
            match = next(
                (pq for flat, pq in reversed(evals) if flat.get(self.metric) == value), None
            )
            if match is not None:
                values = term_values(match, self.weights)
                if values:
                    out[UNITS_KEY] = encode_units(values, self.weights)
                if self._improves(float(value)):
                    self.best = float(value)
                    others = {t: match[t] for t in self.tasks if t in match and t != self.pair}
                    out[PER_QUERY_KEY] = encode_per_query(
                        self.pair, match.get(self.pair, {}), others
                    )
        if evals:
            sign = 1.0 if self.mode == "max" else -1.0
            best = max(evals, key=lambda e: sign * float(e[0].get(self.metric, -sign * 1e300)))
            self.keep["evals"] = [best]

    def _improves(self, value: float) -> bool:
        best = self.best
        return best is None or (value > best if self.mode == "max" else value < best)
