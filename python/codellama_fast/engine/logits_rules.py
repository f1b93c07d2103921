"""The rules that act on the logits before each choice, in transformers' order (its logits
processors): ``sequence_bias``, ``encoder_repetition_penalty``, ``repetition_penalty``,
``no_repeat_ngram_size``, ``encoder_no_repeat_ngram_size``, ``bad_words_ids``,
``min_new_tokens`` (stop ids held back), the caller's ``prefix_allowed_tokens_fn``,
``forced_eos_token_id``, ``exponential_decay_length_penalty``, ``suppress_tokens``,
``begin_suppress_tokens``, token healing's limit on the first choice; ids
past the tokenizer's pieces (padded embedding rows) are never chosen; then the caller's
``logits_processor``; and engine.sampling chooses. The built-in rules stay on the device: the
picker keeps the sequence so far there (prompt and chosen tokens) and never reads it back, so a
step costs no host sync (the caller's functions are Python, and run on the host's request)."""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch

from .finite import NO_TOKEN
from .params import SamplingParams, TokenRules
from .sampling import apply_repetition_penalty, filter_logits, sample

if TYPE_CHECKING:
    from .guidance import Guidance


class History:
    """The sequence so far on the device: tokens [B, T + room] (left-padded prompt, then each
    chosen token), real [B, T + room] (False on padding slots, which never match), length n (host);
    the first prompt_len = T slots hold the prompts."""

    def __init__(self, tokens: torch.Tensor, kv_start: torch.Tensor, room: int) -> None:
        b, t = tokens.shape
        self.prompt_len = t
        self.tokens = torch.zeros(b, t + room, dtype=torch.long, device=tokens.device)
        self.tokens[:, :t] = tokens
        self.real = torch.ones(b, t + room, dtype=torch.bool, device=tokens.device)
        self.real[:, :t] = torch.arange(t, device=tokens.device)[None, :] >= kv_start[:, None]
        self.n = t

    def append(self, nxt: torch.Tensor) -> None:
        if self.n < self.tokens.shape[1]:  # a caller never picks more than `room` tokens
            self.tokens[:, self.n] = nxt
        self.n += 1

    def ends_with(self, prefixes: torch.Tensor) -> torch.Tensor:
        """prefixes [E, k] -> [B, E]: whether the sequence's last k tokens are each prefix."""
        k = prefixes.shape[1]
        window, real = self.tokens[:, self.n - k : self.n], self.real[:, self.n - k : self.n]  # [B, k]
        return ((window[:, None, :] == prefixes[None]) & real[:, None, :]).all(-1)


def ngram_bans(history: History, size: int, vocab: int, prompt_only: bool = False) -> torch.Tensor | None:
    """transformers' no_repeat_ngram_size: [B, V] True for each token that would complete an n-gram
    (n = size) already in the sequence, given its last n-1 tokens; None while it is shorter than n.
    ``prompt_only``: the n-grams of the prompt alone (encoder_no_repeat_ngram_size)."""
    end = history.prompt_len if prompt_only else history.n
    if end < size:
        return None
    seq, real = history.tokens[:, :end], history.real[:, :end]
    grams = seq.unfold(1, size, 1)  # [B, W, n]: every n-gram so far (or of the prompt)
    valid = real.unfold(1, size, 1).all(-1)  # [B, W]: no padding in it
    last = history.tokens[:, history.n - size + 1 : history.n]  # [B, n-1]
    hit = (grams[:, :, :-1] == last[:, None, :]).all(-1) & valid  # [B, W]
    # each hit bans its n-gram's last token; misses go to a spare column V, dropped
    target = torch.where(hit, grams[:, :, -1], vocab)
    bans = torch.zeros(seq.shape[0], vocab + 1, dtype=torch.bool, device=seq.device)
    return bans.scatter_(1, target, True)[:, :vocab]


class SequenceBias:
    """Biases for token sequences, as transformers' SequenceBiasLogitsProcessor (and, with -inf,
    NoBadWordsLogitsProcessor) adds them: one-token sequences always; longer ones to their last
    token when the sequence so far ends with the tokens before it. A repeated sequence keeps the
    last bias given."""

    def __init__(self, entries: Sequence[tuple[Sequence[int], float]], vocab: int, device: torch.device) -> None:
        unique = {tuple(seq): float(bias) for seq, bias in entries}
        self.always = torch.zeros(vocab, device=device)
        groups: dict[int, list[tuple[tuple[int, ...], float]]] = {}
        for seq, bias in unique.items():
            if len(seq) == 1:
                self.always[seq[0]] = bias
            else:
                groups.setdefault(len(seq) - 1, []).append((seq, bias))
        self.any_always = bool(self.always.ne(0).any())
        # by prefix length k: prefixes [E, k], last tokens [E], biases [E]
        self.groups = [(torch.tensor([s[:-1] for s, _ in group], device=device), torch.tensor([s[-1] for s, _ in group], device=device),
                        torch.tensor([b for _, b in group], device=device)) for _, group in sorted(groups.items())]

    def __call__(self, logits: torch.Tensor, history: History | None) -> torch.Tensor:
        if self.any_always:
            logits = logits + self.always
        for prefixes, last, bias in self.groups:
            if history is None or history.n < prefixes.shape[1] + 1:  # longer than the sequence so far
                continue
            added = torch.where(history.ends_with(prefixes), bias[None, :], 0.0)  # [B, E]
            logits = logits.index_add(1, last, added)
        return logits


class RuleState:
    """``rules`` applied step by step to a batch of sequences: ``apply`` the logits [B, V] of the
    next position, then ``advance`` with the chosen ids [B]; ``reorder`` the rows when they are
    regrouped (beam search). tokens [B, T]: the left-padded prompts, row b's first real slot
    kv_start[b]; ``room``: the most choices to come; ids from ``allowed`` on (embedding rows past
    the tokenizer's pieces) are never chosen."""

    def __init__(self, rules: TokenRules, tokens: torch.Tensor, kv_start: torch.Tensor, vocab: int, room: int,
                 allowed: int | None = None, rows_per_prompt: int = 1) -> None:
        self.rules, self.vocab, self.rows_per_prompt = rules, vocab, rows_per_prompt
        device = tokens.device
        cut = allowed if allowed is not None and allowed < vocab else None
        multi = any(len(s) > 1 for s in rules.bad_words_ids) or any(len(s) > 1 for s, _ in rules.sequence_bias)
        callers = rules.prefix_allowed_tokens_fn is not None or bool(rules.logits_processor)
        ngrams = rules.no_repeat_ngram_size or rules.encoder_no_repeat_ngram_size
        self.history = History(tokens, kv_start, room) if ngrams or multi or callers else None
        b, t = tokens.shape
        real = torch.arange(t, device=device)[None, :] >= kv_start[:, None]  # [B, T], not padding

        def prompt_tokens() -> torch.Tensor:  # [B, V] True for each token in the row's prompt
            seen = torch.zeros(b, vocab, dtype=torch.bool, device=device)
            return seen.scatter_(1, torch.where(real, tokens, tokens[:, -1:]), True)  # padding slots repeat a real token

        self.seen = prompt_tokens() if rules.repetition_penalty != 1.0 else None  # grows with each choice
        self.in_prompt = prompt_tokens() if rules.encoder_repetition_penalty != 1.0 else None
        self.bias = SequenceBias(rules.sequence_bias, vocab, device) if rules.sequence_bias else None
        self.bad = SequenceBias([(s, float("-inf")) for s in rules.bad_words_ids], vocab, device) if rules.bad_words_ids else None

        def ban_mask(ids: Sequence[int] | range) -> torch.Tensor:
            mask = torch.zeros(vocab, dtype=torch.bool, device=device)
            mask[torch.tensor(list(ids), dtype=torch.long, device=device)] = True
            return mask

        self.always = ban_mask([*rules.suppress_tokens, *(range(cut, vocab) if cut is not None else ())])
        self.early = ban_mask(rules.held_back) if rules.min_new_tokens else None
        self.begin = ban_mask(rules.begin_suppress_tokens) if rules.begin_suppress_tokens else None
        self.forced = None  # [V] True for every id but the forced ones
        if rules.forced_eos:
            self.forced = torch.ones(vocab, dtype=torch.bool, device=device)
            self.forced[torch.tensor(rules.forced_eos, dtype=torch.long, device=device)] = False
        self.decay_ids = torch.tensor(rules.decay_ids, dtype=torch.long, device=device)
        self.first = None  # [B, V] True where a row's first choice may not go (token healing)
        if any(a is not None for a in rules.first_allowed):
            first = torch.zeros(len(rules.first_allowed), vocab, dtype=torch.bool, device=device)
            for row, ids in enumerate(rules.first_allowed):
                if ids is not None:
                    first[row] = True
                    first[row, torch.tensor(ids, dtype=torch.long, device=device)] = False
            self.first = first.repeat_interleave(rows_per_prompt, dim=0)
        self.chosen = 0

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        """logits [B, V] -> fp32 logits with the rules applied, in transformers' order."""
        rules = self.rules
        logits = logits.float()
        if self.bias is not None:
            logits = self.bias(logits, self.history)
        if self.in_prompt is not None:
            # transformers' EncoderRepetitionPenaltyLogitsProcessor: repetition_penalty's rule, inverted
            logits = apply_repetition_penalty(logits, self.in_prompt, 1 / rules.encoder_repetition_penalty)
        if self.seen is not None:
            logits = apply_repetition_penalty(logits, self.seen, rules.repetition_penalty)
        for size, prompt_only in ((rules.no_repeat_ngram_size, False), (rules.encoder_no_repeat_ngram_size, True)):
            if size and self.history is not None:
                bans = ngram_bans(self.history, size, self.vocab, prompt_only)
                if bans is not None:
                    logits = logits.masked_fill(bans, float("-inf"))
        if self.bad is not None:
            logits = self.bad(logits, self.history)
        if self.early is not None and self.chosen < rules.min_new_tokens:
            logits = logits.masked_fill(self.early, float("-inf"))
        if rules.prefix_allowed_tokens_fn is not None and self.history is not None:
            logits = self._allowed_prefix(logits, self.history.tokens[:, : self.history.n])
        if self.forced is not None and self.chosen == rules.forced_eos_at:
            # transformers' ForcedEOSTokenLogitsProcessor: the forced ids at 0, every other -inf
            logits = torch.zeros_like(logits).masked_fill_(self.forced, float("-inf"))
        if rules.length_decay is not None and self.decay_ids.numel() and self.chosen > rules.length_decay[0]:
            logits = self._decay(logits, *rules.length_decay)
        blocked = self.always
        if self.begin is not None and self.chosen == 0:
            blocked = blocked | self.begin
        if self.first is not None and self.chosen == 0:
            blocked = blocked | self.first
        logits = logits.masked_fill(blocked, float("-inf"))
        if self.history is not None and rules.logits_processor:
            logits = self._processors(logits, self.history.tokens[:, : self.history.n])
        return logits

    def _decay(self, logits: torch.Tensor, start: int, factor: float) -> torch.Tensor:
        """transformers' ExponentialDecayLengthPenalty at choice number ``chosen`` (> start): each
        stop id's logit x becomes x + |x| (factor ** (chosen - start) - 1). A stop id already at
        -inf (held back by min_new_tokens, or not the id forced_eos_token_id forces) stays there,
        where transformers' arithmetic makes it NaN (which its argmax then picks)."""
        eos = logits.index_select(1, self.decay_ids)  # [B, E]
        raised = eos + eos.abs() * (factor ** (self.chosen - start) - 1)
        return logits.index_copy(1, self.decay_ids, torch.where(torch.isfinite(eos), raised, eos))

    def _allowed_prefix(self, logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """The caller's prefix_allowed_tokens_fn; ids [B, T]: the sequences so far (padding slots
        hold 0), as transformers passes its input_ids."""
        fn = self.rules.prefix_allowed_tokens_fn
        if fn is not None:
            allowed = torch.zeros_like(logits, dtype=torch.bool)
            for row in range(logits.shape[0]):
                ok = fn(row // self.rows_per_prompt, ids[row])
                ok = ok.tolist() if hasattr(ok, "tolist") else list(ok)  # none: the row is left no token
                bad = [t for t in ok if not (isinstance(t, numbers.Integral) and not isinstance(t, bool) and 0 <= t < self.vocab)]
                if bad:
                    raise ValueError(f"prefix_allowed_tokens_fn returned {bad[0]!r}, not a token id of this model's {self.vocab}")
                allowed[row, [int(t) for t in ok]] = True
            logits = logits.masked_fill(~allowed, float("-inf"))
        return logits

    def _processors(self, logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """The caller's logits_processor callables, after every other rule (ids as above)."""
        for proc in self.rules.logits_processor:
            out = proc(ids, logits)
            if not isinstance(out, torch.Tensor) or out.shape != logits.shape:
                raise TypeError(f"a logits_processor must return the scores tensor of shape {tuple(logits.shape)}, "
                                f"got {type(out).__name__}{' of shape ' + str(tuple(out.shape)) if isinstance(out, torch.Tensor) else ''}")
            logits = out.float()
        return logits

    def advance(self, nxt: torch.Tensor) -> None:
        if self.seen is not None:
            self.seen.scatter_(1, nxt[:, None], True)
        if self.history is not None:
            self.history.append(nxt)
        self.chosen += 1

    def reorder(self, rows: torch.Tensor) -> None:
        """Row i continues the sequence of row rows[i] (int64 [B])."""
        if self.seen is not None:
            self.seen = self.seen[rows]
        if self.in_prompt is not None:
            self.in_prompt = self.in_prompt[rows]
        if self.first is not None:
            self.first = self.first[rows]
        if self.history is not None:
            self.history.tokens, self.history.real = self.history.tokens[rows], self.history.real[rows]


class StepLog:
    """transformers' ``output_scores`` and ``output_logits``: each step's scores [B, V] fp32 as its
    processors and, when sampling, its warpers leave them (temperature, then the filters' -inf),
    and each step's raw logits [B, V] fp32; on the device, one entry per choice made.
    ``renormalize``: the scores made log-probabilities at the end (transformers' renormalize_logits)."""

    def __init__(self, params: SamplingParams, scores: bool, logits: bool, renormalize: bool = False) -> None:
        self.params, self.renormalize = params, renormalize
        self.scores: list[torch.Tensor] | None = [] if scores else None
        self.logits: list[torch.Tensor] | None = [] if logits else None

    def record(self, raw: torch.Tensor, ruled: torch.Tensor) -> None:
        """raw [B, V]: the model's logits (a captured step's buffer: copied); ruled [B, V] fp32:
        after the rules (a new tensor each step, never changed after)."""
        if self.logits is not None:
            self.logits.append(raw.float().clone())
        if self.scores is not None:
            p = self.params
            scores = ruled if p.greedy else filter_logits(ruled / p.temperature, p.top_k, p.top_p, p.min_p, p.typical_p,
                                                                  p.epsilon_cutoff, p.eta_cutoff)
            self.scores.append(renormalized(scores) if self.renormalize else scores)


def renormalized(scores: torch.Tensor) -> torch.Tensor:
    """transformers' LogitNormalization: scores [B, V] -> log_softmax. A row the rules left all
    -inf stays so (its log_softmax would be NaN)."""
    return torch.where(torch.isinf(scores.amax(dim=-1, keepdim=True)), scores, scores.log_softmax(dim=-1))


def make_picker(params: SamplingParams, rules: TokenRules, gen: torch.Generator | None, tokens: torch.Tensor, kv_start: torch.Tensor,
                vocab: int, room: int, allowed: int | None = None, log: StepLog | None = None,
                guidance: Guidance | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """The per-step choice: logits [B, V] -> next ids [B], with ``rules`` applied first (arguments
    as RuleState's); a row the rules leave no token gets NO_TOKEN (-1: the caller feeds the model
    a real id there, and raises only if that sequence is still going). ``log`` keeps each step's
    scores; ``guidance`` (engine.guidance) turns the logits into guided scores before every rule,
    as transformers' first processor."""
    if not rules.active and (allowed is None or allowed >= vocab) and log is None and guidance is None:
        return lambda logits: sample(logits, params, gen)
    state = RuleState(rules, tokens, kv_start, vocab, room, allowed)

    def pick(logits: torch.Tensor) -> torch.Tensor:
        scores = state.apply(logits if guidance is None else guidance(logits))
        if log is not None:
            log.record(logits, scores)
        nxt = sample(scores, params, gen)  # a real id even where every score is -inf
        state.advance(nxt)
        if guidance is not None:
            guidance.advance(nxt)
        return nxt.masked_fill(scores.amax(dim=-1) == float("-inf"), NO_TOKEN)

    return pick
