"""A study's data, checked before any run starts, no Ray: every test task and reference
pair has a test set, and no training text that a knob adds (monolingual text for
``adapt``, English ranking pairs for hybrid batches) overlaps an evaluation split.

Overlap is exact text after folding case and white space, against every dev and test
split the study reads (its test tasks, the references, the dev pairs it selects on):
their queries and their judged-relevant documents. Unjudged documents are distractors
(reading them reveals no judgement), so they are not checked.
"""

from __future__ import annotations

from typing import Any, Iterable

from optical_ray.config import Config
from optical_ray.errors import ConfigError, DataError
from optical_ray.studies.design import SEED_KEY
from optical_ray.studies.plan import StudyPlan

__all__ = ["check_study_data", "evaluation_pairs", "overlaps", "SHOWN"]

#: Overlapping texts named per (source, split); the rest are counted.
SHOWN = 3
#: Texts shorter than this many words ("Yes.", a name) are not taken as overlap.
MIN_WORDS = 4


def _norm(text: str) -> str:
    return " ".join(text.split()).lower()


def evaluation_pairs(cfg: Config) -> list[str]:
    """The pairs ``cfg`` has evaluation data for: its ``data.eval`` sources (real data),
    else the data root's ``eval/`` folders (a synthetic world)."""
    from optical_ray.data.sources import ensure_data_root

    if cfg.data.eval and cfg.data.root is None:
        return sorted(cfg.data.eval)
    root = ensure_data_root(cfg) / "eval"
    found = sorted(p.name for p in root.glob("*") if p.is_dir()) if root.is_dir() else []
    return sorted(set(found) | set(cfg.data.eval))


def _collection(cfg: Config, pair: str, split: str) -> Any:
    from optical_ray.data.sources import eval_collection

    return eval_collection(cfg, pair, split)


def _shorten(text: str, n: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 3] + "..."


def overlaps(
    source: str,
    train: Iterable[tuple[str, str]],
    split_name: str,
    collection: Any,
) -> str | None:
    """One line naming the texts of ``train`` (``(where, text)``: e.g. ``("text 12",
    ...)``) that are a query or a judged-relevant document of ``collection``, or None."""
    evaluated: dict[str, str] = {}
    for qid, text in collection.queries.items():
        if collection.qrels.get(qid):
            evaluated.setdefault(_norm(text), f"query {qid}")
    relevant = {d for rels in collection.qrels.values() for d, r in rels.items() if r > 0}
    for doc in collection.corpus:
        if doc.docid in relevant:
            evaluated.setdefault(_norm(doc.text), f"relevant document {doc.docid}")
    found = []
    for where, text in train:
        key = _norm(text)
        if len(key.split()) >= MIN_WORDS and key in evaluated:
            found.append(f"{where} {_shorten(text)!r} = {evaluated[key]}")
    if not found:
        return None
    more = f"; and {len(found) - SHOWN} more" if len(found) > SHOWN else ""
    return (
        f"{source} shares {len(found)} text(s) with {split_name}, which the study "
        f"evaluates on: {'; '.join(found[:SHOWN])}{more}"
    )


def _mono(cfg: Config) -> list[tuple[str, list[tuple[str, str]]]]:
    from optical_ray.data.sources import mono_texts

    out = []
    for lang in cfg.adapt.langs or [cfg.foreign_lang]:
        src = cfg.data.mono.get(lang)
        name = f"data.mono.{lang}" + (f" ({src.format})" if src is not None else "")
        texts = mono_texts(cfg, lang)
        out.append((name, [(f"text {i + 1}", t) for i, t in enumerate(texts)]))
    return out


def _rank(cfg: Config) -> tuple[str, list[tuple[str, str]]]:
    from optical_ray.data.sources import rank_collection

    col = rank_collection(cfg)
    src = cfg.data.rank
    name = "data.rank" + (f" ({src.format})" if src is not None else "")
    texts = [(f"query {q}", t) for q, t in col.queries.items()]
    texts += [(f"document {d.docid}", d.text) for d in col.corpus]
    return name, texts


def check_study_data(plan: StudyPlan) -> None:
    """Raise one :class:`DataError` listing every problem: a test task or reference
    pair without a test set (naming the pairs that have evaluation data), and every
    overlap of the knobs' training text with an evaluation split."""
    problems: list[str] = []
    for pair in plan.pairs:
        # the data a cell reads do not depend on its seed: one config per cell
        d = plan.design
        cfgs = [
            plan.run_config(pair, {**d.cell_values(c), SEED_KEY: d.seeds[0]}) for c in d.cells()
        ]
        first = cfgs[0]
        needed = [("task", t) for t in plan.tasks[pair]]
        needed += [("reference", r) for r in dict.fromkeys(plan.reference[pair].values())]
        splits: dict[tuple[str, str], Any] = {}
        have = evaluation_pairs(first)
        for what, task in needed:
            if task not in have:  # not a synthetic world made up on the spot, either
                problems.append(
                    f"{pair}: {what} {task} has no evaluation data; pairs with evaluation "
                    f"data: {', '.join(have) or 'none'}"
                )
                continue
            try:
                splits[(task, "test")] = _collection(first, task, "test")
            except (DataError, ConfigError) as exc:
                problems.append(f"{pair}: {what} {task} has no test set: {exc}")
        dev_pairs = {t for t in plan.tasks[pair]} | set(plan.reference[pair].values())
        dev_pairs |= set(first.eval.pairs) | {pair}
        for task in sorted(dev_pairs & set(have)):
            for split in ("dev", "test"):
                if (task, split) in splits:
                    continue
                try:  # a task without a dev split (AfriQA swa) has nothing to overlap there
                    splits[(task, split)] = _collection(first, task, split)
                except (DataError, ConfigError):
                    pass
        sources: dict[str, list[tuple[str, str]]] = {}
        for rc in cfgs:
            if "adapt" in rc.train.stages:
                for name, texts in _mono(rc):
                    sources.setdefault(name, texts)
            hybrid = "distill" in rc.train.stages and rc.distill.rank_batch_size > 0
            if hybrid or ("rank" in rc.train.stages and not rc.train.teacher):
                name, texts = _rank(rc)
                sources.setdefault(name, texts)
        for name, texts in sources.items():
            for (task, split), col in sorted(splits.items()):
                line = overlaps(name, texts, f"{task} {split}", col)
                if line:
                    problems.append(f"{pair}: {line}")
    if problems:
        raise DataError(
            f"study {plan.name!r}: {len(problems)} problem(s) with its data: "
            + " | ".join(dict.fromkeys(problems))
        )
