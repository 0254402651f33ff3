"""Per-query values of one evaluation, compactly, as the catalog keeps them.

A trial's best dev evaluation travels from the trial to its catalog record (column
``dev_per_query``) as one JSON string, column-wise: the query ids once, then one list
of values per metric, rounded to 6 decimals (far below any difference a paired test
can see). A trial judged on several tasks (``sweep.objective``) adds every other task
of the objective under ``tasks``, in the same form (:func:`decode_tasks` reads them all).

With every evaluation a trial also sends its objective's per-query values alone
(:func:`encode_units`): one value per (term, query) unit in a fixed order, with the
terms' weights and a fingerprint of the units, so that ASHA can test a trial against
the rung's cut-off trial (:mod:`optical_ray.distributed.promotion`). Ray-free and
torch-free: the trial, the driver and the report all use it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from optical_ray.errors import DataError

__all__ = [
    "encode_per_query",
    "decode_per_query",
    "decode_tasks",
    "Units",
    "encode_units",
    "decode_units",
]

_DIGITS = 6
_UNIT_DIGITS = 4  # per-query values for a stopping decision: far below query noise


def _columns(per_query: Mapping[str, Mapping[str, float]]) -> dict[str, Any]:
    qids = sorted(per_query)
    names = sorted({m for values in per_query.values() for m in values})
    metrics = {
        m: [
            None if per_query[q].get(m) is None else round(float(per_query[q][m]), _DIGITS)
            for q in qids
        ]
        for m in names
    }
    return {"qids": qids, "metrics": metrics}


def encode_per_query(
    pair: str,
    per_query: Mapping[str, Mapping[str, float]],
    tasks: Mapping[str, Mapping[str, Mapping[str, float]]] | None = None,
) -> str:
    """``{qid: {metric: value}}`` of ``pair`` as ``{"pair", "qids", "metrics": {m:
    [values in qid order]}}`` JSON (a metric a query lacks is null); ``tasks`` (other
    evaluated pairs, ``{task: {qid: {metric: value}}}``) go under ``"tasks"`` likewise."""
    doc: dict[str, Any] = {"pair": pair, **_columns(per_query)}
    others = {t: _columns(v) for t, v in sorted((tasks or {}).items()) if t != pair}
    if others:
        doc["tasks"] = others
    return json.dumps(doc, separators=(",", ":"))


def _rows(doc: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    qids, metrics = doc["qids"], doc["metrics"]
    out: dict[str, dict[str, float]] = {q: {} for q in qids}
    for m, values in metrics.items():
        if len(values) != len(qids):
            raise ValueError(f"{m}: {len(values)} values for {len(qids)} queries")
        for q, v in zip(qids, values):
            if v is not None:
                out[q][m] = float(v)
    return out


def _missing(text: Any) -> bool:
    return text is None or (isinstance(text, float) and text != text) or text == ""


def decode_per_query(text: Any) -> tuple[str, dict[str, dict[str, float]]]:
    """``(pair, {qid: {metric: value}})`` from :func:`encode_per_query`'s string;
    ``("", {})`` for a missing value; :class:`DataError` for a malformed one."""
    if _missing(text):
        return "", {}
    try:
        doc = json.loads(text)
        return str(doc.get("pair", "")), _rows(doc)
    except (ValueError, KeyError, TypeError) as exc:
        raise DataError(f"dev_per_query: not an encoded per-query evaluation ({exc})") from None


def decode_tasks(text: Any) -> dict[str, dict[str, dict[str, float]]]:
    """Every task's ``{qid: {metric: value}}`` in :func:`encode_per_query`'s string
    (the pair itself and its ``tasks``); ``{}`` for a missing value."""
    if _missing(text):
        return {}
    pair, own = decode_per_query(text)
    try:
        tasks = {t: _rows(d) for t, d in (json.loads(text).get("tasks") or {}).items()}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise DataError(f"dev_per_query: malformed tasks ({exc})") from None
    return {pair: own, **tasks}


@dataclass(frozen=True)
class Units:
    """An objective's per-query values at one evaluation: ``values[u]`` for unit u
    (terms in order, queries sorted), ``coef[u]`` = the term's weight over its number
    of queries (so ``coef @ values`` is the objective), and ``fingerprint`` naming the
    units (two trials' units pair up only when their fingerprints are equal)."""

    fingerprint: str
    values: np.ndarray
    coef: np.ndarray

    @property
    def objective(self) -> float:
        return float(self.coef @ self.values)


def encode_units(values: Mapping[str, Mapping[str, float]], weights: Mapping[str, float]) -> str:
    """The compact per-evaluation form of an objective's per-query ``values``
    (``{term key: {qid: value}}``) with its term ``weights``: ``{"k": [[key, weight,
    n], ...], "h": fingerprint, "v": [values]}``."""
    keys = [k for k in weights if values.get(k)]
    total = sum(weights[k] for k in keys) or 1.0
    ids, flat, head = [], [], []
    for k in keys:
        qids = sorted(values[k])
        head.append([k, weights[k] / total, len(qids)])
        ids += [f"{k}\t{q}" for q in qids]
        flat += [round(float(values[k][q]), _UNIT_DIGITS) for q in qids]
    fingerprint = hashlib.sha1("\n".join(ids).encode()).hexdigest()[:16]
    return json.dumps({"k": head, "h": fingerprint, "v": flat}, separators=(",", ":"))


def decode_units(text: Any) -> Units | None:
    """:func:`encode_units`' string as :class:`Units`; None when missing or malformed
    (a decision without them falls back to the means)."""
    if not isinstance(text, str) or not text:
        return None
    try:
        doc = json.loads(text)
        coef = np.concatenate(
            [np.full(int(n), float(w) / int(n)) for _, w, n in doc["k"] if int(n) > 0]
            or [np.zeros(0)]
        )
        values = np.asarray(doc["v"], dtype=np.float64)
        if len(values) != len(coef):
            return None
        return Units(str(doc["h"]), values, coef)
    except (ValueError, KeyError, TypeError):
        return None
