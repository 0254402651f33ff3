"""Results catalog: one record per trial, in object storage, and best-config queries.

Layout: ``<storage>/catalog/<experiment>/<pair>/part-<UTC time>-<id>.parquet``. Every
trial adds its own small, immutable Parquet part (or a batch adds one part), so any
number of sweeps can write at the same time without a read-modify-write of a shared
file, and nothing is lost when two of them finish together. A part is written
atomically (local: temp file + rename; S3: one upload that appears on completion) and
named after its record id, so a retried or re-flushed write rewrites the same key and
never duplicates a record. A part that cannot be written after
:func:`~optical_ray.storage.with_retries` is spooled to a local directory and written
by the next ``append`` (or :meth:`Catalog.flush`).

Reads (:meth:`Catalog.records`) list only the directories a query needs and read each
part through its ``pyarrow.dataset`` fragment, many at once, with projection and
filter: queries rank on a few columns first and then load the full records of the
winners only. A part that is not a readable catalog part (corrupt, empty, another
file's schema) is skipped with a warning naming it: it never hides the other records.
:meth:`Catalog.compact` merges a directory's parts into one (written first, inputs
deleted after; readers drop duplicate record ids in between) and moves unreadable
parts to ``<storage>/quarantine/``; writers compact by themselves every
``auto_compact`` parts, so a pair's directory stays at a few dozen parts however many
trials it holds.

Modules: :mod:`~optical_ray.catalog.records` (what a record holds, the row schema),
:mod:`~optical_ray.catalog.store` (:class:`Catalog`: writing, spooling, reading,
compaction), :mod:`~optical_ray.catalog.queries` (:func:`best_config` — the top-k
trials of one pair, :func:`best_configs_all` — the best per pair, :func:`best_yaml` — a
config file ``optical-ray train --config`` accepts, :func:`format_records` — table /
json / yaml for the CLI, :func:`pareto_front` — the non-dominated trials under several
objectives), :mod:`~optical_ray.catalog.pareto` (objective values, ``where``
constraints, non-dominated sorting, hypervolume), :mod:`~optical_ray.catalog.answers`
(:func:`pair_answer` — a pair's answer after its finalists, with its evidence),
:mod:`~optical_ray.catalog.robust` (:func:`robust_config` — one config across pairs),
:mod:`~optical_ray.catalog.identity` (which records ran the same config).
"""

from __future__ import annotations

from optical_ray.catalog.answers import Answer, Candidate, pair_answer
from optical_ray.catalog.pareto import (
    Condition,
    Objective,
    hypervolume,
    non_dominated,
    parse_objectives,
    parse_where,
)
from optical_ray.catalog.queries import (
    best_config,
    best_configs_all,
    best_yaml,
    format_records,
    pareto_front,
    rank_trials,
    varying_distill_keys,
)
from optical_ray.catalog.records import (
    CATALOG_DIR,
    HYPERPARAMETERS,
    RANKED_STATUSES,
    SCHEMA,
    STATUSES,
    BestRecord,
    TrialRecord,
    metric_value,
    metric_values,
    recorded_metrics,
    trial_epochs,
)
from optical_ray.catalog.robust import RobustAnswer, robust_config
from optical_ray.catalog.store import QUARANTINE_DIR, Catalog
from optical_ray.tables import records_table as format_table

__all__ = [
    "TrialRecord",
    "BestRecord",
    "Catalog",
    "best_config",
    "best_configs_all",
    "pareto_front",
    "pair_answer",
    "Answer",
    "Candidate",
    "robust_config",
    "RobustAnswer",
    "parse_objectives",
    "parse_where",
    "non_dominated",
    "hypervolume",
    "Objective",
    "Condition",
    "best_yaml",
    "format_records",
    "format_table",
    "varying_distill_keys",
    "metric_value",
    "metric_values",
    "trial_epochs",
    "recorded_metrics",
    "rank_trials",
    "SCHEMA",
    "STATUSES",
    "RANKED_STATUSES",
    "HYPERPARAMETERS",
    "CATALOG_DIR",
    "QUARANTINE_DIR",
]
