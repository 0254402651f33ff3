"""Folding letters a tokenizer cannot represent (Hausa's hooked letters)."""

from __future__ import annotations

import pytest

from optical_ray.models.text import LetterFolder, base_letter
from optical_ray.models.tiny import train_tokenizer

ASCII_HAUSA = [
    "akwai tsoron hadari a tsakanin wasu",
    "canza mukaminsu zuwa majalisar",
    "hadari mukaminsu kasa barna yan",
] * 4


def test_base_letter_of_modified_latin_letters() -> None:
    assert [base_letter(c) for c in "ɗƙɓƴƊƘƁƳøł"] == list("dkbyDKBYol")
    assert base_letter("a") is None  # not a modified letter
    assert base_letter("ж") is None  # not Latin
    assert base_letter("'") is None


def test_unknown_hooked_letters_fold_and_the_word_survives(tmp_path) -> None:
    tok = train_tokenizer(ASCII_HAUSA, tmp_path / "ascii", vocab_size=200, min_frequency=1)
    assert tok.unk_token in tok.tokenize("haɗari")  # the whole word is lost
    fold = LetterFolder(tok)
    assert (
        fold("Akwai tsoron haɗari a muƙaminsu, ƙasa ɓarna ƴan")
        == "Akwai tsoron hadari a mukaminsu, kasa barna yan"
    )
    assert tok.unk_token not in tok.tokenize(fold("haɗari muƙaminsu"))
    assert fold("ASCII only") == "ASCII only"


def test_letters_the_vocabulary_has_are_kept(tmp_path) -> None:
    hooked = [t.replace("d", "ɗ").replace("k", "ƙ") for t in ASCII_HAUSA]
    tok = train_tokenizer(hooked, tmp_path / "hooked", vocab_size=200, min_frequency=1)
    assert tok.unk_token not in tok.tokenize("haɗari")
    assert LetterFolder(tok)("haɗari muƙaminsu") == "haɗari muƙaminsu"


@pytest.mark.parametrize("fold", [True, False])
def test_model_tokenize_folds_only_when_configured(tiny_config, tiny_world, fold) -> None:
    from optical_ray.models.encoder import RetrievalModel

    model = RetrievalModel.from_config(tiny_config(**{"model.fold_letters": fold}))
    unk = model.tokenizer.unk_token_id
    ids = model.tokenize(["ɗ ƙ ɓ"], "query")["input_ids"][0].tolist()
    assert (unk in ids) is not fold
