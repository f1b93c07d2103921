"""Generation options: the settings of one call (names as in transformers' ``generate``) over the
model's defaults, with transformers' aliases read (``do_sample``, ``eos_token_id``,
``pad_token_id``) and every value checked before any work starts."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from . import arguments
from .sampling import SamplingParams


# transformers' GenerationConfig defaults for sampling settings nobody set
HF_TEMPERATURE, HF_TOP_K, HF_TOP_P = 1.0, 50, 1.0


@dataclass
class GenerationConfig:
    """Generation settings (names follow transformers' ``generate``). ``temperature=0`` is greedy."""

    max_new_tokens: int = 128
    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: Sequence[str] = ()
    stop_token_ids: Sequence[int] = ()
    stop_at_eos: bool = True
    repetition_penalty: float = 1.0
    min_new_tokens: int = 0
    num_return_sequences: int = 1
    # prompt-lookup decoding (engine.prompt_lookup): guesses per step, and the longest n-gram matched
    prompt_lookup_num_tokens: int | None = None
    max_matching_ngram_size: int = 2
    # assisted decoding (engine.assisted): a smaller Engine of the same vocabulary guesses up to
    # num_assistant_tokens per step, stopping after a token it gives less than the threshold
    # (transformers' defaults)
    assistant_model: Any = None
    num_assistant_tokens: int = 20
    assistant_confidence_threshold: float = 0.4

    def sampling(self) -> SamplingParams:
        return SamplingParams(self.temperature, self.top_k, self.top_p)


def resolve(defaults: Mapping[str, Any], overrides: Mapping[str, Any], many: bool = False) -> GenerationConfig:
    """The checked settings of a call. `defaults`: the model's (generation_config.json); `many`:
    the call may return several sequences per prompt (generate)."""
    overrides = _read_do_sample(defaults, _read_hf_token_ids(dict(overrides)))
    if not many and overrides.get("num_return_sequences", 1) != 1:
        raise ValueError("num_return_sequences is for generate(); stream, infill and chat return one continuation")
    unknown = set(overrides) - set(GenerationConfig.__dataclass_fields__)
    if unknown:
        raise TypeError(f"unknown generation arguments: {', '.join(sorted(unknown))}")
    cfg = GenerationConfig(**{**defaults, **overrides})
    cfg.max_new_tokens = _at_least("max_new_tokens", arguments.check_int("max_new_tokens", cfg.max_new_tokens), 0)
    cfg.temperature = arguments.check_real("temperature", cfg.temperature)
    cfg.top_k = arguments.check_int("top_k", cfg.top_k, optional=True)
    cfg.top_p = arguments.check_real("top_p", cfg.top_p, optional=True)
    cfg.seed = arguments.check_int("seed", cfg.seed, optional=True)
    cfg.stop = arguments.stop_strings(cfg.stop)
    cfg.stop_token_ids = arguments.stop_ids(cfg.stop_token_ids)
    if not isinstance(cfg.stop_at_eos, bool):
        raise TypeError(f"stop_at_eos must be a bool, got {type(cfg.stop_at_eos).__name__}")
    params = cfg.sampling()  # value checks (temperature >= 0, top_k >= 1, 0 < top_p <= 1)
    cfg.num_return_sequences = _at_least("num_return_sequences", arguments.check_int("num_return_sequences", cfg.num_return_sequences), 1)
    if cfg.num_return_sequences > 1 and params.greedy:
        raise ValueError("num_return_sequences > 1 needs sampling (a temperature > 0): greedy decoding returns one continuation")
    cfg.min_new_tokens = _at_least("min_new_tokens", arguments.check_int("min_new_tokens", cfg.min_new_tokens), 0)
    cfg.prompt_lookup_num_tokens = arguments.check_int("prompt_lookup_num_tokens", cfg.prompt_lookup_num_tokens, optional=True)
    if cfg.prompt_lookup_num_tokens is not None:
        _at_least("prompt_lookup_num_tokens", cfg.prompt_lookup_num_tokens, 1)
    cfg.max_matching_ngram_size = _at_least("max_matching_ngram_size", arguments.check_int("max_matching_ngram_size", cfg.max_matching_ngram_size), 1)
    cfg.num_assistant_tokens = _at_least("num_assistant_tokens", arguments.check_int("num_assistant_tokens", cfg.num_assistant_tokens), 1)
    cfg.assistant_confidence_threshold = arguments.check_real("assistant_confidence_threshold", cfg.assistant_confidence_threshold)
    if not 0.0 <= cfg.assistant_confidence_threshold <= 1.0:
        raise ValueError(f"assistant_confidence_threshold must be in [0, 1] (0 never stops early), got {cfg.assistant_confidence_threshold}")
    if cfg.assistant_model is not None and cfg.prompt_lookup_num_tokens is not None:
        raise ValueError("give prompt_lookup_num_tokens or assistant_model, not both: each guesses the next tokens")
    cfg.repetition_penalty = arguments.check_real("repetition_penalty", cfg.repetition_penalty)
    if cfg.repetition_penalty <= 0:
        raise ValueError(f"repetition_penalty must be > 0 (1.0 is none), got {cfg.repetition_penalty}")
    return cfg


def _at_least(name: str, value: Any, low: int) -> int:
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    return value


def _read_hf_token_ids(overrides: dict[str, Any]) -> dict[str, Any]:
    """transformers' ``eos_token_id`` (an id, a list, or None for no end token) replaces the
    tokenizer's EOS as the stop ids; ``pad_token_id`` is accepted and unused (the engine pads a
    batch itself and never shows the padding)."""
    if "pad_token_id" in overrides:
        pad = overrides.pop("pad_token_id")
        if pad is not None:
            arguments.check_int("pad_token_id", pad)
    if "eos_token_id" in overrides:
        eos = overrides.pop("eos_token_id")
        if "stop_token_ids" in overrides or "stop_at_eos" in overrides:
            raise ValueError("give eos_token_id (transformers' name) or stop_token_ids/stop_at_eos, not both")
        overrides["stop_at_eos"] = False
        overrides["stop_token_ids"] = () if eos is None else arguments.stop_ids(eos, "eos_token_id")
    return overrides


def _read_do_sample(defaults: Mapping[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """transformers' ``do_sample``: False is greedy whatever the temperature; True samples with
    transformers' defaults (temperature 1.0, top_k 50) for what neither the call nor the model's
    generation_config sets."""
    if "do_sample" not in overrides:
        return overrides
    do_sample = overrides.pop("do_sample")
    if not isinstance(do_sample, bool):
        raise TypeError(f"do_sample must be a bool, got {type(do_sample).__name__} {do_sample!r}")
    if do_sample:
        if "temperature" not in overrides and not defaults.get("temperature"):
            overrides["temperature"] = HF_TEMPERATURE
        if "top_k" not in overrides and "top_k" not in defaults:
            overrides["top_k"] = HF_TOP_K
        if overrides.get("temperature", defaults.get("temperature")) == 0:
            raise ValueError("do_sample=True needs a temperature > 0 (temperature=0 is greedy)")
    else:
        if overrides.get("temperature"):
            # stack: the caller's generate/stream -> Engine._config -> resolve -> here
            warnings.warn(f"do_sample=False is greedy, so temperature={overrides['temperature']} is not used", UserWarning, stacklevel=5)
        overrides["temperature"] = 0.0
    return overrides
