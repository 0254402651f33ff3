"""Fuzz-style table of bad CLI inputs (configs, search spaces, URIs, data, models): each
must end with exit code 2 and exactly one line on stderr that names the bad value,
never a traceback, and never echo a secret. In-process and Ray-free, so the table stays
cheap to grow."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import pytest

from optical_ray.cli.parser import main

# An AWS-shaped key pair (the documented example values); the secret holds '/' as real
# ones do, which a naive user:password@ pattern misses.
KEY = "AKIAIOSFODNN7EXAMPLE"
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
CRED_S3 = f"s3://{KEY}:{SECRET}@bucket/x"

SPACE_BASE = "base: {train.stages: [distill]}\n"


@pytest.fixture(scope="module")
def env(tiny_world, tmp_path_factory) -> dict[str, str]:
    """Bad inputs on disk, built once: ``{placeholder: path}`` for the argv templates."""
    from optical_ray.config import from_flat
    from optical_ray.models.encoder import RetrievalModel

    d = tmp_path_factory.mktemp("fuzz")
    files = {
        "utf8": ("bad-utf8.yaml", b"name: run\ndistill: {epsilon: 0.1}  # \xff\xfe\n"),
        "dup": ("dup.yaml", b"distill:\n  epsilon: 0.1\nname: a\ndistill:\n  lr: 0.1\n"),
        "slashname": ("slash.yaml", b"name: a/b\n"),
        "credyaml": ("cred.yaml", f"storage:\n  uri: {CRED_S3}\n".encode()),
        "sp_eps": (
            "eps.yaml",
            (
                SPACE_BASE + "params:\n  distill.epsilon: {type: uniform, low: -1.0, high: 1.0}\n"
            ).encode(),
        ),
        "sp_steps": (
            "steps.yaml",
            (SPACE_BASE + "params:\n  distill.steps: {type: int, low: -5, high: 10}\n").encode(),
        ),
        "sp_bogus": (
            "bogus.yaml",
            (
                SPACE_BASE + "params:\n  distill.method: {type: "
                "categorical, choices: [ot, bogus]}\n"
            ).encode(),
        ),
        "sp_two": (
            "two.yaml",
            (
                SPACE_BASE + "params:\n  distill.weight: {type: uniform, "
                "low: 0.0, high: 2.0}\n  rank.batch_size: {type: int, low: 0, "
                "high: 8}\n"
            ).encode(),
        ),
        "sp_float_int": (
            "fint.yaml",
            (
                SPACE_BASE + "params:\n  distill.batch_size: {type: uniform, low: 4, high: 16}\n"
            ).encode(),
        ),
        "sp_dup": (
            "spdup.yaml",
            (
                SPACE_BASE + "params:\n  distill.lr: {type: loguniform, "
                "low: 1.0e-4, high: 1.0e-3}\n  distill.lr: {type: "
                "loguniform, low: 1.0e-3, high: 1.0e-2}\n"
            ).encode(),
        ),
        "sp_utf8": ("sputf8.yaml", SPACE_BASE.encode() + b"# caf\xe9\n"),
        "sp_objective": (
            "objective.yaml",
            (
                "base:\n  train.stages: [distill]\n  eval.pairs: ['{pair}']\n"
                "  sweep.objective: 'mean({lang}-en/map, {lang}-en_doc/map)'\n"
            ).encode(),
        ),
        "st_unknown": ("st-unknown.yaml", b"name: s\nfactors:\n  distill.foo: [1, 2]\n"),
        "st_bounds": (
            "st-bounds.yaml",
            b"name: s\nfactors:\n  distill.rank_batch_size: [-1, 8]\n"
            b"  eps: {key: distill.epsilon, levels: {a: 0.1, b: -1}}\n",
        ),
        "st_grid": ("st-grid.yaml", b"name: s\nseeds: 2\nfactors:\n  distill.method: [ot, none]\n"),
        "st_ref": (
            "st-ref.yaml",
            b"name: s\nreference: xq-en\nfactors:\n  distill.method: [ot, none]\n",
        ),
        "afile": ("afile", b"not a directory\n"),
    }
    out = {k: str(d / name) for k, (name, _) in files.items()}
    for name, data in files.values():
        (d / name).write_bytes(data)
    (d / "adir").mkdir()
    out["adir"] = str(d / "adir")
    out["world"] = str(tiny_world.root)
    out["answers"] = _no_shared_config(d / "answers")
    out["missing_yaml"] = str(d / "missing.yaml")

    # A saved model, then copies with the weights cut short or gone.
    cfg = from_flat({"data.root": str(tiny_world.root), "output_dir": str(d / "runs")})
    good = RetrievalModel.from_config(cfg).save(d / "model", config=cfg)
    trunc, gone = d / "trunc", d / "gone"
    for copy in (trunc, gone):
        shutil.copytree(good, copy)
    weights = (good / "model.safetensors").read_bytes()
    (trunc / "model.safetensors").write_bytes(weights[:1000])
    (gone / "model.safetensors").unlink()
    out.update(model=str(good), trunc=str(trunc), gone=str(gone))

    # A Hugging Face directory whose pytorch_model.bin is a pickle, not weights.
    pt = d / "ptbin"
    pt.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(good / name, pt / name)
    (pt / "pytorch_model.bin").write_bytes(pickle.dumps({"not": "weights"}))
    out["ptbin"] = str(pt)

    # Config homes ($XDG_CONFIG_HOME) whose state key file is damaged.
    for name, data in {
        "key_empty": b"",
        "key_blank": b"  \n",
        "key_nothex": b"zz" * 32,
        "key_short": b"ab" * 8,
    }.items():
        (d / name / "optical-ray").mkdir(parents=True)
        (d / name / "optical-ray" / "state.key").write_bytes(data)
        out[name] = str(d / name)
    out.update(_hostile_inputs(d, good, cfg))
    return out


def _bomb(levels: int) -> bytes:
    """A YAML alias bomb: nine aliases of nine aliases, ``levels`` deep (9**levels
    nodes once expanded, from a few hundred bytes)."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, levels + 1)]
    return ("\n".join(lines) + f"\nname: *a{levels}\n").encode()


def _flow_bomb(levels: int) -> str:
    """The same bomb as one flow sequence, for a ``key=value`` override."""
    items = ["&a0 [" + ", ".join(["x"] * 9) + "]"]
    items += [f"&a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, levels + 1)]
    return "[" + ", ".join(items) + "]"


def _hostile_inputs(d, good, cfg) -> dict[str, str]:
    """Model directories that ask to run their own code, storage that takes no writes or
    holds a broken Optuna database, alias bombs, a catalog, a collection with several
    problems (issue #33)."""
    import json
    import sqlite3

    from optical_ray.catalog import Catalog, TrialRecord
    from optical_ray.config import to_flat
    from optical_ray.tracking.trackers import open_study_storage

    out: dict[str, str] = {}
    # A saved model whose config.json names code of its own (modeling_evil.py beside
    # it writes a marker if it ever runs); a plain Hugging Face directory likewise; a
    # saved model whose tokenizer config does.
    marker = d / "remote-code-ran"
    for name, meta_file, drop_meta in (
        ("remote", "config.json", False),
        ("remote_hf", "config.json", True),
        ("remote_tok", "tokenizer_config.json", False),
    ):
        copy = d / name
        shutil.copytree(good, copy)
        if drop_meta:
            (copy / "optical_ray.json").unlink()
        meta = json.loads((copy / meta_file).read_text())
        meta["auto_map"] = {
            "AutoConfig": "configuration_evil.EvilConfig",
            "AutoModel": "modeling_evil.EvilModel",
        }
        if meta_file == "config.json":
            meta["model_type"] = "evil"  # unknown to transformers: it would prompt
        (copy / meta_file).write_text(json.dumps(meta))
        for module in ("configuration_evil", "modeling_evil"):
            (copy / f"{module}.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
        out[name] = str(copy)
    out["marker"] = str(marker)

    # Storage holding an optuna.db of random bytes, and one of another Optuna's schema.
    for name in ("brokendb", "foreigndb"):
        (d / name).mkdir()
    (d / "brokendb" / "optuna.db").write_bytes(bytes(range(256)) * 16)
    open_study_storage(f"sqlite:///{d / 'foreigndb' / 'optuna.db'}")
    with sqlite3.connect(d / "foreigndb" / "optuna.db") as db:
        db.execute("UPDATE alembic_version SET version_num = 'v99.0.0'")
    out.update(brokendb=str(d / "brokendb"), foreigndb=str(d / "foreigndb"))

    (d / "bomb.yaml").write_bytes(_bomb(6))
    out["bomb"] = str(d / "bomb.yaml")

    # A catalog: the best trial's checkpoint is the model that asks to run code.
    catalog = Catalog(d / "catalog_store", spool_dir=d / "spool", auto_compact=None)
    flat = to_flat(cfg)
    flat["pair"] = "en-xa"
    for i, (value, ckpt) in enumerate([(0.4, d / "remote"), (0.3, good)]):
        catalog.append(
            TrialRecord(
                "exp",
                "en-xa",
                f"t{i}",
                config=flat,
                best_metrics={"map": value, "en-xa/map": value},
                checkpoint_uri=str(ckpt),
            )
        )
    out["catalog"] = str(d / "catalog_store")

    # A collection with three problems in three files.
    col = d / "badcol"
    col.mkdir()
    (col / "queries.tsv").write_bytes(b"q1\tone\nq2\tt\xffwo\n")
    (col / "corpus.jsonl").write_text('{"docid": "d1", "text": "doc"}\n{"docid": \n')
    (col / "qrels.txt").write_text("q1 0 d1\n")
    out["badcol"] = str(col)
    return out


def _no_shared_config(storage) -> str:
    """A catalog where swa-en and hau-en each ran one config, not the same one."""
    from optical_ray.catalog import Catalog, TrialRecord
    from optical_ray.config import from_flat, to_flat

    catalog = Catalog(storage, spool_dir=storage / "spool")
    for pair, lr in (("swa-en", 1e-4), ("hau-en", 2e-4)):
        config = to_flat(from_flat({"pair": pair, "distill.lr": lr}))
        catalog.append(
            TrialRecord(f"e-{pair}", pair, "t0", config=config, best_metrics={"map": 0.5})
        )
    return str(storage)


TRAIN = ["train", "data.root={world}", "pair=en-xc", "eval.pairs=[en-xc]", "output_dir={tmp}/runs"]

# (id, argv template, substrings the one stderr line must hold)
ROWS = [
    # --- config files
    (
        "config-not-utf8",
        ["config", "--config", "{utf8}"],
        ["bad-utf8.yaml", "not UTF-8", "0xff", "line 2"],
    ),
    (
        "config-duplicate-key",
        ["config", "--config", "{dup}"],
        ["dup.yaml", "duplicate key 'distill'", "line 4"],
    ),
    ("config-is-a-directory", ["config", "--config", "{adir}"], ["adir", "is a directory"]),
    (
        "config-missing",
        ["config", "--config", "{missing_yaml}"],
        ["missing.yaml", "does not exist"],
    ),
    # --- names that would escape output_dir
    (
        "name-override",
        ["config", "name=../escaped"],
        ["name: got '../escaped'", "one path segment"],
    ),
    ("name-in-yaml", ["config", "--config", "{slashname}"], ["name: got 'a/b'"]),
    ("train-name-flag", ["train", "--name", "../escaped"], ["'../escaped'"]),
    (
        "sweep-name-flag",
        ["sweep", "--space", "search_spaces/default.yaml", "--pairs", "en-xa", "--name", ".."],
        ["name: got '..'"],
    ),
    # --- credentials in URIs: refused, secret never echoed
    (
        "config-storage-uri-creds",
        ["config", f"storage.uri={CRED_S3}"],
        ["storage.uri", "s3://***@bucket/x", "AWS"],
    ),
    (
        "config-endpoint-creds",
        ["config", f"storage.endpoint=http://user:{SECRET}@host:9000"],
        ["storage.endpoint", "http://***@host:9000"],
    ),
    (
        "config-yaml-creds",
        ["config", "--config", "{credyaml}"],
        ["storage.uri", "s3://***@bucket/x"],
    ),
    ("train-storage-creds", ["train", "--storage", CRED_S3], ["storage.uri", "s3://***@bucket/x"]),
    (
        "train-teacher-creds",
        ["train", f"train.teacher=s3://{KEY}:{SECRET}@bucket/teacher"],
        ["train.teacher", "s3://***@bucket/teacher"],
    ),
    (
        "best-storage-creds",
        ["best", "--all", "--storage", CRED_S3],
        ["s3://***@bucket/x", "AWS_PROFILE"],
    ),
    (
        "report-storage-creds",
        ["report", "--storage", CRED_S3, "--out", "{tmp}/rep"],
        ["s3://***@bucket/x"],
    ),
    (
        "best-endpoint-creds",
        [
            "best",
            "--all",
            "--storage",
            "s3://bucket/x",
            "--s3-endpoint",
            f"http://{KEY}:{SECRET}@127.0.0.1:9",
        ],
        ["S3 endpoint", "http://***@127.0.0.1:9"],
    ),
    (
        "evaluate-checkpoint-creds",
        ["evaluate", "--checkpoint", f"s3://{KEY}:{SECRET}@bucket/run/model"],
        ["s3://***@bucket/run/model"],
    ),
    (
        "sweep-storage-creds",
        [
            "sweep",
            "--space",
            "search_spaces/default.yaml",
            "--pairs",
            "en-xa",
            "--storage",
            CRED_S3,
        ],
        ["s3://***@bucket/x"],
    ),
    (
        "sweep-address-creds",
        [
            "sweep",
            "--space",
            "search_spaces/default.yaml",
            "--pairs",
            "en-xa",
            "--address",
            f"ray://admin:{SECRET}@head:10001",
        ],
        ["--address", "ray://***@head:10001"],
    ),
    (
        "storage-query-creds",
        ["best", "--all", "--storage", f"s3://bucket/x?access_key={KEY}&secret_key={SECRET}"],
        ["storage URI", "secret_key=***"],
    ),
    # --- search spaces checked against the config's limits before anything starts
    (
        "space-epsilon-negative",
        ["sweep", "--space", "{sp_eps}", "--pairs", "en-xa"],
        ["params.distill.epsilon", "low", "-1.0", "must be > 0"],
    ),
    (
        "space-int-negative",
        ["sweep", "--space", "{sp_steps}", "--pairs", "en-xa"],
        ["params.distill.steps", "-5", "must be >= 0"],
    ),
    (
        "space-bogus-choice",
        ["sweep", "--space", "{sp_bogus}", "--pairs", "en-xa"],
        ["params.distill.method", "'bogus'"],
    ),
    (
        "space-two-problems",
        ["sweep", "--space", "{sp_two}", "--pairs", "en-xa"],
        ["2 errors", "params.distill.weight: high: got 2.0", "params.rank.batch_size: low: got 0"],
    ),
    (
        "space-fractions-for-int",
        ["sweep", "--space", "{sp_float_int}", "--pairs", "en-xa"],
        ["params.distill.batch_size", "use type int"],
    ),
    (
        "space-duplicate-key",
        ["sweep", "--space", "{sp_dup}", "--pairs", "en-xa"],
        ["spdup.yaml", "duplicate key 'distill.lr'", "line 4"],
    ),
    (
        "space-not-utf8",
        ["sweep", "--space", "{sp_utf8}", "--pairs", "en-xa"],
        ["sputf8.yaml", "not UTF-8"],
    ),
    (
        "space-is-a-directory",
        ["sweep", "--space", "{adir}", "--pairs", "en-xa"],
        ["adir", "is a directory"],
    ),
    # --- trusted answers: the objective, promotion, finalists, one config across pairs
    (
        "sweep-objective-task-missing",
        ["sweep", "--space", "{sp_objective}", "--pairs", "swa-en", "--storage", "{tmp}/st"],
        ["sweep.objective: swa-en has no task swa-en_doc; its tasks: swa-en"],
    ),
    (
        "sweep-objective-bad-metric",
        [
            "sweep",
            "--space",
            "search_spaces/default.yaml",
            "--pairs",
            "en-xa",
            "--objective",
            "mean(map, en-en/mapp)",
        ],
        ["sweep.objective", "metric 'mapp'", "map, ndcg@K"],
    ),
    (
        "sweep-promotion-alpha-one",
        [
            "sweep",
            "--space",
            "search_spaces/default.yaml",
            "--pairs",
            "en-xa",
            "--promotion-alpha",
            "1.5",
        ],
        ["sweep.promotion_alpha: got 1.5, must be < 1"],
    ),
    (
        "config-promotion-alpha-zero",
        ["config", "sweep.promotion_alpha=0"],
        ["sweep.promotion_alpha: got 0", "must be > 0"],
    ),
    (
        "sweep-finalists-over-samples",
        [
            "sweep",
            "--space",
            "search_spaces/default.yaml",
            "--pairs",
            "en-xa",
            "--samples",
            "2",
            "--finalists",
            "3",
        ],
        ["sweep.finalists: got 3, but a pair runs only 2 trials"],
    ),
    (
        "best-across-pairs-nothing-shared",
        ["best", "--storage", "{answers}", "--across-pairs", "swa-en,hau-en"],
        ["--across-pairs: swa-en, hau-en share no config"],
    ),
    (
        "best-across-pairs-one-pair",
        ["best", "--storage", "{answers}", "--across-pairs", "swa-en"],
        ["--across-pairs", "at least two pairs"],
    ),
    (
        "best-across-pairs-with-pair",
        ["best", "--storage", "{answers}", "--across-pairs", "swa-en,hau-en", "--pair", "swa-en"],
        ["best --across-pairs: --pair cannot go with it"],
    ),
    # --- batch sizing: a memory budget must be a size
    (
        "train-dry-run-memory-budget-banana",
        ["train", "--dry-run", "--memory-budget", "banana"],
        ["--memory-budget: got 'banana'", "expected a size such as 2G, 512M"],
    ),
    (
        "train-memory-budget-without-dry-run",
        ["train", "--memory-budget", "8GiB"],
        ["--memory-budget and --format go with --dry-run"],
    ),
    (
        "sweep-memory-budget-banana",
        [
            "sweep",
            "--space",
            "search_spaces/default.yaml",
            "--pairs",
            "en-xa",
            "--memory-budget",
            "banana",
        ],
        ["--memory-budget: got 'banana'", "expected a size such as 2G, 512M"],
    ),
    (
        "config-memory-budget-negative",
        ["config", "sweep.memory_budget=-3G"],
        ["sweep.memory_budget: got '-3G'", "expected a size"],
    ),
    # --- study designs refused before anything runs
    (
        "study-unknown-factor-key",
        ["study", "--design", "{st_unknown}", "--pairs", "en-xc"],
        ["st-unknown.yaml", "factors.distill.foo: unknown config key 'distill.foo'"],
    ),
    (
        "study-levels-out-of-bounds",
        ["study", "--design", "{st_bounds}", "--pairs", "en-xc"],
        [
            "2 errors",
            "factors.distill.rank_batch_size: level '-1'",
            "must be >= 0",
            "factors.eps: level 'b' (distill.epsilon=-1)",
        ],
    ),
    (
        "study-more-runs-than-allowed",
        ["study", "--design", "{st_grid}", "--pairs", "en-xc,xc-en", "--max-runs", "3"],
        ["2 cells x 2 seeds x 2 pair(s) = 8 runs", "more than --max-runs 3"],
    ),
    (
        "study-missing-reference",
        [
            "study",
            "--design",
            "{st_ref}",
            "--pairs",
            "en-xc",
            "--storage",
            "{tmp}/store",
            "data.root={world}",
            "output_dir={tmp}/runs",
        ],
        ["reference xq-en has no evaluation data", "pairs with evaluation data: en-en,", "en-xc"],
    ),
    (
        "study-seeds-zero",
        ["study", "--design", "{st_grid}", "--pairs", "en-xc", "--seeds", "0"],
        ["--seeds: got 0"],
    ),
    (
        "report-unknown-study",
        ["report", "--study", "nope", "--storage", "{tmp}/store", "--out", "{tmp}/rep"],
        ["no study 'nope'", "studies there: none"],
    ),
    # --- files where directories belong
    (
        "train-output-dir-file",
        ["train", "output_dir={afile}"],
        ["output_dir", "afile", "is a file"],
    ),
    (
        "train-output-dir-under-file",
        ["train", "output_dir={afile}/sub"],
        ["afile/sub", "is a file"],
    ),
    (
        "evaluate-out-file",
        ["evaluate", "--checkpoint", "{model}", "--out", "{afile}"],
        ["--out", "afile"],
    ),
    (
        "synth-out-under-file",
        ["data", "synth", "--out", "{afile}/w", "--scale", "tiny"],
        ["--out", "afile"],
    ),
    ("validate-a-file", ["data", "validate", "{afile}"], ["afile", "is a file", "directory"]),
    (
        "synth-existing-world",
        ["data", "synth", "--out", "{world}", "--scale", "tiny"],
        ["already holds a world", "--overwrite"],
    ),
    # --- saved models missing, cut short, or not weights
    ("evaluate-truncated-model", ["evaluate", "--checkpoint", "{trunc}"], ["trunc", "truncated"]),
    (
        "evaluate-missing-weights",
        ["evaluate", "--checkpoint", "{gone}"],
        ["gone", "model.safetensors"],
    ),
    (
        "train-truncated-teacher",
        [*TRAIN, "train.stages=[distill]", "train.teacher={trunc}", "distill.steps=1"],
        ["trunc", "truncated"],
    ),
    (
        "train-pickle-not-weights",
        [*TRAIN, "model.name_or_path={ptbin}", "rank.steps=1"],
        ["model.name_or_path", "ptbin", "pytorch_model.bin", "not plain weights"],
    ),
    # --- model directories that ask to run their own code (auto_map): refused up front
    (
        "evaluate-remote-code-checkpoint",
        ["evaluate", "--checkpoint", "{remote}"],
        ["{remote}", "asks to run code", "auto_map in config.json", "trust_remote_code=False"],
    ),
    (
        "train-remote-code-model",
        [*TRAIN, "model.name_or_path={remote_hf}", "rank.steps=1"],
        ["{remote_hf}", "asks to run code", "modeling_evil.EvilModel"],
    ),
    (
        "train-remote-code-teacher",
        [*TRAIN, "train.stages=[distill]", "train.teacher={remote}", "distill.steps=1"],
        ["{remote}", "asks to run code"],
    ),
    (
        "train-remote-code-tokenizer",
        [*TRAIN, "model.name_or_path={remote_tok}", "rank.steps=1"],
        ["{remote_tok}", "auto_map in tokenizer_config.json"],
    ),
    (
        "evaluate-best-remote-code-checkpoint",
        ["evaluate", "--best", "--storage", "{catalog}"],
        ["{remote}", "asks to run code"],
    ),
    (
        "evaluate-best-remote-code-baseline",
        ["evaluate", "--best", "--storage", "{catalog}", "--baselines", "mine={remote_tok}"],
        ["{remote_tok}", "asks to run code", "auto_map in tokenizer_config.json"],
    ),
    # --- storage that takes no writes: refused before Ray or training starts
    (
        "train-storage-not-a-directory",
        ["train", "--storage", "{afile}/store", *TRAIN[1:], "rank.steps=1"],
        ["{afile}", "cannot be written", "not a directory"],
    ),
    (
        "sweep-storage-not-a-directory",
        [
            "sweep",
            "--space",
            "search_spaces/default.yaml",
            "--pairs",
            "en-xa",
            "--storage",
            "{afile}/s",
        ],
        ["{afile}", "cannot be written", "not a directory"],
    ),
    (
        "evaluate-best-storage-not-a-directory",
        ["evaluate", "--best", "--storage", "{afile}/store"],
        ["{afile}", "cannot be written"],
    ),
    # --- an optuna.db that is not one, or another Optuna's
    (
        "sweep-broken-optuna-db",
        [
            "sweep",
            "--space",
            "search_spaces/default.yaml",
            "--pairs",
            "en-xa",
            "--storage",
            "{brokendb}",
        ],
        ["{brokendb}/optuna.db", "not a database", "move it aside"],
    ),
    (
        "sweep-foreign-optuna-schema",
        [
            "sweep",
            "--space",
            "search_spaces/default.yaml",
            "--pairs",
            "en-xa",
            "--storage",
            "{foreigndb}",
        ],
        ["{foreigndb}/optuna.db", "another Optuna version's schema"],
    ),
    (  # no driver installed here; with one, the connection is refused: one line either way
        "sweep-optuna-server-unusable",
        [
            "sweep",
            "--space",
            "search_spaces/default.yaml",
            "--pairs",
            "en-xa",
            "--optuna-storage",
            "postgresql://127.0.0.1:9/optuna",
        ],
        ["Optuna storage postgresql://127.0.0.1:9/optuna", "--optuna-storage"],
    ),
    # --- YAML alias bombs (9**6 nodes from 300 bytes): refused before they expand
    ("config-alias-bomb", ["config", "--config", "{bomb}"], ["bomb.yaml", "alias bomb"]),
    (
        "space-alias-bomb",
        ["sweep", "--space", "{bomb}", "--pairs", "en-xa"],
        ["bomb.yaml", "alias bomb"],
    ),
    (
        "override-alias-bomb",
        ["config", "name=" + _flow_bomb(6)],
        ["name:", "alias bomb"],
    ),
    # --- catalog queries
    (
        "best-unrecorded-second-objective",
        ["best", "--pair", "en-xa", "--storage", "{catalog}", "--objectives", "map,ndcg@10"],
        ["'ndcg@10' was never recorded", "recorded metrics: map"],
    ),
    # --- every problem of a collection, not the first
    ("validate-every-problem", ["data", "validate", "{badcol}"], ["3 problem(s)", "badcol"]),
    # --- one line, not two (the second pointed to the AWS credential chain)
    (
        "train-tracking-db-password",
        ["train", "--tracking", f"mlflow=postgresql://u:{SECRET}@db/mlflow"],
        ["Config is not well-formed: train.tracking[0]", "PGPASSWORD"],
    ),
    # --- devices: GPUs this machine does not have (a sweep refuses them too)
    (
        "train-gpus-without-cuda",
        ["train", "--gpus-per-worker", "1", "--storage", "{tmp}/store"],
        ["scaling.gpus_per_worker: got 1", "no CUDA device"],
    ),
    (
        "train-precision-unknown",
        ["train", "train.precision=fp8"],
        ["train.precision", "fp8", "bf16"],
    ),
    (
        "train-nccl-without-gpus",
        ["train", "scaling.backend=nccl"],
        ["scaling.backend: got 'nccl'", "gloo"],
    ),
]


SWEEP = ["sweep", "--space", "search_spaces/default.yaml", "--pairs", "en-xa"]
STORE = ["--storage", "{tmp}/store"]

# (id, environment, argv template, substrings the one stderr line must hold): inputs
# that come from the environment, such as the state key and its file.
ENV_ROWS = [
    (
        "state-key-env-short",
        {"OPTICAL_RAY_STATE_KEY": "short"},
        [*SWEEP, *STORE, "--resume"],
        ["$OPTICAL_RAY_STATE_KEY holds 5 bytes", "at least 32"],
    ),
    (
        "state-key-env-blank",
        {"OPTICAL_RAY_STATE_KEY": " " * 40},
        [*SWEEP, *STORE],
        ["$OPTICAL_RAY_STATE_KEY holds 0 bytes", "at least 32"],
    ),
    (
        "state-key-file-empty",
        {"XDG_CONFIG_HOME": "{key_empty}"},
        [*SWEEP, *STORE, "--resume"],
        ["{key_empty}/optical-ray/state.key is empty", "delete it"],
    ),
    (
        "state-key-file-blank",
        {"XDG_CONFIG_HOME": "{key_blank}"},
        [*SWEEP, *STORE],
        ["{key_blank}/optical-ray/state.key is empty"],
    ),
    (
        "state-key-file-not-hex",
        {"XDG_CONFIG_HOME": "{key_nothex}"},
        [*SWEEP, *STORE, "--resume"],
        ["{key_nothex}/optical-ray/state.key is not hex", "OPTICAL_RAY_STATE_KEY"],
    ),
    (
        "state-key-file-short",
        {"XDG_CONFIG_HOME": "{key_short}"},
        [*SWEEP, *STORE, "--resume", "--trust-storage"],
        ["{key_short}/optical-ray/state.key holds a 8-byte key"],
    ),
]


@pytest.mark.parametrize(
    "environ, argv, needles", [r[1:] for r in ENV_ROWS], ids=[r[0] for r in ENV_ROWS]
)
def test_bad_environment_is_one_line_exit_2(
    environ, argv, needles, env, tmp_path, capsys, monkeypatch
) -> None:
    monkeypatch.delenv("OPTICAL_RAY_STATE_KEY", raising=False)
    for name, value in environ.items():
        monkeypatch.setenv(name, value.format(tmp=tmp_path, **env))
    test_bad_input_is_one_line_exit_2(argv, needles, env, tmp_path, capsys)
    assert not (tmp_path / "store").exists()  # refused before anything was written
    for value in environ.values():  # a key is never echoed
        if value.strip() and "{" not in value:
            assert value not in capsys.readouterr().err


@pytest.mark.parametrize("argv, needles", [(a, n) for _, a, n in ROWS], ids=[r[0] for r in ROWS])
def test_bad_input_is_one_line_exit_2(argv, needles, env, tmp_path, capsys) -> None:
    args = [a.format(tmp=tmp_path, **env) for a in argv]
    code = main(args)
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, (code, err)
    assert len(lines) == 1, err
    assert "Traceback" not in out + err
    assert SECRET not in out + err
    for needle in needles:
        assert needle.format(**env) in lines[0], (needle, lines[0])


def test_a_model_directory_never_runs_its_own_code(env, monkeypatch) -> None:
    """Even a user who would answer transformers' prompt with 'y' runs nothing: every
    loader refuses the directory before transformers can ask."""
    import builtins

    from optical_ray.config import from_flat
    from optical_ray.errors import DataError
    from optical_ray.models.encoder import RetrievalModel

    monkeypatch.setattr(builtins, "input", lambda *a, **k: "y")
    loads = [
        lambda: RetrievalModel.load(env["remote"]),
        lambda: RetrievalModel.load(env["remote_tok"]),
        lambda: RetrievalModel.from_config(from_flat({"model.name_or_path": env["remote_hf"]})),
    ]
    for load in loads:
        with pytest.raises(DataError, match="asks to run code shipped with the model"):
            load()
    assert not Path(env["marker"]).exists()


def test_the_table_is_large_enough() -> None:
    assert len(ROWS) >= 20
