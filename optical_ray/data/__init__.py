"""Data I/O: retrieval collections, bitext, plain text, Hugging Face adapters.

File formats live in :mod:`~optical_ray.data.formats`, containers and the standard
dataset layout in :mod:`~optical_ray.data.collection`, checks in
:mod:`~optical_ray.data.validate`. The Hugging Face adapters
(:mod:`~optical_ray.data.hf`) are imported on first use, so ``import optical_ray.data``
stays light (no ``datasets``, no ``torch``).
"""

from __future__ import annotations

from typing import Any

from optical_ray.data.collection import (
    COLLECTION_FILES,
    Collection,
    Corpus,
    TextPairs,
    build_collection,
    find_collection_files,
    load_collection,
    parse_pair,
    read_bitext,
    read_corpus,
)
from optical_ray.data.formats import (
    Doc,
    Triple,
    detect_format,
    iter_bitext,
    iter_corpus,
    iter_lines,
    iter_queries,
    iter_triples,
    read_lines,
    read_qrels,
    read_queries,
    write_bitext,
    write_corpus,
    write_lines,
    write_qrels,
    write_queries,
    write_triples,
)
from optical_ray.data.validate import FileReport, ValidationReport, validate_dataset

_HF = (
    "BITEXT_PRESETS",
    "COLLECTION_PRESETS",
    "load_hf_bitext",
    "load_hf_collection",
    "load_hf_dataset",
)

__all__ = [
    "COLLECTION_FILES",
    "Collection",
    "Corpus",
    "Doc",
    "FileReport",
    "TextPairs",
    "Triple",
    "ValidationReport",
    "build_collection",
    "detect_format",
    "find_collection_files",
    "iter_bitext",
    "iter_corpus",
    "iter_lines",
    "iter_queries",
    "iter_triples",
    "load_collection",
    "parse_pair",
    "read_bitext",
    "read_corpus",
    "read_lines",
    "read_qrels",
    "read_queries",
    "validate_dataset",
    "write_bitext",
    "write_corpus",
    "write_lines",
    "write_qrels",
    "write_queries",
    "write_triples",
    *_HF,
]


def __getattr__(name: str) -> Any:
    # PEP 562: load the Hugging Face adapters (and `datasets`) only when asked for.
    if name in _HF:
        from optical_ray.data import hf

        return getattr(hf, name)
    raise AttributeError(f"module 'optical_ray.data' has no attribute {name!r}")
