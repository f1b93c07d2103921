"""What a generation returns: the texts and ids of each sequence, why each ended, the timings,
and what the call asked for besides (log-probabilities, beam scores, each step's scores)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch


@dataclass
class GenerationResult:
    texts: list[str]
    token_ids: list[list[int]]
    # per sequence: "eos" (a stop id), "stop" (a stop string or stopping criterion), "length"
    # (max_new_tokens), "time" (max_time ran out)
    finish_reasons: list[str]
    prompt_tokens: list[int]
    time_to_first_token_s: float
    decode_tokens_per_s: float
    prefill_tokens_per_s: float  # the tokens prefilled (a prompt repeated in the batch counts once) per second
    total_s: float
    # with return_logprobs: each generated token's log-probability under the model (its raw
    # logits' log-softmax, before temperature, filtering or penalties), aligned with token_ids
    token_logprobs: list[list[float]] | None = None
    # with top_logprobs=k: for each generated token, the k likeliest tokens at its position as
    # (id, log-probability) pairs, likeliest first (under the same raw logits)
    top_logprobs: list[list[list[tuple[int, float]]]] | None = None
    # prompt lookup / assisted decoding: the guesses checked and the ones the model kept (each
    # kept guess is a decode pass saved); 0 for plain decoding
    guesses_made: int = 0
    guesses_kept: int = 0
    # tokens at the start of the prompt whose keys and values came from the engine's previous
    # single-sequence call (its prompt and output began this one): not prefilled again, and not
    # counted in prefill_tokens_per_s (Engine.reuse_prompt_cache)
    prompt_tokens_reused: int = 0
    # beam search: each returned beam's score (summed log-probability / length ** length_penalty,
    # transformers' sequences_scores), best first within each prompt
    sequence_scores: list[float] | None = None
    # transformers' output_scores / output_logits: per step, [sequences, V] fp32 on the model's
    # device: the scores the choice was made from (after the rules and, when sampling, the
    # temperature and filters) / the model's logits. A sequence that ended before the others has
    # entries past its end too (the engine goes on computing it), which mean nothing. With beam
    # search, [prompts × num_beams, V]: the running beams' log-probabilities after the rules, as
    # transformers'; beam_indices then gives, per returned beam and for each of its steps (a final
    # stop id's included), the row of that step's scores it was chosen from.
    scores: tuple[torch.Tensor, ...] | None = None
    logits: tuple[torch.Tensor, ...] | None = None
    beam_indices: list[list[int]] | None = None

    @property
    def text(self) -> str:
        return self.texts[0]

    def row(self, k: int) -> "GenerationResult":
        """Sequence ``k`` alone (the batch's timings). With beam search the step scores and logits
        stay whole: its ``beam_indices`` point into them."""
        logprobs = None if self.token_logprobs is None else [self.token_logprobs[k]]
        scores = None if self.sequence_scores is None else [self.sequence_scores[k]]
        tops = None if self.top_logprobs is None else [self.top_logprobs[k]]
        beams = None if self.beam_indices is None else [self.beam_indices[k]]
        steps, raw = self.scores, self.logits
        if beams is None:
            steps = None if steps is None else tuple(s[k : k + 1] for s in steps)
            raw = None if raw is None else tuple(s[k : k + 1] for s in raw)
        return dataclasses.replace(self, texts=[self.texts[k]], token_ids=[self.token_ids[k]],
                                   finish_reasons=[self.finish_reasons[k]], prompt_tokens=[self.prompt_tokens[k]],
                                   token_logprobs=logprobs, sequence_scores=scores, top_logprobs=tops, scores=steps,
                                   logits=raw, beam_indices=beams)

    def summary(self) -> str:
        n = sum(len(t) for t in self.token_ids)
        out = (f"{n} tokens in {self.total_s:.2f} s; time to first token {self.time_to_first_token_s * 1e3:.1f} ms; "
               f"decode {self.decode_tokens_per_s:.1f} tokens/s; prefill {self.prefill_tokens_per_s:.1f} tokens/s")
        if self.guesses_made:
            kept = 100 * self.guesses_kept / self.guesses_made
            out += f"; guesses kept {self.guesses_kept} of {self.guesses_made} ({kept:.0f}%)"
        if self.prompt_tokens_reused:
            out += f"; {self.prompt_tokens_reused} prompt tokens reused from the last call"
        return out


@dataclass
class InfillResult:
    prefix: str
    middle: str
    suffix: str
    generation: GenerationResult

    @property
    def text(self) -> str:
        return self.prefix + self.middle + self.suffix
