"""The inference engine (imports torch; loaded lazily by ``codellama_fast``)."""

from .config import LlamaConfig
from .generate import Engine, GenerationConfig
from .loader import load_model
from .model import LlamaModel, StepContext
from .ops import Ops, TorchOps, select_ops
from .results import GenerationResult, InfillResult
from .scoring import ScoreResult

__all__ = [
    "Engine", "GenerationConfig", "GenerationResult", "InfillResult", "LlamaConfig", "LlamaModel",
    "Ops", "ScoreResult", "StepContext", "TorchOps", "load_model", "select_ops",
]
