"""The inference engine (imports torch; loaded lazily by ``codellama_fast``). Its names load on
first use, so that the torch-free parts (engine.options, engine.folders, engine.params) can be
used without importing torch: the command line checks a call's options with them."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .config import LlamaConfig
    from .generate import Engine, GenerationConfig
    from .loader import load_model
    from .model import LlamaModel, StepContext
    from .ops import Ops, TorchOps, select_ops
    from .results import GenerationResult, InfillResult
    from .scoring import ScoreResult

# public name -> the submodule that defines it
_WHERE = {
    "Engine": "generate", "GenerationConfig": "generate", "GenerationResult": "results", "InfillResult": "results",
    "LlamaConfig": "config", "LlamaModel": "model", "Ops": "ops", "ScoreResult": "scoring", "StepContext": "model",
    "TorchOps": "ops", "load_model": "loader", "select_ops": "ops",
}

__all__ = [
    "Engine", "GenerationConfig", "GenerationResult", "InfillResult", "LlamaConfig", "LlamaModel",
    "Ops", "ScoreResult", "StepContext", "TorchOps", "load_model", "select_ops",
]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_WHERE})
