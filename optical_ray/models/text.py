"""Text normalisation before tokenisation: letters the tokenizer cannot represent.

A WordPiece vocabulary built for English (BERT, MiniLM) has no ``ɗ``, ``ƙ``, ``ɓ``
or ``ƴ``, and WordPiece turns a whole word holding one of them into ``[UNK]``. Hausa is
written both ways: MAFAND-MT's bitext folds the hooked letters (``hadari``), NTREX-128
keeps them (``haɗari``, in 45 % of its Hausa lines). A student distilled on the first
then meets a test set whose words it sees as ``[UNK]``. Folding such a letter to its
base letter (``LATIN SMALL LETTER D WITH HOOK`` -> ``d``) keeps the word: the spelling
the bitext uses, and subwords the model knows.

Only letters the tokenizer maps to its unknown token are folded, so a multilingual
vocabulary that has them (XLM-R, mBERT) sees the text unchanged.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

__all__ = ["LetterFolder", "base_letter"]

# "LATIN SMALL LETTER D WITH HOOK", "LATIN CAPITAL LETTER O WITH STROKE", ...
_LATIN = re.compile(r"^LATIN (SMALL|CAPITAL) LETTER ([A-Z]) WITH ")


def base_letter(ch: str) -> str | None:
    """The ASCII base of a modified Latin letter (``ɗ`` -> ``d``, ``Ƙ`` -> ``K``), from
    its Unicode name; None for anything else."""
    m = _LATIN.match(unicodedata.name(ch, ""))
    if m is None:
        return None
    return m.group(2).lower() if m.group(1) == "SMALL" else m.group(2)


class LetterFolder:
    """Replaces, in a text, every modified Latin letter that ``tokenizer`` can only
    tokenise as its unknown token by the letter's base (decided once per character)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.unk = getattr(tokenizer, "unk_token", None)
        self._seen: set[str] = set()  # characters decided so far
        self._table: dict[int, str] = {}  # str.translate table of the folded ones

    def _fold(self, ch: str) -> str | None:
        base = base_letter(ch) if self.unk is not None else None
        if base is not None and self.tokenizer.tokenize(ch) == [self.unk]:
            return base
        return None  # not a modified letter, or the vocabulary has it: keep

    def __call__(self, text: str) -> str:
        if text.isascii():
            return text
        for ch in set(text) - self._seen:
            self._seen.add(ch)
            base = None if ch.isascii() else self._fold(ch)
            if base is not None:
                self._table[ord(ch)] = base
        return text.translate(self._table)
