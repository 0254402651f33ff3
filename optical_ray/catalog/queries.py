"""Best-config queries over the catalog, and how their answers print."""

from __future__ import annotations

import json
import logging
from typing import Any, Sequence

import numpy as np
import pandas as pd
import yaml

from optical_ray.catalog.records import (
    metric_values,
    recorded_metrics,
    CATALOG_DIR,
    HYPERPARAMETERS,
    RANKED_STATUSES,
    BestRecord,
    best_record,
)
from optical_ray.catalog.pareto import (
    closest_miss,
    columns_for,
    filter_where,
    non_dominated,
    objective_matrix,
    parse_objectives,
    parse_where,
)
from optical_ray.catalog.store import Catalog
from optical_ray.config import PAIR_RE
from optical_ray.errors import ConfigError, StorageError
from optical_ray.tables import records_table

__all__ = [
    "best_config",
    "best_configs_all",
    "candidate_records",
    "pareto_front",
    "rank_trials",
    "best_yaml",
    "format_records",
    "varying_distill_keys",
]

log = logging.getLogger("optical_ray.catalog")

# Phase 1 of a query reads only what ranking needs; phase 2 reads the winners' rows.
_RANK_COLUMNS = [
    "record_id",
    "experiment",
    "pair",
    "trial_id",
    "status",
    "error",
    "metric",
    "best_value",
    "best_metrics",
    "finished_at",
]


def _check_query(pair: str | None, metric: str, top: int, mode: str) -> None:
    problems = []
    if pair is not None and (not isinstance(pair, str) or not PAIR_RE.match(pair)):
        problems.append(f"pair: got {pair!r}, expected <query_lang>-<doc_lang> such as en-sw")
    if not isinstance(metric, str) or not metric:
        problems.append(f"metric: got {metric!r}, expected a metric name such as map")
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        problems.append(f"top: got {top!r}, expected an integer >= 1")
    if mode not in ("max", "min"):
        problems.append(f"mode: got {mode!r}, expected 'max' or 'min'")
    if problems:
        raise ConfigError(problems)


def rank_trials(
    df: pd.DataFrame,
    pair: str,
    metric: str,
    top: int = 1,
    mode: str = "max",
    where: str = "the catalog",
) -> pd.DataFrame:
    """The ``top`` ranked trials among one pair's records ``df``, best first, with their
    value in a ``value`` column. Finished and ASHA-stopped trials rank; ties go to the
    trial that finished first. Raises :class:`StorageError` (naming ``where``) when no
    trial finished or ``metric`` was never recorded."""
    ranked = df[df["status"].isin(RANKED_STATUSES)]
    if ranked.empty:
        failed = df[df["status"] == "failed"]
        errors = failed["error"].dropna()
        # one line, however long the recorded traceback
        last = (
            f"; last error: {' '.join(str(errors.iloc[-1]).split())[:300]}" if len(errors) else ""
        )
        raise StorageError(
            f"no finished trial for pair {pair!r} in {where} ({len(failed)} failed{last})"
        )
    values = metric_values(ranked, metric)
    if values.isna().all():
        raise StorageError(
            f"metric {metric!r} was never recorded for pair {pair!r} in "
            f"{where}; recorded metrics: {', '.join(recorded_metrics(df))}"
        )
    ranked = ranked.assign(value=values).dropna(subset=["value"])
    return ranked.sort_values(
        ["value", "finished_at"], ascending=[mode == "min", True], kind="stable"
    ).head(top)


def _materialize(
    catalog: Catalog,
    ranked: pd.DataFrame,
    metric: str,
    mode: str,
    validate: bool = True,
    top: int | None = None,
) -> list[BestRecord]:
    """Full records of the best ``top`` rows of each pair of ``ranked`` (all with
    None), in ``ranked``'s order, read from their parts only. A record this version
    cannot read (text planted in a part, a config from a newer version) is skipped with
    a warning naming it, and the next one in the ranking takes its place."""
    out: list[BestRecord] = []
    for _, group in ranked.groupby("pair", sort=False):
        want = len(group) if top is None else top
        got: list[BestRecord] = []
        start = 0
        while len(got) < want and start < len(group):
            chunk = group.iloc[start : start + want - len(got)]
            start += len(chunk)
            full = catalog.records_by_id(list(chunk["record_id"]), set(chunk["part"]))
            for row in chunk.to_dict("records"):
                try:
                    rec = best_record(
                        full[row["record_id"]], len(got) + 1, metric, row["value"], mode, validate
                    )
                except (ConfigError, ValueError, TypeError, KeyError) as exc:
                    log.warning(
                        "catalog: skipping record %s (trial %r, experiment %r) in %s: this "
                        "version cannot read it (%s)",
                        row["record_id"],
                        row.get("trial_id"),
                        row.get("experiment"),
                        row.get("part"),
                        " ".join(str(exc).split())[:300] or type(exc).__name__,
                    )
                    continue
                got.append(rec)
        out.extend(got)
    return out


def _empty_error(catalog: Catalog) -> StorageError:
    return StorageError(
        f"no trial records in {catalog.storage.where()} (looked under "
        f"{CATALOG_DIR}/); run a sweep first or check the storage URI"
    )


def _pair_records(
    catalog: Catalog, pair: str, experiment: str | None, columns: Sequence[str]
) -> pd.DataFrame:
    """One pair's records (``columns``, with their part); a StorageError if none."""
    df = catalog.records(pair, experiment, columns=list(columns), with_part=True)
    if df.empty:
        known = catalog.pairs(experiment)
        if not known:
            raise _empty_error(catalog)
        scope = f" of experiment {experiment!r}" if experiment else ""
        raise StorageError(
            f"no records for pair {pair!r}{scope} in {catalog.storage.where()}; "
            f"pairs with records: {', '.join(known)}"
        )
    return df


def candidate_records(
    pair: str,
    storage: Any,
    experiment: str | None,
    names: Sequence[str],
    conditions: Sequence[Any],
) -> tuple[Catalog, pd.DataFrame]:
    """The catalog and ``pair``'s ranked (finished or stopped) records with the columns
    that ``names`` need, narrowed to those meeting ``conditions``
    (:mod:`~optical_ray.catalog.pareto`). Raises :class:`StorageError` when none
    finished, or none meets the conditions (naming the closest)."""
    _check_query(pair, "map", 1, "max")
    catalog = Catalog(storage)
    df = _pair_records(catalog, pair, experiment, [*_RANK_COLUMNS, *columns_for(names)])
    ranked = df[df["status"].isin(RANKED_STATUSES)]
    if ranked.empty:
        rank_trials(df, pair, "map", 1, "max", catalog.storage.where())  # raises: why
    kept = filter_where(ranked, conditions)
    if kept.empty:
        raise closest_miss(ranked, conditions, pair)
    return catalog, kept


def best_config(
    pair: str,
    metric: str = "map",
    storage: Any = "optical_runs",
    top: int = 1,
    mode: str = "max",
    *,
    experiment: str | None = None,
    where: str | Sequence[str] | None = None,
    objectives: str | Sequence[str] | None = None,
) -> list[BestRecord]:
    """The ``top`` best trials of ``pair`` by ``metric`` (best first).

    Ranks finished and ASHA-stopped trials by their best evaluation. ``where``
    (``"retention>=0.98"``, or a list: every one must hold) keeps only the trials that
    meet it; when none does, the error names the closest trial and how far off it is.
    ``objectives`` (``"map,cost"``) ranks by the first objective, ties broken by the
    next ones, each in its own direction (cost minimised), and fills each record's
    ``objectives``; it replaces ``metric`` and ``mode``. Raises :class:`StorageError`
    for an empty or unreachable store, a pair without records (listing those with
    records) or a metric never recorded (listing those recorded); :class:`ConfigError`
    for a malformed pair, metric, top, mode, condition or objective. Unreadable parts
    are skipped with a warning naming each.
    """
    _check_query(pair, metric, top, mode)
    if where is None and objectives is None:
        catalog = Catalog(storage)
        df = _pair_records(catalog, pair, experiment, _RANK_COLUMNS)
        ranked = rank_trials(df, pair, metric, len(df), mode, catalog.storage.where())
        return _materialize(catalog, ranked, metric, mode, top=top)
    conds = parse_where(where)
    objs = parse_objectives(objectives if objectives is not None else f"{metric}:{mode}")
    catalog, df = candidate_records(
        pair, storage, experiment, [o.name for o in objs] + [c.key for c in conds], conds
    )
    values = objective_matrix(df, objs)
    # every objective, not only the first: one never recorded would be a silent NaN column
    missing = [o.name for j, o in enumerate(objs) if pd.isna(values[:, j]).all()]
    if missing:
        raise StorageError(
            f"{', '.join(map(repr, missing))} {'was' if len(missing) == 1 else 'were'} "
            f"never recorded by the trials of {pair!r} that meet the conditions in "
            f"{catalog.storage.where()}; recorded metrics: {', '.join(recorded_metrics(df))}"
        )
    keys = [f"__obj{j}" for j in range(len(objs))]
    ranked = df.assign(**{k: values[:, j] for j, k in enumerate(keys)}).dropna(subset=keys[:1])
    ranked = ranked.sort_values(
        [*keys, "finished_at"], ascending=[not o.maximize for o in objs] + [True], kind="stable"
    )
    ranked = ranked.assign(value=ranked[keys[0]])
    records = _materialize(catalog, ranked, objs[0].name, objs[0].mode, top=top)
    if objectives is not None:
        rows = ranked.set_index("record_id")
        for rec in records:
            rec.objectives = {o.name: float(rows.at[rec.record_id, k]) for o, k in zip(objs, keys)}
    return records


def best_configs_all(
    metric: str = "map",
    storage: Any = "optical_runs",
    mode: str = "max",
    *,
    experiment: str | None = None,
) -> list[BestRecord]:
    """The best trial of every pair (one per pair, sorted by pair); pairs without a
    finished trial or without ``metric`` are left out (logged)."""
    _check_query(None, metric, 1, mode)
    catalog = Catalog(storage)
    df = catalog.records(None, experiment, columns=_RANK_COLUMNS, with_part=True)
    if df.empty:
        raise _empty_error(catalog)
    winners = []
    for pair, group in df.groupby("pair", sort=True):
        try:  # the whole ranking: an unreadable winner leaves its place to the next
            winners.append(
                rank_trials(group, str(pair), metric, len(group), mode, catalog.storage.where())
            )
        except StorageError as exc:
            log.warning("best_configs_all: skipping %s: %s", pair, exc)
    if not winners:
        raise StorageError(
            f"metric {metric!r} was never recorded by a finished trial in "
            f"{catalog.storage.where()}; recorded metrics: "
            f"{', '.join(recorded_metrics(df))}"
        )
    return _materialize(catalog, pd.concat(winners), metric, mode, top=1)


# --------------------------------------------------------------------------- formatting


class _YamlDumper(yaml.SafeDumper):
    """Block mappings, flow lists of scalars (``layers: [-1, -2]``), no line wrapping."""


def _represent_list(dumper: yaml.SafeDumper, data: list) -> yaml.Node:
    flow = all(not isinstance(x, (dict, list)) for x in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_YamlDumper.add_representer(list, _represent_list)


def best_yaml(record: BestRecord) -> str:
    """The record's config as YAML that ``optical-ray train --config`` accepts as is."""
    header = [
        f"# best config for {record.pair}: {record.metric}={record.value:.4f} "
        f"(rank {record.rank}, experiment {record.experiment!r}, trial "
        f"{record.trial_id!r})"
    ]
    if record.checkpoint_uri:
        header.append(f"# checkpoint: {record.checkpoint_uri}")
    body = yaml.dump(
        record.config, Dumper=_YamlDumper, sort_keys=False, default_flow_style=False, width=1000
    )
    return "\n".join(header) + "\n" + body


def format_records(records: Sequence[BestRecord], fmt: str = "table") -> str:
    """``table`` (aligned text), ``json`` (a list of records) or ``yaml`` (the configs,
    one YAML document per record: a single record is a valid ``--config`` file)."""
    if fmt == "json":
        return json.dumps([r.to_dict() for r in records], indent=2, sort_keys=True, default=str)
    if fmt == "yaml":
        return "---\n".join(best_yaml(r) for r in records)
    if fmt != "table":
        raise ConfigError(f"format: got {fmt!r}, expected table, json or yaml")
    if not records:
        return "(no records)"
    metric = records[0].metric
    objectives = [k for k in records[0].objectives if k != metric]
    extra = varying_distill_keys(records)
    rows = [
        {
            "pair": r.pair,
            "rank": r.rank,
            metric: r.value,
            **{k: r.objectives.get(k) for k in objectives},
            **r.hyperparameters,
            **{k.split(".", 1)[1]: r.flat_config.get(k) for k in extra},
            "trial": r.trial_id,
            "origin": r.origin,
            "experiment": r.experiment,
            "checkpoint": r.checkpoint_uri,
        }
        for r in records
    ]
    columns = [
        "pair",
        "rank",
        metric,
        *objectives,
        *HYPERPARAMETERS,
        *(k.split(".", 1)[1] for k in extra),
        "trial",
        "origin",
        "experiment",
        "checkpoint",
    ]
    return records_table(rows, columns)


def varying_distill_keys(records: Sequence[BestRecord]) -> list[str]:
    """``distill.*`` keys with scalar values, beyond the main columns, that differ
    between ``records`` (what else a sweep searched, e.g. ``distill.contrastive``)."""
    shown = set(HYPERPARAMETERS.values())
    keys = sorted(
        {k for r in records for k in r.flat_config if k.startswith("distill.") and k not in shown}
    )
    out = []
    for k in keys:
        values = {json.dumps(r.flat_config.get(k), sort_keys=True, default=str) for r in records}
        scalar = all(
            isinstance(r.flat_config.get(k), (int, float, str, bool, type(None))) for r in records
        )
        if len(values) > 1 and scalar:
            out.append(k)
    return out


def pareto_front(
    pair: str,
    objectives: str | Sequence[str] = "map,en-en/map",
    storage: Any = "optical_runs",
    *,
    where: str | Sequence[str] | None = None,
    experiment: str | None = None,
) -> list[Any]:
    """The non-dominated trials of ``pair`` under ``objectives`` (best first by the
    first objective), among finished and ASHA-stopped trials that meet ``where``.

    Returns :class:`~optical_ray.catalog.records.BestRecord` s whose ``objectives``
    hold each objective's value; ``rank`` is the position on the front. Raises
    :class:`ConfigError` for a malformed objective or condition, :class:`StorageError`
    for a pair without records, an objective never recorded, or constraints no trial
    meets (naming the closest trial).
    """
    objs = parse_objectives(objectives)
    conds = parse_where(where)
    catalog, df = candidate_records(
        pair, storage, experiment, [o.name for o in objs] + [c.key for c in conds], conds
    )
    values = objective_matrix(df, objs)
    missing = [o.name for j, o in enumerate(objs) if np.isnan(values[:, j]).all()]
    if missing:
        raise StorageError(
            f"objective(s) {', '.join(missing)} never recorded for pair {pair!r} in "
            f"{catalog.storage.where()} ({len(df)} trials); recorded metrics: "
            f"{', '.join(recorded_metrics(df))}"
        )
    mask = non_dominated(values, [o.maximize for o in objs])
    front = df[mask].assign(**{f"__obj{j}": values[mask, j] for j in range(len(objs))})
    order = [f"__obj{j}" for j in range(len(objs))]
    front = front.sort_values(
        [*order, "finished_at"], ascending=[not o.maximize for o in objs] + [True], kind="stable"
    )
    front = front.assign(value=front["__obj0"])
    records = _materialize(catalog, front, objs[0].name, objs[0].mode, validate=False)
    rows = front.set_index("record_id")
    for rec in records:
        rec.objectives = {
            o.name: float(rows.at[rec.record_id, f"__obj{j}"]) for j, o in enumerate(objs)
        }
    return records
