"""CPU decode attention for a batch whose rows come in runs that share their prompt (each prompt's
``num_return_sequences`` samples: engine/shared_prompts.py copied one prefill into every row of a
run). Every row of a run holds the same keys and values in the prompt's slots, so those are read
once per run, for all the run's queries together; only the slots after the prompt (each row's own
generated tokens) are read per row.

A decode step reads the whole cache: at n samples of a P-token prompt that is n copies of the
prompt's keys and values per layer, more than the layer's weights once n x P is a few thousand
tokens (7B: 32 MiB of bf16 keys and values per 2048 tokens and layer, against 386 MiB of weights).

The scores of the prompt's slots (``K @ q^T`` per run and KV head, over the run's rows' queries)
and of each row's own slots share one softmax per query; the weighted sums of the two parts are
added. Everything runs in fp32 (bf16 and fp16 caches widened block by block, as in
engine/cpu_attention.py) and is rounded to the cache's dtype once. The same attention as
``reference.attention`` up to rounding.
"""

from __future__ import annotations

import math

import torch

from ..kernels import reference
from .cpu_attention import fp32_blocks

# The fewest prompt key elements a run must share (n x P x Hkv x D over the batch, of K alone) for
# this path: it costs a few small copies of the scores and probabilities per call.
MIN_SHARED_ELEMENTS = 2**19


def worth(batch: int, runs: int, prompt: int, kv_heads: int, head_dim: int) -> bool:
    """Whether `batch` rows in runs of `runs` > 1 sharing `prompt` > 0 slots share enough of them."""
    return runs > 1 and prompt > 0 and batch * prompt * kv_heads * head_dim >= MIN_SHARED_ELEMENTS


def applies(q: torch.Tensor, k_cache: torch.Tensor, q_start: int, runs: int, prompt: int) -> bool:
    """q [B, T, Hq, D] on the CPU in the cache's dtype, every query after the prompt's `prompt`
    slots (q_start >= prompt), rows in runs of `runs` sharing those slots, enough of them
    (``worth``: a decode loop's every step then takes this path, TorchOps.decode_reads_prompt_once)."""
    b, _, _, d = q.shape
    return (q.device.type == "cpu" and q.dtype == k_cache.dtype and int(q_start) >= prompt
            and worth(b, runs, prompt, k_cache.shape[1], d))


def attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, q_start: int, kv_start: torch.Tensor,
              kv_len: int, runs: int, prompt: int) -> torch.Tensor:
    """q [B, T, Hq, D] (slots q_start..q_start+T-1) against k_cache, v_cache [B, Hkv, S, D] (slots <
    kv_len), rows in runs of `runs` whose slots < `prompt` hold the same keys and values -> [B, T, Hq, D]."""
    b, t, hq, d = q.shape
    hkv = k_cache.shape[1]
    u, n = b // runs, int(kv_len)
    per_head = (hq // hkv) * t  # a KV head's queries in one row: its query heads' T tokens, head-major
    heads_first = q.transpose(1, 2).reshape(b, hkv, per_head, d).to(torch.float32) * (1.0 / math.sqrt(d))  # [B, Hkv, G*T, D]
    # [U, Hkv, runs*G*T, D]: run u's KV head h takes its rows' queries one row after another
    run_queries = heads_first.view(u, runs, hkv, per_head, d).transpose(1, 2).reshape(u, hkv, runs * per_head, d)
    starts = kv_start[::runs].tolist()  # a run's rows share their padding

    # The prompt's slots, read once per run: scores [U, Hkv, P, runs*G*T] (padding slots at -inf).
    shared = torch.empty(u, hkv, prompt, runs * per_head, dtype=torch.float32)
    for r in range(u):
        for s, e, block in fp32_blocks(k_cache[r * runs, :, :prompt]):  # the run's first row, [Hkv, P, D] views
            torch.bmm(block, run_queries[r, s:e].transpose(1, 2), out=shared[r, s:e])
        shared[r, :, : min(starts[r], prompt)] = float("-inf")
    # Each row's own slots (its generated tokens, and the new ones causally): [B*Hkv, L-P, G*T].
    own_keys = k_cache[:, :, prompt:n].reshape(b * hkv, n - prompt, d)
    own = torch.empty(b * hkv, n - prompt, per_head, dtype=torch.float32)
    queries = heads_first.reshape(b * hkv, per_head, d)
    for s, e, block in fp32_blocks(own_keys):
        torch.bmm(block, queries[s:e].transpose(1, 2), out=own[s:e])
    mask = reference.attention_mask(int(q_start), t, n, kv_start)[..., prompt:]  # [B, 1, T, L-P]
    own.view(b, hkv, n - prompt, per_head // t, t).masked_fill_(~mask.transpose(2, 3)[:, :, :, None, :], float("-inf"))

    # One softmax over both parts per query, each part kept in its own layout: the running max and
    # sum in run layout [U, Hkv, runs*G*T], the rows' parts moved there.
    def run_layout(x: torch.Tensor) -> torch.Tensor:  # [B*Hkv, G*T] -> [U, Hkv, runs*G*T]
        return x.view(u, runs, hkv, per_head).transpose(1, 2).reshape(u, hkv, runs * per_head)

    top = torch.maximum(shared.amax(dim=2), run_layout(own.amax(dim=1)))  # [U, Hkv, runs*G*T]; own slots are never all hidden
    shared.sub_(top[:, :, None, :]).exp_()
    rows_top = top.view(u, hkv, runs, per_head).transpose(1, 2).reshape(b * hkv, 1, per_head)
    own.sub_(rows_top).exp_()
    total = shared.sum(dim=2) + run_layout(own.sum(dim=1))  # [U, Hkv, runs*G*T]

    # Weighted sums: the prompt's values once per run for all its rows, then each row's own.
    out = torch.empty(u, hkv, runs * per_head, d, dtype=torch.float32)
    for r in range(u):
        for s, e, block in fp32_blocks(v_cache[r * runs, :, :prompt]):
            torch.bmm(shared[r, s:e].transpose(1, 2), block, out=out[r, s:e])
    out.div_(total[..., None])
    rows_out = out.view(u, hkv, runs, per_head, d).transpose(1, 2).reshape(b * hkv, per_head, d)  # a copy, [B*Hkv, G*T, D]
    own_values = v_cache[:, :, prompt:n].reshape(b * hkv, n - prompt, d)
    rows_total = total.view(u, hkv, runs, per_head).transpose(1, 2).reshape(b * hkv, per_head, 1)
    for s, e, block in fp32_blocks(own_values):
        rows_out[s:e] += torch.bmm(own[s:e].transpose(1, 2), block) / rows_total[s:e]
    return rows_out.view(b, hq, t, d).transpose(1, 2).to(q.dtype)
