"""Scoring: the log-probability the model gives each token of a text given the tokens before it
(ranking candidate completions, perplexity of a file). One prefill over the text, in chunks whose
fp32 logits stay small, keeping only each next token's log-probability. The tokens every text of a
batch begins with (candidates after one prompt) are run once, in one row (engine.shared_prompts)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import torch

from . import memory, shared_prompts
from .cache import KVCache
from .finite import nonfinite_error
from .model import StepContext
from .packing import rows_without_padding

if TYPE_CHECKING:
    from .generate import Engine

# fp32 logits (and their log-softmax) one scoring chunk may hold: batch × tokens × vocab × 4 bytes × 2
SCORE_LOGITS_BYTES = 256 << 20


@dataclass
class ScoreResult:
    """Per text: its ``token_ids`` and ``token_logprobs[k]``, the natural-log probability of
    ``token_ids[k + 1]`` given ``token_ids[: k + 1]`` (the first token is context only)."""

    token_ids: list[list[int]]
    token_logprobs: list[list[float]]
    # with top_logprobs=k: at each scored position, the k tokens the model found likeliest there,
    # as (id, log-probability) pairs, likeliest first (what it expected instead)
    top_logprobs: list[list[list[tuple[int, float]]]] | None = None

    @property
    def logprob(self) -> list[float]:
        """Each text's total log-probability (its first token given)."""
        return [math.fsum(row) for row in self.token_logprobs]

    @property
    def perplexity(self) -> list[float]:
        """``exp(-mean log-probability)`` per text."""
        return [math.exp(-math.fsum(row) / len(row)) for row in self.token_logprobs]


def _score_prefix(engine: Engine, tokens: torch.Tensor, kv_start: torch.Tensor, cache: KVCache, prefix: int, budget: int,
                  logprobs: torch.Tensor, top_values: torch.Tensor | None, top_ids: torch.Tensor | None) -> None:
    """The `prefix` tokens every row of tokens [B, T] begins with, run in one row without padding
    (chunks of `budget` tokens): each position's log-probabilities serve every row, which takes its
    own next token's from them (at its own slots, after its padding) into logprobs [B, T] (and the
    k likeliest into top_values / top_ids [B, T, k]); then every row's cache takes the prefix's
    keys and values (shared_prompts.copy_prefix)."""
    t = tokens.shape[1]
    starts = kv_start.tolist()
    head = starts.index(0)
    layers = [(k[head : head + 1], v[head : head + 1]) for k, v in cache.layers]
    zero = kv_start[head : head + 1]
    for c0 in range(0, prefix, budget):
        c1 = min(prefix, c0 + budget)
        ctx = StepContext(torch.arange(c0, c1, device=engine.device)[None], torch.arange(c0, c1, device=engine.device), c0, zero, c1,
                          rope_len=t)
        logp = engine.model(tokens[head : head + 1, c0:c1], ctx, layers, last_only=False)[0].log_softmax(-1)  # [c, V]
        # row b's position i sits at slot kv_start[b] + i; its target, the row's next token, one slot on
        slots = kv_start[:, None] + torch.arange(c0 + 1, c1 + 1, device=engine.device)[None]  # [B, c]
        targets = tokens.gather(1, slots)  # [B, c]
        logprobs.scatter_(1, slots, logp[None].expand(tokens.shape[0], -1, -1).gather(-1, targets[..., None])[..., 0])
        if top_values is not None and top_ids is not None:
            values, ids = logp.topk(top_values.shape[-1], dim=-1)  # [c, k]: the same at every row's position
            where = slots[..., None].expand(-1, -1, values.shape[-1])  # [B, c, k]
            top_values.scatter_(1, where, values[None].expand_as(where).contiguous())
            top_ids.scatter_(1, where, ids[None].expand_as(where).contiguous())
    shared_prompts.copy_prefix(cache.layers, head, starts, prefix)


def score_rows(engine: Engine, rows: Sequence[Sequence[int]], top_logprobs: int = 0) -> ScoreResult:
    """The log-probabilities of every token after the first of each row (rows of any lengths:
    the batch is left-padded and scored together); with ``top_logprobs`` = k, also the k likeliest
    tokens at each of those positions."""
    for i, row in enumerate(rows):
        if len(row) < 2:
            raise ValueError(f"text {i} has {len(row)} token(s); scoring needs at least two (the first is context only)")
    tokens, kv_start, t = engine._prepare(rows)  # [B, T] left-padded, [B] padding per row
    b = tokens.shape[0]
    cfg = engine.model.config
    cache = KVCache(cfg, b, t, engine.dtype, engine.device, grow=False)  # every slot is written at once
    budget = memory.prefill_chunk_tokens(cfg, engine.dtype, engine.device, engine.prefill_chunk_tokens)
    budget = min(budget, max(1, SCORE_LOGITS_BYTES // (2 * 4 * cfg.vocab_size)))
    chunk = max(1, budget // b)
    positions = (torch.arange(t, device=engine.device)[None, :] - kv_start[:, None]).clamp_min(0)
    starts = kv_start.tolist()
    logprobs = torch.zeros(b, t, dtype=torch.float32, device=engine.device)  # [B, T]: of the token at each slot
    k = top_logprobs
    top_values = torch.zeros(b, t, k, dtype=torch.float32, device=engine.device) if k else None  # [B, T, k]
    top_ids = torch.zeros(b, t, k, dtype=torch.long, device=engine.device) if k else None
    with torch.inference_mode():
        prefix = shared_prompts.shared_prefix(tokens, kv_start)
        if prefix:
            _score_prefix(engine, tokens, kv_start, cache, prefix, budget, logprobs, top_values, top_ids)
        # inputs 0..T-2 predict tokens 1..T-1; the last token is only a target
        for c0 in range(prefix, t - 1, chunk):
            c1 = min(t - 1, c0 + chunk)
            ctx = StepContext(positions[:, c0:c1], torch.arange(c0, c1, device=engine.device), c0, kv_start, c1, rope_len=t,
                              rows=rows_without_padding(starts, c0, c1, engine.device))  # texts of different lengths: packed
            logits = engine.model(tokens[:, c0:c1], ctx, cache.layers, last_only=False)  # [B, c, V] fp32 (zeros at packed padding)
            targets = tokens[:, c0 + 1 : c1 + 1, None]  # [B, c, 1]
            logp = logits.log_softmax(-1)
            logprobs[:, c0 + 1 : c1 + 1] = logp.gather(-1, targets)[..., 0]
            if top_values is not None and top_ids is not None:
                top_values[:, c0 + 1 : c1 + 1], top_ids[:, c0 + 1 : c1 + 1] = logp.topk(k, dim=-1)
    host = logprobs.tolist()
    for i in range(b):
        if not all(math.isfinite(v) for v in host[i][starts[i] + 1 :]):  # finite logits give finite log-probabilities
            raise nonfinite_error(engine.dtype, f"in text {i}")
    tops = None
    if top_values is not None and top_ids is not None:
        values, ids = top_values.tolist(), top_ids.tolist()
        tops = [[list(zip(ids[i][s], values[i][s])) for s in range(starts[i] + 1, t)] for i in range(b)]
    return ScoreResult(
        token_ids=[list(r) for r in rows],
        token_logprobs=[host[i][starts[i] + 1 :] for i in range(b)],
        top_logprobs=tops,
    )
