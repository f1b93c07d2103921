"""codellama-fast: a sentencepiece-exact Rust tokenizer and an fp16 Triton inference engine for Code Llama.

Importing the package loads only the tokenizer (no torch, no triton); the engine is imported on
first use of ``Engine``/``load_model``/``generate``.
"""

from __future__ import annotations

from typing import Any

from .errors import (
    CheckpointError,
    ConversionError,
    EngineError,
    InfillingUnsupported,
    InvalidTokenizerFile,
    NonFiniteLogitsError,
    NoTokenAllowedError,
    OutOfMemoryError,
    DeviceError,
    TokenIdError,
    TokenizerError,
    UnsupportedConfigError,
)
from .tokenizer import FILL_MARKER, AddedToken, BatchEncoding, CodeLlamaTokenizerFast, StreamDecoder

__version__ = "0.1.0"

# Engine names resolved lazily (PEP 562) so a tokenizer-only user never imports torch.
_LAZY = {
    "Engine": ("codellama_fast.engine", "Engine"),
    "GenerationConfig": ("codellama_fast.engine", "GenerationConfig"),
    "GenerationResult": ("codellama_fast.engine", "GenerationResult"),
    "ScoreResult": ("codellama_fast.engine", "ScoreResult"),
    "load_model": ("codellama_fast.engine", "load_model"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'codellama_fast' has no attribute {name!r}")


__all__ = [
    "AddedToken",
    "BatchEncoding",
    "CheckpointError",
    "CodeLlamaTokenizerFast",
    "ConversionError",
    "Engine",
    "EngineError",
    "FILL_MARKER",
    "GenerationConfig",
    "GenerationResult",
    "InfillingUnsupported",
    "InvalidTokenizerFile",
    "NonFiniteLogitsError",
    "NoTokenAllowedError",
    "OutOfMemoryError",
    "DeviceError",
    "ScoreResult",
    "StreamDecoder",
    "TokenIdError",
    "TokenizerError",
    "UnsupportedConfigError",
    "load_model",
    "__version__",
]
