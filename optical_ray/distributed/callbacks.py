"""The Ray Tune callbacks of a pair's experiment: the catalog record of every trial as
it ends (:class:`CatalogCallback`) and the pair's progress in the sweep's coordinator
(:class:`ProgressCallback`), which the driver prints. Public Ray Tune API only."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from pathlib import Path
from collections.abc import Callable, Iterable
from typing import Any, Mapping

import ray
from ray.tune import Callback

from optical_ray.catalog.identity import FINAL_SUFFIX
from optical_ray.config import to_flat
from optical_ray.errors import OpticalRayError
from optical_ray.sweeps.plan import PairPlan, error_reason, resolve_trial_config
from optical_ray.sweeps.protocol import (
    CHECKPOINT_PATH_KEY,
    CONFIG_KEY,
    FINISHED_KEY,
    ORIGIN_KEY,
    PER_QUERY_KEY,
)

__all__ = [
    "BestCheckpoints",
    "best_kept_checkpoint",
    "CatalogCallback",
    "ProgressCallback",
    "checkpoint_uri",
    "coordinator_handle",
    "is_metric",
    "recorded_results",
    "NAMESPACE",
]

#: The Ray namespace of a sweep's named coordinator actor.
NAMESPACE = "optical-ray"

log = logging.getLogger(__name__)


def coordinator_handle(name: str | None) -> Any:
    """The coordinator actor by name (None when it is gone: no limit, no progress)."""
    if not name:
        return None
    try:
        return ray.get_actor(name, namespace=NAMESPACE)
    except ValueError:
        return None


class BestCheckpoints:
    """Per trial, the URI of the checkpoint that came with its best-scoring result.

    Every result a trial reports carries a finite ``score`` (its ``sweep.metric``,
    :func:`~optical_ray.training.context.fill_metric`), and a sweep's trials checkpoint only
    where they evaluate (:func:`~optical_ray.sweeps.plan.resolve_trial_config`), so the
    checkpoint of the best score holds the weights behind the trial's best dev value:
    the one a catalog record must name. Tune keeps that checkpoint and the latest one
    (``CheckpointConfig(num_to_keep=1, checkpoint_score_attribute="score")``); on a tie
    it keeps the later checkpoint, and so does this. Fed by a callback's
    ``on_checkpoint``, when ``trial.last_result`` is the result the checkpoint came with.
    """

    def __init__(self, mode: str, store: Any) -> None:
        self.sign = 1.0 if mode == "max" else -1.0
        self.store = store
        self.best: dict[str, tuple[float, str]] = {}

    def update(self, trial: Any, checkpoint: Any) -> None:
        score = (trial.last_result or {}).get("score")
        uri = checkpoint_uri(checkpoint, {}, self.store)
        if not isinstance(score, (int, float)) or uri is None:
            return
        seen = self.best.get(trial.trial_id)
        if seen is None or self.sign * score >= self.sign * seen[0]:
            self.best[trial.trial_id] = (float(score), uri)

    def uri(self, trial: Any, result: Mapping[str, Any]) -> str | None:
        """The best checkpoint's URI; else (a multi-worker trial, whose checkpoints are
        its Train run's, or one restored without this state) what the trial reports."""
        seen = self.best.get(trial.trial_id)
        return seen[1] if seen else checkpoint_uri(trial.checkpoint, result, self.store)


def best_kept_checkpoint(result: Any, mode: str) -> Any:
    """The best-scoring checkpoint a Tune or Train ``Result`` kept (both rank theirs by
    ``score``), else its latest, else None."""
    if result.best_checkpoints:
        with contextlib.suppress(RuntimeError):  # no kept checkpoint carries a score
            return result.get_best_checkpoint("score", mode)
    return result.checkpoint


class CatalogCallback(Callback):
    """Appends one catalog record per finished, stopped or failed trial, as it happens
    (a driver that dies loses no finished trial's record). The record's config is the
    one the trial reported it ran (``CONFIG_KEY``); records are keyed by experiment and
    trial, so a trial recorded twice (e.g. around a resume) is one record.

    ``fence`` (when given) must hold for a record to be written: a pair task whose
    driver died writes none, and calls ``on_fenced`` (which asks the task to end). The
    trial's state (its config, best checkpoint, per-query values) is kept and saved
    with the experiment, and the resumed experiment records it: as it ends, it records
    every trial it restored ended but finds no record of (:meth:`on_experiment_end`).

    ``already``: trial ids the catalog held as ended when the pair started
    (:func:`recorded_results`); they are never recorded again."""

    def __init__(
        self,
        catalog: Any,
        plan: PairPlan,
        baseline: dict[str, float] | None,
        fence: Callable[[], bool] | None = None,
        on_fenced: Callable[[Any], None] | None = None,
        already: Iterable[str] = (),
    ) -> None:
        self.catalog, self.plan, self.baseline = catalog, plan, baseline
        self.fence, self.on_fenced = fence, on_fenced
        self.already = frozenset(already)
        self.recorded: set[str] = set()
        self.started: dict[str, float] = {}
        self.configs: dict[str, dict[str, Any]] = {}
        self.per_query: dict[str, str] = {}
        self.at_best: dict[str, tuple[float, dict[str, Any]]] = {}
        self.checkpoints = BestCheckpoints(plan.base.sweep.mode, catalog.storage)

    def get_state(self) -> dict[str, Any]:
        """What a resumed experiment restores (Tune saves it with the experiment): a
        trial that goes on after a driver restart keeps its best so far."""
        return {
            "configs": self.configs,
            "per_query": self.per_query,
            "at_best": self.at_best,
            "checkpoints": self.checkpoints.best,
        }

    def set_state(self, state: dict[str, Any]) -> None:
        self.configs.update(state.get("configs") or {})
        self.per_query.update(state.get("per_query") or {})
        self.at_best.update(state.get("at_best") or {})
        self.checkpoints.best.update(state.get("checkpoints") or {})

    def on_trial_start(self, iteration, trials, trial, **info):  # noqa: ANN001
        self.started[trial.trial_id] = time.time()

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):  # noqa: ANN001
        self.checkpoints.update(trial, checkpoint)

    def on_trial_result(self, iteration, trials, trial, result, **info):  # noqa: ANN001
        if isinstance(result.get(CONFIG_KEY), str):
            self.configs[trial.trial_id] = json.loads(result[CONFIG_KEY])
        if isinstance(result.get(PER_QUERY_KEY), str):  # sent only when the metric improves
            self.per_query[trial.trial_id] = result[PER_QUERY_KEY]
        # the evaluation at the trial's best sweep.metric: retention is measured there
        sw = self.plan.base.sweep
        value = result.get(sw.metric)
        if isinstance(value, (int, float)) and any("/" in k for k in result):
            seen = self.at_best.get(trial.trial_id)
            if seen is None or (value > seen[0] if sw.mode == "max" else value < seen[0]):
                metrics = {k: v for k, v in result.items() if "/" in k}
                self.at_best[trial.trial_id] = (float(value), metrics)

    def on_trial_complete(self, iteration, trials, trial, **info):  # noqa: ANN001
        self._record(trial, "finished", None)

    def on_trial_error(self, iteration, trials, trial, **info):  # noqa: ANN001
        self._record(trial, "failed", _error_line(trial))

    def on_experiment_end(self, trials, **info):  # noqa: ANN001
        """Record the ended trials this process restored but never saw end, whose
        record the catalog lacks (a driver killed between a trial's end and its record
        leaves one behind). Only a resumed experiment has such trials."""
        ended = {"TERMINATED": "finished", "ERROR": "failed"}
        unseen = [t for t in trials if t.status in ended and t.trial_id not in self.recorded]
        if not unseen:
            return
        try:
            self.catalog.flush()  # records spooled while storage was down count as written
            if self.catalog.pending():
                raise OSError(f"{len(self.catalog.pending())} catalog part(s) still spooled")
            have = set(
                self.catalog.records(self.plan.pair, self.plan.experiment, columns=["record_id"])[
                    "record_id"
                ]
            )
        except Exception as exc:  # noqa: BLE001 - storage down: a warning, not a failed sweep
            log.warning(
                "%s: could not check the catalog for restored trials without a record "
                "(%s); the next --resume checks again",
                self.plan.pair,
                exc,
            )
            return
        for trial in unseen:
            if self._record_id(trial) not in have:
                log.warning("recording trial %s, restored ended without a record", trial.trial_id)
                status = ended[trial.status]
                self._record(trial, status, _error_line(trial) if status == "failed" else None)

    def config_of(self, trial: Any) -> dict[str, Any]:
        """What ``trial`` ran: its own report, else the same resolution it made."""
        reported = self.configs.get(trial.trial_id)
        if reported is None and isinstance((trial.last_result or {}).get(CONFIG_KEY), str):
            reported = json.loads(trial.last_result[CONFIG_KEY])
        if reported is not None:
            return reported
        try:
            return to_flat(resolve_trial_config(self.plan, dict(trial.config), trial.trial_id))
        except OpticalRayError:
            return dict(trial.config)  # a sampled combination that cannot work

    def _record_id(self, trial: Any) -> str:
        return f"{self.plan.experiment}--{trial.trial_id}"

    def _record(self, trial: Any, status: str, error: str | None) -> None:
        from optical_ray.catalog import TrialRecord

        if trial.trial_id in self.already:
            self._recorded(trial)  # its record is in the catalog: no second part
            return
        if self.fence is not None and not self.fence():
            log.warning("not recording trial %s: the sweep's driver is gone", trial.trial_id)
            if self.on_fenced is not None:
                self.on_fenced(trial)
            return
        sw = self.plan.base.sweep
        result = trial.last_result or {}
        analysis = trial.metric_analysis or {}
        best_key = "max" if sw.mode == "max" else "min"
        best = {
            k: v[best_key]
            for k, v in analysis.items()
            if isinstance(v, Mapping) and best_key in v and is_metric(k)
        }
        last = {k: v for k, v in result.items() if isinstance(v, (int, float)) and is_metric(k)}
        if status == "finished" and not result.get(FINISHED_KEY):
            status = "stopped"  # ASHA ended it early
        from optical_ray.catalog.pareto import trial_costs

        costs = trial_costs(
            result, self.plan.base, self.baseline, self.at_best.get(trial.trial_id, (0, {}))[1]
        )
        self.catalog.append(
            TrialRecord(
                experiment=self.plan.experiment,
                pair=self.plan.pair,
                trial_id=trial.trial_id,
                status=status,
                config=self.config_of(trial),
                best_metrics=best,
                last_metrics=last,
                metric=sw.metric,
                mode=sw.mode,
                error=error,
                baseline_metrics=self.baseline,
                checkpoint_uri=self.checkpoints.uri(trial, result),
                started_at=self.started.get(trial.trial_id),
                finished_at=time.time(),
                training_s=result.get("train_s"),
                iterations=result.get("training_iteration"),
                retention=costs["retention"],
                device_s=costs["device_s"],
                eval_s=costs["eval_s"],
                record_id=self._record_id(trial),
                dev_per_query=self.per_query.get(trial.trial_id),
                origin=(trial.config or {}).get(ORIGIN_KEY),
            )
        )
        self._recorded(trial)

    def _recorded(self, trial: Any) -> None:
        self.recorded.add(trial.trial_id)
        # recorded: its state need not travel with every experiment snapshot
        for kept in (self.started, self.configs, self.per_query, self.at_best):
            kept.pop(trial.trial_id, None)
        self.checkpoints.best.pop(trial.trial_id, None)


class ProgressCallback(Callback):
    """Keeps one pair's counts (done, running, stopped, failed), best so far and start
    time in the coordinator, where the driver reads them."""

    def __init__(self, plan: PairPlan, coordinator: str) -> None:
        self.plan, self.coordinator = plan, coordinator
        self.status: dict[str, str] = {}
        self.best: tuple[float, str] | None = None
        self.start = time.time()
        self._handle: Any = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_handle"] = None
        return state

    def _push(self) -> None:
        if self._handle is None:
            self._handle = coordinator_handle(self.coordinator)
        if self._handle is None:
            return
        counts = {
            s: sum(1 for v in self.status.values() if v == s)
            for s in ("running", "finished", "stopped", "failed")
        }
        # a finalists experiment shows as its own line; fixed runs count as its samples
        final = self.plan.experiment.endswith(FINAL_SUFFIX)
        points = self.plan.points
        self._handle.update.remote(
            f"{self.plan.pair} finalists" if final else self.plan.pair,
            {
                **counts,
                "samples": len(points) if points is not None else self.plan.base.sweep.samples,
                "start": self.start,
                "best": self.best[0] if self.best else None,
                "best_trial": self.best[1] if self.best else None,
            },
        )

    def on_trial_start(self, iteration, trials, trial, **info):  # noqa: ANN001
        self.status[trial.trial_id] = "running"
        self._push()

    def on_trial_recover(self, iteration, trials, trial, **info):  # noqa: ANN001
        self.status[trial.trial_id] = "running"
        self._push()

    def on_trial_result(self, iteration, trials, trial, result, **info):  # noqa: ANN001
        sw = self.plan.base.sweep
        value = result.get(sw.metric)
        if not isinstance(value, (int, float)) or not math.isfinite(value) or abs(value) >= 1e299:
            return
        better = self.best is None or (
            value > self.best[0] if sw.mode == "max" else value < self.best[0]
        )
        if better:
            self.best = (float(value), trial.trial_id)
            self._push()

    def on_trial_complete(self, iteration, trials, trial, **info):  # noqa: ANN001
        done = (trial.last_result or {}).get(FINISHED_KEY)
        self.status[trial.trial_id] = "finished" if done else "stopped"
        self._push()

    def on_trial_error(self, iteration, trials, trial, **info):  # noqa: ANN001
        self.status[trial.trial_id] = "failed"
        self._push()


def is_metric(key: str) -> bool:
    """Result keys the catalog keeps: evaluation metrics and Sinkhorn convergence."""
    name = key.split("/")[-1].split("@")[0]
    return (
        name in ("map", "ndcg", "mrr", "recall", "p", "score", "objective")
        or "/" in key
        or key.startswith("sinkhorn_")
    )


def checkpoint_uri(ckpt: Any, result: Mapping[str, Any], store: Any) -> str | None:
    """The URI of ``ckpt`` (a Tune checkpoint) or, without one, of the checkpoint a
    multi-worker trial reports as ``checkpoint_path`` (its Train run's best)."""
    if ckpt is not None:
        # "py::s3" for the pair driver's StateFileSystem over S3 (statefs)
        kind = getattr(ckpt.filesystem, "type_name", "local").rpartition("::")[2]
        return f"s3://{ckpt.path}" if kind == "s3" else ckpt.path
    path = result.get(CHECKPOINT_PATH_KEY)
    return store.uri_of(store.rel(path)) if isinstance(path, str) and path else None


def _error_line(trial: Any) -> str:
    """The reason a trial failed, from its error file or its error object."""
    text = ""
    path = getattr(trial, "error_file", None)
    try:
        if path and Path(path).is_file():
            text = Path(path).read_text(errors="replace")
        if not text:
            text = str(trial.get_error() or "")
    except Exception:  # noqa: BLE001 - reporting must not break the sweep
        pass
    return error_reason(text or "unknown error")


def recorded_results(catalog: Any, plan: PairPlan) -> dict[str, dict[str, Any]]:
    """The trials of ``plan``'s experiment that the catalog holds as ended (finished,
    or stopped early by the scheduler), as trial id → the result such a trial reports
    in place of running again (its recorded metrics, config and training time).

    A driver killed within seconds of a trial's end leaves the trial ended and recorded
    but missing from Tune's last snapshot, so the resumed experiment starts it again:
    the trial function then reports this instead of training, and the catalog callback
    writes no second record (``already``). Failed trials are not here: a resume retries
    them. Catalog records are not authenticated: a planted one can claim a result for a
    trial (numbers and a JSON config, never code), as it can claim one in any query.
    A catalog that cannot be read is a warning: those trials then run again."""
    metric = plan.base.sweep.metric
    try:
        rows = catalog.records(
            plan.pair,
            plan.experiment,
            columns=["trial_id", "status", "last_metrics", "config", "training_s", "best_value"],
            status=["finished", "stopped"],
        )
    except (OpticalRayError, OSError) as exc:
        log.warning(
            "%s: could not read the catalog's records of %s (%s); trials it holds as "
            "ended may run again",
            plan.pair,
            plan.experiment,
            exc,
        )
        return {}
    out: dict[str, dict[str, Any]] = {}
    for row in rows.to_dict("records"):
        try:
            last = json.loads(row["last_metrics"] or "{}")
        except (TypeError, ValueError):
            continue
        result = {
            k: float(v)
            for k, v in (last.items() if isinstance(last, dict) else ())
            if isinstance(v, (int, float)) and math.isfinite(v)
        }
        best = row.get("best_value")
        if metric not in result and isinstance(best, float) and math.isfinite(best):
            result[metric] = best
        if metric not in result:
            continue  # Tune needs the metric in every result: such a trial runs again
        training_s = row.get("training_s")
        finite = isinstance(training_s, float) and math.isfinite(training_s)
        result["train_s"] = float(training_s) if finite else 0.0
        if isinstance(row.get("config"), str):
            result[CONFIG_KEY] = row["config"]
        if row["status"] == "finished":
            result[FINISHED_KEY] = 1
        out[str(row["trial_id"])] = result
    return out
