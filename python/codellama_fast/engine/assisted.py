"""Assisted (speculative) decoding's guesses, as transformers' ``assistant_model``: a smaller model
of the same vocabulary (Code Llama 7B for 13B or 34B) continues the sequence greedily for a few
tokens; engine.speculative checks them with one pass of the large model. The draft keeps its own
KV cache in step with the accepted tokens, so each step feeds it only what it has not seen.

The draft stops guessing after a token it is unsure of (its probability under
``threshold``, transformers' ``assistant_confidence_threshold``) and before a stop id.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from .cuda_graph import GraphDecoder
from .model import LlamaModel, StepContext

Prefill = Callable[[torch.Tensor], torch.Tensor]  # tokens [1, T] from slot 0 -> last logits [1, V]


def check_vocabularies(target: Sequence[str], draft: Sequence[str]) -> None:
    """The draft must give every id the target's piece: the ids both have must mean the same
    pieces (a 32016-piece Code Llama 7B may assist a 32000-piece 34B; its extra ids are never
    guessed)."""
    common = min(len(target), len(draft))
    differ = next((i for i in range(common) if target[i] != draft[i]), None)
    if differ is not None:
        raise ValueError(f"the assistant model's tokenizer differs from the model's (id {differ} is {draft[differ]!r} there, "
                         f"{target[differ]!r} here): an assistant must share the vocabulary")


class DraftGuesser:
    """Guesses from a draft model (an engine.speculative Guesser).

    ``caches``: the draft's KV cache (batch 1, room for the whole generation); ``graph``: a
    non-greedy decode step captured on that cache, or None (one-token steps then run eagerly);
    ``prefill``: fills the cache from slot 0 (chunked as the draft engine's prefill);
    ``vocab``: guesses are ids below it (the target's vocabulary)."""

    def __init__(self, model: LlamaModel, caches: list[tuple[torch.Tensor, torch.Tensor]], graph: GraphDecoder | None,
                 prefill: Prefill, vocab: int, threshold: float) -> None:
        self.model, self.caches, self.graph, self.prefill = model, caches, graph, prefill
        self.vocab, self.threshold = vocab, threshold
        self.device = model.embed.weight.device
        self.kv_start = torch.zeros(1, dtype=torch.long, device=self.device)
        self.seq: list[int] = []
        self.filled = 0  # leading tokens of seq whose K/V the draft cache holds
        self._last: tuple[int, list[int]] | None = None  # (len(seq), guesses) of the last candidates()

    def extend(self, tokens: list[int]) -> None:
        if self._last is not None:
            base, guesses = self._last
            kept = 0
            while kept < min(len(tokens), len(guesses)) and tokens[kept] == guesses[kept]:
                kept += 1
            # the cache holds the guesses it was fed (all but the last); past the kept ones they are stale
            self.filled = base + min(kept, max(len(guesses) - 1, 0))
            self._last = None
        self.seq.extend(tokens)

    def candidates(self, k: int, stop_ids: set[int]) -> list[int]:
        logits = self._feed(self.seq[self.filled :], self.filled)
        self.filled = len(self.seq)
        guesses: list[int] = []
        while len(guesses) < k:
            best = logits[: self.vocab].float().softmax(-1).max(-1)  # over [V]
            p, tok = torch.stack((best.values.double(), best.indices.double())).tolist()  # one host read
            if int(tok) in stop_ids:
                break
            guesses.append(int(tok))
            if p < self.threshold or len(guesses) == k:
                break  # the unsure token is still a guess, as transformers' ConfidenceCriteria keeps it
            logits = self._feed([int(tok)], len(self.seq) + len(guesses) - 1)
        self._last = (len(self.seq), guesses)
        return guesses

    def _feed(self, tokens: list[int], slot: int) -> torch.Tensor:
        """Runs `tokens` into the draft cache from `slot`; the last position's logits [V]."""
        if slot == 0:
            return self.prefill(torch.tensor([tokens], dtype=torch.long, device=self.device))[0]
        if len(tokens) == 1 and self.graph is not None:
            here = torch.full((1,), slot, dtype=torch.long, device=self.device)
            self.graph.start(torch.full((1,), tokens[0], dtype=torch.long, device=self.device), here, slot)
            return self.graph.replay()[0]
        fed = torch.tensor([tokens], dtype=torch.long, device=self.device)  # [1, n]
        span = torch.arange(slot, slot + len(tokens), device=self.device)
        ctx = StepContext(span[None, :], span, slot, self.kv_start, slot + len(tokens))
        return self.model(fed, ctx, self.caches)[0]  # last position, [V] fp32
