"""A study on Ray: every cell x seed of a design runs as a trial of its pair's Tune
experiment, through the sweep's own driver (:func:`optical_ray.distributed.driver.run`
with a fixed list of runs instead of Optuna, FIFO, the shared concurrency budget, the
catalog callback, resume and signed state), and each run's final model is evaluated
once on the pair's test tasks, its per-query values stored for
:func:`optical_ray.studies.effects.study_effects`.

Before any run: the design is planned and checked against the config
(:func:`~optical_ray.studies.plan.plan_study`) and the data
(:func:`~optical_ray.studies.checks.check_study_data`), the design is stored (a study
of that name is refused without ``resume``), and the teacher is evaluated zero-shot on
each pair's tasks and references (once; a resumed study keeps it).
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from optical_ray.config import Config, from_flat
from optical_ray.config.rules import parse_study_origin
from optical_ray.errors import ConfigError
from optical_ray.studies.design import StudyDesign, load_design
from optical_ray.studies.plan import MAX_RUNS, StudyPlan, plan_study
from optical_ray.studies.store import (
    design_path,
    read_values,
    run_path,
    save_design,
    write_values,
    zero_shot_path,
)
from optical_ray.sweeps.plan import SweepResult
from optical_ray.sweeps.protocol import ORIGIN_KEY

__all__ = ["StudyTrial", "StudyResult", "run_study", "evaluate_run", "ZERO_SHOT"]

ZERO_SHOT = "zero-shot"


def evaluate_run(
    study: str, pair: str, cell: str, seed: int, tasks: Sequence[str], cfg: Config, model: Path
) -> str:
    """Evaluate the saved model ``model`` (a run's final model) on ``tasks``' test
    splits and store the per-query values of ``cfg.eval.metrics``; returns the URI.

    A trial that stored them already (its driver died between that and its record, so
    the resumed experiment restored it at its final checkpoint, where it trains
    nothing) is not evaluated again: the same trial's final model is the same model."""
    from optical_ray.evaluation.ranking import evaluate_pairs
    from optical_ray.models.encoder import RetrievalModel
    from optical_ray.storage import resolve_storage

    store = resolve_storage(cfg.storage.uri, cfg.storage.endpoint, cfg.storage.region)
    rel = run_path(study, pair, cell, seed)
    if store.exists(rel) and read_values(store, rel)[0].get("run") == cfg.name:
        return store.uri_of(rel)
    start = time.perf_counter()
    results = evaluate_pairs(RetrievalModel.load(model), cfg, pairs=list(tasks), split="test")
    meta = {
        "test_s": time.perf_counter() - start,  # what the test evaluation cost
        "study": study,
        "pair": pair,
        "cell": cell,
        "seed": seed,
        "run": cfg.name,
        "split": "test",
        "means": {t: r.metrics for t, r in results.items()},
    }
    values = {t: r.per_query for t, r in results.items()}
    return _outlasting(lambda: write_values(store, rel, values, list(cfg.eval.metrics), meta))


def _outlasting(write: Callable[[], str]) -> str:
    """``write()``, a storage outage waited out (about 75 s) as a checkpoint upload is:
    a run's values are written once, after its evaluation."""
    from optical_ray.retries import OUTAGE_ATTEMPTS, with_retries

    return with_retries(
        write, attempts=OUTAGE_ATTEMPTS, base_delay=1.0, max_delay=15.0, what="storing test values"
    )


@dataclass(frozen=True)
class StudyTrial:
    """A study run's trial function: the sweep's trial (train, checkpoint, report; its
    record gets the run's origin ``study:<cell>/<seed>``), then, on the final model and
    before the end-of-trial report, one evaluation on the pair's test tasks (never used
    to select). Tune pickles it with the experiment: keep its name and module."""

    study: str
    tasks: Mapping[str, Sequence[str]] = field(default_factory=dict)

    def __call__(self, sampled: dict[str, Any], *, plan: Any) -> None:
        from optical_ray.distributed.trial import run_trial

        parsed = parse_study_origin(sampled.get(ORIGIN_KEY))
        if parsed is None:
            raise ConfigError(f"a study run needs its origin; got {sampled.get(ORIGIN_KEY)!r}")
        cell, seed = parsed
        after = functools.partial(
            evaluate_run, self.study, plan.pair, cell, seed, list(self.tasks[plan.pair])
        )
        run_trial(sampled, plan=plan, after=after)


def _zero_shot(plan: StudyPlan, pair: str) -> Callable[[], str]:
    """The teacher (``train.teacher``, else the model as configured), untrained, on the
    pair's tasks and references (test), stored once per pair."""
    d = plan.design
    cfg = plan.run_config(pair, {**d.cell_values(d.cells()[0]), "train.seed": d.seeds[0]})
    tasks = list(dict.fromkeys([*plan.tasks[pair], *plan.reference[pair].values()]))

    def evaluate() -> str:
        from optical_ray.evaluation.ranking import evaluate_pairs
        from optical_ray.models.encoder import RetrievalModel
        from optical_ray.storage import resolve_storage

        mcfg = (
            from_flat({"model.name_or_path": cfg.train.teacher}, cfg) if cfg.train.teacher else cfg
        )
        results = evaluate_pairs(RetrievalModel.from_config(mcfg), cfg, pairs=tasks, split="test")
        store = resolve_storage(cfg.storage.uri, cfg.storage.endpoint, cfg.storage.region)
        meta = {
            "study": plan.name,
            "pair": pair,
            "system": ZERO_SHOT,
            "model": cfg.train.teacher or cfg.model.name_or_path,
            "split": "test",
            "means": {t: r.metrics for t, r in results.items()},
        }
        values = {t: r.per_query for t, r in results.items()}
        rel = zero_shot_path(plan.name, pair)
        return _outlasting(lambda: write_values(store, rel, values, list(cfg.eval.metrics), meta))

    return evaluate


@dataclass
class StudyResult:
    """What a study run left: the sweep result of its runs, per pair."""

    name: str
    storage: str
    runs: int
    sweep: SweepResult

    @property
    def exit_code(self) -> int:
        """1 when some run failed or some pair finished no run, else 0."""
        failed = any(r.failed or r.error for r in self.sweep.pairs.values())
        return 1 if failed or self.sweep.exit_code else 0

    def summary(self) -> str:
        lines = [f"study {self.name!r}: {self.runs} run(s), storage {self.storage}"]
        for pair, r in self.sweep.pairs.items():
            if r.error is not None:
                lines.append(f"  {pair}: experiment failed: {r.error}")
                continue
            lines.append(
                f"  {pair}: {r.trials - len(r.failed)} run(s) ended, {len(r.failed)} failed"
            )
            for trial_id, reason in r.failed:
                lines.append(f"    failed {trial_id}: {reason}")
        if self.exit_code:
            lines.append(
                "error: some runs did not finish; --resume runs them again (finished runs "
                "are not rerun), and the report leaves out effects of cells without runs"
            )
        return "\n".join(lines)


def run_study(
    design: StudyDesign | str | Path,
    base: Config | None = None,
    *,
    pairs: Sequence[str],
    seeds: int | None = None,
    max_runs: int = MAX_RUNS,
    name: str | None = None,
    resume: bool = False,
    address: str | None = None,
    verbose: int = 1,
    max_concurrent: int | None = None,
    trust_storage: bool = False,
    overrides: Mapping[str, Any] | None = None,
    out: Callable[[str], None] | None = None,
) -> StudyResult:
    """Run ``design`` (a :class:`~optical_ray.studies.design.StudyDesign` or a YAML
    file) for ``pairs``: every cell x seed a run (``seeds`` replaces the design's with
    ``0..seeds-1``), trained as a sweep trial on ``base`` (storage, data, model; the
    design's base and then ``overrides`` over it), evaluated once on its test tasks.

    Refused before anything runs, each problem one line: more than ``max_runs`` runs, a
    factor level the config does not allow, a missing test task or reference pair, a
    knob's training text that overlaps an evaluation split, a study of that ``name``
    already in storage (without ``resume``). With ``resume`` a study continues: runs
    with a finished record are not run again, unfinished ones go on from their
    checkpoints. ``max_concurrent`` runs at a time across all pairs; ``address`` a Ray
    cluster. Then ``study_effects(storage, name)`` or ``optical-ray report --study``.
    """
    import ray

    from optical_ray.distributed.driver import run as run_driver
    from optical_ray.distributed.train import init_ray
    from optical_ray.storage import resolve_storage
    from optical_ray.studies.checks import check_study_data

    if not isinstance(design, StudyDesign):
        design = load_design(design)
    plan = plan_study(
        design,
        base,
        pairs=pairs,
        seeds=seeds,
        max_runs=max_runs,
        name=name,
        max_concurrent=max_concurrent,
        overrides=overrides,
    )
    check_study_data(plan)
    st = plan.cfg.storage
    store = resolve_storage(st.uri, st.endpoint, st.region)
    if store.scheme == "s3":
        store.ensure_bucket()
    others = [plan.experiment(p) for p in plan.pairs if store.exists(plan.experiment(p))]
    if others and not store.exists(design_path(plan.name)):
        raise ConfigError(
            f"experiment(s) {', '.join(others)} in {store.where()} are not study "
            f"{plan.name!r}'s (a sweep of that name?); give the study another --name"
        )
    save_design(store, plan.doc(), resume)
    init_ray(address, log_to_driver=verbose >= 2)
    sc = plan.cfg.scaling
    pending = [p for p in plan.pairs if not store.exists(zero_shot_path(plan.name, p))]
    task = ray.remote(num_cpus=sc.cpus_per_worker, num_gpus=sc.gpus_per_worker)
    ray.get([task(_zero_shot(plan, p)).remote() for p in pending])
    sweep = run_driver(
        plan.cfg,
        plan.space,
        resume=resume,
        address=address,
        verbose=verbose,
        trust_storage=trust_storage,
        out=out,
        trial_fn=StudyTrial(plan.name, plan.tasks),
        points=plan.points,
    )
    return StudyResult(plan.name, store.uri, plan.runs, sweep)
