"""The sweep's best, checked on test: ``optical-ray evaluate --best``.

For each pair, the best trial of the catalog (by its dev metric) is evaluated on the
test split next to the zero-shot teacher it was distilled from and any named
baselines (a hand-set run's directory, a checkpoint or model URI), all on the same
queries; the teacher is also evaluated on the reference pair (its own language,
``en-en``, or e.g. a high-resource ``deu-en``) that the gap is measured to. Then:

* the per-query metrics of every system go to ``<storage>/evaluations/<pair>/<split>/
  <stamp>-<id>.parquet`` (one row per system and query), and a pointer to that file
  beside the trial's records in the catalog,
  ``<storage>/catalog/<experiment>/<pair>/evaluation-<split>-<stamp>.json`` (catalog
  readers read ``part-*`` files only), so ``optical-ray report`` finds it;
* the gap tables (:func:`optical_ray.evaluation.compare.gap_report`: gap, gap closed, paired
  randomisation tests over queries, Holm-adjusted) are printed: every system against
  the zero-shot teacher, and the best against each baseline.

A baseline is compared on its own test set only if that is the best's: the collection
its saved config names for the pair must hold the same queries, judgements and
documents (:func:`test_set_id`), or the evaluation is refused, naming both sets.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import uuid
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Mapping, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from optical_ray.evaluation.compare import GapReport, gap_report
from optical_ray.config import Config, from_dict, from_flat
from optical_ray.errors import ConfigError, DataError, StorageError
from optical_ray.evaluation.ranking import EvalResult

__all__ = [
    "EVALUATIONS_DIR",
    "ZERO_SHOT",
    "BEST",
    "Baseline",
    "PairEvaluation",
    "evaluate_best",
    "parse_baselines",
    "test_set_id",
    "load_evaluations",
]

EVALUATIONS_DIR = "evaluations"
ZERO_SHOT = "zero-shot"
BEST = "best"
_POINTER = "evaluation-"


@dataclass(frozen=True)
class Baseline:
    """A named system to compare with: ``uri`` is a run directory (holding
    ``model/``), a checkpoint (likewise) or a saved model directory, local or ``s3://``."""

    name: str
    uri: str


def parse_baselines(items: Sequence[str] | None) -> list[Baseline]:
    """``NAME=URI`` or ``URI`` (named after its last path part) per item."""
    out: list[Baseline] = []
    for item in items or []:
        name, sep, uri = item.partition("=")
        if not sep or "://" in name:
            uri, name = item, Path(item.rstrip("/")).name or item
            if name == "model":  # a run's model dir: name it after the run
                name = Path(item.rstrip("/")).parent.name or item
        if not uri or not name:
            raise ConfigError(f"--baselines: got {item!r}, expected NAME=URI or a URI")
        out.append(Baseline(name.strip(), uri.strip()))
    names = [b.name for b in out]
    dup = sorted({n for n in names if names.count(n) > 1} | ({ZERO_SHOT, BEST} & set(names)))
    if dup:
        raise ConfigError(
            f"--baselines: name(s) {', '.join(dup)} used twice or reserved "
            f"({ZERO_SHOT}, {BEST}); name them NAME=URI"
        )
    return out


def test_set_id(collection: Any) -> str:
    """A fingerprint of an evaluation set: its judged queries (ids and texts), their
    judgements and its document ids. Equal ids: the same test."""
    h = hashlib.sha1()
    for qid in sorted(collection.qrels):
        h.update(f"q\t{qid}\t{collection.queries.get(qid, '')}\n".encode())
        for did, rel in sorted(collection.qrels[qid].items()):
            h.update(f"r\t{did}\t{rel}\n".encode())
    for doc in collection.corpus:
        h.update(f"d\t{doc.docid}\n".encode())
    return h.hexdigest()[:16]


def _describe(cfg: Config, pair: str, split: str, collection: Any, ident: str) -> str:
    src = cfg.data.eval.get(pair)
    where = (
        f"{src.format} {src.path or '(shared data folder)'}"
        if src is not None
        else f"{cfg.data.root or 'synthetic world'}/eval/{pair}/{split}"
    )
    n_q = sum(1 for q in collection.qrels if collection.qrels[q])
    return f"{pair} {split} from {where} ({n_q} queries, id {ident})"


def _collection(cfg: Config, pair: str, split: str, what: str) -> Any:
    """``pair``'s collection as ``cfg`` names it. A config whose evaluation data are
    explicit sources (real data) but that has none for ``pair`` is refused: the
    fallback, a synthetic world, would be a different test altogether."""
    from optical_ray.data.sources import eval_collection

    if cfg.data.root is None and cfg.data.eval and pair not in cfg.data.eval:
        raise DataError(
            f"{what}: its config has no data.eval source for {pair} (it has "
            f"{', '.join(sorted(cfg.data.eval))})"
        )
    return eval_collection(cfg, pair, split)


# --------------------------------------------------------------------------- models


def _model_dir(uri: str, what: str, endpoint: str | None) -> Path:
    """A local saved-model directory for ``uri`` (itself, or its ``model/``); one-line
    :class:`DataError` naming the URI when it no longer exists."""
    from optical_ray.models.remote import refuse_remote_code
    from optical_ray.storage import local_copy

    try:
        local = local_copy(uri, endpoint=endpoint)
    except StorageError as exc:
        raise DataError(f"{what} {uri}: not found ({exc})") from None
    for candidate in (local, local / "model"):
        if (candidate / "optical_ray.json").is_file():
            # a checkpoint named by a record in shared storage: refused before anything
            # is evaluated when it asks to run its own code
            refuse_remote_code(candidate)
            return candidate
    if not local.exists():
        raise DataError(f"{what} {uri} does not exist (deleted?); nothing to evaluate")
    raise DataError(
        f"{what} {uri}: not a run directory, checkpoint or saved model "
        "(no optical_ray.json in it or in its model/)"
    )


def _saved_config(model_dir: Path) -> Config:
    saved = json.loads((model_dir / "optical_ray.json").read_text(encoding="utf-8"))
    return from_dict(saved.get("config") or {}, source=str(model_dir))


def _teacher(cfg: Config) -> Any:
    """The zero-shot teacher a trial distilled from: ``train.teacher``, else the
    configured model."""
    from optical_ray.models.encoder import RetrievalModel

    if cfg.train.teacher:
        return RetrievalModel.from_config(from_flat({"model.name_or_path": cfg.train.teacher}, cfg))
    return RetrievalModel.from_config(cfg)


# --------------------------------------------------------------------------- results


@dataclass
class PairEvaluation:
    """One pair's test evaluation: every system's results (``{system: {pair:
    EvalResult}}``), the gap report against zero-shot, one per baseline, and where
    the per-query values were written."""

    pair: str
    split: str
    reference_pair: str
    results: dict[str, dict[str, EvalResult]]
    systems: dict[str, str]  # name -> what it is (checkpoint URI, model)
    test_set: str
    record: dict[str, Any] = field(default_factory=dict)
    uri: str | None = None
    pointer: str | None = None

    @cached_property
    def reports(self) -> list[GapReport]:
        """Gap tables: all systems vs zero-shot, then the best vs each baseline
        (computed once: the randomisation tests are the slow part)."""
        out = [gap_report(self.results, baseline=ZERO_SHOT, reference_pair=self.reference_pair)]
        ref = {ZERO_SHOT: {self.reference_pair: self.results[ZERO_SHOT][self.reference_pair]}}
        for name in self.results:
            if name in (ZERO_SHOT, BEST):
                continue
            sub = {name: self.results[name], BEST: self.results[BEST], **ref}
            out.append(
                gap_report(
                    sub,
                    baseline=name,
                    reference_pair=self.reference_pair,
                    reference_system=ZERO_SHOT,
                )
            )
        return out

    def header(self) -> str:
        r = self.record
        hp = dict(r.get("hyperparameters") or {})
        if hp.get("method") not in (None, "ot"):
            hp.pop("epsilon", None)  # Sinkhorn's knob: unused by the other methods
        knobs = ", ".join(f"{k}={v}" for k, v in hp.items() if v is not None)
        return (
            f"test set {self.test_set}: best = trial {r.get('trial_id')} of "
            f"{r.get('experiment')} (dev {r.get('metric')} {r.get('value', float('nan')):.4f}"
            f"{'; ' + knobs if knobs else ''})"
        )

    def to_text(self) -> str:
        parts = [self.header()]
        for rep in self.reports:
            parts.append(f"-- vs {rep.baseline}\n{rep.to_text()}")
        if self.uri:
            parts.append(f"per-query metrics: {self.uri}")
        return "\n\n".join(parts)

    def to_markdown(self) -> str:
        parts = [f"### {self.pair}: the best on {self.split}", "", self.header(), ""]
        for rep in self.reports:
            parts += [f"#### vs {rep.baseline}", "", rep.to_markdown()]
        if self.uri:
            parts.append(f"Per-query metrics: `{self.uri}`")
        return "\n".join(parts) + "\n"


def _per_query_table(ev: PairEvaluation, metrics: Sequence[str]) -> pa.Table:
    rows: dict[str, list[Any]] = {"system": [], "source": [], "pair": [], "qid": []}
    rows.update({m: [] for m in metrics})
    for system, pairs in ev.results.items():
        for pair, res in pairs.items():
            for qid, values in res.per_query.items():
                rows["system"].append(system)
                rows["source"].append(ev.systems.get(system, ""))
                rows["pair"].append(pair)
                rows["qid"].append(qid)
                for m in metrics:
                    rows[m].append(values.get(m))
    meta = {
        "pair": ev.pair,
        "split": ev.split,
        "reference_pair": ev.reference_pair,
        "test_set": ev.test_set,
        "record": ev.record,
        "metrics": list(metrics),
    }
    schema = pa.schema(
        [(c, pa.string()) for c in ("system", "source", "pair", "qid")]
        + [(m, pa.float64()) for m in metrics],
        metadata={"optical_ray.evaluation": json.dumps(meta, default=str)},
    )
    return pa.Table.from_pydict(rows, schema=schema)


def _write(store: Any, ev: PairEvaluation, metrics: Sequence[str]) -> None:
    """The per-query Parquet file, then its pointer in the catalog (in that order: a
    pointer never names a file that is not there)."""
    from optical_ray.catalog.records import CATALOG_DIR, encode_name

    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    ident = uuid.uuid4().hex[:12]
    rel = f"{EVALUATIONS_DIR}/{ev.pair}/{ev.split}/{stamp}-{ident}.parquet"
    sink = pa.BufferOutputStream()
    pq.write_table(_per_query_table(ev, metrics), sink, compression="zstd")
    ev.uri = store.write_bytes(rel, sink.getvalue().to_pybytes())
    pointer = {
        "kind": "evaluation",
        "pair": ev.pair,
        "split": ev.split,
        "per_query": rel,
        "uri": ev.uri,
        "test_set": ev.test_set,
        "reference_pair": ev.reference_pair,
        "record_id": ev.record.get("record_id"),
        "trial_id": ev.record.get("trial_id"),
        "systems": ev.systems,
        "means": {s: {p: r.metrics for p, r in pairs.items()} for s, pairs in ev.results.items()},
        "created_at": stamp,
    }
    exp = encode_name(str(ev.record.get("experiment") or "unknown"))
    prel = f"{CATALOG_DIR}/{exp}/{ev.pair}/{_POINTER}{ev.split}-{stamp}-{ident}.json"
    ev.pointer = store.write_bytes(prel, (json.dumps(pointer, indent=1) + "\n").encode())


# --------------------------------------------------------------------------- evaluate


def evaluate_best(
    storage: Any = "optical_runs",
    *,
    pairs: Sequence[str] | None = None,
    split: str = "test",
    baselines: Sequence[Baseline | str] = (),
    metric: str = "map",
    mode: str = "max",
    reference_pair: str | None = None,
    experiment: str | None = None,
    endpoint: str | None = None,
    write: bool = True,
) -> list[PairEvaluation]:
    """Evaluate each pair's best checkpoint (by ``metric`` in the catalog of
    ``storage``) on ``split`` next to the zero-shot teacher and ``baselines``; write
    the per-query values and a catalog pointer (``write``); return one
    :class:`PairEvaluation` per pair (``.to_text()`` prints the gap tables).

    ``pairs`` defaults to every pair with records. ``reference_pair`` (default
    ``en-en``, the teacher's language) is what the gap is measured to; the teacher is
    evaluated on it. A baseline applies to the pair its saved config names.
    One-line errors: a pair without records (:class:`StorageError`, listing those
    with), a deleted checkpoint (:class:`DataError` naming its URI), a baseline whose
    test set is not the best's (:class:`ConfigError` naming both)."""
    from optical_ray.catalog import Catalog, best_config
    from optical_ray.evaluation.ranking import evaluate_pairs
    from optical_ray.models.encoder import RetrievalModel
    from optical_ray.storage import as_storage, resolve_storage

    if split not in ("dev", "test"):
        raise ConfigError(f"--split: got {split!r}, expected dev or test")
    store = resolve_storage(storage, endpoint) if isinstance(storage, str) else as_storage(storage)
    if write:  # the results are written after every evaluation: fail before them
        store.check_writable()
    catalog = Catalog(store)
    known = catalog.pairs(experiment)
    pairs = list(pairs or known)
    if not known:
        raise StorageError(
            f"no trial records in {store.where()}; run a sweep first or check --storage"
        )
    missing = [p for p in pairs if p not in known]
    if missing:
        raise StorageError(
            f"no records for pair(s) {', '.join(missing)} in {store.where()}; "
            f"pairs with records: {', '.join(known)}"
        )
    named = [b if isinstance(b, Baseline) else parse_baselines([b])[0] for b in baselines]
    base_models = {b.name: _model_dir(b.uri, f"baseline {b.name!r}:", endpoint) for b in named}
    base_cfgs = {name: _saved_config(d) for name, d in base_models.items()}
    stray = [n for n, c in base_cfgs.items() if c.pair not in pairs]
    if stray:
        raise ConfigError(
            "--baselines: "
            + "; ".join(
                f"{n} was trained for {base_cfgs[n].pair}, not one of {', '.join(pairs)}"
                for n in stray
            )
        )
    out: list[PairEvaluation] = []
    for pair in pairs:
        rec = best_config(pair, metric, store, 1, mode, experiment=experiment)[0]
        if not rec.checkpoint_uri:
            raise DataError(
                f"the best trial of {pair} ({rec.trial_id}) has no checkpoint recorded; "
                "nothing to evaluate"
            )
        best_dir = _model_dir(rec.checkpoint_uri, f"checkpoint of trial {rec.trial_id}:", endpoint)
        cfg = from_flat({"eval.split": split}, from_flat(rec.flat_config))
        ref = reference_pair or f"{cfg.data.teacher_lang}-{cfg.data.teacher_lang}"
        cols = {pair: _collection(cfg, pair, split, f"the best trial of {pair}")}
        try:
            cols[ref] = _collection(cfg, ref, split, f"reference pair {ref}")
        except DataError as exc:
            raise DataError(
                f"{exc}; give --reference a pair the best's config can load "
                "(e.g. deu-en with the real spaces)"
            ) from None
        ident = test_set_id(cols[pair])
        test_set = _describe(cfg, pair, split, cols[pair], ident)
        for name, bcfg in base_cfgs.items():
            if bcfg.pair != pair:
                continue
            bcol = _collection(bcfg, pair, split, f"baseline {name!r}")
            bid = test_set_id(bcol)
            if bid != ident:
                raise ConfigError(
                    f"baseline {name!r} is evaluated on {_describe(bcfg, pair, split, bcol, bid)}, "
                    f"but the best on {test_set}; compare them on the same test set"
                )

        def run(
            model: Any, which: Sequence[str], cfg: Config = cfg, cols: dict = cols
        ) -> dict[str, EvalResult]:
            return evaluate_pairs(
                model, cfg, pairs=which, split=split, load_collection=lambda c, p, s: cols[p]
            )

        results = {ZERO_SHOT: run(_teacher(cfg), [ref, pair])}
        results[BEST] = run(RetrievalModel.load(best_dir), [pair])
        systems = {
            ZERO_SHOT: cfg.train.teacher or cfg.model.name_or_path,
            BEST: rec.checkpoint_uri,
        }
        for name, path in base_models.items():
            if base_cfgs[name].pair == pair:
                results[name] = run(RetrievalModel.load(path), [pair])
                systems[name] = next(b.uri for b in named if b.name == name)
        ev = PairEvaluation(
            pair=pair,
            split=split,
            reference_pair=ref,
            results=results,
            systems=systems,
            test_set=test_set,
            record={
                "record_id": rec.record_id,
                "experiment": rec.experiment,
                "trial_id": rec.trial_id,
                "metric": rec.metric,
                "value": rec.value,
                "checkpoint_uri": rec.checkpoint_uri,
                "hyperparameters": rec.hyperparameters,
            },
        )
        if write:
            _write(store, ev, list(cfg.eval.metrics))
        out.append(ev)
    return out


# --------------------------------------------------------------------------- reading back


def load_evaluations(
    storage: Any, *, split: str | None = None, latest: bool = True
) -> list[PairEvaluation]:
    """The evaluations the catalog points to (the latest per pair and split when
    ``latest``), read back from their per-query Parquet files."""
    from optical_ray.catalog.records import CATALOG_DIR
    from optical_ray.storage import as_storage

    store = as_storage(storage)
    pointers = []
    for info in store.ls(CATALOG_DIR, recursive=True):
        name = info.base_name
        if name.startswith(_POINTER) and name.endswith(".json"):
            doc = json.loads(store.read_bytes(store.rel(info.path)))
            if split is None or doc.get("split") == split:
                pointers.append(doc)
    pointers.sort(key=lambda d: d.get("created_at", ""))
    if latest:
        pointers = list({(d["pair"], d["split"]): d for d in pointers}.values())
    out = []
    for doc in sorted(pointers, key=lambda d: (d["pair"], d["split"])):
        out.append(_read(store, doc))
    return out


def _read(store: Any, doc: Mapping[str, Any]) -> PairEvaluation:
    table = pq.read_table(pa.BufferReader(store.read_bytes(doc["per_query"])))
    meta = json.loads(table.schema.metadata[b"optical_ray.evaluation"])
    metrics = meta["metrics"]
    results: dict[str, dict[str, EvalResult]] = {}
    per: dict[tuple[str, str], dict[str, dict[str, float]]] = {}
    for row in table.to_pylist():
        per.setdefault((row["system"], row["pair"]), {})[row["qid"]] = {
            m: row[m] for m in metrics if row[m] is not None
        }
    for (system, pair), pq_values in per.items():
        means = doc["means"][system][pair]
        results.setdefault(system, {})[pair] = EvalResult(
            pair=pair,
            metrics=dict(means),
            per_query=pq_values,
            num_queries=len(pq_values),
            num_docs=0,
        )
    return PairEvaluation(
        pair=meta["pair"],
        split=meta["split"],
        reference_pair=meta["reference_pair"],
        results=results,
        systems=dict(doc.get("systems") or {}),
        test_set=meta["test_set"],
        record=dict(meta.get("record") or {}),
        uri=doc.get("uri"),
    )
