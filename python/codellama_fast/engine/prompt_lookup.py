"""Prompt-lookup decoding (transformers' ``prompt_lookup_num_tokens``): guess the next tokens by
finding the sequence's last n-gram earlier in it (code edits and refactors repeat their input),
check all guesses with one forward pass, and keep the ones the model itself would have chosen.
Each kept guess saves a decode step; the tokens are exactly those plain decoding gives.

One sequence at a time (batch 1). A step that checks guesses runs eagerly (its length varies); a
step without guesses replays the captured one-token decode step when the engine has one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch

from .cuda_graph import GraphDecoder
from .model import LlamaModel, StepContext


class NgramIndex:
    """The earliest start of every n-gram (n = 1..max_n) of a growing token sequence."""

    def __init__(self, max_n: int) -> None:
        self.max_n = max_n
        self.seq: list[int] = []
        self.first: dict[tuple[int, ...], int] = {}

    def extend(self, tokens: list[int]) -> None:
        for tok in tokens:
            self.seq.append(tok)
            end = len(self.seq)
            for n in range(1, min(self.max_n, end) + 1):
                self.first.setdefault(tuple(self.seq[end - n :]), end - n)

    def candidates(self, k: int, stop_ids: set[int]) -> list[int]:
        """Up to ``k`` tokens that followed the earliest earlier occurrence of the sequence's last
        n-gram (longest n first), cut before any stop id; [] when there is none. transformers'
        PromptLookupCandidateGenerator picks the same ones."""
        end = len(self.seq)
        for n in range(min(self.max_n, end - 1), 0, -1):
            start = self.first.get(tuple(self.seq[end - n :]))
            if start is None or start + n >= end:
                continue  # the n-gram occurs only at the end
            out = self.seq[start + n : min(start + n + k, end)]
            cut = next((i for i, tok in enumerate(out) if tok in stop_ids), len(out))
            return out[:cut]
        return []


def lookup_decode(model: LlamaModel, caches: list[tuple[torch.Tensor, torch.Tensor]], history: list[int], prompt_len: int, max_new_tokens: int, num_tokens: int, ngram_size: int, stop_ids: set[int],
                  pick: Callable[[torch.Tensor], torch.Tensor], logprob_of: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                  logprobs: list[list[float]] | None, stats: dict[str, Any], clock: Callable[[], float],
                  graph: GraphDecoder | None = None) -> Iterator[list[int]]:
    """Yields the tokens after the first one by one, as ``[token]`` lists like the plain loop.
    ``history``: the prompt's tokens and the first generated one (chosen from the prefill, not yet
    in the cache); the KV cache holds the prompt (slots 0..prompt_len-1) and has room for
    ``max_new_tokens`` more.

    A step feeds the newest token and the guesses c1..ck at once; position j's logits choose token j+1 with
    the same ``pick`` as plain decoding (so filters, penalties and min_new_tokens act in order); the
    guesses are kept while each equals the choice, and the first choice that differs (or the one
    after the last guess) is emitted too, so every step emits at least one token. ``graph``: a
    non-greedy decode step on the same cache, replayed for the steps without guesses."""
    device = model.embed.weight.device
    index = NgramIndex(ngram_size)
    index.extend(history)
    kv_start = torch.zeros(1, dtype=torch.long, device=device)
    done = 1  # tokens emitted so far; the newest is not in the cache yet
    decode_start = clock()
    while done < max_new_tokens:
        room = max_new_tokens - done - 1  # guesses past this could never be emitted
        guesses = index.candidates(min(num_tokens, room), stop_ids) if room > 0 else []
        slot = prompt_len + done - 1  # where the newest token goes
        if graph is not None and not guesses:
            here = torch.full((1,), slot, dtype=torch.long, device=device)
            graph.start(torch.full((1,), index.seq[-1], dtype=torch.long, device=device), here, slot)
            logits = graph.replay()  # [1, V] fp32: the one-token step, captured
        else:
            fed = torch.tensor([[index.seq[-1], *guesses]], dtype=torch.long, device=device)  # [1, 1+g]
            span = torch.arange(slot, slot + fed.shape[1], device=device)
            ctx = StepContext(span[None, :], span, slot, kv_start, slot + fed.shape[1])
            logits = model(fed, ctx, caches, last_only=False)[0]  # [1+g, V] fp32
        emitted: list[int] = []
        scores: list[list[float]] = []
        for j in range(len(guesses) + 1):
            row = logits[j : j + 1]
            chosen = pick(row)  # [1]
            emitted.append(int(chosen.item()))
            if logprobs is not None:
                scores.append(logprob_of(row, chosen).tolist())
            if j == len(guesses) or emitted[-1] != guesses[j]:
                break
        index.extend(emitted)
        done += len(emitted)
        stats["decode_tokens"] += len(emitted)
        stats["decode_s"] = clock() - decode_start
        stats["lookup_steps"] = stats.get("lookup_steps", 0) + 1
        for j, tok in enumerate(emitted):
            if logprobs is not None:
                logprobs.append(scores[j])
            yield [tok]
