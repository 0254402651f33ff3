"""Per-query values of one evaluation, compactly, as the catalog keeps them.

A trial's best dev evaluation travels from the trial to its catalog record (column
``dev_per_query``) as one JSON string, column-wise: the query ids once, then one list
of values per metric, rounded to 6 decimals (far below any difference a paired test
can see). Ray-free and torch-free: the trial, the driver and the report all use it.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

from optical_ray.errors import DataError

__all__ = ["encode_per_query", "decode_per_query"]

_DIGITS = 6


def encode_per_query(pair: str, per_query: Mapping[str, Mapping[str, float]]) -> str:
    """``{qid: {metric: value}}`` of ``pair`` as ``{"pair", "qids", "metrics": {m:
    [values in qid order]}}`` JSON (a metric a query lacks is null)."""
    qids = sorted(per_query)
    names = sorted({m for values in per_query.values() for m in values})
    metrics = {
        m: [
            None if per_query[q].get(m) is None else round(float(per_query[q][m]), _DIGITS)
            for q in qids
        ]
        for m in names
    }
    return json.dumps({"pair": pair, "qids": qids, "metrics": metrics}, separators=(",", ":"))


def decode_per_query(text: Any) -> tuple[str, dict[str, dict[str, float]]]:
    """``(pair, {qid: {metric: value}})`` from :func:`encode_per_query`'s string;
    ``("", {})`` for a missing value; :class:`DataError` for a malformed one."""
    if text is None or (isinstance(text, float) and text != text) or text == "":
        return "", {}
    try:
        doc = json.loads(text)
        qids, metrics = doc["qids"], doc["metrics"]
        out: dict[str, dict[str, float]] = {q: {} for q in qids}
        for m, values in metrics.items():
            if len(values) != len(qids):
                raise ValueError(f"{m}: {len(values)} values for {len(qids)} queries")
            for q, v in zip(qids, values):
                if v is not None:
                    out[q][m] = float(v)
        return str(doc.get("pair", "")), out
    except (ValueError, KeyError, TypeError) as exc:
        raise DataError(f"dev_per_query: not an encoded per-query evaluation ({exc})") from None
