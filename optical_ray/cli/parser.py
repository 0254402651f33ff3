"""``optical-ray``: a thin command line over the Python API.

Every subcommand parses its arguments, calls one public function, and prints. Errors a
user can act on (:class:`~optical_ray.errors.OpticalRayError`) become one line on
stderr and exit code 2; argparse does the same for malformed flags. Heavy imports
(torch, ray) happen inside the handlers so ``--help`` stays instant.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence

from optical_ray import __version__
from optical_ray.cli import commands
from optical_ray.errors import OpticalRayError

Handler = Callable[[argparse.Namespace], int]


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _bitext_size(value: str) -> tuple[str, int]:
    lang, sep, n = value.partition("=")
    if not sep or not lang or not n.isdigit():
        raise argparse.ArgumentTypeError(f"got {value!r}, expected LANG=N such as xc=1000")
    return lang, int(n)


# --------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    """The ``optical-ray`` argument parser (exposed for docs and tests)."""
    p = argparse.ArgumentParser(
        prog="optical-ray",
        description="Find and train the best cross-lingual retrieval models for "
        "low-resource languages (OPTICAL optimal-transport distillation on Ray).",
    )
    p.add_argument("--version", action="version", version=f"optical-ray {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    demo = sub.add_parser(
        "demo",
        help="the embedded default: synthetic world, teacher, sweep, best config and gap report",
    )
    demo.add_argument("--out", default="optical_runs/demo", help="output directory")
    demo.add_argument("--trials", type=int, default=6, help="trials per pair")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=commands.cmd_demo)

    data = sub.add_parser("data", help="generate or validate datasets")
    dsub = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    synth = dsub.add_parser("synth", help="write a synthetic multilingual CLIR world")
    synth.add_argument("--out", required=True, help="output directory")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument(
        "--languages",
        type=_csv,
        default=None,
        help="comma-separated synthetic languages (default: all presets)",
    )
    synth.add_argument(
        "--bitext-size",
        type=_bitext_size,
        action="append",
        metavar="LANG=N",
        help="bitext pairs for a language (repeatable)",
    )
    synth.add_argument(
        "--family",
        type=int,
        default=None,
        metavar="N",
        help="N languages qa, qb, ... drawn from one seeded distribution over the "
        "language knobs (close and distant relatives; instead of the presets unless "
        "--languages names some)",
    )
    synth.add_argument("--family-seed", type=int, default=0, help="which family (default 0)")
    synth.add_argument("--scale", choices=["tiny", "default"], default="default")
    synth.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a world already in --out (only the world's own entries)",
    )
    synth.set_defaults(func=commands.cmd_data_synth)
    val = dsub.add_parser("validate", help="check a dataset directory and print counts")
    val.add_argument("root", help="dataset root in the standard layout")
    val.add_argument(
        "--strict",
        action="store_true",
        help="qrels naming unknown queries/documents are errors, not warnings",
    )
    val.set_defaults(func=commands.cmd_data_validate)
    real = dsub.add_parser(
        "prepare-real",
        help="write a dataset root from the real data "
        "samples (MAFAND-MT, NTREX-128, AfriQA, XQuAD-R)",
    )
    real.add_argument(
        "--shared",
        default=None,
        help="shared data folder (default: $OPTICAL_RAY_SHARED_DATA, else ../shared/data)",
    )
    real.add_argument("--out", required=True, help="output dataset root")
    real.add_argument(
        "--languages",
        type=_csv,
        default=["swa", "hau"],
        help="low-resource languages: any with MAFAND-MT bitext and NTREX-128 sentences in the shared folder (default swa,hau)",
    )
    real.add_argument(
        "--reference",
        type=_csv,
        default=["deu", "fra", "fin"],
        help="high-resource NTREX reference languages (default deu,fra,fin)",
    )
    real.set_defaults(func=commands.cmd_data_prepare_real)

    cfg = sub.add_parser("config", help="print the resolved config (YAML + overrides)")
    cfg.add_argument("--config", default=None, help="YAML config file")
    cfg.add_argument("overrides", nargs="*", metavar="key=value")
    cfg.set_defaults(func=commands.cmd_config)

    tr = sub.add_parser("train", help="train one configuration (stages rank/adapt/distill)")
    tr.add_argument("--config", default=None, help="YAML config file")
    tr.add_argument("--workers", type=int, default=None, help="Ray Train workers")
    tr.add_argument("--cpus-per-worker", type=float, default=None)
    tr.add_argument("--gpus-per-worker", type=float, default=None)
    tr.add_argument(
        "--address", default=None, help="Ray cluster: auto or HOST:PORT (default: local)"
    )
    tr.add_argument("--storage", default=None, help="local dir or s3://bucket/prefix")
    tr.add_argument("--name", default=None, help="run name (same name resumes)")
    tr.add_argument(
        "--tracking",
        type=_csv,
        default=None,
        metavar="LIST",
        help="mlflow[=URI], tensorboard, wandb (comma-separated; train.tracking)",
    )
    tr.add_argument(
        "--dry-run",
        action="store_true",
        help="train nothing, write no run: measure the peak memory of one step of each "
        "stage at the configured batch size on inputs of the maximum lengths (CUDA: "
        "max_memory_allocated; CPU: peak RSS growth plus the weights)",
    )
    tr.add_argument(
        "--memory-budget",
        default=None,
        metavar="SIZE",
        help="with --dry-run: also the largest batch size per stage that fits SIZE, e.g. "
        "8GiB or 500M (binary units), from a line fitted through measured batches",
    )
    tr.add_argument(
        "--format",
        choices=["table", "json"],
        default="table",
        help="with --dry-run: one line per stage (default) or JSON",
    )
    tr.add_argument("overrides", nargs="*", metavar="key=value")
    tr.set_defaults(func=commands.cmd_train)

    ev = sub.add_parser(
        "evaluate",
        help="evaluate a saved model per language pair, or (--best) each pair's best "
        "trial on test against the zero-shot teacher and baselines",
    )
    ev.add_argument(
        "--checkpoint", default=None, help="saved model directory: a local path or s3://.../model"
    )
    ev.add_argument(
        "--best",
        action="store_true",
        help="evaluate each pair's best checkpoint from the catalog in --storage",
    )
    ev.add_argument(
        "--storage", default="optical_runs", help="with --best: local dir or s3://bucket/prefix"
    )
    ev.add_argument(
        "--baselines",
        type=_csv,
        default=None,
        metavar="RUN,...",
        help="with --best: systems to compare with, NAME=URI or URI (a run dir, "
        "checkpoint or model dir; local or s3://)",
    )
    ev.add_argument(
        "--reference",
        default=None,
        metavar="PAIR",
        help="with --best: the pair the gap is measured to (default en-en)",
    )
    ev.add_argument("--metric", default=None, help="with --best: the metric that ranks trials")
    ev.add_argument("--s3-endpoint", default=None, help="S3 endpoint (or AWS_ENDPOINT_URL)")
    ev.add_argument("--data", default=None, help="dataset root (default: the run's)")
    ev.add_argument("--pairs", type=_csv, default=None, help="e.g. en-en,en-xa,xa-en")
    ev.add_argument("--split", choices=["dev", "test"], default=None)
    ev.add_argument("--metrics", type=_csv, default=None, help="e.g. map,ndcg@10")
    ev.add_argument("--out", default=None, help="write TREC runs and metrics.json here")
    ev.add_argument("overrides", nargs="*", metavar="key=value")
    ev.set_defaults(func=commands.cmd_evaluate)

    sw = sub.add_parser("sweep", help="Ray Tune + Optuna search per language pair")
    sw.add_argument("--space", required=True, help="YAML search space (search_spaces/*.yaml)")
    sw.add_argument("--pairs", type=_csv, required=True, help="e.g. en-sw,en-so")
    sw.add_argument("--samples", type=int, default=None, help="trials per pair")
    sw.add_argument("--storage", default=None, help="local dir or s3://bucket/prefix")
    sw.add_argument("--s3-endpoint", default=None, help="S3 endpoint (or AWS_ENDPOINT_URL)")
    sw.add_argument("--workers-per-trial", type=int, default=None)
    sw.add_argument(
        "--max-concurrent",
        type=int,
        default=None,
        help="trials in flight across all pairs (sweep.max_concurrent)",
    )
    sw.add_argument(
        "--pair-order",
        choices=["concurrent", "sequential"],
        default=None,
        help="run the pairs at the same time (default) or one after another",
    )
    sw.add_argument(
        "--max-failures",
        type=int,
        default=None,
        help="restarts of a trial whose process or node dies (default 2)",
    )
    sw.add_argument("--scheduler", choices=["asha", "none"], default=None)
    sw.add_argument(
        "--search", choices=["tpe", "random"], default=None, help="Optuna sampler (default tpe)"
    )
    sw.add_argument("--metric", default=None, help="e.g. map, ndcg@10")
    sw.add_argument("--name", default=None, help="sweep name (experiments <name>-<pair>)")
    sw.add_argument(
        "--resume", action="store_true", help="continue the sweep with this name in this storage"
    )
    sw.add_argument(
        "--trust-storage",
        action="store_true",
        help="with --resume: skip the check that Tune's saved state was "
        "written by this installation (docs: trust.md)",
    )
    sw.add_argument(
        "--verbose",
        type=int,
        choices=[0, 1, 2],
        default=1,
        help="0: summary only; 1: a progress line per pair (default); "
        "2: also Ray Tune's trial tables and every trial's output",
    )
    sw.add_argument("--config", default=None, help="base config YAML (e.g. train.teacher)")
    sw.add_argument(
        "--tracking",
        type=_csv,
        default=None,
        metavar="LIST",
        help="mlflow[=URI], tensorboard, wandb (comma-separated; sweep.tracking)",
    )
    sw.add_argument(
        "--optuna-storage",
        default=None,
        metavar="URL",
        help="Optuna studies: RDB URL or journal:PATH (default "
        "sqlite:///<storage>/optuna.db for local storage; 'memory')",
    )
    sw.add_argument(
        "--objectives",
        type=_csv,
        default=None,
        metavar="LIST",
        help="several objectives, e.g. map,en-en/map or map,cost: Optuna's multi-objective "
        "TPE under FIFO scheduling (docs: guide/sweeps.md, several objectives)",
    )
    sw.add_argument(
        "--constraint",
        action="append",
        default=None,
        metavar="COND",
        help="e.g. retention>=0.98 (repeatable): told to Optuna with each trial; keeps ASHA",
    )
    sw.add_argument(
        "--warm-start",
        default=None,
        metavar="auto|PAIR[,PAIR...]|none",
        help="start each pair's search from related pairs' catalog records: their best "
        "configs run first and their trials inform TPE (sweep.warm_start, default none)",
    )
    sw.add_argument(
        "--warm-start-from",
        default=None,
        metavar="URI",
        help="catalog storage of the source pairs (default: --storage)",
    )
    sw.add_argument(
        "--warm-start-top",
        type=int,
        default=None,
        help="source pairs' best configs to run first, in all (sweep.warm_start_top, default 3)",
    )
    sw.add_argument(
        "--objective",
        default=None,
        metavar="EXPR",
        help="what trials are searched, stopped and answered on: a weighted mean of dev "
        "metrics over the pair's tasks, e.g. 'mean({lang}-en/map, en-{lang}/map)' "
        "(sweep.objective; see docs/answers.md)",
    )
    sw.add_argument(
        "--promotion",
        choices=["paired", "mean"],
        default=None,
        help="ASHA stops a trial at a rung only when it is significantly below the "
        "rung's cut-off trial (paired, default) or on means alone (mean: Ray's ASHA)",
    )
    sw.add_argument(
        "--promotion-alpha",
        type=float,
        default=None,
        help="level of promotion's one-sided paired test, in (0, 1) (default 0.1)",
    )
    sw.add_argument(
        "--finalists",
        type=int,
        default=None,
        help="top configs re-trained with new seeds against the space's base config "
        "(default 2 with an objective, else 0)",
    )
    sw.add_argument(
        "--finalist-seeds",
        type=int,
        default=None,
        help="new seeds for each finalist and for the base (default 2)",
    )
    sw.add_argument(
        "--memory-budget",
        default=None,
        metavar="SIZE",
        help="warn before launch for each pair and stage whose step at the space's largest "
        "batch sizes and lengths does not fit SIZE, e.g. 8GiB or 500M (sweep.memory_budget; "
        "default: the GPU's total memory on a CUDA driver, no check on CPU)",
    )
    sw.add_argument("--address", default=None, help="Ray cluster: auto or HOST:PORT")
    sw.add_argument("overrides", nargs="*", metavar="key=value")
    sw.set_defaults(func=commands.cmd_sweep)

    st = sub.add_parser(
        "study",
        help="run a study: every cell of a design's factors x seeds, through the sweep "
        "machinery, each run evaluated once on its test tasks (effects: report --study)",
    )
    st.add_argument("--design", required=True, help="YAML study design (studies/*.yaml)")
    st.add_argument("--pairs", type=_csv, required=True, help="e.g. swa-en,hau-en")
    st.add_argument(
        "--seeds", type=int, default=None, help="seeds per cell, 0..N-1 (default: the design's)"
    )
    st.add_argument(
        "--max-runs",
        type=int,
        default=200,
        help="refuse a study of more runs than this (cells x seeds x pairs; default 200)",
    )
    st.add_argument("--storage", default=None, help="local dir or s3://bucket/prefix")
    st.add_argument("--s3-endpoint", default=None, help="S3 endpoint (or AWS_ENDPOINT_URL)")
    st.add_argument("--name", default=None, help="study name (default: the design's name)")
    st.add_argument(
        "--resume", action="store_true", help="continue the study with this name in this storage"
    )
    st.add_argument(
        "--trust-storage",
        action="store_true",
        help="with --resume: skip the check that Tune's saved state was written here",
    )
    st.add_argument(
        "--max-concurrent", type=int, default=None, help="runs in flight across all pairs"
    )
    st.add_argument("--verbose", type=int, choices=[0, 1, 2], default=1)
    st.add_argument("--config", default=None, help="base config YAML (storage, teacher, data)")
    st.add_argument("--address", default=None, help="Ray cluster: auto or HOST:PORT")
    st.add_argument("overrides", nargs="*", metavar="key=value")
    st.set_defaults(func=commands.cmd_study)

    for cmd, helptext in (
        ("best", "best configs per pair from the results catalog"),
        ("report", "gap report (tables, plots) from the results catalog, or a study's effects"),
    ):
        q = sub.add_parser(cmd, help=helptext)
        q.add_argument("--storage", default="optical_runs", help="local dir or s3://bucket/prefix")
        q.add_argument("--s3-endpoint", default=None, help="S3 endpoint (or AWS_ENDPOINT_URL)")
        # best: None = the pair's answer (its sweep's objective), else map
        q.add_argument("--metric", default=None if cmd == "best" else "map")
        q.add_argument("--mode", choices=["max", "min"], default="max")
        if cmd == "best":
            q.add_argument(
                "--pair",
                default=None,
                help="e.g. en-sw: the pair's answer with its evidence (after finalists), "
                "else its best trial",
            )
            q.add_argument(
                "--across-pairs",
                type=_csv,
                default=None,
                metavar="P1,P2,...",
                help="the one config that ran on every pair with the best worst case "
                "(or mean rank, --rule), and how far it is from each pair's own best",
            )
            q.add_argument(
                "--rule",
                choices=["worst", "mean-rank"],
                default="worst",
                help="with --across-pairs: smallest worst-case shortfall from each "
                "pair's best (default) or best mean rank",
            )
            q.add_argument("--all", action="store_true", help="one row per pair")
            q.add_argument("--top", type=int, default=1)
            q.add_argument("--format", choices=["table", "json", "yaml"], default="table")
            q.add_argument(
                "--objectives",
                default=None,
                metavar="LIST",
                help="e.g. map,en-en/map,cost: rank by them in order (metrics maximised, "
                "cost and *_s minimised; name:min/name:max to override)",
            )
            q.add_argument(
                "--pareto",
                action="store_true",
                help="print the non-dominated trials under --objectives",
            )
            q.add_argument(
                "--where",
                action="append",
                default=None,
                metavar="COND",
                help="e.g. retention>=0.98 (repeatable): >=, <=, >, <, ==, != on a "
                "metric, retention, cost, *_s or a config key",
            )
            q.set_defaults(func=commands.cmd_best)
        else:
            q.add_argument("--out", default="optical_report", help="output directory")
            q.add_argument(
                "--study",
                default=None,
                metavar="NAME",
                help="the report of a study: effects with confidence intervals, "
                "interaction plots, the gap closed",
            )
            q.set_defaults(func=commands.cmd_report)

    cl = sub.add_parser("cluster", help="a local multi-node Ray cluster on this machine")
    csub = cl.add_subparsers(dest="cluster_command", metavar="ACTION", required=True)
    for action, helptext, func in (
        ("up", "start a head and --nodes worker nodes (resource-capped)", commands.cmd_cluster_up),
        ("down", "stop exactly the processes `cluster up` started", commands.cmd_cluster_down),
        (
            "status",
            "node launchers, processes and registered nodes (exit 1 unless up)",
            commands.cmd_cluster_status,
        ),
    ):
        c = csub.add_parser(action, help=helptext)
        c.add_argument("--name", default="local", help="cluster name (default: local)")
        c.add_argument(
            "--state-dir",
            default=None,
            help="where the state file lives (default: ~/.optical-ray/clusters)",
        )
        c.set_defaults(func=func)
        if action == "up":
            c.add_argument(
                "--nodes", type=int, default=1, help="worker nodes besides the head (default 1)"
            )
            c.add_argument(
                "--cpus-per-node",
                type=int,
                default=2,
                help="logical CPUs per node (may exceed the cores; default 2)",
            )
            c.add_argument(
                "--gpus-per-node", type=int, default=0, help="GPUs each node advertises (default 0)"
            )
            c.add_argument(
                "--memory",
                default=None,
                help="Ray memory resource per node, e.g. 4G (default: RAM / nodes)",
            )
            c.add_argument(
                "--object-store-memory",
                default="200M",
                help="object store per node, e.g. 200M (at least 75M)",
            )
        elif action == "down":
            c.add_argument(
                "--keep-logs",
                action="store_true",
                help="keep the nodes' Ray temp dir (logs) instead of deleting it",
            )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``optical-ray`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except OpticalRayError as exc:
        from optical_ray.redaction import redact

        # One line, and never a secret: a message may quote a URI the user typed.
        print(f"optical-ray: error: {redact(' '.join(str(exc).split()))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("optical-ray: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `optical-ray ... | head`: the reader left, not an error
        sys.stderr.close()
        return 0
