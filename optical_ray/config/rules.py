"""The grammar of config values that several layers read: objectives and constraints
(``sweep.objectives``, ``sweep.constraints``, ``best --where``), tracking targets,
Optuna study storage, warm-start sources, record origins and sizes in bytes (the
sweep's weighted dev objective, ``sweep.objective``, has a module of its own:
:mod:`optical_ray.config.objective`).

These rules live here, beside the schema, because validation needs them and sits
below everything that uses them: the catalog, the sweep planner, the trackers and the
Tune adapter all import them from here.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

from optical_ray.config.schema import HYPERPARAMETERS, METRIC_RE, PAIR_RE
from optical_ray.errors import ConfigError
from optical_ray.redaction import redact

if TYPE_CHECKING:  # pandas is imported where a condition is applied to a table
    import pandas as pd

__all__ = [
    "ALLOWED_NAMES",
    "ASHA_OBJECTIVES",
    "BASE_ORIGIN",
    "FINALIST_PREFIX",
    "finalist_origin",
    "NAME_ALIASES",
    "name_kind",
    "COST_COLUMNS",
    "Condition",
    "Objective",
    "ORIGIN_RANDOM",
    "ORIGIN_SAMPLER",
    "STUDY_PREFIX",
    "TRACKERS",
    "TrackingTarget",
    "WARM_PREFIX",
    "default_mode",
    "optuna_storage_problems",
    "parse_bytes",
    "origin_problems",
    "parse_objectives",
    "parse_tracking",
    "parse_warm_start",
    "parse_where",
    "reference_pair",
    "search_objective",
    "search_problems",
    "study_origin",
    "parse_study_origin",
    "tracking_problems",
    "warm_origin",
    "warm_start_problems",
]

# --------------------------------------------------------------------------- sizes

_UNITS = {"": 1, "b": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}


def parse_bytes(value: int | str, flag: str) -> int:
    """``2G``, ``512M``, ``150MiB``, ``8GiB``, ``1.5g`` or a plain byte count, as bytes
    (binary units: ``500MB`` is 500 MiB). Raises :class:`ConfigError` naming ``flag``
    for anything else. Cluster sizes (``cluster up --memory``) and memory budgets
    (``sweep.memory_budget``, ``--memory-budget``) read sizes with it."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value > 0:
            return value
    elif isinstance(value, str):
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*", value, re.IGNORECASE)
        if m and float(m.group(1)) > 0:
            return int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    raise ConfigError(
        f"{flag}: got {value!r}, expected a size such as 2G, 512M or 1073741824 (bytes)"
    )


# --------------------------------------------------------------------------- objectives and conditions

#: Numeric catalog columns a query may name directly (cost first).
COST_COLUMNS = ("device_s", "training_s", "eval_s", "duration_s")


_NUMERIC_COLUMNS = ("retention", *COST_COLUMNS, "iterations")


#: Short names a query may use for a column (``cost`` is ``device_s``).
NAME_ALIASES = {"cost": "device_s"}


_OPS = {
    ">=": lambda a, b: a >= b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    "<": lambda a, b: a < b,
    "==": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
}


_WHERE_RE = re.compile(r"^\s*([A-Za-z0-9_.@/\-]+?)\s*(>=|<=|==|!=|>|<)\s*(\S.*?)\s*$")


_METRIC_KEY_RE = re.compile(r"^(?:[A-Za-z0-9_]+-[A-Za-z0-9_]+/)?" + METRIC_RE.pattern[1:])


#: What an objective or condition may name, as error messages list it.
ALLOWED_NAMES = (
    "a metric (map, ndcg@10, en-en/map), retention, cost, "
    + ", ".join(COST_COLUMNS)
    + ", iterations, epsilon, weight, lr, or a config key such as distill.l2sp"
)


def name_kind(name: str) -> str | None:
    """What ``name`` refers to: 'column', 'config' or 'metric' (None: not a name)."""
    name = NAME_ALIASES.get(name, name)
    if name in _NUMERIC_COLUMNS or name in HYPERPARAMETERS:
        return "column"
    if "/" not in name and "." in name and re.fullmatch(r"[A-Za-z_][\w.]*", name):
        return "config"
    if _METRIC_KEY_RE.match(name):
        return "metric"
    return None


@dataclass(frozen=True)
class Objective:
    """One objective: a name :func:`~optical_ray.catalog.pareto.values_of` resolves, maximised or minimised."""

    name: str
    mode: str  # "max" | "min"

    @property
    def maximize(self) -> bool:
        return self.mode == "max"


def default_mode(name: str) -> str:
    """Seconds and ``cost`` are minimised; metrics, ``retention`` and the rest maximised."""
    return "min" if name == "cost" or name.endswith("_s") else "max"


def parse_objectives(spec: str | Sequence[str]) -> list[Objective]:
    """``"map,en-en/map,cost"`` (or a list of names) as objectives, in order. A name
    may end in ``:min`` or ``:max`` to set its direction. Raises :class:`ConfigError`
    naming every bad name and what is allowed."""
    names = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else list(spec)
    problems, out = [], []
    for raw in names:
        name, _, mode = str(raw).partition(":")
        mode = mode or default_mode(name)
        if name_kind(name) is None:
            problems.append(f"objectives: got {raw!r}, expected {ALLOWED_NAMES}")
        elif mode not in ("max", "min"):
            problems.append(f"objectives: {raw!r}: direction {mode!r}, expected :max or :min")
        else:
            out.append(Objective(name, mode))
    if not names or names == [""]:
        problems.append("objectives: got none, expected names such as map,en-en/map")
    dup = sorted({o.name for o in out if sum(p.name == o.name for p in out) > 1})
    if dup:
        problems.append(f"objectives: {', '.join(dup)} given more than once")
    if problems:
        raise ConfigError(problems)
    return out


@dataclass(frozen=True)
class Condition:
    """``key op value``: a constraint on a recorded metric, column or config key."""

    key: str
    op: str
    value: float | str

    def __str__(self) -> str:
        return (
            f"{self.key}{self.op}{self.value:g}"
            if isinstance(self.value, float)
            else (f"{self.key}{self.op}{self.value}")
        )

    def holds(self, values: pd.Series) -> pd.Series:
        """Per row: whether the condition holds (a missing value never does)."""
        import pandas as pd

        if isinstance(self.value, float):
            numeric = pd.to_numeric(values, errors="coerce")
            return _OPS[self.op](numeric, self.value).fillna(False).astype(bool)
        text = values.astype("string")
        return _OPS[self.op](text, self.value).fillna(False).astype(bool)

    def shortfall(self, value: Any) -> float:
        """How far ``value`` is from satisfying the condition (0 if it does; inf when
        missing), relative to the threshold for numbers."""
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return math.inf
        if not isinstance(self.value, float):
            return 0.0 if _OPS[self.op](str(value), self.value) else 1.0
        try:
            v = float(value)
        except (TypeError, ValueError):
            return math.inf
        if _OPS[self.op](v, self.value):
            return 0.0
        return abs(v - self.value) / max(abs(self.value), 1e-12)


def parse_where(spec: str | Condition | Sequence[str | Condition] | None) -> list[Condition]:
    """``"retention>=0.98"`` (or several, a list) as :class:`Condition` s. Numbers compare
    as numbers; other values (``distill.method==ot``) as text, with ``==``/``!=`` only."""
    if spec is None:
        return []
    items = [spec] if isinstance(spec, (str, Condition)) else list(spec)
    problems, out = [], []
    for item in items:
        if isinstance(item, Condition):
            out.append(item)
            continue
        m = _WHERE_RE.match(str(item))
        if not m:
            problems.append(
                f"where: got {item!r}, expected NAME OP VALUE with OP one of "
                ">=, <=, >, <, ==, != (e.g. retention>=0.98)"
            )
            continue
        key, op, text = m.groups()
        if name_kind(key) is None:
            problems.append(f"where: {item!r}: unknown name {key!r}, expected {ALLOWED_NAMES}")
            continue
        try:
            value: float | str = float(text)
        except ValueError:
            value = text.strip("'\"")
            if op not in ("==", "!="):
                problems.append(
                    f"where: {item!r}: {text!r} is not a number, so only == and != apply"
                )
                continue
        out.append(Condition(key, op, value))
    if problems:
        raise ConfigError(problems)
    return out


#: Names a trial's result carries (or the driver derives from it), so a sweep may
#: search or constrain them.
_SEARCH_NAMES = ("retention", "cost", "training_s", "device_s", "eval_s")


#: Why ``--scheduler asha`` with several objectives is refused (the error's text).
ASHA_OBJECTIVES = (
    "ASHA stops trials on one metric, and Ray's multi-objective OptunaSearch drops "
    "intermediate results, so the two cannot work together; use --scheduler none (FIFO "
    "with Optuna's multi-objective TPE), or keep ASHA with one objective and --constraint "
    "such as retention>=0.98"
)


def reference_pair(cfg: Any) -> str:
    """The pair whose metric over the teacher's is retention: ``eval.reference``, else
    the teacher's own (``en-en``)."""
    t = cfg.data.teacher_lang
    return cfg.eval.reference or f"{t}-{t}"


def search_objective(sw: Any) -> tuple[str | list[str], str | list[str]]:
    """What a sweep's Optuna study optimises: ``(sweep.metric, sweep.mode)``, the one
    objective of ``sweep.objectives``, or the lists of several (FIFO only)."""
    objectives = parse_objectives(sw.objectives) if sw.objectives else []
    if len(objectives) > 1:
        return [o.name for o in objectives], [o.mode for o in objectives]
    if objectives:
        return objectives[0].name, objectives[0].mode
    return sw.metric, sw.mode


def search_problems(sw: Any) -> list[str]:
    """Problems with ``sweep.objectives`` / ``sweep.constraints`` (a
    :class:`~optical_ray.config.build.SweepConfig`), one line each."""
    problems: list[str] = []
    objs: list[Objective] = []
    conds: list[Condition] = []
    try:
        objs = parse_objectives(sw.objectives) if sw.objectives else []
    except ConfigError as exc:
        problems += [f"sweep.{p}" for p in exc.problems]
    try:
        conds = parse_where(sw.constraints)
    except ConfigError as exc:
        problems += [f"sweep.constraints: {p.removeprefix('where: ')}" for p in exc.problems]
    allowed = "a metric (map, en-en/map), " + ", ".join(_SEARCH_NAMES)
    for o in objs:
        if name_kind(o.name) != "metric" and o.name not in _SEARCH_NAMES:
            problems.append(
                f"sweep.objectives: {o.name!r} is not measured by a trial; use {allowed}"
            )
    for c in conds:
        if (name_kind(c.key) != "metric" and c.key not in _SEARCH_NAMES) or not isinstance(
            c.value, float
        ):
            problems.append(
                f"sweep.constraints: {str(c)!r}: a trial can only be held to a number on {allowed}"
            )
    if len(objs) > 1 and sw.scheduler == "asha":
        problems.append(
            f"sweep.objectives: {', '.join(o.name for o in objs)} with sweep.scheduler asha: "
            + ASHA_OBJECTIVES
        )
    return problems


# --------------------------------------------------------------------------- tracking targets and study storage


#: The tracking backends ``--tracking`` accepts.
TRACKERS = ("mlflow", "tensorboard", "wandb")


@dataclass(frozen=True)
class TrackingTarget:
    """One ``--tracking`` item: ``mlflow``, ``mlflow=URI``, ``tensorboard`` or ``wandb``."""

    kind: str
    uri: str | None = None


def tracking_problems(key: str, items: Sequence[str]) -> list[str]:
    """Every problem of a ``tracking`` list, one line each (for config validation)."""
    problems = []
    seen: set[str] = set()
    for i, item in enumerate(items):
        kind, sep, uri = str(item).partition("=")
        where = f"{key}[{i}]"
        if kind not in TRACKERS:
            problems.append(
                f"{where}: got {item!r}, expected one of {', '.join(TRACKERS)} "
                "(mlflow=URI names the tracking server)"
            )
        elif sep and kind != "mlflow":
            problems.append(f"{where}: got {item!r}, only mlflow takes a URI (mlflow=URI)")
        elif sep and not uri.strip():
            problems.append(
                f"{where}: got {item!r}, expected mlflow=URI such as mlflow=http://127.0.0.1:5000"
            )
        elif sep and _has_password(uri):
            # MLflow takes a server (HTTP basic auth) or a database URI (SQLAlchemy)
            instead = (
                "MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD"
                if uri.strip().lower().startswith(("http://", "https://"))
                else "the environment (PGUSER/PGPASSWORD, MYSQL_PWD) or the database's "
                "own config file (~/.pgpass)"
            )
            problems.append(
                f"{where}: got {redact(item)!r}: credentials in the tracking URI "
                f"would be logged; give them in {instead} instead"
            )
        elif kind in seen:
            problems.append(f"{where}: got {item!r}, {kind} is already listed")
        seen.add(kind)
    return problems


def parse_tracking(items: Sequence[str]) -> list[TrackingTarget]:
    """``["mlflow=http://...", "tensorboard"]`` as targets; :class:`ConfigError` lists
    every bad item."""
    problems = tracking_problems("tracking", items)
    if problems:
        raise ConfigError(problems)
    out = []
    for item in items:
        kind, sep, uri = str(item).partition("=")
        out.append(TrackingTarget(kind, uri.strip() if sep else None))
    return out


def _has_password(uri: str) -> bool:
    return redact(uri) != uri


def optuna_storage_problems(value: str | None) -> list[str]:
    """Problems of ``sweep.optuna_storage`` (None/'' = default, 'memory', an RDB URL, or
    ``journal:PATH``)."""
    if value in (None, "", "memory"):
        return []
    allowed = (
        "expected 'memory', an RDB URL (sqlite:///path.db, postgresql://host/db, "
        "mysql://host/db) or journal:PATH (Optuna's journal file on a shared file "
        "system)"
    )
    if value.startswith("journal:"):
        return (
            []
            if value[len("journal:") :].strip()
            else [f"sweep.optuna_storage: got {value!r}, {allowed}"]
        )
    scheme = value.partition("://")[0]
    if "://" not in value or not re.match(r"^[a-z][a-z0-9]*(\+[a-z0-9_]+)?$", scheme):
        return [f"sweep.optuna_storage: got {value!r}, {allowed}"]
    if _has_password(value):
        return [
            f"sweep.optuna_storage: got {redact(value)!r}: a password in the URL would "
            "be saved with the sweep; give it in the environment (PGPASSWORD, MYSQL_PWD) "
            "or the database's own config file"
        ]
    return []


# --------------------------------------------------------------------------- warm starts and origins


#: The origin of a config the search's sampler (TPE, or its transfer prior) proposed.
ORIGIN_SAMPLER = "sampler"
#: The origin of a random draw: random search, or TPE's start-up trials.
ORIGIN_RANDOM = "random"


#: The origin prefix of a config taken from another pair: ``warm_start:<pair>/<trial>``.
WARM_PREFIX = "warm_start:"
#: The origin of a finalist run: ``finalist:<trial>`` (a search trial re-trained with
#: another seed) or :data:`BASE_ORIGIN`.
FINALIST_PREFIX = "finalist:"
#: The origin of a run of the space's base config among the finalists.
BASE_ORIGIN = f"{FINALIST_PREFIX}base"


def finalist_origin(trial_id: str | None) -> str:
    """The origin of a finalist run of search trial ``trial_id`` (None: the base)."""
    return f"{FINALIST_PREFIX}{trial_id}" if trial_id else BASE_ORIGIN


def warm_origin(pair: str, trial_id: str) -> str:
    """The origin of a config taken from ``pair``'s trial ``trial_id``."""
    return f"{WARM_PREFIX}{pair}/{trial_id}"


#: The origin of a study's run: ``study:<cell>/<seed>`` (:mod:`optical_ray.studies`).
STUDY_PREFIX = "study:"
# A study cell's name: factor=level pairs joined by commas (no '/', which ends it).
_CELL_RE = re.compile(r"^[A-Za-z0-9_.+=,-]+$")


def study_origin(cell: str, seed: int) -> str:
    """The origin of the run of study cell ``cell`` with seed ``seed``."""
    return f"{STUDY_PREFIX}{cell}/{int(seed)}"


def parse_study_origin(origin: Any) -> tuple[str, int] | None:
    """``(cell, seed)`` of a study run's origin, else None (not a study run's)."""
    if not isinstance(origin, str) or not origin.startswith(STUDY_PREFIX):
        return None
    cell, _, seed = origin[len(STUDY_PREFIX) :].rpartition("/")
    if not _CELL_RE.match(cell) or not re.fullmatch(r"-?[0-9]+", seed):
        return None
    return cell, int(seed)


def origin_problems(origin: Any) -> list[str]:
    """Problems of a record's ``origin`` (None: not recorded, e.g. an older record)."""
    if origin is None or origin in (ORIGIN_SAMPLER, ORIGIN_RANDOM):
        return []
    if isinstance(origin, str) and origin.startswith(WARM_PREFIX):
        pair, _, trial = origin[len(WARM_PREFIX) :].partition("/")
        if PAIR_RE.match(pair) and trial:
            return []
    if isinstance(origin, str) and origin.startswith(FINALIST_PREFIX):
        if origin[len(FINALIST_PREFIX) :].strip():
            return []
    if parse_study_origin(origin) is not None:
        return []
    return [
        f"origin: got {origin!r}, expected {ORIGIN_SAMPLER}, {ORIGIN_RANDOM}, "
        f"{WARM_PREFIX}<pair>/<trial>, {FINALIST_PREFIX}<trial> or {STUDY_PREFIX}<cell>/<seed>"
    ]


def parse_warm_start(value: str | Sequence[str] | None) -> str | list[str]:
    """``"none"``, ``"auto"`` or the list of source pairs ``value`` names (a comma
    string or a list); raises :class:`ConfigError` naming a malformed pair."""
    problems = warm_start_problems(value)
    if problems:
        raise ConfigError(problems)
    items = _items(value)
    if not items or items == ["none"]:
        return "none"
    return "auto" if items == ["auto"] else items


def _items(value: str | Sequence[str] | None) -> list[str]:
    if value is None:
        return []
    parts = value.split(",") if isinstance(value, str) else [str(v) for v in value]
    return [p.strip() for p in parts if p.strip()]


def warm_start_problems(value: Any) -> list[str]:
    """Problems of ``sweep.warm_start``: ``none``, ``auto`` or pairs such as en-sw,en-ha."""
    allowed = "expected none, auto or source pairs such as en-sw,en-ha"
    if value is not None and not isinstance(value, (str, list, tuple)):
        return [f"sweep.warm_start: got {value!r}, {allowed}"]
    items = _items(value)
    if len(items) > 1 and ({"none", "auto"} & set(items)):
        return [f"sweep.warm_start: got {value!r}: none/auto cannot be mixed with pairs"]
    if items in ([], ["none"], ["auto"]):
        return []
    bad = [p for p in items if not PAIR_RE.match(p)]
    return [f"sweep.warm_start: got pair {p!r}, {allowed}" for p in bad]
