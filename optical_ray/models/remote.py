"""Model directories never run their own code.

A Hugging Face model directory can name Python classes of its own (``auto_map`` in
``config.json`` or ``tokenizer_config.json``, beside a ``modeling_*.py``); transformers
then imports that file, after a ``[y/N]`` prompt when ``trust_remote_code`` is left
unset. Checkpoints reach optical-ray from shared storage (``evaluate --best`` loads
what catalog records name), so every loader passes ``trust_remote_code=False`` and
refuses such a directory up front, in one line, before transformers can prompt.
"""

from __future__ import annotations

import json
from pathlib import Path

from optical_ray.errors import DataError

__all__ = ["REMOTE_CODE_FILES", "refuse_remote_code", "remote_code_error"]

#: The files in which a model or tokenizer directory can name code of its own.
REMOTE_CODE_FILES = ("config.json", "tokenizer_config.json")


def remote_code_error(where: str | Path, detail: str) -> DataError:
    """The one-line refusal for a model at ``where`` that asks to run its own code."""
    return DataError(
        f"{str(where)!r} asks to run code shipped with the model ({detail}); refused: "
        "optical-ray never runs a model's own code (trust_remote_code=False), use an "
        "encoder whose architecture transformers ships (BERT, XLM-R, MiniLM, ...)"
    )


def refuse_remote_code(path: str | Path) -> None:
    """Raise :class:`~optical_ray.errors.DataError` when the directory ``path`` asks to
    run its own code: an ``auto_map`` entry in one of :data:`REMOTE_CODE_FILES`.

    A path that is not a local directory (a hub id) is left to transformers, which
    refuses remote code itself under ``trust_remote_code=False``. An unreadable file is
    left to the loader too, whose own error names it.
    """
    root = Path(path).expanduser()
    if not root.is_dir():
        return
    for name in REMOTE_CODE_FILES:
        try:
            meta = json.loads((root / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        auto_map = meta.get("auto_map") if isinstance(meta, dict) else None
        if auto_map:
            values = auto_map.values() if isinstance(auto_map, dict) else [auto_map]
            # a tokenizer maps one name to [slow, fast] classes, either may be None
            flat = [v for x in values for v in (x if isinstance(x, list) else [x]) if v]
            shown = ", ".join(sorted({str(v) for v in flat}))[:120]
            raise remote_code_error(root, f"auto_map in {name}: {shown}")
