"""A CPU decode step's attention where each KV head serves one query (MHA decode: Code Llama 7B and
13B, any batch or beam group), in the layouts torch's CPU matmuls stream fastest.

SDPA's CPU kernel multiplies the one query by the cache as ``q @ K^T``. The scores here are
``K @ q^T`` (each key's dot product with the query, read along the key), which torch's MKL streams
from memory several times as fast in fp32; the weighted sum ``p @ V`` has no faster orientation.
In bf16, SDPA's one-query kernel reads the cache at about a third of its fp32 speed (in fp16,
slower still), and a bf16 product over a cache slice with spare slots (the engine's caches keep
some) copies the slice first; here each block of heads' keys and values is widened to fp32 into
one reused buffer that stays in the L3 cache, and the scores, softmax and weighted sum run in
fp32, rounded to the cache's dtype once at the end (SDPA rounds the probabilities to bf16 before
they meet V). Timings: benches/bench_cpu_attention.py.

The same attention as ``reference.attention`` (query i sees slot j when j <= its slot and j >=
kv_start[b], and its own slot) up to rounding: the sums run in another order.
"""

from __future__ import annotations

import math

import torch

from ..kernels import reference
from .scratch import fp32_buffer

# The fewest cache elements (B x H x L x D, of K alone) that take this path: its extra steps (the
# scaled query, a softmax of its own, the mask's layout) cost tens of microseconds a call, which a
# short cache does not win back (7B's heads at 64 keys: parity in fp32).
MIN_CACHE_ELEMENTS = 2**19
# In fp32 the gain is SDPA's slower reading of 128-wide (and wider) heads, every Code Llama's;
# over 64-wide heads (the 110M benchmark model's) the two run at parity.
MIN_FP32_HEAD_DIM = 128
# Elements widened to fp32 per block in bf16 and fp16 (8 MiB): small enough to stay in the L3 cache
# between the widening and the product that reads it.
WIDEN_BLOCK_ELEMENTS = 2**21


def applies(q: torch.Tensor, k_cache: torch.Tensor, kv_len: int) -> bool:
    """q [B, T, Hq, D], k_cache [B, Hkv, S, D]: one query per KV head (T == 1, Hq == Hkv), on the CPU,
    bf16, fp16 or fp32 (head dim MIN_FP32_HEAD_DIM or more), over at least MIN_CACHE_ELEMENTS keys' elements."""
    b, t, hq, d = q.shape
    if q.device.type != "cpu" or t != 1 or hq != k_cache.shape[1] or k_cache.dtype != q.dtype:
        return False
    if q.dtype not in (torch.bfloat16, torch.float16) and not (q.dtype == torch.float32 and d >= MIN_FP32_HEAD_DIM):
        return False
    return b * hq * int(kv_len) * d >= MIN_CACHE_ELEMENTS


def attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, q_start: int, kv_start: torch.Tensor,
              kv_len: int) -> torch.Tensor:
    """q [B, 1, H, D] against k_cache, v_cache [B, H, S, D] (slots < kv_len) -> [B, 1, H, D]; see ``applies``."""
    b, _, h, d = q.shape
    q_start, n = int(q_start), int(kv_len)
    bh = b * h
    keys = k_cache[:, :, :n].reshape(bh, n, d)  # a view of the cache: [B*H, L, D]
    values = v_cache[:, :, :n].reshape(bh, n, d)
    # [B*H, D, 1] as the transpose of a contiguous [B*H, 1, D]: MKL streams K @ q^T as fast as it
    # reads memory in this layout, and several times slower with q^T contiguous (the same numbers).
    query = (q.reshape(bh, 1, d).to(torch.float32) * (1.0 / math.sqrt(d))).transpose(1, 2)
    scores = torch.empty(bh, n, 1, dtype=torch.float32)  # [B*H, L, 1]
    for s, e, block in _fp32_blocks(keys):
        torch.bmm(block, query[s:e], out=scores[s:e])
    mask = reference.attention_mask_or_none(q_start, 1, n, kv_start, bool(kv_start.any()))  # [B, 1, 1, L]
    if mask is not None:
        scores.view(b, h, n).masked_fill_(~mask.view(b, 1, n), float("-inf"))
    probs = torch.softmax(scores, dim=1).view(bh, 1, n)  # [B*H, 1, L] (the same memory as [B*H, L, 1])
    out = torch.empty(bh, 1, d, dtype=torch.float32)
    for s, e, block in _fp32_blocks(values):
        torch.bmm(probs[s:e], block, out=out[s:e])
    return out.view(b, 1, h, d).to(q.dtype)


def _fp32_blocks(x: torch.Tensor):
    """(start, end, x[start:end] in fp32) over x [B*H, L, D]'s heads: x itself in fp32; otherwise blocks of
    about WIDEN_BLOCK_ELEMENTS, each widened into the same buffer."""
    bh, n, d = x.shape
    if x.dtype == torch.float32:
        yield 0, bh, x
        return
    # Blocks of at least 2 heads, as even as they come (a last block of 1 would be one too): MKL's
    # product of a single head streams it about 4x slower than a batch of 2 or more.
    count = -(-bh // max(2, WIDEN_BLOCK_ELEMENTS // (n * d)))
    bounds = [bh * i // count for i in range(count + 1)]
    wide = fp32_buffer("attention", -(-bh // count) * n * d, reserve=WIDEN_BLOCK_ELEMENTS)
    for s, e in zip(bounds[:-1], bounds[1:], strict=True):
        yield s, e, wide[: (e - s) * n * d].view(e - s, n, d).copy_(x[s:e])

