"""fp16 attention on the CPU run in fp32: the queries, and the keys and values the queries may see,
widened to fp32, one ``reference.attention`` (SDPA) call, the output rounded to fp16 once.

torch's CPU SDPA in fp16 is slow in every form on a CPU without fp16 arithmetic. The calls that
neither engine/cpu_prefill_attention.py (whole prompts) nor engine/cpu_attention.py (few queries
per KV head) take come here: a long prompt's later chunks, many guessed tokens over GQA heads, and
caches too short for cpu_attention's floor. On the 2-core AMD EPYC machines, over fp16 SDPA: 7B's
heads over 64 cached keys 2.6x, the 110M model's 64-wide heads over 256-512 keys 3.4-3.9x, a
300-token chunk over 34B's heads after 724 keys 1.27x, 200-token chunks over 7B's heads after 200
keys 1.8x. The copies cost more than they save only for tiny heads (the tests' 16-wide heads over
100 keys: 0.8-0.9x), which keep SDPA.

The same attention as ``reference.attention`` in fp32, rounded once to fp16.
"""

from __future__ import annotations

import torch

from ..kernels import reference

# The fewest key elements (B x Hkv x L x D) that take the fp32 copies: under it the copies' fixed
# costs (a few microseconds) outweigh fp16 SDPA's slowness.
MIN_KEY_ELEMENTS = 2**14


def applies(q: torch.Tensor, k_cache: torch.Tensor, kv_len: int | torch.Tensor) -> bool:
    """q [B, T, Hq, D] and k_cache [B, Hkv, S, D], both fp16 on the CPU, over at least MIN_KEY_ELEMENTS key elements."""
    b, _, _, d = q.shape
    return (q.device.type == "cpu" and q.dtype == torch.float16 and k_cache.dtype == torch.float16
            and b * k_cache.shape[1] * int(kv_len) * d >= MIN_KEY_ELEMENTS)


def attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, q_start: int | torch.Tensor,
              kv_start: torch.Tensor, kv_len: int | torch.Tensor) -> torch.Tensor:
    """``reference.attention`` (q [B, T, Hq, D] against k_cache, v_cache [B, Hkv, S, D], slots < kv_len)
    with q and the visible slots of the caches widened to fp32 -> [B, T, Hq, D] fp16, rounded once."""
    n = int(kv_len)
    keys, values = k_cache[:, :, :n].float(), v_cache[:, :, :n].float()  # [B, Hkv, L, D] fp32 copies
    return reference.attention(q.float(), keys, values, q_start, kv_start, n).to(q.dtype)
