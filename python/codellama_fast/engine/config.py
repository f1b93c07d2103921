"""Model configuration read from a Hugging Face ``config.json`` (Llama / Code Llama)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import CheckpointError, UnsupportedConfigError
from ..jsonfile import read_json_object

_REQUIRED = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size")


@dataclass(frozen=True)
class LlamaConfig:
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int
    vocab_size: int
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    max_position_embeddings: int = 16384
    tie_word_embeddings: bool = False
    head_dim: int = 0
    bos_token_id: int | None = 1
    eos_token_id: int | None = 2
    torch_dtype: str | None = None
    # transformers' RoPE scaling: "default" (none), "linear" (position interpolation: rotary angles
    # use position / factor) or "dynamic" (NTK: past max_position_embeddings, the base grows with
    # the sequence length)
    rope_scaling_type: str = "default"
    rope_scaling_factor: float = 1.0
    extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.head_dim == 0:
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_attention_heads)
        problems = []
        if self.hidden_size <= 0 or self.num_hidden_layers <= 0 or self.intermediate_size <= 0 or self.vocab_size <= 0:
            problems.append("sizes must be positive")
        if self.num_attention_heads <= 0 or self.num_key_value_heads <= 0:
            problems.append("head counts must be positive")
        elif self.num_attention_heads % self.num_key_value_heads:
            problems.append(f"num_attention_heads ({self.num_attention_heads}) is not a multiple of num_key_value_heads ({self.num_key_value_heads})")
        if not self.rope_scaling_factor > 0:
            problems.append(f"the RoPE scaling factor must be > 0, got {self.rope_scaling_factor}")
        if self.rope_scaling_type not in ("default", "linear", "dynamic"):
            problems.append(f"unknown RoPE scaling type {self.rope_scaling_type!r}")
        if self.head_dim % 2:
            problems.append(f"head_dim {self.head_dim} must be even for rotary embeddings")
        if problems:
            raise CheckpointError("invalid model config: " + "; ".join(problems))

    @property
    def q_size(self) -> int:
        return self.num_attention_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_key_value_heads * self.head_dim

    def num_parameters(self) -> int:
        d, f, v, L = self.hidden_size, self.intermediate_size, self.vocab_size, self.num_hidden_layers
        per_layer = d * (self.q_size + 2 * self.kv_size) + self.q_size * d + 3 * d * f + 2 * d
        return v * d * (1 if self.tie_word_embeddings else 2) + L * per_layer + d

    def kv_bytes_per_token(self, dtype_bytes: int = 2) -> int:
        return 2 * self.num_hidden_layers * self.kv_size * dtype_bytes

    def to_hf_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if k not in ("extra", "rope_scaling_type", "rope_scaling_factor")}
        scaling = None if self.rope_scaling_type == "default" else {"rope_type": self.rope_scaling_type, "factor": self.rope_scaling_factor}
        d.update(architectures=["LlamaForCausalLM"], model_type="llama", hidden_act="silu", rope_scaling=scaling,
                 attention_bias=False, mlp_bias=False, initializer_range=0.02, use_cache=True, pretraining_tp=1)
        d.update(self.extra)
        return d

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "config.json") -> "LlamaConfig":
        missing = [k for k in _REQUIRED if k not in raw]
        if missing:
            raise CheckpointError(f"{source} lacks required keys: {', '.join(missing)}")
        model_type = raw.get("model_type", "llama")
        if model_type not in ("llama", "code_llama"):
            raise UnsupportedConfigError(f"{source}: model_type {model_type!r} is not supported (only 'llama')")
        if raw.get("hidden_act", "silu") not in ("silu", "swish"):
            raise UnsupportedConfigError(f"{source}: hidden_act {raw['hidden_act']!r} is not supported (only 'silu')")
        if raw.get("attention_bias") or raw.get("mlp_bias"):
            raise UnsupportedConfigError(f"{source}: attention/MLP biases are not supported")
        theta = raw.get("rope_theta")
        rope_params = raw.get("rope_parameters")
        if isinstance(rope_params, dict):
            # transformers 5.x layout: {"rope_theta": ..., "rope_type": ..., "factor": ...}
            theta = rope_params.get("rope_theta", theta)
        kind, factor = _rope_scaling(rope_params, source, "rope_parameters")
        if kind == "default":  # transformers 4.x layout: "rope_scaling": {"type" or "rope_type": ..., "factor": ...}
            kind, factor = _rope_scaling(raw.get("rope_scaling"), source, "rope_scaling")
        eos = raw.get("eos_token_id", 2)
        if isinstance(eos, list):
            eos = eos[0] if eos else None
        try:
            return cls(
                hidden_size=int(raw["hidden_size"]),
                num_hidden_layers=int(raw["num_hidden_layers"]),
                num_attention_heads=int(raw["num_attention_heads"]),
                num_key_value_heads=int(raw.get("num_key_value_heads") or raw["num_attention_heads"]),
                intermediate_size=int(raw["intermediate_size"]),
                vocab_size=int(raw["vocab_size"]),
                rms_norm_eps=float(raw.get("rms_norm_eps", 1e-5)),
                rope_theta=float(theta if theta is not None else 10000.0),
                max_position_embeddings=int(raw.get("max_position_embeddings", 16384)),
                tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
                head_dim=int(raw.get("head_dim") or 0),
                bos_token_id=raw.get("bos_token_id", 1),
                eos_token_id=eos,
                torch_dtype=raw.get("torch_dtype", raw.get("dtype")),
                rope_scaling_type=kind,
                rope_scaling_factor=factor,
            )
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"{source}: a value has the wrong type ({exc})") from None

    @classmethod
    def from_file(cls, path: str | Path) -> "LlamaConfig":
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"{path} is missing; a model folder needs config.json")
        return cls.from_dict(read_json_object(path, CheckpointError), str(path))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_hf_dict(), indent=2))


def _rope_scaling(scaling: Any, source: str, key: str) -> tuple[str, float]:
    """(type, factor) of a RoPE scaling entry: ("default", 1.0) for none; "linear" and "dynamic"
    with their factor; other kinds (YaRN, llama3, longrope, ...) are refused by name."""
    if scaling is None or scaling == {} or (key == "rope_parameters" and not isinstance(scaling, dict)):
        return "default", 1.0
    if not isinstance(scaling, dict):
        raise CheckpointError(f"{source}: {key} must be an object, got {scaling!r}")
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind == "default":
        return "default", 1.0
    if kind not in ("linear", "dynamic"):
        raise UnsupportedConfigError(f"{source}: {key} of type {kind!r} is not implemented (only 'linear' and 'dynamic'; "
                                     f"Code Llama uses none)")
    factor = scaling.get("factor")
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not factor > 0 or factor == float("inf"):
        raise CheckpointError(f"{source}: {kind} {key} needs a positive 'factor', got {factor!r}")
    return kind, float(factor)
