"""The package's exception hierarchy.

Tokenizer errors come from the native core and are all ``ValueError`` subclasses:

- ``TokenizerError``: base class (bad arguments, text the tokenizer cannot take).
- ``InvalidTokenizerFile``: a ``tokenizer.json``/``tokenizer.model`` that is corrupt, truncated or of the wrong kind.
- ``TokenIdError``: an id outside the vocabulary (negative or >= vocab size).
- ``InfillingUnsupported``: infilling asked of a vocabulary without ``▁<PRE>``/``▁<SUF>``/``▁<MID>``/``▁<EOT>``.

Engine errors (checkpoints, memory, generation, non-finite logits, rules that allow no token) derive
from ``EngineError``.
"""

from __future__ import annotations

from ._native import InfillingUnsupported, InvalidTokenizerFile, TokenIdError, TokenizerError


class EngineError(RuntimeError):
    """Base class of every inference-engine error."""


class CheckpointError(EngineError, ValueError):
    """A model folder, config or weight file is missing, inconsistent or unsupported."""


class UnsupportedConfigError(CheckpointError):
    """The config asks for something the engine does not implement (e.g. rope scaling)."""


class OutOfMemoryError(EngineError, MemoryError):
    """An allocation (KV cache, weights) would not fit in the device's free memory."""


class DeviceError(EngineError, ValueError):
    """The requested device or backend is unknown, unsupported or not present (e.g. ``cuda`` with no GPU)."""


class NonFiniteLogitsError(EngineError, FloatingPointError):
    """The model's logits held NaN or inf where the engine chose a token (float16 activations that
    overflowed, or NaN/inf in the weights): the tokens would be meaningless, so none are returned."""


class NoTokenAllowedError(EngineError, ValueError):
    """The call's logits rules (bad_words_ids, suppress_tokens, min_new_tokens, a logits_processor,
    ...) left no token a sequence may take at some step: any token returned there would break them."""


class ConversionError(EngineError, ValueError):
    """A checkpoint conversion failed (missing shards, inconsistent shapes, unknown params)."""


__all__ = [
    "TokenizerError",
    "InvalidTokenizerFile",
    "TokenIdError",
    "InfillingUnsupported",
    "EngineError",
    "CheckpointError",
    "UnsupportedConfigError",
    "OutOfMemoryError",
    "DeviceError",
    "NonFiniteLogitsError",
    "NoTokenAllowedError",
    "ConversionError",
]
