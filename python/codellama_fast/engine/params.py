"""The settings of one generation's choice, as plain values (no torch, so that a call's options
can be checked before the engine loads): the sampling filters and the per-step logits rules.
engine.sampling and engine.logits_rules act on them."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    typical_p: float | None = None
    epsilon_cutoff: float | None = None
    eta_cutoff: float | None = None

    def __post_init__(self) -> None:
        # `not (x >= 0)` so that NaN fails too.
        if not (self.temperature >= 0 and math.isfinite(self.temperature)):
            raise ValueError(f"temperature must be finite and >= 0 (0 is greedy), got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k}")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.min_p is not None and not 0.0 <= self.min_p <= 1.0:
            raise ValueError(f"min_p must be in [0, 1] (a fraction of the likeliest token's probability), got {self.min_p}")
        if self.typical_p is not None and not 0.0 < self.typical_p <= 1.0:
            raise ValueError(f"typical_p must be in (0, 1], got {self.typical_p}")
        for name in ("epsilon_cutoff", "eta_cutoff"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be in [0, 1) (0 is none), got {value}")

    @property
    def greedy(self) -> bool:
        # A temperature that rounds to 0 in the fp32 logits (at most 2^-150) would divide by zero:
        # it is greedy too.
        return self.temperature <= 2.0**-150


@dataclass(frozen=True)
class TokenRules:
    """The per-step rules of one generation (names and meanings as in transformers' ``generate``).
    ``sequence_bias``: (token sequence, bias) pairs, the bias added to the sequence's last token
    when the tokens before it end the sequence so far; ``bad_words_ids``: sequences never completed;
    ``held_back``: ids (the stop ids) not chosen for the first ``min_new_tokens`` choices.
    The ``encoder_*`` rules read transformers' encoder input as a decoder-only model has it: the
    prompt (each sequence its own, padding left out)."""

    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    sequence_bias: tuple[tuple[tuple[int, ...], float], ...] = ()
    bad_words_ids: tuple[tuple[int, ...], ...] = ()
    suppress_tokens: tuple[int, ...] = ()
    begin_suppress_tokens: tuple[int, ...] = ()
    min_new_tokens: int = 0
    held_back: tuple[int, ...] = ()
    # the caller's own, as transformers takes them: prefix_allowed_tokens_fn(batch_id, ids [T]) ->
    # the ids allowed next; logits_processor: callables (ids [B, T], scores [B, V]) -> scores, run
    # after every rule above. Both read the sequence so far on the host's request (a sync per step).
    prefix_allowed_tokens_fn: Callable[[int, torch.Tensor], Sequence[int]] | None = None
    logits_processor: tuple[Callable[[torch.Tensor, torch.Tensor], torch.Tensor], ...] = ()
    # token healing (engine.token_healing): per prompt, the ids its first choice may be (None: any)
    first_allowed: tuple[tuple[int, ...] | None, ...] = ()
    # forced_eos_token_id: the ids choice number forced_eos_at (0-based: the last one) may be
    forced_eos: tuple[int, ...] = ()
    forced_eos_at: int = -1
    # exponential_decay_length_penalty (start, factor), acting on the decay_ids (the stop ids)
    length_decay: tuple[int, float] | None = None
    decay_ids: tuple[int, ...] = ()
    # the prompt's tokens' logits under repetition_penalty's rule with 1 / this penalty (> 1: likelier)
    encoder_repetition_penalty: float = 1.0
    # no n-gram of this size that occurs in the prompt is completed
    encoder_no_repeat_ngram_size: int = 0

    @property
    def active(self) -> bool:
        return bool(self.repetition_penalty != 1.0 or self.no_repeat_ngram_size or self.sequence_bias or self.bad_words_ids
                    or self.encoder_repetition_penalty != 1.0 or self.encoder_no_repeat_ngram_size
                    or self.suppress_tokens or self.begin_suppress_tokens or (self.min_new_tokens and self.held_back)
                    or self.prefix_allowed_tokens_fn is not None or self.logits_processor
                    or any(a is not None for a in self.first_allowed) or bool(self.forced_eos)
                    or (self.length_decay is not None and bool(self.decay_ids)))
