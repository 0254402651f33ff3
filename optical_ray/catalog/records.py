"""Catalog records: what a trial writes (:class:`TrialRecord`), the row schema it is
stored in (:data:`SCHEMA`), and what a query returns (:class:`BestRecord`)."""

from __future__ import annotations

import datetime as dt
import json
import math
import socket
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping
from urllib.parse import quote

import numpy as np
import pandas as pd
import pyarrow as pa

from optical_ray import __version__
from optical_ray.config import (
    HYPERPARAMETERS,
    PAIR_RE,
    Config,
    from_flat,
    to_dict,
    to_flat,
)
from optical_ray.errors import ConfigError
from optical_ray.storage import redact
from optical_ray.config.rules import origin_problems

__all__ = [
    "metric_values",
    "finite",
    "recorded_metrics",
    "TrialRecord",
    "BestRecord",
    "SCHEMA",
    "STATUSES",
    "RANKED_STATUSES",
    "CATALOG_DIR",
    "HYPERPARAMETERS",
    "metric_value",
    "trial_epochs",
    "as_record",
    "encode_name",
    "best_record",
    "unique_records",
]

#: The catalog's directory under the storage root: ``<storage>/catalog/``.
CATALOG_DIR = "catalog"
#: A record's ``status``: the trial ran to the end, raised, or was stopped by ASHA.
STATUSES = ("finished", "failed", "stopped")
#: Trials whose metrics rank: ASHA-stopped trials were evaluated too, failed ones may not.
RANKED_STATUSES = ("finished", "stopped")


def trial_epochs(status: Any, iterations: Any) -> int:
    """Trial-epochs (dev evaluations) a trial spent, from its record's ``status`` and
    ``iterations`` (its reports to Tune). A finished trial's last report is its
    end-of-trial summary, not an evaluation, so it does not count; an ASHA-stopped or
    failed trial reported evaluations only. At least 1 (also when ``iterations`` is
    unknown): a trial that ran cost something."""
    if iterations is None or iterations != iterations:  # None or NaN
        return 1
    return max(1, int(iterations) - (1 if status == "finished" else 0))


# Stored as text (layers as JSON, method as is); the others as numbers.
_JSON_HYPERPARAMETERS, _TEXT_HYPERPARAMETERS = {"layers"}, {"layers", "method"}

#: The Arrow schema of a catalog part: one row per trial record.
SCHEMA = pa.schema(
    [
        ("record_id", pa.string()),
        ("experiment", pa.string()),
        ("pair", pa.string()),
        ("trial_id", pa.string()),
        ("status", pa.string()),
        ("error", pa.string()),
        ("origin", pa.string()),
        ("metric", pa.string()),
        ("mode", pa.string()),
        ("best_value", pa.float64()),
        ("last_value", pa.float64()),
        *(
            (c, pa.string() if c in _TEXT_HYPERPARAMETERS else pa.float64())
            for c in HYPERPARAMETERS
        ),
        ("config", pa.string()),
        ("best_metrics", pa.string()),
        ("last_metrics", pa.string()),
        ("baseline_metrics", pa.string()),
        ("checkpoint_uri", pa.string()),
        ("started_at", pa.timestamp("us", tz="UTC")),
        ("finished_at", pa.timestamp("us", tz="UTC")),
        ("duration_s", pa.float64()),
        ("training_s", pa.float64()),
        ("iterations", pa.int64()),
        # English retention and cost (catalog.pareto): the trial's reference-pair
        # metric over the zero-shot teacher's; devices x workers x training_s; eval time
        ("retention", pa.float64()),
        ("device_s", pa.float64()),
        ("eval_s", pa.float64()),
        ("version", pa.string()),
        ("host", pa.string()),
        # the best dev evaluation's per-query values (optical_ray.evaluation.perquery), or null
        ("dev_per_query", pa.string()),
    ],
    metadata={"optical_ray.catalog": "1"},
)
#: Columns a Parquet file must hold (as strings) to be read as a catalog part.
IDENTITY_COLUMNS = ("record_id", "experiment", "pair", "trial_id", "status")


def _utc(value: Any, key: str) -> dt.datetime | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, pd.Timestamp):
        value = value.to_pydatetime()
    if isinstance(value, dt.datetime):
        return (
            value.astimezone(dt.timezone.utc)
            if value.tzinfo
            else value.replace(tzinfo=dt.timezone.utc)
        )
    if isinstance(value, (int, float)):
        return dt.datetime.fromtimestamp(float(value), tz=dt.timezone.utc)
    if isinstance(value, str):
        try:
            return _utc(dt.datetime.fromisoformat(value), key)
        except ValueError:
            pass
    raise ConfigError(
        f"{key}: got {value!r}, expected a datetime, epoch seconds or an ISO 8601 string"
    )


def _flat_config(config: Any) -> dict[str, Any]:
    if isinstance(config, Config):
        return to_flat(config)
    if not isinstance(config, Mapping):
        raise ConfigError(
            f"config: got {type(config).__name__}, expected a Config or the "
            "flat {'distill.epsilon': ...} dict handed to Ray Tune"
        )
    return dict(config)


def _metrics(value: Any, key: str) -> dict[str, float]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(
            f"{key}: got {value!r}, expected a mapping such as {{'en-sw/map': 0.31, 'map': 0.31}}"
        )
    out = {}
    for k, v in value.items():
        try:
            out[str(k)] = float(v)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}.{k}: got {v!r}, expected a number") from None
    return out


def metric_value(metrics: Mapping[str, float], pair: str, metric: str) -> float | None:
    """The value of ``metric`` for ``pair`` in a record's metrics: the plain key (the
    trial's own pair) or ``<pair>/<metric>``; None if neither is recorded, or if it is
    not a finite number (a planted ``+inf`` never ranks first)."""
    for key in (metric, f"{pair}/{metric}"):
        if key in metrics and metrics[key] is not None:
            try:
                value = float(metrics[key])
            except (TypeError, ValueError):
                return None
            return value if math.isfinite(value) else None
    return None


def finite(values: pd.Series) -> pd.Series:
    """``values`` as float64 with every non-finite value (NaN, +-inf) as NaN: what is
    ranked, filtered or plotted treats them all as not recorded."""
    out = pd.to_numeric(values, errors="coerce").astype("float64")
    return out.where(np.isfinite(out))


def _json_object(text: Any) -> dict[str, Any]:
    """A JSON column's object, or {} when it is empty or not a JSON object (a record
    this version cannot read is left out of the ranking, not a traceback)."""
    if not isinstance(text, str) or not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _float_or_none(value: Any) -> float | None:
    try:
        return None if value is None or isinstance(value, bool) else float(value)
    except (TypeError, ValueError):
        return None


def _hyperparameter(column: str, value: Any) -> Any:
    if column not in _TEXT_HYPERPARAMETERS:
        return _float_or_none(value)
    if value is None:
        return None
    return json.dumps(value) if column in _JSON_HYPERPARAMETERS else str(value)


def _infinite(value: Any) -> bool:
    try:
        return value is not None and math.isinf(float(value))
    except (TypeError, ValueError):
        return False  # not a number at all: to_row names it


def _infinite_values(record: TrialRecord) -> list[str]:
    """A metric or a measurement of ``+-inf`` is no result (NaN or None means 'not
    measured'): a record carrying one would rank first by a max metric."""
    out = []
    for name in ("best_metrics", "last_metrics", "baseline_metrics"):
        metrics = getattr(record, name)
        for key, value in metrics.items() if isinstance(metrics, Mapping) else ():
            if _infinite(value):
                out.append(
                    f"{name}.{key}: got {value!r}, expected a finite number (NaN if not measured)"
                )
    for name in ("retention", "training_s", "device_s", "eval_s"):
        value = getattr(record, name)
        if _infinite(value):
            out.append(f"{name}: got {value!r}, expected a finite number or None")
    return out


@dataclass
class TrialRecord:
    """One trial's result, as the sweep appends it to the catalog.

    ``best_metrics`` / ``last_metrics`` hold every metric of every evaluated pair at the
    best and at the last evaluation: ``{"en-sw/map": 0.31, "en-en/map": 0.52, "map":
    0.31}`` (plain keys are the trial's own pair). ``baseline_metrics`` (optional) holds
    the same keys for the zero-shot teacher on the same evaluation set: the report's
    baseline when no ``distill.method: none`` trial was run. ``config`` is the flat
    dict given to Ray Tune (or a :class:`~optical_ray.config.build.Config`).
    ``dev_per_query``: the per-query values of the best dev evaluation, encoded by
    :func:`optical_ray.evaluation.perquery.encode_per_query` (paired tests between trials).

    ``retention``: the trial's English (reference pair) metric over the teacher's;
    ``device_s``: devices per worker x workers x ``training_s``; ``eval_s``: seconds
    spent evaluating (all None when not measured).
    """

    experiment: str
    pair: str
    trial_id: str
    status: str = "finished"
    config: Any = field(default_factory=dict)
    best_metrics: Mapping[str, float] | None = None
    last_metrics: Mapping[str, float] | None = None
    metric: str = "map"
    mode: str = "max"
    error: str | None = None
    baseline_metrics: Mapping[str, float] | None = None
    checkpoint_uri: str | None = None
    started_at: Any = None
    finished_at: Any = None
    training_s: float | None = None
    iterations: int | None = None
    retention: float | None = None
    device_s: float | None = None
    eval_s: float | None = None
    version: str = __version__
    host: str = field(default_factory=socket.gethostname)
    record_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    dev_per_query: str | None = None
    origin: str | None = None  # warm_start:<pair>/<trial>, sampler or random

    def validate(self) -> None:
        """Raise one :class:`ConfigError` listing every malformed field."""
        problems = []
        if not isinstance(self.experiment, str) or not self.experiment.strip():
            problems.append(f"experiment: got {self.experiment!r}, expected a non-empty name")
        if not isinstance(self.pair, str) or not PAIR_RE.match(self.pair):
            problems.append(
                f"pair: got {self.pair!r}, expected <query_lang>-<doc_lang> such as en-sw"
            )
        if self.status not in STATUSES:
            problems.append(f"status: got {self.status!r}, expected one of " + ", ".join(STATUSES))
        if self.mode not in ("max", "min"):
            problems.append(f"mode: got {self.mode!r}, expected 'max' or 'min'")
        if not str(self.trial_id):
            problems.append("trial_id: empty")
        problems += origin_problems(self.origin)
        problems += _infinite_values(self)
        if problems:
            raise ConfigError(problems, source="catalog record")

    def to_row(self) -> dict[str, Any]:
        """The catalog row: JSON columns, plain hyperparameter columns, secrets removed."""
        self.validate()
        flat = _flat_config(self.config)
        best = _metrics(self.best_metrics, "best_metrics")
        last = _metrics(self.last_metrics, "last_metrics")
        base = (
            _metrics(self.baseline_metrics, "baseline_metrics")
            if (self.baseline_metrics is not None)
            else None
        )
        started = _utc(self.started_at, "started_at")
        finished = _utc(self.finished_at, "finished_at") or dt.datetime.now(dt.timezone.utc)
        hp = {
            column: _hyperparameter(column, flat.get(key))
            for column, key in HYPERPARAMETERS.items()
        }
        return {
            "record_id": self.record_id,
            "experiment": self.experiment,
            "pair": self.pair,
            "trial_id": str(self.trial_id),
            "status": self.status,
            "error": redact(self.error) if self.error else None,
            "origin": self.origin,
            "metric": self.metric,
            "mode": self.mode,
            "best_value": metric_value(best, self.pair, self.metric),
            "last_value": metric_value(last, self.pair, self.metric),
            **hp,
            "config": redact(json.dumps(flat, sort_keys=True, default=str)),
            "best_metrics": json.dumps(best, sort_keys=True),
            "last_metrics": json.dumps(last, sort_keys=True),
            "baseline_metrics": None if base is None else json.dumps(base, sort_keys=True),
            "checkpoint_uri": redact(self.checkpoint_uri) if self.checkpoint_uri else None,
            "started_at": started,
            "finished_at": finished,
            "duration_s": (finished - started).total_seconds() if started else None,
            "training_s": _float_or_none(self.training_s),
            "iterations": None if self.iterations is None else int(self.iterations),
            "retention": _float_or_none(self.retention),
            "device_s": _float_or_none(self.device_s),
            "eval_s": _float_or_none(self.eval_s),
            "version": self.version,
            "host": self.host,
            "dev_per_query": self.dev_per_query,
        }


def as_record(record: TrialRecord | Mapping[str, Any]) -> TrialRecord:
    """``record`` as a :class:`TrialRecord` (a mapping names its fields)."""
    if isinstance(record, TrialRecord):
        return record
    if isinstance(record, Mapping):
        known = set(TrialRecord.__dataclass_fields__)
        unknown = sorted(set(record) - known)
        if unknown:
            raise ConfigError(
                f"catalog record: unknown keys {unknown} (allowed: {', '.join(sorted(known))})"
            )
        return TrialRecord(**record)
    raise ConfigError(
        f"catalog record: got {type(record).__name__}, expected a TrialRecord or a mapping"
    )


def encode_name(name: str) -> str:
    """An experiment name as one safe path segment (reversible with ``unquote``)."""
    out = quote(name, safe="-_.=+@,")
    return "%2E" + out[1:] if out.startswith(".") else out


def unique_records(table: pa.Table) -> pa.Table:
    """``table`` without repeated record ids: a record written twice (a trial recorded
    again after a resume, a compaction that crashed before deleting its inputs) counts
    once, as its latest version."""
    ids = table.column("record_id").to_pylist()
    if len(set(ids)) == len(ids):
        return table
    if "finished_at" in table.column_names:
        table = table.sort_by([("finished_at", "descending")])
        ids = table.column("record_id").to_pylist()
    seen: set[str] = set()
    keep = [i for i, rid in enumerate(ids) if not (rid in seen or seen.add(rid))]
    return table.take(keep)


# --------------------------------------------------------------------------- query results


@dataclass
class BestRecord:
    """One ranked trial: its config (nested, as ``optical-ray train --config`` takes it),
    its metrics and its checkpoint."""

    pair: str
    experiment: str
    trial_id: str
    rank: int
    metric: str
    value: float
    mode: str
    status: str
    config: dict[str, Any]
    flat_config: dict[str, Any]
    best_metrics: dict[str, float]
    last_metrics: dict[str, float]
    baseline_metrics: dict[str, float] | None
    checkpoint_uri: str | None
    finished_at: str | None
    duration_s: float | None
    record_id: str
    retention: float | None = None
    training_s: float | None = None
    device_s: float | None = None
    eval_s: float | None = None
    #: objective values, for a query given several (catalog.pareto)
    objectives: dict[str, float] = field(default_factory=dict)
    origin: str | None = None

    @property
    def hyperparameters(self) -> dict[str, Any]:
        """The main searched knobs (:data:`~optical_ray.config.build.MAIN_HYPERPARAMETERS`)
        by column name: epsilon, weight, layers, lr, method."""
        return {col: self.flat_config.get(key) for col, key in HYPERPARAMETERS.items()}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _opt(row: Mapping[str, Any], key: str) -> Any:
    """A row value with pandas' missing markers (None, NaN, NaT) as None."""
    value = row.get(key)
    return (
        None
        if value is None or (not isinstance(value, (str, dict, list)) and pd.isna(value))
        else value
    )


_DEFAULTS: dict[str, Any] = {}


def _nest(flat: Mapping[str, Any]) -> dict[str, Any] | None:
    """A trial's whole flat config (every key a sweep records) as the nested dict, without
    building and validating a :class:`Config` again (it was validated when the trial
    ran); None when ``flat`` is not whole."""
    if not _DEFAULTS:
        _DEFAULTS.update(to_flat(Config()))
    if not _DEFAULTS.keys() <= flat.keys():
        return None
    out: dict[str, Any] = {}
    for key, value in flat.items():
        *parents, leaf = key.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def best_record(
    row: Mapping[str, Any], rank: int, metric: str, value: float, mode: str, validate: bool = True
) -> BestRecord:
    """The :class:`BestRecord` of a full catalog row ranked ``rank`` with ``value``.
    ``validate=False`` skips rebuilding a whole config (a Pareto front's many records)."""
    flat = json.loads(_opt(row, "config") or "{}")
    try:
        nested = (None if validate else _nest(flat)) or to_dict(from_flat(flat))
    except ConfigError as exc:
        raise ConfigError(
            [
                f"catalog record of trial {row['trial_id']!r} ({row['pair']}): {p}"
                for p in exc.problems
            ]
        ) from None
    finished, duration = _opt(row, "finished_at"), _opt(row, "duration_s")
    baseline = _opt(row, "baseline_metrics")
    return BestRecord(
        pair=row["pair"],
        experiment=row["experiment"],
        trial_id=row["trial_id"],
        rank=rank,
        metric=metric,
        value=float(value),
        mode=mode,
        status=row["status"],
        config=nested,
        flat_config=flat,
        best_metrics=json.loads(_opt(row, "best_metrics") or "{}"),
        last_metrics=json.loads(_opt(row, "last_metrics") or "{}"),
        baseline_metrics=None if baseline is None else json.loads(baseline),
        checkpoint_uri=_opt(row, "checkpoint_uri"),
        finished_at=None if finished is None else pd.Timestamp(finished).isoformat(),
        duration_s=None if duration is None else float(duration),
        record_id=row["record_id"],
        **{
            k: _float_or_none(_opt(row, k))
            for k in ("retention", "training_s", "device_s", "eval_s")
        },
        origin=_opt(row, "origin"),
    )


def metric_values(df: pd.DataFrame, metric: str) -> pd.Series:
    """``metric`` per record of ``df`` (catalog records, as :meth:`Catalog.records`
    gives them): the plain ``best_value`` column where the record's own metric is
    ``metric``, otherwise looked up in its ``best_metrics`` JSON; NaN if not recorded."""
    values = finite(df["best_value"].where(df["metric"] == metric))
    other = values.isna()
    if other.any():
        looked_up = [
            metric_value(_json_object(m), p, metric)
            for m, p in zip(df.loc[other, "best_metrics"], df.loc[other, "pair"])
        ]
        values.loc[other] = pd.Series(looked_up, index=values.index[other], dtype="float64")
    return values


def recorded_metrics(df: pd.DataFrame) -> list[str]:
    """The metric names recorded in the records ``df`` (for error messages)."""
    names: set[str] = {str(m) for m in df["metric"].dropna()}
    for text in df["best_metrics"].dropna():
        names.update(str(k).rsplit("/", 1)[-1] for k in _json_object(text))
    return sorted(names)
