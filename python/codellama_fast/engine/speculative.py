"""Guess-and-check decoding: guess the next tokens cheaply (engine.prompt_lookup's n-grams, or
engine.assisted's smaller model), check all guesses with one forward pass of the model, and keep
the ones the model itself chooses. Each kept guess saves a decode step; the tokens are exactly
those plain decoding gives, sampling included (every position is chosen as plain decoding
chooses it, and a guess is kept only when it equals that choice).

One sequence at a time (batch 1). A step that checks guesses runs eagerly (its length varies); a
step without guesses replays the captured one-token decode step when the engine has one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Protocol

import torch

from .cuda_graph import GraphDecoder
from .model import LlamaModel, StepContext


class Guesser(Protocol):
    """A source of guesses over the sequence so far (the prompt and the emitted tokens)."""

    seq: list[int]

    def extend(self, tokens: list[int]) -> None:
        """Appends tokens the model emitted (after a `candidates` call: its kept guesses first)."""

    def candidates(self, k: int, stop_ids: set[int]) -> list[int]:
        """Up to ``k`` guessed next tokens, none of them a stop id."""


def guess_and_check(model: LlamaModel, caches: list[tuple[torch.Tensor, torch.Tensor]], guesser: Guesser, prompt_len: int, max_new_tokens: int, num_tokens: int,
                    stop_ids: set[int], pick: Callable[[torch.Tensor], torch.Tensor], logprob_of: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                    logprobs: list[list[float]] | None, stats: dict[str, Any], clock: Callable[[], float],
                    graph: GraphDecoder | None = None, adapt: bool = False) -> Iterator[list[int]]:
    """Yields the tokens after the first one by one, as ``[token]`` lists like the plain loop.
    ``guesser.seq``: the prompt's tokens and the first generated one (chosen from the prefill, not
    yet in the cache); the KV cache holds the prompt (slots 0..prompt_len-1) and has room for
    ``max_new_tokens`` more.

    A step feeds the newest token and the guesses c1..ck at once; position j's logits choose token j+1 with
    the same ``pick`` as plain decoding (so filters, penalties and min_new_tokens act in order); the
    guesses are kept while each equals the choice, and the first choice that differs (or the one
    after the last guess) is emitted too, so every step emits at least one token. ``graph``: a
    non-greedy decode step on the same cache, replayed for the steps without guesses. ``adapt``:
    transformers' "heuristic" schedule, 2 more guesses after a step that kept all of its guesses,
    1 fewer (at least 1) after one that did not; ``stats["num_tokens"]`` ends as the last count."""
    device = model.embed.weight.device
    kv_start = torch.zeros(1, dtype=torch.long, device=device)
    done = 1  # tokens emitted so far; the newest is not in the cache yet
    decode_start = clock()
    while done < max_new_tokens:
        room = max_new_tokens - done - 1  # guesses past this could never be emitted
        guesses = guesser.candidates(min(num_tokens, room), stop_ids) if room > 0 else []
        slot = prompt_len + done - 1  # where the newest token goes
        if graph is not None and not guesses:
            here = torch.full((1,), slot, dtype=torch.long, device=device)
            graph.start(torch.full((1,), guesser.seq[-1], dtype=torch.long, device=device), here, slot)
            logits = graph.replay()  # [1, V] fp32: the one-token step, captured
        else:
            fed = torch.tensor([[guesser.seq[-1], *guesses]], dtype=torch.long, device=device)  # [1, 1+g]
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
                scores.append(logprob_of(row, chosen.clamp_min(0)).tolist())  # NO_TOKEN (-1) ends the pass
            if j == len(guesses) or emitted[-1] != guesses[j]:
                break
        guesser.extend(emitted)
        if adapt and guesses:
            num_tokens = num_tokens + 2 if len(emitted) - 1 == len(guesses) else max(1, num_tokens - 1)
        stats["num_tokens"] = num_tokens
        done += len(emitted)
        stats["decode_tokens"] += len(emitted)
        stats["decode_s"] = clock() - decode_start
        stats["guesses_made"] = stats.get("guesses_made", 0) + len(guesses)
        stats["guesses_kept"] = stats.get("guesses_kept", 0) + len(emitted) - 1
        for j, tok in enumerate(emitted):
            if logprobs is not None:
                logprobs.append(scores[j])
            yield [tok]
