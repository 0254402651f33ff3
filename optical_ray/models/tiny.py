"""Tiny BERT encoders and WordPiece tokenizers built locally, with no hub access.

Tests and the synthetic world need a tokenizer trained on their own text and a small
encoder (2 layers, hidden 64) built from a config. Both save with ``save_pretrained``
and load back with ``AutoTokenizer`` / ``AutoModel`` from the directory, offline, so
every code path that takes "a Hugging Face model name or path" works on them unchanged.
"""

from __future__ import annotations

import heapq
import warnings
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import (
    AutoTokenizer,
    BertConfig,
    BertModel,
    BertTokenizerFast,
    PreTrainedTokenizerBase,
)

from optical_ray.errors import ConfigError
from optical_ray.models.remote import refuse_remote_code

__all__ = [
    "SPECIAL_TOKENS",
    "TinyModelSpec",
    "train_tokenizer",
    "build_tiny_encoder",
    "write_tiny_encoder",
]

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def train_tokenizer(
    texts: Iterable[str],
    out_dir: str | Path | None = None,
    *,
    vocab_size: int = 1000,
    lowercase: bool = True,
    min_frequency: int = 2,
    model_max_length: int = 128,
) -> BertTokenizerFast:
    """Train a BERT-style WordPiece tokenizer on ``texts`` and save it to ``out_dir``.

    Special tokens ``[PAD] [UNK] [CLS] [SEP] [MASK]`` get ids 0-4; a post-processor adds
    ``[CLS] a [SEP]`` / ``[CLS] a [SEP] b [SEP]`` (with token type ids), as
    ``bert-base-uncased`` does. ``model_max_length`` should match the encoder's
    ``max_position_embeddings`` so long inputs are truncated rather than overflow.
    The same texts give the same vocabulary, byte for byte (see
    :func:`_learn_wordpiece_vocab`).
    """
    problems = []
    if (
        isinstance(vocab_size, bool)
        or not isinstance(vocab_size, int)
        or vocab_size <= len(SPECIAL_TOKENS)
    ):
        problems.append(f"vocab_size={vocab_size!r}: must be an integer > {len(SPECIAL_TOKENS)}")
    if isinstance(min_frequency, bool) or not isinstance(min_frequency, int) or min_frequency < 1:
        problems.append(f"min_frequency={min_frequency!r}: must be a positive integer")
    if (
        isinstance(model_max_length, bool)
        or not isinstance(model_max_length, int)
        or model_max_length < 2
    ):
        problems.append(f"model_max_length={model_max_length!r}: must be an integer >= 2")
    if problems:
        raise ConfigError(problems)
    normalizer = normalizers.BertNormalizer(
        lowercase=lowercase, clean_text=True, handle_chinese_chars=True, strip_accents=None
    )
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    chunks = Counter(chunk for text in texts for chunk in text.split())
    if not chunks:
        raise ConfigError("texts: empty; a tokenizer needs at least one word to train on")
    words: Counter[str] = Counter()
    for chunk, n in chunks.items():
        for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(chunk)):
            words[word] += n
    vocab = _learn_wordpiece_vocab(words, vocab_size, min_frequency)
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizer
    tok.decoder = decoders.WordPiece(prefix="##")
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    fast = BertTokenizerFast(
        tokenizer_object=tok,
        do_lower_case=lowercase,
        model_max_length=model_max_length,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )
    if out_dir is not None:
        fast.save_pretrained(str(out_dir))
    return fast


def _learn_wordpiece_vocab(
    words: Counter[str], vocab_size: int, min_frequency: int
) -> dict[str, int]:
    """WordPiece vocabulary by BPE merges, as ``tokenizers.trainers.WordPieceTrainer`` does.

    A word starts as its first character plus ``##``-prefixed continuation characters;
    the most frequent adjacent pair is merged until ``vocab_size`` tokens exist or no
    pair occurs ``min_frequency`` times. The library's trainer breaks count ties in
    hash-map order, which changes between processes (about one run in six gives another
    vocabulary on the default world); here ties go to the lexicographically smallest
    pair (by token id), so a seeded world gets a byte-identical tokenizer.
    """
    chars = sorted({c for w in words for c in w})
    # Every character, word-initial and continuing, so unseen words never become [UNK].
    alphabet = chars + ["##" + c for c in chars]
    tokens = list(SPECIAL_TOKENS) + [t for t in alphabet if t not in SPECIAL_TOKENS]
    ids = {t: i for i, t in enumerate(tokens)}
    seqs = [[ids[w[0]]] + [ids["##" + c] for c in w[1:]] for w in words]
    counts = list(words.values())
    # A pair (a, b) of token ids is the int a * K + b: cheaper to hash than a tuple, and
    # its order (a, then b) is the deterministic tie-break.
    K = 1 << 32
    pair_count: dict[int, int] = {}
    where: dict[int, set[int]] = {}
    for i, seq in enumerate(seqs):
        for a, b in zip(seq, seq[1:]):
            p = a * K + b
            pair_count[p] = pair_count.get(p, 0) + counts[i]
            where.setdefault(p, set()).add(i)
    heap = [(-n, p) for p, n in pair_count.items()]
    heapq.heapify(heap)
    while len(tokens) < vocab_size and heap:
        neg, pair = heapq.heappop(heap)
        if pair_count.get(pair) != -neg:
            continue  # stale entry: the pair's count changed after it was pushed
        if -neg < min_frequency:
            break
        a, b = divmod(pair, K)
        merged = tokens[a] + tokens[b][2:]
        if merged in ids:
            m = ids[merged]
        else:
            m = ids[merged] = len(tokens)
            tokens.append(merged)
        delta: dict[int, int] = {}
        for i in sorted(where.pop(pair)):
            seq, n, j = seqs[i], counts[i], 0
            out = []
            while j < len(seq):
                if j + 1 < len(seq) and seq[j] == a and seq[j + 1] == b:
                    if out:
                        delta[out[-1] * K + a] = delta.get(out[-1] * K + a, 0) - n
                        delta[out[-1] * K + m] = delta.get(out[-1] * K + m, 0) + n
                        where.setdefault(out[-1] * K + m, set()).add(i)
                    if j + 2 < len(seq):
                        nxt = seq[j + 2]
                        delta[b * K + nxt] = delta.get(b * K + nxt, 0) - n
                        delta[m * K + nxt] = delta.get(m * K + nxt, 0) + n
                        where.setdefault(m * K + nxt, set()).add(i)
                    out.append(m)
                    j += 2
                else:
                    out.append(seq[j])
                    j += 1
            seqs[i] = out
        del pair_count[pair]
        for p in sorted(delta):
            if not delta[p]:
                continue
            n = pair_count.get(p, 0) + delta[p]
            if n > 0:
                pair_count[p] = n
                heapq.heappush(heap, (-n, p))
            else:
                pair_count.pop(p, None)
                where.pop(p, None)
    return {t: i for i, t in enumerate(tokens)}


@dataclass(frozen=True)
class TinyModelSpec:
    """A small BERT: the shape tests and the synthetic world train in minutes on CPU."""

    num_layers: int = 2
    hidden_size: int = 64
    num_heads: int = 2
    intermediate_size: int = 128
    max_position_embeddings: int = 128
    dropout: float = 0.1

    def problems(self) -> list[str]:
        out = [
            f"{k}={v!r}: must be a positive integer"
            for k, v in asdict(self).items()
            if k != "dropout" and (isinstance(v, bool) or not isinstance(v, int) or v < 1)
        ]
        if not out and self.hidden_size % self.num_heads:
            out.append(
                f"hidden_size={self.hidden_size}: must be divisible by num_heads={self.num_heads}"
            )
        if not 0.0 <= self.dropout < 1.0:
            out.append(f"dropout={self.dropout!r}: must be in [0, 1)")
        return out


def _load_tokenizer(
    tokenizer_or_dir: PreTrainedTokenizerBase | str | Path,
) -> PreTrainedTokenizerBase:
    if isinstance(tokenizer_or_dir, PreTrainedTokenizerBase):
        return tokenizer_or_dir
    path = Path(tokenizer_or_dir)
    if not path.is_dir():
        raise ConfigError(f"tokenizer {str(path)!r}: not a directory with a saved tokenizer")
    refuse_remote_code(path)
    return AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)


def build_tiny_encoder(
    tokenizer_or_dir: PreTrainedTokenizerBase | str | Path,
    spec: TinyModelSpec | None = None,
    *,
    seed: int = 0,
) -> BertModel:
    """A randomly initialised ``BertModel`` sized by ``spec`` for this tokenizer.

    ``vocab_size`` and ``pad_token_id`` come from the tokenizer. Initialisation is
    deterministic in ``seed`` and leaves the global torch RNG as it was.
    """
    spec = spec or TinyModelSpec()
    if spec.problems():
        raise ConfigError(spec.problems(), source="TinyModelSpec")
    tokenizer = _load_tokenizer(tokenizer_or_dir)
    if tokenizer.pad_token_id is None:
        raise ConfigError("tokenizer has no pad token; allowed: a BERT-style tokenizer with [PAD]")
    if tokenizer.model_max_length > spec.max_position_embeddings:
        warnings.warn(
            f"tokenizer model_max_length={tokenizer.model_max_length} exceeds "
            f"max_position_embeddings={spec.max_position_embeddings}: longer inputs will "
            "fail; train the tokenizer with model_max_length=max_position_embeddings",
            stacklevel=2,
        )
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        intermediate_size=spec.intermediate_size,
        max_position_embeddings=spec.max_position_embeddings,
        type_vocab_size=2,
        hidden_dropout_prob=spec.dropout,
        attention_probs_dropout_prob=spec.dropout,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BertModel(config)
    return model


def write_tiny_encoder(
    out_dir: str | Path,
    tokenizer_or_dir: PreTrainedTokenizerBase | str | Path,
    spec: TinyModelSpec | None = None,
    *,
    seed: int = 0,
) -> Path:
    """Save tokenizer + tiny encoder in ``out_dir`` (loadable with ``AutoModel`` and
    ``AutoTokenizer``) and return it."""
    tokenizer = _load_tokenizer(tokenizer_or_dir)
    model = build_tiny_encoder(tokenizer, spec, seed=seed)
    out = Path(out_dir)
    tokenizer.save_pretrained(str(out))
    model.save_pretrained(str(out), safe_serialization=True)
    return out
