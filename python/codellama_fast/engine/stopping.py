"""When a sequence ends: its stop ids, stop strings (checked on the decoded text, which they
cut), transformers' stopping criteria (asked after each token) and ``max_time``; for beam search,
the same questions asked about every candidate of a step (CandidateStops)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from .finite import NO_TOKEN, no_token_error

# why a beam search candidate ends, as codes in [B, W] tensors (0: it goes on)
EOS, STOP, TIME, LENGTH = 1, 2, 3, 4
REASONS = {EOS: "eos", STOP: "stop", TIME: "time", LENGTH: "length"}


class Criteria:
    """transformers' stopping criteria, asked after each token with input_ids [B, T] (each prompt
    and every token generated for it, left-padded with 0) and scores None."""

    def __init__(self, criteria: Sequence[Callable[..., Any]], prompts: Sequence[Sequence[int]]) -> None:
        self.criteria, self.seqs = list(criteria), [list(p) for p in prompts]

    def push(self, tokens: Sequence[int]) -> list[bool]:
        """Appends each sequence's new token; whether each sequence should stop after it."""
        for seq, tok in zip(self.seqs, tokens):
            seq.append(tok)
        width = max(len(s) for s in self.seqs)
        return ask_criteria(self.criteria, torch.tensor([[0] * (width - len(s)) + s for s in self.seqs]))


def ask_criteria(criteria: Sequence[Callable[..., Any]], ids: torch.Tensor) -> list[bool]:
    """Whether any of transformers' stopping criteria ends each row of ids [N, T] (scores None);
    a criterion may answer one bool for all rows or one per row (a BoolTensor [N], as
    transformers' criteria do). With beam search the rows are the step's candidates."""
    n = ids.shape[0]
    stop = [False] * n
    for criterion in criteria:
        said = criterion(ids, None)
        if isinstance(said, torch.Tensor) and said.dim() > 1:
            raise ValueError(f"a stopping criterion returned a tensor of shape {tuple(said.shape)}; it must give one value per "
                             f"row of input_ids ({n} rows)")
        said = said.tolist() if hasattr(said, "tolist") else said
        if isinstance(said, (bool, int)):
            said = [bool(said)] * n
        elif isinstance(said, (list, tuple)) and all(isinstance(x, (bool, int)) for x in said):
            said = [bool(x) for x in said]
        else:
            raise TypeError(f"a stopping criterion must return a bool, or one per row of input_ids (a BoolTensor [{n}]), "
                            f"got {type(said).__name__}")
        if len(said) != n:
            raise ValueError(f"a stopping criterion returned {len(said)} values for the {n} rows of input_ids")
        stop = [a or b for a, b in zip(stop, said)]
    return stop


class Deadline:
    """transformers' max_time: ``seconds`` counted from now (before the prompt is run, as there);
    None: no limit."""

    def __init__(self, seconds: float | None) -> None:
        self.at = None if seconds is None else time.perf_counter() + seconds

    def passed(self) -> bool:
        return self.at is not None and time.perf_counter() > self.at


class StopTracker:
    """Per-sequence stop state: stop ids end a sequence at once; stop strings are checked on the
    decoded continuation and cut it; stopping criteria end it after the token they saw."""

    def __init__(self, stop_ids: Sequence[set[int]], stop_strings: Sequence[str], decoders: Sequence[Callable[[list[int]], str]],
                 criteria: Criteria | None = None) -> None:
        # stop_ids: each sequence's own (an infilling prompt's include ▁<EOT>)
        self.stop_ids, self.stop_strings, self.decoders = list(stop_ids), list(stop_strings), list(decoders)
        self.criteria = criteria
        batch = len(self.decoders)
        self.ids: list[list[int]] = [[] for _ in range(batch)]
        self.logprobs: list[list[float]] = [[] for _ in range(batch)]
        self.reasons: list[str | None] = [None] * batch
        self.cut_text: list[str | None] = [None] * batch

    def push(self, tokens: Sequence[int], logprobs: Sequence[float] | None = None) -> None:
        for b, tok in enumerate(tokens):
            if self.reasons[b] is not None:
                continue
            if tok == NO_TOKEN:  # the rules left this sequence, still going, nothing to choose
                raise no_token_error(f"for sequence {b} at generated token {len(self.ids[b]) + 1}")
            if tok in self.stop_ids[b]:
                self.reasons[b] = "eos"
                continue
            self.ids[b].append(tok)
            if logprobs is not None:
                self.logprobs[b].append(logprobs[b])
            if self.stop_strings:
                text = self.decoders[b](self.ids[b])
                cut = cut_at_stop(text, self.stop_strings)
                if len(cut) < len(text):  # a (non-empty) stop string was found
                    self.reasons[b] = "stop"
                    self.cut_text[b] = cut
        if self.criteria is not None:
            for b, stop in enumerate(self.criteria.push(tokens)):
                if stop and self.reasons[b] is None:
                    self.reasons[b] = "stop"

    def out_of_time(self) -> None:
        """max_time ran out: every sequence still going ends after the token it has."""
        self.reasons = [r or "time" for r in self.reasons]

    @property
    def all_done(self) -> bool:
        return all(r is not None for r in self.reasons)

    def texts(self) -> list[str]:
        return [cut if cut is not None else dec(ids) for cut, dec, ids in zip(self.cut_text, self.decoders, self.ids)]


class CandidateStops:
    """Beam search's ``candidate_ends``: what ends each candidate of a step besides a stop id, as
    transformers asks its stopping criteria about every candidate. A stop string in the
    candidate's decoded continuation (its prompt's decoder) ends it with STOP, as does a stopping
    criterion (asked with each candidate's prompt, left-padded with 0, and its tokens); once
    ``deadline`` has passed, every other candidate ends with TIME."""

    def __init__(self, prompts: torch.Tensor, stop_strings: Sequence[str], decoders: Sequence[Callable[[list[int]], str]],
                 criteria: Sequence[Callable[..., Any]], deadline: Deadline) -> None:
        # prompts [B, T]: left-padded with 0, as the stopping criteria see them in plain decoding
        self.prompts, self.decoders, self.criteria, self.deadline = prompts, list(decoders), list(criteria), deadline
        self.stop_strings = list(stop_strings)

    @property
    def active(self) -> bool:
        return bool(self.stop_strings or self.criteria or self.deadline.at is not None)

    def __call__(self, tokens: torch.Tensor, took_stop_id: torch.Tensor) -> torch.Tensor:
        """tokens [B, W, n] (each candidate's generated tokens), took_stop_id [B, W] -> codes [B, W]."""
        b, w, n = tokens.shape
        stop = [False] * (b * w)
        if self.criteria:
            rows = torch.cat([self.prompts.repeat_interleave(w, dim=0), tokens.reshape(b * w, n)], dim=1)
            stop = ask_criteria(self.criteria, rows.cpu())
        if self.stop_strings:
            host, took = tokens.tolist(), took_stop_id.tolist()
            for i in range(b):
                for j in range(w):
                    if not took[i][j] and not stop[i * w + j]:
                        text = self.decoders[i](host[i][j])
                        stop[i * w + j] = any(s in text for s in self.stop_strings)
        out_of_time = self.deadline.passed()
        codes = [STOP if hit else TIME if out_of_time else 0 for hit in stop]
        return torch.tensor(codes, dtype=torch.long, device=tokens.device).view(b, w)


def cut_at_stop(text: str, stop_strings: Sequence[str]) -> str:
    """`text` up to the first of the (non-empty) stop strings in it (all of it when none is)."""
    hits = [i for i in (text.find(s) for s in stop_strings) if i >= 0]
    return text[: min(hits)] if hits else text


def partial_stop_len(text: str, stops: Sequence[str]) -> int:
    """Length of the longest end of `text` that is a proper start of some stop string."""
    best = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:n]):
                best = n
                break
    return best
