"""Next-token choice on the device, with no host synchronisation: greedy, or temperature with
top-k / top-p filtering and the exponential-race form of sampling (argmax of p / Exp(1) noise,
which draws from p exactly and needs no cumulative-sum search)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None

    def __post_init__(self) -> None:
        # `not (x >= 0)` so that NaN fails too.
        if not (self.temperature >= 0 and math.isfinite(self.temperature)):
            raise ValueError(f"temperature must be finite and >= 0 (0 is greedy), got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k}")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")

    @property
    def greedy(self) -> bool:
        # A temperature that rounds to 0 in the fp32 logits (at most 2^-150) would divide by zero:
        # it is greedy too.
        return self.temperature <= 2.0**-150


def filter_logits(logits: torch.Tensor, top_k: int | None, top_p: float | None) -> torch.Tensor:
    """logits [B, V] fp32 with everything outside top-k / the top-p nucleus set to -inf."""
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # Drop a token when the mass before it already reaches top_p (the first token always stays).
        drop_sorted = (probs.cumsum(-1) - probs) >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """transformers' repetition penalty (CTRL): the logit of every token already in the sequence is
    divided by ``penalty`` when positive and multiplied by it when negative, so ``penalty > 1``
    makes repeats less likely. logits [B, V], seen [B, V] bool (prompt and generated tokens)."""
    penalized = torch.where(logits < 0, logits * penalty, logits / penalty)
    return torch.where(seen, penalized, logits)


def sample(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None = None) -> torch.Tensor:
    """logits [B, V] -> token ids [B] (int64), on the logits' device."""
    if params.greedy:
        return logits.argmax(dim=-1)
    # Shift the best logit to 0 before dividing: a tiny temperature then sends the others to -inf
    # (a one-hot softmax) instead of overflowing every logit to inf and the softmax to NaN.
    logits = (logits - logits.amax(dim=-1, keepdim=True)) / params.temperature
    logits = filter_logits(logits, params.top_k, params.top_p)
    probs = torch.softmax(logits, dim=-1)
    noise = torch.empty_like(probs).exponential_(1.0, generator=generator)
    return (probs / noise).argmax(dim=-1)


def make_picker(params: SamplingParams, gen: torch.Generator | None, penalty: float, tokens: torch.Tensor, kv_start: torch.Tensor,
                vocab: int, suppressed: Sequence[int], min_new: int, allowed: int | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """The per-step choice: logits [B, V] -> next ids [B]. With ``penalty != 1``, transformers'
    repetition penalty over the tokens seen so far (the prompt's real tokens: tokens [B, T]
    left-padded, row b's first real slot kv_start[b]; then each chosen one; kept on the device);
    the ``suppressed`` ids masked for the first ``min_new`` choices (transformers'
    min_new_tokens); ids from ``allowed`` on (embedding rows past the tokenizer's vocabulary)
    never chosen; then ``sample``."""
    cut = allowed if allowed is not None and allowed < vocab else None
    if penalty == 1.0 and not suppressed and cut is None:
        return lambda logits: sample(logits, params, gen)
    device = tokens.device
    seen = None
    if penalty != 1.0:
        b, t = tokens.shape
        real = torch.arange(t, device=device)[None, :] >= kv_start[:, None]  # [B, T], not padding
        seen = torch.zeros(b, vocab, dtype=torch.bool, device=device)
        seen.scatter_(1, torch.where(real, tokens, tokens[:, -1:]), True)  # padding slots repeat a real token
    padded = torch.arange(cut, vocab, device=device) if cut is not None else None  # never chosen
    # for the first `min_new` choices: the suppressed ids as well
    early = torch.tensor(sorted(set(suppressed) | set(range(cut or vocab, vocab))), dtype=torch.long, device=device)
    chosen = 0

    def pick(logits: torch.Tensor) -> torch.Tensor:
        nonlocal chosen
        logits = logits.float()
        if seen is not None:
            logits = apply_repetition_penalty(logits, seen, penalty)
        blocked = early if chosen < min_new else padded
        if blocked is not None and blocked.numel():
            logits = logits.index_fill(1, blocked, float("-inf"))
        nxt = sample(logits, params, gen)
        if seen is not None:
            seen.scatter_(1, nxt[:, None], True)
        chosen += 1
        return nxt

    return pick
