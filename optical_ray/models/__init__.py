"""The retrieval encoder (:mod:`~optical_ray.models.encoder`), tiny encoders and tokenizers built locally (:mod:`~optical_ray.models.tiny`), and text normalisation before tokenising (:mod:`~optical_ray.models.text`)."""

from __future__ import annotations

from optical_ray._lazy import lazy_exports

_EXPORTS = {
    "RetrievalModel": "encoder",
    "Encoded": "scoring",
    "maxsim": "scoring",
    "PRESETS": "encoder",
    "model_depth": "encoder",
    "check_distill_layers": "encoder",
    "LetterFolder": "text",
    "TinyModelSpec": "tiny",
    "build_tiny_encoder": "tiny",
    "write_tiny_encoder": "tiny",
    "train_tokenizer": "tiny",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
