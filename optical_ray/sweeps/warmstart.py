"""Transfer HPO: a new language pair's sweep starts from what related pairs learned.

The catalog holds every pair's trials. ``sweep.warm_start`` (``auto``, a list of source
pairs, or ``none``) seeds a pair's search from those records in two ways:

* **Enqueued points.** The ``sweep.warm_start_top`` best configs of the source pairs
  (in all, taken in turns: the most similar source's best, the next source's best, ...),
  translated into this space's Optuna parameters (only the keys this space searches;
  a value outside this space's range is skipped with a note), deduplicated, run first:
  ``study.enqueue_trial`` through the define-by-run space (Ray's
  ``points_to_evaluate``/``evaluated_rewards`` do not take define-by-run spaces). Each
  carries its origin ``warm_start:<pair>/<trial>``; enqueueing skips an origin the
  study already holds, so ``--resume`` never enqueues twice.
* **A prior for TPE** (:class:`~optical_ray.sweeps.warmsampler.TransferSampler`). Every ranked source trial (finished:
  complete; ASHA-stopped: pruned) joins the trials TPE models, in a *view* rebuilt for
  each sample, never in the pair's own study. Why a separate prior rather than
  ``study.add_trials``: (1) the pair's study stays its own (optuna-dashboard,
  importances and resume show only its trials); (2) another language's MAP is on
  another scale (an easy language's worst trial can beat a hard one's best), so each
  source pair's values enter as quantiles (best 1, worst 0) mapped into the range this
  pair has reached so far: TPE ranks, and only the order within and across matters;
  (3) the prior is down-weighted by count and fades: with ``n`` of this pair's trials
  finished, ``1 - n / sweep.samples`` of the prior trials stay (evenly spread over
  their quantiles), so the pair's own evidence takes over as it arrives. TPE's random
  start-up is skipped while the prior is large enough: the sampler starts warm.

``auto`` picks source pairs from the catalog that share this space (their varying keys
are all searched here) and translate into it, and ranks them by
:func:`optical_ray.sweeps.langsim.similarity`:
the distance between the languages' ``LanguageSpec`` knobs when the data root is a
synthetic world that describes both; otherwise language metadata (same branch, same
family); ties go to the pair with more trials. The :data:`AUTO_SOURCES` most similar
pairs are used, and the driver prints which and why.

Everything here is Ray- and Optuna-free; :mod:`optical_ray.sweeps.warmsampler` holds the sampler
and the enqueueing, which :mod:`optical_ray.distributed.pair` wires into each pair's searcher.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import pandas as pd

from optical_ray.config import Config, from_dict, to_flat
from optical_ray.config.rules import (
    ORIGIN_RANDOM,
    ORIGIN_SAMPLER,
    WARM_PREFIX,
    origin_problems,
    parse_warm_start,
    warm_origin,
    warm_start_problems,
)
from optical_ray.errors import ConfigError, StorageError
from optical_ray.sweeps.langsim import AUTO_SOURCES, choose_sources, language_specs, similarity
from optical_ray.sweeps.space import LAYER_KEYS, Param, SearchSpace

__all__ = [
    "AUTO_SOURCES",
    "ORIGIN_RANDOM",
    "ORIGIN_SAMPLER",
    "WARM_PREFIX",
    "PriorTrial",
    "WarmPoint",
    "WarmStart",
    "choose_sources",
    "foreign_keys",
    "origin_problems",
    "parse_warm_start",
    "plan_warm_starts",
    "select_points",
    "similarity",
    "space_params",
    "warm_origin",
    "warm_start_problems",
    "build_prior",
]

# Value types whose differences between a source pair's trials mean "it searched this".
_SECTIONS = ("distill.", "rank.", "adapt.", "train.", "model.")


# --------------------------------------------------------------------------- origins


# --------------------------------------------------------------------------- the setting


# --------------------------------------------------------------------------- translating configs


def _distribution(p: Param, depth: int, part: str | None = None) -> Any:
    """The Optuna distribution :func:`optical_ray.sweeps.space._suggest` asks for ``p``
    (``part``: the layers parameter's ``strategy``/``k``/``layer``/``set``)."""
    import optuna.distributions as d

    s = p.spec
    if p.type in ("loguniform", "uniform"):
        return d.FloatDistribution(float(s["low"]), float(s["high"]), log=p.type == "loguniform")
    if p.type == "int":
        return d.IntDistribution(int(s["low"]), int(s["high"]), log=bool(s.get("log")))
    if p.type == "categorical":
        return d.CategoricalDistribution(
            [c if not isinstance(c, list) else str(c) for c in s["choices"]]
        )
    if part == "strategy":
        return d.CategoricalDistribution(list(s.get("strategies", ["last", "one", "set"])))
    if part == "k":
        return d.IntDistribution(1, min(int(s.get("max_k", depth)), depth))
    if part == "layer":
        return d.IntDistribution(1, depth)
    return d.CategoricalDistribution(list(range(len(s["sets"]))))


def _numeric(p: Param, value: Any) -> tuple[Any, str | None]:
    low, high = float(p.spec["low"]), float(p.spec["high"])
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None, f"{p.key}={value!r} is not a number"
    # Clip float noise (a value written as text and read back) onto the bounds.
    tol = 1e-9 * max(abs(low), abs(high), 1.0)
    if not low - tol <= value <= high + tol:
        return None, f"{p.key}={value:g} is outside this space's [{low:g}, {high:g}]"
    value = min(max(float(value), low), high)
    if p.type == "int":
        if not float(value).is_integer():
            return None, f"{p.key}={value:g} is not an integer"
        return int(value), None
    return value, None


def _layers(p: Param, value: Any, depth: int) -> tuple[dict[str, Any] | None, str | None]:
    """The ``<key>.strategy``/``.k``/``.layer``/``.set`` parameters giving ``value``."""
    s = p.spec
    strategies = s.get("strategies", ["last", "one", "set"])
    layers = value if isinstance(value, list) else [value]
    k = len(layers)
    if (
        "last" in strategies
        and layers == list(range(-k, 0))
        and k <= min(s.get("max_k", depth), depth)
    ):
        return {f"{p.key}.strategy": "last", f"{p.key}.k": k}, None
    if "one" in strategies and k == 1 and isinstance(layers[0], int) and 1 <= layers[0] <= depth:
        return {f"{p.key}.strategy": "one", f"{p.key}.layer": layers[0]}, None
    if "set" in strategies:
        for i, chosen in enumerate(s.get("sets") or []):
            if [int(x) for x in chosen] == layers:
                return {f"{p.key}.strategy": "set", f"{p.key}.set": i}, None
    return None, f"{p.key}={value!r} is not a layer choice of this space"


def space_params(
    flat: Mapping[str, Any], base: Mapping[str, Any], params: Sequence[Param], depth: int
) -> tuple[dict[str, Any] | None, dict[str, Any], str | None]:
    """A source trial's config ``flat`` as the Optuna parameters this space's
    define-by-run function asks for (same names, same conditions, see
    :class:`optical_ray.sweeps.space.DefineByRun`), their distributions, and None; or
    ``(None, {}, why)`` when a value is outside this space."""
    known = {**to_flat(from_dict({})), **base}
    taken: dict[str, Any] = {}
    out: dict[str, Any] = {}
    dists: dict[str, Any] = {}
    for p in params:
        if any(taken.get(k, known.get(k)) not in allowed for k, allowed in p.when.items()):
            continue
        if p.type == "fixed":
            taken[p.key] = p.spec["value"]
            continue
        value = flat.get(p.key)
        if p.type == "layers":
            chosen, why = _layers(p, value, depth)
            if chosen is None:
                return None, {}, why
            out.update(chosen)
            for name in chosen:
                dists[name] = _distribution(p, depth, name.rsplit(".", 1)[1])
        elif p.type == "categorical":
            match = [c for c in p.spec["choices"] if c == value or str(c) == str(value)]
            if not match:
                return (
                    None,
                    {},
                    f"{p.key}={value!r} is not a choice of this space {p.spec['choices']}",
                )
            out[p.key] = match[0] if not isinstance(match[0], list) else str(match[0])
            dists[p.key] = _distribution(p, depth)
        else:
            v, why = _numeric(p, value)
            if why:
                return None, {}, why
            out[p.key] = v
            dists[p.key] = _distribution(p, depth)
        taken[p.key] = value
    return out, dists, None


def foreign_keys(
    configs: Sequence[Mapping[str, Any]],
    searched: Sequence[str],
    experiments: Sequence[str] | None = None,
) -> list[str]:
    """Keys a source pair's trials varied within one experiment (so its space searched
    them) that this space does not search: its configs would then carry choices this
    sweep cannot make. ``experiments[i]`` is config ``i``'s experiment (two sweeps of
    one pair may fix a key differently: that is no search)."""
    searched_set = set(searched) | set(LAYER_KEYS)
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for i, c in enumerate(configs):
        groups.setdefault(experiments[i] if experiments else "", []).append(c)
    out: set[str] = set()
    for group in groups.values():
        keys = {k for c in group for k in c if k.startswith(_SECTIONS) and not k.endswith("seed")}
        for k in keys - searched_set:
            values = [c.get(k) for c in group]
            if not all(
                isinstance(v, (int, float, bool, type(None)))
                or (isinstance(v, list) and all(isinstance(x, int) for x in v))
                for v in values
            ):
                continue
            if len({json.dumps(v) for v in values}) > 1:
                out.add(k)
    return sorted(out)


# --------------------------------------------------------------------------- points and prior


@dataclass(frozen=True)
class WarmPoint:
    """A source trial's config to run first, as this space's Optuna parameters."""

    pair: str
    trial_id: str
    value: float
    params: dict[str, Any]

    @property
    def origin(self) -> str:
        return warm_origin(self.pair, self.trial_id)


@dataclass(frozen=True)
class PriorTrial:
    """A source trial for TPE's model: its parameters here, and its quantile among its
    pair's ranked trials (1 = best, 0 = worst); ``pruned`` for an ASHA-stopped trial,
    whose value TPE reads at ``step``."""

    pair: str
    trial_id: str
    quantile: float
    pruned: bool
    step: int
    params: dict[str, Any]
    distributions: dict[str, Any]


@dataclass
class WarmStart:
    """One target pair's warm start: the chosen sources (with why), the points to
    enqueue, the prior, and notes (skipped values)."""

    pair: str
    sources: list[str] = field(default_factory=list)
    reasons: dict[str, str] = field(default_factory=dict)
    points: list[WarmPoint] = field(default_factory=list)
    prior: list[PriorTrial] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def describe(self) -> list[str]:
        """What the driver prints: sources and why, what is enqueued, the prior."""
        src = ", ".join(f"{s} ({self.reasons.get(s, 'given')})" for s in self.sources)
        lines = [
            f"[warm-start] {self.pair}: from {src}; {len(self.points)} config(s) run first, "
            f"a prior of {len(self.prior)} trial(s) for TPE"
            if self.sources
            else f"[warm-start] {self.pair}: no source pair fits this space; it starts cold"
        ]
        lines += [f"[warm-start] {self.pair}: note: {n}" for n in self.notes]
        return lines


def _ranked(df: pd.DataFrame, pair: str, metric: str, mode: str, where: str) -> pd.DataFrame:
    from optical_ray.catalog import rank_trials

    return rank_trials(df, pair, metric, top=len(df), mode=mode, where=where)


def select_points(
    ranked: Mapping[str, pd.DataFrame],
    base: Mapping[str, Any],
    params: Sequence[Param],
    depth: int,
    top: int,
) -> tuple[list[WarmPoint], list[str]]:
    """Up to ``top`` configs in all from the source pairs (each one's ranked records,
    best first), as this space's parameters, taken in turns in the sources' order
    (every source's best, then every source's second, ...), without repeats (a config
    two pairs share runs once); and a note per skipped config.

    ``top`` counts configs, not configs per source: the rest of the budget goes to the
    sampler, whose prior holds every source trial anyway, so adding sources does not
    turn a sweep into a replay of their bests."""
    notes: list[str] = []
    queues: dict[str, list[WarmPoint]] = {}
    for pair, df in ranked.items():
        queue = queues.setdefault(pair, [])
        for row in df.itertuples():
            chosen, _, why = space_params(json.loads(row.config), base, params, depth)
            if chosen is None:
                notes.append(f"{pair} trial {row.trial_id} skipped: {why}")
                continue
            queue.append(WarmPoint(pair, str(row.trial_id), float(row.value), chosen))
    points: list[WarmPoint] = []
    seen: set[str] = set()
    while len(points) < top and any(queues.values()):
        for queue in queues.values():
            while len(points) < top and queue:
                point = queue.pop(0)
                key = json.dumps(point.params, sort_keys=True, default=str)
                if key not in seen:
                    seen.add(key)
                    points.append(point)
                    break
    return points, notes


def build_prior(
    ranked: Mapping[str, pd.DataFrame],
    base: Mapping[str, Any],
    params: Sequence[Param],
    depth: int,
) -> list[PriorTrial]:
    """Every ranked source trial that translates into this space, as a
    :class:`PriorTrial`: finished ones complete, ASHA-stopped ones pruned."""
    out = []
    for pair, df in ranked.items():
        n = len(df)
        for i, row in enumerate(df.itertuples()):
            chosen, dists, _ = space_params(json.loads(row.config), base, params, depth)
            if chosen is None:
                continue
            step = int(row.iterations) if pd.notna(row.iterations) and row.iterations >= 1 else 1
            out.append(
                PriorTrial(
                    pair,
                    str(row.trial_id),
                    1.0 - i / (n - 1) if n > 1 else 1.0,
                    row.status == "stopped",
                    step,
                    chosen,
                    dists,
                )
            )
    return out


# --------------------------------------------------------------------------- the driver's step


def plan_warm_starts(
    cfg: Config, space: SearchSpace, depth: int, out: Callable[[str], None] | None = None
) -> dict[str, WarmStart]:
    """Each target pair's :class:`WarmStart` from the catalog in
    ``sweep.warm_start_from`` (default: the sweep's storage), or {} for ``none``.

    Raises one :class:`ConfigError`/:class:`StorageError` line for an unreachable or
    empty catalog, a source pair without ranked records, a source pair whose trials
    searched keys this space does not, or (explicit pairs) none of whose configs fit.
    """
    from optical_ray.catalog import Catalog
    from optical_ray.storage import resolve_storage

    sw = cfg.sweep
    chosen = parse_warm_start(sw.warm_start)
    if chosen == "none":
        return {}
    uri = sw.warm_start_from or cfg.storage.uri
    store = resolve_storage(uri, cfg.storage.endpoint, cfg.storage.region)
    catalog = Catalog(store)
    where = store.where()
    df = catalog.records(
        columns=[
            "experiment",
            "pair",
            "trial_id",
            "status",
            "error",
            "metric",
            "best_value",
            "best_metrics",
            "config",
            "iterations",
        ]
    )
    if df.empty:
        raise StorageError(
            f"warm start: no trial records in {where} (sweep.warm_start_from); "
            "sweep the source pairs first or check the URI"
        )
    recorded = sorted(set(df["pair"]))
    targets = list(sw.pairs)
    if chosen != "auto":
        problems = [
            f"warm start: {p} is a pair of this sweep, not a source" for p in chosen if p in targets
        ]
        problems += [
            f"warm start: no records for pair {p} in {where}; pairs with records: {', '.join(recorded)}"
            for p in chosen
            if p not in recorded
        ]
        if problems:
            raise ConfigError(problems)
    specs = language_specs(cfg)
    plans = {}
    for target in targets:
        base, params = space.for_pair(target)
        searched = [p.key for p in params]
        ranked: dict[str, pd.DataFrame] = {}
        notes: list[str] = []
        pool = chosen if chosen != "auto" else [p for p in recorded if p not in targets]
        for pair in pool:
            rows = df[df["pair"] == pair]
            try:
                r = _ranked(rows, pair, sw.metric, sw.mode, where)
            except StorageError as exc:
                if chosen == "auto":
                    notes.append(f"{pair} not used: {exc}")
                    continue
                raise StorageError(f"warm start from {pair}: {exc}") from None
            extra = foreign_keys(
                [json.loads(c) for c in rows["config"]], searched, list(rows["experiment"])
            )
            if extra:
                why = (
                    f"warm start from {pair}: its trials searched {', '.join(extra)}, which "
                    f"{space.source} does not search (it searches {', '.join(searched)})"
                )
                if chosen == "auto":
                    notes.append(f"{pair} not used: another space ({', '.join(extra)})")
                    continue
                raise ConfigError(why)
            ranked[pair] = r
        if chosen == "auto":
            picks = choose_sources({p: len(r) for p, r in ranked.items()}, target, specs)
            reasons = {p: f"similarity {s:.2f}: {why}" for p, s, why in picks}
            ranked = {p: ranked[p] for p, _, _ in picks}
        else:
            reasons = {p: "given" for p in ranked}
        points, skipped = select_points(ranked, base, params, depth, sw.warm_start_top)
        if chosen != "auto" and ranked and not points:
            raise ConfigError(
                f"warm start for {target}: no config of {', '.join(ranked)} fits "
                f"{space.source}: {skipped[0] if skipped else 'no ranked trial'}"
            )
        if len(points) > sw.samples:
            skipped.append(
                f"{len(points)} configs enqueued, {sw.samples} trials (sweep.samples): "
                f"only the first {sw.samples} run"
            )
        plan = WarmStart(
            target,
            list(ranked),
            reasons,
            points,
            build_prior(ranked, base, params, depth),
            notes + skipped,
        )
        plans[target] = plan
        for line in plan.describe():
            (out or print)(line)
    return plans


# --------------------------------------------------------------------------- warm vs cold


def is_warm(origins: pd.Series) -> bool:
    """Whether an experiment (its records' ``origin`` column) was warm-started."""
    return bool(origins.dropna().astype(str).str.startswith(WARM_PREFIX).any())


def best_so_far(df: pd.DataFrame, metric: str, mode: str = "max") -> list[tuple[float, float]]:
    """One experiment's best-so-far curve: ``(trial-epochs spent, best value)`` after
    each ranked trial, in the order the trials started. A trial's cost is the dev
    evaluations it ran (:func:`optical_ray.catalog.trial_epochs`), so an ASHA-stopped
    trial costs what it ran."""
    from optical_ray.catalog import RANKED_STATUSES, metric_values, trial_epochs

    ranked = df[df["status"].isin(RANKED_STATUSES)]
    order = "started_at" if "started_at" in ranked and ranked["started_at"].notna().all() else None
    ranked = ranked.sort_values(order or "finished_at", kind="stable")
    values = metric_values(ranked, metric)
    spent, best, out = 0.0, None, []
    for status, iterations, value in zip(ranked["status"], ranked["iterations"], values):
        spent += trial_epochs(status, iterations)
        if value == value:
            best = value if best is None else (max if mode == "max" else min)(best, value)
        if best is not None:
            out.append((spent, float(best)))
    return out


def warm_and_cold(df: pd.DataFrame) -> dict[str, tuple[str, str]]:
    """Pairs of the catalog records ``df`` with both a warm-started and a cold
    experiment: ``{pair: (warm experiment, cold experiment)}``, the latest of each."""
    out = {}
    for pair, group in df.groupby("pair", sort=True):
        latest = group.sort_values("finished_at").groupby("experiment", sort=False)
        kinds: dict[bool, str] = {}
        for experiment, records in latest:
            kinds[is_warm(records["origin"])] = str(experiment)  # later ones win
        if True in kinds and False in kinds:
            out[str(pair)] = (kinds[True], kinds[False])
    return out
