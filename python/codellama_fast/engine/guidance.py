"""Classifier-free guidance (transformers' ``guidance_scale`` with ``negative_prompt_ids``, its
UnbatchedClassifierFreeGuidanceLogitsProcessor): beside each sequence the model also reads an
unconditional one, the negative prompt (or, without one, the prompt's last token) followed by the
same generated tokens, and each step's log-probabilities are pushed away from it:

    scores = scale * (log_softmax(cond) - log_softmax(uncond)) + log_softmax(uncond)

The unconditional rows have a KV cache of their own and run one token per choice, after the
choice is made, so every decoding path that chooses token by token (plain, captured, guessing)
takes them as they are; the other rules then act on these scores. Beam search regroups them with
the beams (``reorder``), so each beam's unconditional side reads that beam's own tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from .cache import KVCache
from .model import LlamaModel, StepContext


class Guidance:
    """The unconditional side of B sequences. ``negative`` [B] token lists (each at least one
    token); ``room``: the most choices to come; ``prefill(tokens, kv_start, cache)`` runs
    left-padded prompts into a cache and returns their last logits [B, V]."""

    def __init__(self, model: LlamaModel, prefill: Callable[[torch.Tensor, torch.Tensor, KVCache], torch.Tensor],
                 negative: Sequence[Sequence[int]], scale: float, room: int, dtype: torch.dtype, device: torch.device) -> None:
        self.model, self.scale = model, scale
        t = max(len(n) for n in negative)
        self.tokens = torch.tensor([[0] * (t - len(n)) + list(n) for n in negative], dtype=torch.long, device=device)  # [B, L]
        self.kv_start = torch.tensor([t - len(n) for n in negative], dtype=torch.long, device=device)  # [B]: padding slots
        self.cache = KVCache(model.config, len(negative), t + room, dtype, device)
        self.prefill, self.filled = prefill, 0  # slots written (0: the negative prompts are not run yet)
        self.pending: torch.Tensor | None = None  # [B]: the last choice, to run before the next one

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        """logits [B, V] of the sequences -> the guided scores [B, V] fp32."""
        cond = torch.log_softmax(logits.float(), dim=-1)
        uncond = torch.log_softmax(self._next_logits().float(), dim=-1)
        return self.scale * (cond - uncond) + uncond

    def reorder(self, order: torch.Tensor) -> None:
        """Row i of the unconditional side becomes row order[i] (beam search's regrouping, [B])."""
        self.cache.reorder_rows(order, self.filled)
        self.kv_start = self.kv_start.index_select(0, order)

    def advance(self, chosen: torch.Tensor) -> None:
        """The ids [B] just chosen: the unconditional rows take them too (run at the next call)."""
        self.pending = chosen

    def _next_logits(self) -> torch.Tensor:
        if self.filled == 0:
            self.filled = self.tokens.shape[1]
            return self.prefill(self.tokens, self.kv_start, self.cache)
        assert self.pending is not None, "a choice is made before each next call"
        slot = self.filled
        positions = (slot - self.kv_start)[:, None]  # [B, 1]: real positions, padding excluded
        ctx = StepContext(positions, torch.tensor([slot], device=self.tokens.device), slot, self.kv_start, slot + 1)
        self.filled += 1
        return self.model(self.pending[:, None], ctx, self.cache.layers)
