"""Next-token choice on the device, with no host synchronisation: greedy, or temperature with
transformers' filters (top-k, top-p, min-p, typical-p, epsilon and eta cutoffs, in that order) and
the exponential-race form of sampling (argmax of p / Exp(1) noise, which draws from p exactly and
needs no cumulative-sum search). The rules that act before the choice (penalties, bans) are in
engine.logits_rules."""

from __future__ import annotations

import math

import torch

from .params import SamplingParams


def filter_logits(logits: torch.Tensor, top_k: int | None, top_p: float | None, min_p: float | None = None,
                  typical_p: float | None = None, epsilon_cutoff: float | None = None, eta_cutoff: float | None = None,
                  keep: int = 1) -> torch.Tensor:
    """logits [B, V] fp32 (already divided by the temperature) with every token a filter drops set
    to -inf. The filters act in transformers' order, each on what the previous one kept, and each
    keeps at least the ``keep`` likeliest tokens (transformers' min_tokens_to_keep: 1 when
    sampling, one more than the stop ids in beam sample, so a beam can always go on).
    ``top_k`` 0 and ``top_p`` 1 filter nothing, as there."""
    vocab = logits.shape[-1]
    keep = min(keep, vocab)
    if top_k and max(top_k, keep) < vocab:
        kth = torch.topk(logits, max(top_k, keep), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # Drop a token when the mass before it already reaches top_p (the first `keep` always stay).
        drop_sorted = (probs.cumsum(-1) - probs) >= top_p
        drop_sorted[:, :keep] = False
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    if min_p:
        # below min_p × the likeliest token's probability; the `keep` likeliest always pass
        probs = torch.softmax(logits, dim=-1)
        logits = logits.masked_fill((probs < min_p * probs.amax(dim=-1, keepdim=True)) & _below_kept(logits, keep), float("-inf"))
    if typical_p is not None and typical_p < 1.0:
        logits = _typical(logits, typical_p, keep)
    if epsilon_cutoff:
        logits = _cut_below(logits, torch.full_like(logits[:, :1], epsilon_cutoff), keep)
    if eta_cutoff:
        # eta-sampling: the cutoff shrinks with the distribution's entropy H: min(eta, sqrt(eta) e^-H)
        logp = torch.log_softmax(logits, dim=-1)
        entropy = -(logp.exp() * logp).nansum(dim=-1, keepdim=True)  # [B, 1]; 0 × -inf terms are NaN
        logits = _cut_below(logits, (math.sqrt(eta_cutoff) * torch.exp(-entropy)).clamp(max=eta_cutoff), keep)
    return logits


def _below_kept(logits: torch.Tensor, keep: int) -> torch.Tensor:
    """[B, V] True for tokens below each row's ``keep`` likeliest (which no filter drops)."""
    if keep == 1:
        return logits < logits.amax(dim=-1, keepdim=True)
    return logits < torch.topk(logits, keep, dim=-1).values[:, -1:]


def _cut_below(logits: torch.Tensor, cutoff: torch.Tensor, keep: int = 1) -> torch.Tensor:
    """Drops tokens whose probability is below cutoff [B, 1], except each row's ``keep`` likeliest."""
    probs = torch.softmax(logits, dim=-1)
    drop = (probs < cutoff) & _below_kept(logits, keep)
    return logits.masked_fill(drop, float("-inf"))


def _typical(logits: torch.Tensor, mass: float, keep: int = 1) -> torch.Tensor:
    """Locally typical sampling: rank tokens by how far their surprise -log p is from the entropy
    H, and keep the closest ones until their probability reaches ``mass`` (the token that crosses
    it included, every token as close as it, and at least the ``keep`` closest). logits [B, V]."""
    logp = torch.log_softmax(logits, dim=-1)
    entropy = -(logp.exp() * logp).nansum(dim=-1, keepdim=True)  # [B, 1]
    distance = (-logp - entropy).abs()  # [B, V]; dropped tokens (-inf) are infinitely far
    sorted_distance, order = torch.sort(distance, dim=-1)
    mass_through = logp.gather(-1, order).exp().cumsum(-1)  # probability of the closest tokens so far
    crossing = (mass_through < mass).sum(dim=-1, keepdim=True).clamp(keep - 1, logits.shape[-1] - 1)  # [B, 1]
    return logits.masked_fill(distance > sorted_distance.gather(-1, crossing), float("-inf"))


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
    logits = filter_logits(logits, params.top_k, params.top_p, params.min_p, params.typical_p, params.epsilon_cutoff, params.eta_cutoff)
    probs = torch.softmax(logits, dim=-1)
    noise = torch.empty_like(probs).exponential_(1.0, generator=generator)
    return (probs / noise).argmax(dim=-1)
