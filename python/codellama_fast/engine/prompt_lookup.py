"""Prompt-lookup guesses (transformers' ``prompt_lookup_num_tokens``): the next tokens guessed by
finding the sequence's last n-gram earlier in it (code edits and refactors repeat their input).
engine.speculative checks them against the model.
"""

from __future__ import annotations


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
