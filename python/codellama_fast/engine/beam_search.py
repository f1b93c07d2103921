"""Beam search with transformers' rules (``generate(num_beams=k)``): every step keeps the k best
unfinished continuations of each prompt by summed log-probability; a continuation that ends (a stop
id, or the last allowed token) is scored by its sum over its length ** ``length_penalty`` and
competes for the k finished places; the search ends when no running beam can still beat the worst
finished one (``early_stopping``: False, transformers' heuristic; True, as soon as k have finished;
"never", the canonical bound), or at the length limit.

With sampling (transformers' beam sample: ``do_sample=True`` with ``num_beams``) the temperature
and filters act on the log-probabilities, and the candidates are drawn without replacement from
the softmax of the summed scores instead of taken best first; the rest is the same.

Scores and choices stay on the device; one host read per step decides whether to go on. The
logits rules (engine.logits_rules) act on each beam's log-probabilities, as transformers applies
its processors there. Stop strings, stopping criteria and ``max_time`` are asked about every
candidate of a step (``candidate_ends``), as transformers asks its stopping criteria: a candidate
they end competes for the finished places like one that took a stop id.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import OutOfMemoryError
from .cache import KVCache
from .config import LlamaConfig
from .cuda_graph import GraphDecoder
from .finite import FiniteWatch, no_token_error
from .guidance import Guidance
from .logits_rules import RuleState, renormalized
from .model import LlamaModel, StepContext
from .params import SamplingParams, TokenRules
from .prompt_cache import copy_slots
from .sampling import filter_logits
from .stopping import EOS, LENGTH, REASONS

# transformers' stand-in for "impossible": added to scores, so that arithmetic stays finite
_NEVER = 1.0e9


@dataclass(frozen=True)
class BeamSettings:
    num_beams: int
    length_penalty: float = 1.0
    early_stopping: bool | str = False
    num_return_sequences: int = 1
    # None (or greedy params): beam search; otherwise beam sample with these temperature and filters
    sampling: SamplingParams | None = None
    # transformers' renormalize_logits: each step's processed log-probabilities normalized again
    renormalize: bool = False


@dataclass
class BeamOutput:
    """Per prompt, its ``num_return_sequences`` best finished beams, best first (prompt-major)."""

    tokens: list[list[int]]  # the generated tokens, a final stop id included
    scores: list[float]  # summed log-probability / length ** length_penalty
    reasons: list[str]  # why each ended: "eos", "stop", "time" or "length" (REASONS)
    steps: int  # decode steps run
    prefill_s: float
    decode_s: float
    reused: int = 0  # the prompt's leading tokens whose keys and values came from a kept cache
    # with log_steps (transformers' output_scores / output_logits and beam_indices): per step, the
    # running beams' scores after every rule and filter and their raw logits, [B k, V] fp32; per
    # returned beam, for each of its steps (a final stop id's included), the row it came from
    step_scores: tuple[torch.Tensor, ...] | None = None
    step_logits: tuple[torch.Tensor, ...] | None = None
    beam_indices: list[list[int]] | None = None
    # with token_logprobs: per returned beam, each token's log-probability under the raw logits
    # (a final stop id's included)
    token_logprobs: list[list[float]] | None = None
    # per returned beam, per token: the K likeliest (id, raw log-probability) pairs (top_logprobs=K)
    top_logprobs: list[list[list[tuple[int, float]]]] | None = None


def beam_search(model: LlamaModel, prefill: Callable[[torch.Tensor, torch.Tensor, KVCache, int], torch.Tensor], tokens: torch.Tensor,
                kv_start: torch.Tensor, max_new: int, settings: BeamSettings, rules: TokenRules, stop_ids: Sequence[set[int]],
                allowed: int | None, dtype: torch.dtype, generator: torch.Generator | None = None,
                candidate_ends: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
                log_steps: bool = False, token_logprobs: bool = False, guidance: Guidance | None = None,
                top_logprobs: int = 0, captured: tuple[KVCache, GraphDecoder] | None = None,
                started: float | None = None, reuse: Callable[[KVCache], int] | None = None,
                keep_prompt: Callable[[KVCache, list[int]], None] | None = None, prompt_in_every_beam: bool = True) -> BeamOutput:
    """tokens [B, T] left-padded prompts (row b's first real slot kv_start[b]); ``prefill(tokens,
    kv_start, cache, start)`` runs them into a cache whose first `start` slots of row 0 hold their
    keys and values already, and returns the last logits [B, V]; ``reuse(cache)`` (one prompt):
    copies the keys and values of the prompt's leading tokens a kept cache holds into row 0 of the
    prompt's cache and returns how many (0: none); ``keep_prompt(cache, answer)`` (one prompt):
    takes, when the search ends, a cache of one sequence whose slots hold the prompt's keys and
    values and those of ``answer``'s tokens after it (``_best_beam_slots``), for a later call;
    ``prompt_in_every_beam`` False: the prompt's slots go to each prompt's first beam row alone
    (every step reads them from there: ``Engine._decode_reads_prompt_once``); ``stop_ids``:
    each prompt's; ``allowed``: ids from it on are never chosen; ``generator``: beam sample's
    random draws (None: torch's global generator). ``candidate_ends(tokens [B, W, n], took_stop_id
    [B, W])``: for the step's W candidates of each prompt (their n generated tokens), the code of
    what else ends them (STOP, TIME; 0: nothing), as a [B, W] tensor. ``log_steps``: keep each
    step's scores and logits and each beam's rows (BeamOutput.step_scores, ...);
    ``token_logprobs``: each beam's tokens' log-probabilities under the raw logits;
    ``top_logprobs=K``: also the K likeliest ids at each of its positions, with theirs; ``guidance``:
    classifier-free guidance over the B k beam rows (engine.guidance), regrouped with them;
    ``captured``: a decode state's cache of at least B k rows x (T + max_new) slots and its decode
    step (engine.cuda_graph), which then runs every step (a CUDA graph replay on CUDA), the beams
    regrouped in its cache in place; ``started``: when the call's model work began (a state built
    for it counts towards the time to first token; default: now)."""
    b, t = tokens.shape
    k, n_out = settings.num_beams, settings.num_return_sequences
    device, cfg = tokens.device, model.config
    vocab = cfg.vocab_size
    rows = b * k

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    start = time.perf_counter() if started is None else started
    # The prompt once per prompt, then its cache copied to each of its k beams.
    # the prompt only, held whole (with room for a later call where it is kept)
    prompt_cache = KVCache(cfg, b, t, dtype, device, grow=False, headroom=keep_prompt is not None and b == 1)
    reused = reuse(prompt_cache) if reuse is not None and b == 1 else 0
    first = prefill(tokens, kv_start, prompt_cache, reused)  # [B, V]
    sync()
    prefill_s = time.perf_counter() - start
    beam_kv_start = kv_start.repeat_interleave(k)  # [B k]
    if captured is None:
        cache, graph = KVCache(cfg, rows, t + max_new, dtype, device, sparse=not prompt_in_every_beam), None
    else:
        cache, graph = captured
        graph.kv_start.copy_(beam_kv_start)  # the buffer its step reads
        beam_kv_start = graph.kv_start
    cache.reserve(t)
    for (kc, vc), (pk, pv) in zip(cache.layers, prompt_cache.layers):
        if prompt_in_every_beam:
            kc[:, :, :t].copy_(pk.repeat_interleave(k, dim=0))
            vc[:, :, :t].copy_(pv.repeat_interleave(k, dim=0))
        else:  # rows 0, k, 2k, ...: each prompt's first beam
            kc[::k, :, :t].copy_(pk)
            vc[::k, :, :t].copy_(pv)
    if keep_prompt is None or b != 1:
        del prompt_cache  # else held until the search ends, then handed over
    lengths = t - beam_kv_start  # real prompt lengths
    state = RuleState(rules, tokens.repeat_interleave(k, dim=0), beam_kv_start, vocab, max_new, allowed, rows_per_prompt=k)

    stop_mask = torch.zeros(b, vocab, dtype=torch.bool, device=device)  # [B, V]
    for i, ids in enumerate(stop_ids):
        stop_mask[i, [s for s in ids if 0 <= s < vocab]] = True
    # candidates kept per step: enough that k survive even if the best ones all end
    width = min(max(2, 1 + max((len(s) for s in stop_ids), default=0)) * k, k * vocab)
    among_first_k = torch.arange(width, device=device) < k  # only these may finish
    sampling = settings.sampling if settings.sampling is not None and not settings.sampling.greedy else None
    # as transformers' min_tokens_to_keep: every beam keeps a token that is not a stop id
    min_keep = 1 + max(1, max((len(s) for s in stop_ids), default=0))

    run_scores = torch.full((b, k), -_NEVER, device=device)
    run_scores[:, 0] = 0.0  # all beams start equal: expand only the first at the first step
    # per-beam histories, one entry per step, for the running and the finished beams: the tokens;
    # with log_steps the row of the step's scores each token came from (transformers'
    # beam_indices); with token_logprobs each token's raw log-probability; with top_logprobs=K
    # the K likeliest ids and their raw log-probabilities at that position (K entries per step)
    width_of = {"seq": 1, "rows": 1, "logprob": 1, "top_ids": top_logprobs, "top_values": top_logprobs}
    names = ["seq"] + ["rows"] * log_steps + ["logprob"] * token_logprobs + ["top_ids", "top_values"] * (top_logprobs > 0)
    run = {name: torch.zeros(b, k, max_new * width_of[name], dtype=torch.float32 if name in ("logprob", "top_values") else torch.long,
                             device=device) for name in names}
    fin = {name: history.clone() for name, history in run.items()}
    fin_len = torch.zeros(b, k, dtype=torch.long, device=device)
    fin_scores = torch.full((b, k), -_NEVER, device=device)
    fin_done = torch.zeros(b, k, dtype=torch.bool, device=device)
    fin_code = torch.zeros(b, k, dtype=torch.long, device=device)
    fin_parent = torch.zeros(b, k, dtype=torch.long, device=device)  # the cache row each came from, at the step it ended
    step_scores: list[torch.Tensor] = []
    step_logits: list[torch.Tensor] = []
    improvable = torch.ones(b, 1, dtype=torch.bool, device=device)
    batch_base = torch.arange(b, device=device)[:, None] * k

    logits = first.repeat_interleave(k, dim=0)  # [B k, V]
    watch = FiniteWatch(device)  # NaN/inf logits end the search and raise (engine.finite)
    # per prompt, the first step at which the rules left none of its beams a token (-1: none yet);
    # from then on its beams score -inf and can never finish, so a prompt with no finished beam by
    # then ends the search, which raises NoTokenAllowedError for it
    stuck_at = torch.full((b,), -1, dtype=torch.long, device=device)
    steps = 0
    for step in range(max_new):
        steps = step + 1
        watch.see(logits)
        raw = torch.log_softmax(logits.float(), dim=-1)  # [B k, V]
        logp = state.apply(raw if guidance is None else guidance(logits))  # a new tensor: raw stays as it is
        if sampling is not None:
            logp = filter_logits(logp / sampling.temperature, sampling.top_k, sampling.top_p, sampling.min_p,
                                 sampling.typical_p, sampling.epsilon_cutoff, sampling.eta_cutoff, keep=min_keep)
        if settings.renormalize:
            logp = renormalized(logp)
        if log_steps:  # neither is changed after: logits is the model's new output, logp a new tensor
            step_scores.append(logp)
            step_logits.append(logits.float())
        totals = (logp.view(b, k, vocab) + run_scores[:, :, None]).view(b, k * vocab)
        if sampling is None:
            top_scores, top_index = totals.topk(width, dim=-1)  # [B, W]
        else:
            top_index = _draw_without_replacement(totals, width, generator)
            top_scores = totals.gather(1, top_index)
        parent, token = top_index // vocab, top_index % vocab
        stuck_at = torch.where((stuck_at < 0) & torch.isneginf(top_scores).all(dim=-1), step, stuck_at)
        new = {"seq": token, "rows": batch_base + parent}
        if token_logprobs:
            new["logprob"] = raw.view(b, k * vocab).gather(1, top_index)
        if top_logprobs:  # the distribution each candidate's token was chosen from: its parent's
            values, ids = raw.topk(top_logprobs, dim=-1)  # [B k, K]
            new["top_values"], new["top_ids"] = (_rows(x.view(b, k, top_logprobs), parent) for x in (values, ids))  # [B, W, K]
        cand = {name: _grown(history, parent, step, new[name]) for name, history in run.items()}  # [B, W, N] each
        cand_seq = cand["seq"]
        took_stop_id = stop_mask.gather(1, token)  # [B, W]
        code = took_stop_id.long() * EOS
        if candidate_ends is not None:
            code = torch.where(took_stop_id, code, candidate_ends(cand_seq[:, :, : step + 1], took_stop_id))
        if step + 1 == max_new:
            code = torch.where(code > 0, code, LENGTH)
        ends = code > 0  # [B, W]

        # the k best that go on
        going_on = top_scores - _NEVER * ends.float()
        keep = going_on.topk(k, dim=-1).indices  # [B, k]
        run = {name: _rows(history, keep) for name, history in cand.items()}
        run_scores = going_on.gather(1, keep)
        beam_parent = parent.gather(1, keep)

        # the ones that end compete for the k finished places
        just_done = ends & among_first_k[None, :]
        scored = top_scores / float(step + 1) ** settings.length_penalty
        full = fin_done.all(dim=1, keepdim=True) & (settings.early_stopping is True)
        scored = scored - _NEVER * full.float() - _NEVER * (~improvable).float() - _NEVER * (~just_done).float()
        merged = torch.cat([fin_scores, scored], dim=1)
        best = merged.topk(k, dim=-1).indices  # [B, k], best first
        fin_scores = merged.gather(1, best)
        fin = {name: _rows(torch.cat([history, cand[name]], dim=1), best) for name, history in fin.items()}
        fin_len = torch.cat([fin_len, torch.full_like(cand_seq[:, :, 0], step + 1)], dim=1).gather(1, best)
        fin_done = torch.cat([fin_done, just_done], dim=1).gather(1, best)
        fin_code = torch.cat([fin_code, code], dim=1).gather(1, best)
        fin_parent = torch.cat([fin_parent, batch_base + parent], dim=1).gather(1, best)

        # can a running beam still beat the worst finished one?
        if settings.early_stopping == "never" and settings.length_penalty > 0.0:
            best_len = max_new
        else:
            best_len = step + 1
        best_possible = run_scores[:, :1] / float(best_len) ** settings.length_penalty
        worst = torch.where(fin_done, fin_scores.min(dim=1, keepdim=True).values, -_NEVER)
        improvable = improvable & (best_possible > worst).any(dim=1, keepdim=True)
        doomed = (stuck_at >= 0) & ~fin_done[:, 0]
        go_on = (improvable.any() & ~(fin_done.all() & (settings.early_stopping is True)) & ~ends.all() & watch.all_finite()
                 & ~doomed.any())
        if step + 1 == max_new or not bool(go_on):  # the one host read per step
            break

        # regroup the beams' caches and rule state by parent, then run the chosen tokens
        order = (batch_base + beam_parent).view(-1)  # [B k]
        # the slots written so far; a prompt's beams hold the same prompt slots, which stay as they are
        cache.reorder_rows(order, t + step, start=t)
        state.reorder(order)
        fed = run["seq"][:, :, step].reshape(rows)
        state.advance(fed)
        if guidance is not None:
            guidance.reorder(order)
            guidance.advance(fed)
        if graph is None:
            slot = t + step
            ctx = StepContext((lengths + step)[:, None], torch.tensor([slot], device=device), slot, beam_kv_start, slot + 1,
                              shared_prompt=(k, t) if k > 1 else None)  # each prompt's k beams share its slots
            logits = model(fed[:, None], ctx, cache.layers)
        else:  # the decode state's step: it advances its position, slot and length itself
            if step == 0:
                graph.start(fed, lengths, t)  # its prompt slots: those before t, alike in a prompt's beams
            else:
                graph.tok.copy_(fed[:, None])
            logits = graph.replay().clone()  # its buffer: the next replay rewrites it, and the logs keep this one

    if keep_prompt is not None and b == 1:
        kept, answer = _best_beam_slots(cfg, prompt_cache, cache, fin, fin_done, fin_len, fin_parent, steps)
        keep_prompt(kept, answer)
        del prompt_cache, kept
    watch.check(dtype, f"at beam search step {steps}")
    seqs, lens, scores = fin["seq"][:, :n_out].tolist(), fin_len[:, :n_out].tolist(), fin_scores[:, :n_out].tolist()
    decode_s = time.perf_counter() - start - prefill_s
    done = fin_done[:, :n_out].tolist()
    # a prompt with no finished beam when the rules left it none (the doomed above): no sequence to
    # return (greedy decoding and sampling raise there too; transformers returns arbitrary beams)
    for p, (row_done, at) in enumerate(zip(done, stuck_at.tolist(), strict=True)):
        if at >= 0 and not row_done[0]:
            raise no_token_error(f"for any beam of prompt {p} at generated token {at + 1}")
    out_tokens = [seq[:n] if ok else [] for row_s, row_n, row_d in zip(seqs, lens, done) for seq, n, ok in zip(row_s, row_n, row_d)]
    out_scores = [s for row in scores for s in row]
    out_reasons = [REASONS.get(c, "length") for row in fin_code[:, :n_out].tolist() for c in row]
    out = BeamOutput(out_tokens, out_scores, out_reasons, steps, prefill_s, decode_s, reused)

    def per_beam(name: str) -> list[list[Any]]:
        """History `name` of each returned beam (prompt-major, as out_tokens), as long as its tokens."""
        flat = [history for row in fin[name][:, :n_out].tolist() for history in row]
        return [history[: len(tokens) * width_of[name]] for history, tokens in zip(flat, out_tokens)]

    if log_steps:
        out.step_scores, out.step_logits, out.beam_indices = tuple(step_scores), tuple(step_logits), per_beam("rows")
    if token_logprobs:
        out.token_logprobs = per_beam("logprob")
    if top_logprobs:  # per returned beam, per token: the K (id, log-probability) pairs, likeliest first
        kk = top_logprobs
        out.top_logprobs = [[list(zip(ids[i:i + kk], values[i:i + kk])) for i in range(0, len(ids), kk)]
                            for ids, values in zip(per_beam("top_ids"), per_beam("top_values"))]
    return out


def _best_beam_slots(cfg: LlamaConfig, prompt_cache: KVCache, cache: KVCache, fin: dict[str, torch.Tensor], fin_done: torch.Tensor,
                     fin_len: torch.Tensor, fin_parent: torch.Tensor, steps: int) -> tuple[KVCache, list[int]]:
    """(a cache of one sequence, the tokens after the prompt whose slots it holds) for one prompt's
    search that ran `steps` steps: where its best beam ended at the last step, the search stopped
    before regrouping, so the row it came from holds its tokens but the last (the one it ended
    with was never fed): a new cache takes the prompt's slots (`prompt_cache`, [1, Hkv, T, D]
    per layer: the beams' rows may hold them in the first beam's row alone) and that row's next
    ones. Otherwise (it ended earlier, whose row later steps overwrote; or no memory for the copy)
    the prompt's cache alone."""
    n = steps - 1  # the best beam's tokens that were fed
    if n <= 0 or not bool(fin_done[0, 0]) or int(fin_len[0, 0]) != steps:
        return prompt_cache, []
    t = prompt_cache.max_len
    try:
        best = KVCache(cfg, 1, t + n, prompt_cache.dtype, prompt_cache.device, grow=False, headroom=True)
    except OutOfMemoryError:
        return prompt_cache, []
    copy_slots(prompt_cache, best, t)
    best.reserve(t + n)  # the slots written below (a cache with room counts those as held)
    row = int(fin_parent[0, 0])
    for (bk, bv), (ck, cv) in zip(best.layers, cache.layers):
        bk[0, :, t:].copy_(ck[row, :, t : t + n])  # [Hkv, n, D]
        bv[0, :, t:].copy_(cv[row, :, t : t + n])
    return best, fin["seq"][0, 0, :n].tolist()


def _grown(history: torch.Tensor, parent: torch.Tensor, step: int, new: torch.Tensor) -> torch.Tensor:
    """Each candidate's history [B, W, N w]: its parent beam's (history [B, k, N w], parent
    [B, W]), with ``new`` ([B, W] or [B, W, w]: w entries per step) at ``step``."""
    out = _rows(history, parent)  # gather makes a new tensor: the parent's row stays as it is
    w = new.shape[2] if new.dim() == 3 else 1
    out[:, :, step * w:(step + 1) * w] = new.view(new.shape[0], new.shape[1], w)
    return out


def _rows(history: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """history [B, M, N] -> [B, I, N]: row index[b, i] of each prompt's (index [B, I])."""
    return history.gather(1, index[:, :, None].expand(-1, -1, history.shape[2]))


def _draw_without_replacement(scores: torch.Tensor, n: int, generator: torch.Generator | None) -> torch.Tensor:
    """n indices per row [B, n] drawn without replacement from softmax(scores [B, M]), in the order
    drawn: the n largest of p / Exp(1) noise (the exponential race, as torch.multinomial draws).
    Where fewer than n have a probability above 0, the rest are zero-probability indices, whose
    scores keep them from winning anything."""
    probs = torch.softmax(scores, dim=-1)
    noise = torch.empty_like(probs).exponential_(1.0, generator=generator)
    return (probs / noise).topk(n, dim=-1).indices
