"""The handlers of ``optical-ray``'s subcommands (:mod:`optical_ray.cli.parser` builds the
parser and turns errors into one line): each checks what argparse cannot, calls one
public function, and prints. Heavy imports (torch, ray) happen inside the handlers so
``--help`` stays instant.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from optical_ray.errors import ConfigError, DataError

if TYPE_CHECKING:  # the config is built in the handlers
    from optical_ray.config import Config


def _check_dir(path: str | Path | None, what: str, *, probe: bool = False) -> None:
    """A directory we will create or write into must not be (or sit under) a file;
    with ``probe``, a real write must succeed there too (a read-only folder fails now,
    in one line, not after the work that was to be written)."""
    if path is None:
        return
    p = Path(path).expanduser()
    for q in (p, *p.parents):
        if q.exists():
            if not q.is_dir():
                which = "which" if q == p else f"but {str(q)!r}"
                raise ConfigError(
                    f"{what}: got {str(path)!r}, {which} is a file; expected "
                    "a directory (created if missing)"
                )
            break
    if probe:
        from optical_ray.storage import resolve_storage

        resolve_storage(str(p)).check_writable(f"give a writable {what}")


def _check_address(address: str | None) -> None:
    """``--address`` goes to ``ray.init``: no credentials in it (they would be logged)."""
    from optical_ray.redaction import credentials_problem

    problem = credentials_problem("--address", address, bare_host=True)
    if problem:
        raise ConfigError(problem)


# --------------------------------------------------------------------------- data


def cmd_data_synth(args: argparse.Namespace) -> int:
    from optical_ray.data.synthetic import synthesize_world

    _check_dir(args.out, "--out", probe=True)
    languages, sizes = args.languages, dict(args.bitext_size or [])
    if args.family is not None:
        from optical_ray.data.family import family_specs

        # the family's languages (after any --languages presets), its bitext sizes
        # unless --bitext-size says otherwise
        specs, family_sizes = family_specs(args.family, args.family_seed, args.scale)
        languages = [*(languages or []), *specs]
        sizes = {**family_sizes, **sizes}
    manifest = synthesize_world(
        args.out,
        seed=args.seed,
        languages=languages,
        bitext_sizes=sizes or None,
        scale=args.scale,
        overwrite=args.overwrite,
    )
    family = f", family of {args.family} (seed {args.family_seed})" if args.family else ""
    print(f"wrote synthetic world (seed {args.seed}{family}) to {args.out}")
    for code, lang in sorted(manifest.languages.items()):
        print(
            f"  {code}: {lang.get('resource', '?')}-resource, "
            f"{lang.get('bitext_size', 0)} bitext pairs"
        )
    print(f"next: optical-ray data validate {args.out}")
    return 0


def cmd_data_validate(args: argparse.Namespace) -> int:
    from optical_ray.data.validate import validate_dataset

    report = validate_dataset(args.root, strict=args.strict)
    print(report.format())
    if not report.ok:
        first = report.problems[0] if report.problems else "see the table above"
        raise DataError(f"{len(report.problems)} problem(s) in {args.root}; first: {first}")
    return 0


def cmd_data_prepare_real(args: argparse.Namespace) -> int:
    from optical_ray.data.prepare import prepare_real
    from optical_ray.data.real import canonical_lang

    _check_dir(args.out, "--out", probe=True)
    manifest = prepare_real(
        args.out, shared=args.shared, languages=args.languages, reference=args.reference
    )
    print(f"wrote the real-data root (from {manifest['source']}) to {args.out}")
    for name, counts in sorted(manifest["counts"].items()):
        print(f"  {name}: " + ", ".join(f"{v} {k}" for k, v in counts.items()))
    pair = f"{canonical_lang(args.languages[0])}-en"
    print(
        f"next: optical-ray train data.root={args.out} pair={pair} model.name_or_path=minilm "
        "model.scoring=pooled train.stages=[distill]"
    )
    return 0


# --------------------------------------------------------------------------- config


def cmd_config(args: argparse.Namespace) -> int:
    from optical_ray.config import load_config, to_dict
    from optical_ray.models.encoder import check_distill_layers

    from optical_ray.redaction import redact

    cfg = load_config(args.config, args.overrides)
    check_distill_layers(cfg)
    print(redact(json.dumps(to_dict(cfg), indent=2, sort_keys=True)))
    return 0


# --------------------------------------------------------------------------- train / evaluate


def _train_overrides(args: argparse.Namespace) -> list[str]:
    """CLI flags are shorthands for config keys; explicit key=value wins."""
    flags = {
        "scaling.workers": args.workers,
        "scaling.cpus_per_worker": args.cpus_per_worker,
        "scaling.gpus_per_worker": args.gpus_per_worker,
        "storage.uri": args.storage,
        "name": args.name,
        "train.tracking": f"[{','.join(args.tracking)}]" if args.tracking else None,
    }
    return [f"{k}={v}" for k, v in flags.items() if v is not None] + list(args.overrides)


def cmd_train(args: argparse.Namespace) -> int:
    from optical_ray.config import load_config
    from optical_ray.config.rules import parse_bytes

    _check_address(args.address)
    budget = (
        None if args.memory_budget is None else parse_bytes(args.memory_budget, "--memory-budget")
    )
    if not args.dry_run and (budget is not None or args.format != "table"):
        raise ConfigError("train: --memory-budget and --format go with --dry-run")
    cfg = load_config(args.config, _train_overrides(args))
    _check_dir(cfg.output_dir, "output_dir")
    if args.dry_run:
        return _train_dry_run(cfg, budget, args.format)
    # One worker on this machine trains in this process; more workers, a cluster, or
    # object storage (checkpoints persisted there, resumable) go through Ray Train.
    if (
        cfg.scaling.workers == 1
        and args.address is None
        and not cfg.storage.uri.startswith("s3://")
    ):
        from optical_ray.training.context import check_local_gpus
        from optical_ray.training.recipe import LocalContext, local_run_dir, run

        from optical_ray.tracking.trackers import track_run

        check_local_gpus(cfg)

        run_dir = local_run_dir(cfg)  # under --storage DIR when given
        with track_run(cfg, LocalContext(run_dir)) as ctx:
            history = run(cfg, ctx)
        final = history.evals[-1] if history.evals else {}
        print(f"done: model in {run_dir / 'model'}")
        if final:
            print(json.dumps(final, sort_keys=True))
        return 0
    from optical_ray.distributed.train import fit

    result = fit(cfg, address=args.address)
    print(f"done: {result.summary()}")
    return 0


def _train_dry_run(cfg: Config, budget: int | None, fmt: str) -> int:
    """``train --dry-run``: one line (or a JSON object) per stage; a report, so exit 0
    even when a step is over the budget."""
    from optical_ray.training.sizing import dry_run

    rows = dry_run(cfg, budget)
    if fmt == "json":
        print(json.dumps({"stages": rows}, indent=2, sort_keys=True, default=str))
    else:
        for row in rows:
            print(row["text"])
    return 0


def cmd_evaluate_best(args: argparse.Namespace) -> int:
    from optical_ray.evaluation.best import evaluate_best, parse_baselines

    if args.checkpoint or args.out or args.data or args.metrics or args.overrides:
        raise ConfigError(
            "evaluate --best: the checkpoints and their configs come from the catalog; "
            "drop --checkpoint/--out/--data/--metrics/key=value (use --storage, --pairs, "
            "--baselines, --reference, --metric)"
        )
    evaluations = evaluate_best(
        _storage_arg(args),
        pairs=args.pairs,
        split=args.split or "test",
        baselines=parse_baselines(args.baselines),
        metric=args.metric,
        reference_pair=args.reference,
    )
    for ev in evaluations:
        print(ev.to_text() + "\n", flush=True)
    print(f"next: optical-ray report --storage {args.storage}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from optical_ray.evaluation.ranking import evaluate_pairs, format_metrics_table
    from optical_ray.models.encoder import RetrievalModel

    from optical_ray.storage import local_copy

    if args.best:
        return cmd_evaluate_best(args)
    if not args.checkpoint:
        raise ConfigError(
            "evaluate: give --checkpoint DIR, or --best (the catalog's best per pair)"
        )
    for flag, value in (("--baselines", args.baselines), ("--reference", args.reference)):
        if value:
            raise ConfigError(f"evaluate: {flag} goes with --best")
    _check_dir(args.out, "--out", probe=True)
    ckpt = local_copy(args.checkpoint, endpoint=args.s3_endpoint)
    if not (ckpt / "optical_ray.json").is_file():
        raise ConfigError(
            f"--checkpoint {args.checkpoint!r} is not a saved model directory "
            "(no optical_ray.json); pass the model/ dir of a run"
        )
    overrides = [f"data.root={args.data}"] if args.data else []
    if args.split:
        overrides.append(f"eval.split={args.split}")
    if args.metrics:
        overrides.append(f"eval.metrics=[{','.join(args.metrics)}]")
    saved = json.loads((ckpt / "optical_ray.json").read_text())
    base = saved.get("config") or {}
    from optical_ray.config import apply_overrides, from_dict, parse_overrides

    cfg = from_dict(apply_overrides(base, parse_overrides(overrides + list(args.overrides))))
    model = RetrievalModel.load(ckpt)
    results = evaluate_pairs(model, cfg, pairs=args.pairs, out_dir=args.out)
    print(format_metrics_table(results))
    if args.out:
        print(f"runs and metrics.json written to {args.out}")
    return 0


# --------------------------------------------------------------------------- sweep / best / report


def cmd_sweep(args: argparse.Namespace) -> int:
    from optical_ray.config import load_config, parse_overrides, to_flat
    from optical_ray.config.rules import parse_bytes
    from optical_ray.sweeps.space import load_space, pin_overrides

    _check_address(args.address)
    over = [f"storage.uri={args.storage}"] if args.storage else []
    if args.memory_budget is not None:  # a shorthand for sweep.memory_budget
        parse_bytes(args.memory_budget, "--memory-budget")
        over.append(f"sweep.memory_budget={json.dumps(args.memory_budget)}")
    if args.s3_endpoint:
        over.append(f"storage.endpoint={args.s3_endpoint}")
    if args.name is not None:
        over.append(f"name={args.name}")
    cfg = load_config(args.config, over + list(args.overrides))
    _check_dir(cfg.output_dir, "output_dir")
    # key=value on the command line wins over the space's fixed values.
    flat = to_flat(cfg)
    space = pin_overrides(
        load_space(args.space), {k: flat[k] for k in parse_overrides(args.overrides) if k in flat}
    )
    from optical_ray.distributed import run_sweep  # Ray-free; Ray is imported when it runs

    result = run_sweep(
        cfg,
        space,
        pairs=args.pairs,
        samples=args.samples,
        workers_per_trial=args.workers_per_trial,
        max_concurrent=args.max_concurrent,
        scheduler=args.scheduler,
        search=args.search,
        metric=args.metric,
        name=args.name,
        resume=args.resume,
        address=args.address,
        verbose=args.verbose,
        pair_order=args.pair_order,
        max_failures=args.max_failures,
        trust_storage=args.trust_storage,
        tracking=args.tracking,
        optuna_storage=args.optuna_storage,
        objectives=args.objectives,
        constraints=args.constraint,
        warm_start=args.warm_start,
        warm_start_from=args.warm_start_from,
        warm_start_top=args.warm_start_top,
        objective=args.objective,
        promotion=args.promotion,
        promotion_alpha=args.promotion_alpha,
        finalists=args.finalists,
        finalist_seeds=args.finalist_seeds,
    )
    print(result.summary())
    if result.exit_code:
        return result.exit_code
    print(f"next: optical-ray best --all --storage {result.storage}")
    return 0


def _storage_arg(args: argparse.Namespace) -> object:
    from optical_ray.storage import resolve_storage

    return resolve_storage(args.storage, args.s3_endpoint)


def cmd_best(args: argparse.Namespace) -> int:
    from optical_ray.catalog import best_config, best_configs_all, best_yaml, format_records

    if args.across_pairs:
        return _best_across(args)
    if args.all == bool(args.pair):
        raise ConfigError(
            "best: give exactly one of --pair PAIR or --all (or --across-pairs P1,P2)"
        )
    if args.pareto and not args.objectives:
        raise ConfigError("best --pareto: give --objectives, e.g. --objectives map,en-en/map")
    if args.all and (args.pareto or args.where or args.objectives):
        raise ConfigError("best --all: --pareto, --where and --objectives need --pair PAIR")
    from optical_ray.catalog import Catalog

    store = Catalog(_storage_arg(args))  # one catalog: each unreadable part warned once
    plain = not (args.all or args.pareto or args.where or args.objectives or args.metric)
    if args.metric or args.all:
        metric = args.metric or "map"
    else:
        from optical_ray.catalog.answers import recorded_metric

        metric = recorded_metric(store, args.pair)
    if plain and args.top == 1:
        from optical_ray.catalog.answers import NoFinalists, pair_answer

        try:
            _print_answer(pair_answer(args.pair, store), args.format)
            return 0
        except NoFinalists:
            pass  # a sweep without finalists: its best trial, as before
    if args.all:
        records = best_configs_all(metric, store, args.mode)
    elif args.pareto:
        from optical_ray.catalog import pareto_front

        records = pareto_front(args.pair, args.objectives, store, where=args.where)
    else:
        records = best_config(
            args.pair,
            metric,
            store,
            args.top,
            args.mode,
            where=args.where,
            objectives=args.objectives,
        )
    if args.format == "yaml" and len(records) == 1:
        print(best_yaml(records[0]), end="")
    else:
        print(format_records(records, args.format))
        if plain and args.format == "table":
            print(
                "note: one training run and no comparison with the base behind it (the "
                "sweep ran no finalists: sweep.objective or --finalists N)"
            )
    return 0


def _print_answer(answer: object, fmt: str) -> None:
    from optical_ray.catalog.answers import answer_yaml

    if fmt == "json":
        print(json.dumps(answer.to_dict(), indent=2, sort_keys=True, default=str))
    elif fmt == "yaml":
        print(answer_yaml(answer), end="")
    else:
        print(answer.to_text())


def _best_across(args: argparse.Namespace) -> int:
    from optical_ray.catalog import robust_config

    other = [
        flag
        for flag, on in (
            ("--pair", args.pair),
            ("--all", args.all),
            ("--pareto", args.pareto),
            ("--where", args.where),
            ("--objectives", args.objectives),
            ("--top", args.top != 1),
        )
        if on
    ]
    if other:
        raise ConfigError(f"best --across-pairs: {', '.join(other)} cannot go with it")
    answer = robust_config(
        args.across_pairs, _storage_arg(args), rule=args.rule, metric=args.metric
    )
    if args.format == "json":
        print(json.dumps(answer.to_dict(), indent=2, sort_keys=True, default=str))
    elif args.format == "yaml":
        import yaml

        print(yaml.safe_dump(answer.config, sort_keys=False, width=1000), end="")
    else:
        print(answer.to_text())
    return 0


def cmd_study(args: argparse.Namespace) -> int:
    from optical_ray.config import load_config, parse_overrides
    from optical_ray.studies.design import load_design

    _check_address(args.address)
    over = [f"storage.uri={args.storage}"] if args.storage else []
    if args.s3_endpoint:
        over.append(f"storage.endpoint={args.s3_endpoint}")
    cfg = load_config(args.config, over + list(args.overrides))
    _check_dir(cfg.output_dir, "output_dir")
    design = load_design(args.design)
    from optical_ray.distributed.study import run_study  # Ray-free; Ray is imported when it runs

    result = run_study(
        design,
        cfg,
        pairs=args.pairs,
        seeds=args.seeds,
        max_runs=args.max_runs,
        name=args.name,
        resume=args.resume,
        address=args.address,
        verbose=args.verbose,
        max_concurrent=args.max_concurrent,
        trust_storage=args.trust_storage,
        overrides=parse_overrides(args.overrides),
    )
    print(result.summary())
    if result.exit_code:
        return result.exit_code
    print(f"next: optical-ray report --study {result.name} --storage {result.storage}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    _check_dir(args.out, "--out", probe=True)
    store = _storage_arg(args)
    if args.study:
        from optical_ray.report.study import summary_text, write_study_report
        from optical_ray.studies.effects import study_effects

        effects = study_effects(store, args.study, args.metric)
        print(summary_text(effects))
        print(f"study report written to {write_study_report(effects, args.out, store.uri)}")
        return 0
    from optical_ray.report.gap import build_report
    from optical_ray.studies.store import list_studies

    path = build_report(store, args.out, metric=args.metric, mode=args.mode)
    print(f"report written to {path}")
    studies = list_studies(store)
    if studies:
        print(f"studies in this storage: {', '.join(studies)} (optical-ray report --study NAME)")
    return 0


# --------------------------------------------------------------------------- demo


def cmd_demo(args: argparse.Namespace) -> int:
    from optical_ray.cli.demo import run_demo

    _check_dir(args.out, "--out", probe=True)
    run_demo(out_dir=args.out, trials=args.trials, seed=args.seed)
    return 0


# --------------------------------------------------------------------------- cluster


def cmd_cluster_up(args: argparse.Namespace) -> int:
    from optical_ray.cluster.local import LocalCluster

    cluster = LocalCluster(
        args.nodes,
        cpus_per_node=args.cpus_per_node,
        memory=args.memory,
        object_store_memory=args.object_store_memory,
        gpus_per_node=args.gpus_per_node,
        name=args.name,
        state_dir=args.state_dir,
    )
    print(f"starting a local Ray cluster: head + {args.nodes} worker node(s) ...", flush=True)
    cluster.up()
    print(cluster.summary())
    return 0


def cmd_cluster_down(args: argparse.Namespace) -> int:
    from optical_ray.cluster.local import LocalCluster

    cluster = LocalCluster.attach(args.name, args.state_dir)
    logs = cluster.temp_dir
    stopped = cluster.down(keep_logs=args.keep_logs)
    print(
        f"local Ray cluster {args.name!r} stopped ({stopped} processes)"
        + (f"; logs kept in {logs}" if args.keep_logs else "")
    )
    return 0


def cmd_cluster_status(args: argparse.Namespace) -> int:
    from optical_ray.cluster.local import LocalCluster

    status = LocalCluster.attach(args.name, args.state_dir).status()
    print(status.format())
    return 0 if status.up else 1
