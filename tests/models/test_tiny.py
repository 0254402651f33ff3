"""Tokenizers and tiny encoders built locally: BERT behaviour, determinism, round-trips."""

from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
from transformers import AutoModel, AutoTokenizer

from optical_ray.data.formats import iter_bitext
from optical_ray.errors import ConfigError
from optical_ray.models.tiny import (
    SPECIAL_TOKENS,
    TinyModelSpec,
    build_tiny_encoder,
    train_tokenizer,
    write_tiny_encoder,
)


@pytest.fixture(scope="module")
def texts(tiny_world) -> list[str]:
    return [t for pair in iter_bitext(tiny_world.bitext_path("xc")) for t in pair]


def test_tokenizer_behaves_like_bert(texts, tmp_path):
    tok = train_tokenizer(texts, tmp_path / "tok", vocab_size=300)
    assert len(tok) == 300
    assert [tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    assert (tok.pad_token_id, tok.cls_token_id, tok.sep_token_id, tok.mask_token_id) == (0, 2, 3, 4)
    sentence = texts[1]
    enc = tok(sentence, "Varlen 1987")
    ids = enc["input_ids"]
    assert ids[0] == 2 and ids.count(3) == 2 and ids[-1] == 3
    first_sep = ids.index(3)
    assert enc["token_type_ids"] == [0] * (first_sep + 1) + [1] * (len(ids) - first_sep - 1)
    assert tok(sentence.upper())["input_ids"] == tok(sentence)["input_ids"]  # lowercased
    assert tok.decode(tok(sentence)["input_ids"], skip_special_tokens=True) == sentence.lower()
    assert tok("字")["input_ids"] == [2, 1, 3]  # unseen character -> [UNK]
    assert len(tok("w " * 500, truncation=True)["input_ids"]) == tok.model_max_length == 128
    # Offline round-trip through AutoTokenizer gives the same encodings.
    again = AutoTokenizer.from_pretrained(str(tmp_path / "tok"))
    batch = texts[:8]
    pairs = ["Varlen 1987"] * len(batch)
    assert again(batch, pairs)["input_ids"] == tok(batch, pairs)["input_ids"]


def test_tokenizer_keeps_case_when_asked(texts):
    tok = train_tokenizer(texts, vocab_size=300, lowercase=False)
    assert tok("Varlen")["input_ids"] != tok("varlen")["input_ids"]


def test_tokenizer_is_deterministic_and_matches_the_library_trainer(texts, tmp_path):
    a = train_tokenizer(texts, tmp_path / "a", vocab_size=400)
    train_tokenizer(texts, tmp_path / "b", vocab_size=400)
    assert (tmp_path / "a" / "tokenizer.json").read_bytes() == (
        tmp_path / "b" / "tokenizer.json"
    ).read_bytes()
    # Same algorithm as tokenizers' WordPieceTrainer, up to how ties are broken.
    ref = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    ref.normalizer = normalizers.BertNormalizer(lowercase=True)
    ref.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    ref.train_from_iterator(
        texts,
        trainers.WordPieceTrainer(
            vocab_size=400,
            min_frequency=2,
            special_tokens=list(SPECIAL_TOKENS),
            show_progress=False,
        ),
    )
    ours, theirs = set(a.get_vocab()), set(ref.get_vocab())
    assert len(ours & theirs) > 0.9 * len(theirs)


@pytest.mark.parametrize(
    ("texts_", "kwargs", "match"),
    [
        (["a b"], {"vocab_size": 3}, "vocab_size=3"),
        (["a b"], {"min_frequency": 0}, "min_frequency=0"),
        ([], {}, "texts: empty"),
        (["  "], {}, "texts: empty"),
    ],
)
def test_tokenizer_bad_input(texts_, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        train_tokenizer(texts_, **kwargs)


def test_build_tiny_encoder_from_spec(tiny_world):
    tok = AutoTokenizer.from_pretrained(str(tiny_world.tokenizer_dir))
    spec = TinyModelSpec(
        num_layers=3, hidden_size=32, num_heads=4, intermediate_size=48, max_position_embeddings=64
    )
    rng_before = torch.random.get_rng_state()
    with pytest.warns(UserWarning, match="model_max_length=128 exceeds max_position_embeddings=64"):
        model = build_tiny_encoder(tiny_world.tokenizer_dir, spec, seed=7)
    assert torch.equal(torch.random.get_rng_state(), rng_before)  # global RNG untouched
    c = model.config
    assert (
        c.num_hidden_layers,
        c.hidden_size,
        c.num_attention_heads,
        c.intermediate_size,
        c.max_position_embeddings,
    ) == (3, 32, 4, 48, 64)
    assert c.vocab_size == len(tok) and c.pad_token_id == tok.pad_token_id == 0
    tok.model_max_length = 64
    same = build_tiny_encoder(tok, spec, seed=7)
    other = build_tiny_encoder(tok, spec, seed=8)
    w = "embeddings.word_embeddings.weight"
    assert torch.equal(model.state_dict()[w], same.state_dict()[w])
    assert not torch.equal(model.state_dict()[w], other.state_dict()[w])
    model.eval()
    batch = tok(["Varlen 1987", "a b c d"], padding=True, return_tensors="pt")
    out = model(**batch, output_hidden_states=True)
    assert out.last_hidden_state.shape == (2, batch["input_ids"].shape[1], 32)
    assert len(out.hidden_states) == 4  # embeddings + 3 layers


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        (TinyModelSpec(hidden_size=65), "hidden_size=65: must be divisible by num_heads=2"),
        (TinyModelSpec(num_layers=0), "num_layers=0"),
        (TinyModelSpec(dropout=1.0), "dropout=1.0"),
    ],
)
def test_bad_spec(tiny_world, spec, match):
    with pytest.raises(ConfigError, match=match):
        build_tiny_encoder(tiny_world.tokenizer_dir, spec)


def test_bad_tokenizer_dir(tmp_path):
    with pytest.raises(ConfigError, match="not a directory with a saved tokenizer"):
        build_tiny_encoder(tmp_path / "missing")


def test_saved_encoder_round_trips_offline(tiny_encoder_dir, tmp_path):
    assert (tiny_encoder_dir / "model.safetensors").is_file()
    tok = AutoTokenizer.from_pretrained(str(tiny_encoder_dir))
    model = AutoModel.from_pretrained(str(tiny_encoder_dir)).eval()
    assert model.config.vocab_size == len(tok)
    assert (model.config.num_hidden_layers, model.config.hidden_size) == (2, 64)
    fresh = build_tiny_encoder(tiny_encoder_dir, TinyModelSpec(), seed=0).eval()
    batch = tok(["Varlen 1987 in the", "x"], padding=True, return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(model(**batch).last_hidden_state, fresh(**batch).last_hidden_state)
    # Saving again and reloading keeps every weight.
    write_tiny_encoder(tmp_path / "copy", tok, seed=0)
    copy = AutoModel.from_pretrained(str(tmp_path / "copy"))
    assert all(torch.equal(v, copy.state_dict()[k]) for k, v in model.state_dict().items())
