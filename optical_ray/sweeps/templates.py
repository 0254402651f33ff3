"""Pair templates in search spaces: one space for every language.

A space names its data through the pair it runs for, so a new language is a
``--pairs`` argument, not a new YAML section (DESIGN: "one space per method, not per
language"). In any string, and in any mapping key, of a space's ``base`` and
``params`` (and of its per-pair sections):

``{pair}``
    the pair itself, e.g. ``yor-en``;
``{src}`` / ``{tgt}``
    its query and document languages (``yor``, ``en``);
``{lang}``
    its non-English side (``yor`` for ``yor-en`` and for ``en-yor``; ``en`` for
    ``en-en``). A pair with no English side has no ``{lang}``.

For example ``data.bitext: {"en-{lang}": {path: "", format: mafand}}`` and
``eval.pairs: ["{pair}"]``. Per-pair sections still override what the template gives.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

from optical_ray.errors import ConfigError

__all__ = ["PLACEHOLDERS", "ENGLISH", "pair_values", "expand", "template_problems", "has_template"]

#: The placeholders a space may use.
PLACEHOLDERS = ("pair", "lang", "src", "tgt")
#: Codes taken as English (the teacher's language) when finding ``{lang}``.
ENGLISH = ("en", "eng")
#: A placeholder-like token: ``{word}`` (other braces are left alone).
_TOKEN = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
#: The stand-in pair a template space is validated with before it knows its pairs.
SAMPLE_PAIR = "xx-en"


def pair_values(pair: str) -> dict[str, str]:
    """The placeholder values for ``pair`` (``{lang}`` only when one side is English)."""
    src, sep, tgt = pair.partition("-")
    if not sep or not src or not tgt:
        raise ConfigError(f"pair: got {pair!r}, expected <query_lang>-<doc_lang> such as yor-en")
    values = {"pair": pair, "src": src, "tgt": tgt}
    if src.lower() in ENGLISH:
        values["lang"] = tgt
    elif tgt.lower() in ENGLISH:
        values["lang"] = src
    return values


def _tokens(value: Any) -> set[str]:
    """Every placeholder name used in ``value`` (strings, keys, nested)."""
    if isinstance(value, str):
        return set(_TOKEN.findall(value))
    if isinstance(value, Mapping):
        return set().union(*(_tokens(k) | _tokens(v) for k, v in value.items()), set())
    if isinstance(value, (list, tuple)):
        return set().union(*(_tokens(v) for v in value), set())
    return set()


def has_template(value: Any) -> bool:
    """Whether ``value`` uses any known placeholder."""
    return bool(_tokens(value) & set(PLACEHOLDERS))


def template_problems(value: Any, where: str) -> list[str]:
    """One line per unknown placeholder in ``value`` (e.g. a typo ``{lng}``)."""
    unknown = sorted(_tokens(value) - set(PLACEHOLDERS))
    return [
        f"{where}: unknown template {{{name}}} (allowed: "
        + ", ".join(f"{{{p}}}" for p in PLACEHOLDERS)
        + ")"
        for name in unknown
    ]


def _sub(text: str, values: Mapping[str, str], pair: str) -> str:
    def one(m: re.Match[str]) -> str:
        name = m.group(1)
        if name not in PLACEHOLDERS:
            return m.group(0)
        if name not in values:
            raise ConfigError(
                f"pair {pair!r}: the space uses {{{name}}}, the pair's non-English "
                "side, but neither side is English (en); give a pair such as "
                f"{pair.split('-')[0]}-en"
            )
        return values[name]

    return _TOKEN.sub(one, text)


def expand(value: Any, pair: str) -> Any:
    """``value`` with every placeholder replaced for ``pair``, in strings and mapping
    keys at any depth; other values are returned as they are."""
    values = pair_values(pair)
    if isinstance(value, str):
        return _sub(value, values, pair)
    if isinstance(value, Mapping):
        return {
            (_sub(k, values, pair) if isinstance(k, str) else k): expand(v, pair)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [expand(v, pair) for v in value]
    return value
