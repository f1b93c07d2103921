"""CPU attention against the KV cache in the layouts torch's CPU matmuls stream fastest: a decode
step where each KV head serves one query (MHA decode: Code Llama 7B and 13B, any batch or beam
group), and in fp16 any few queries per KV head (GQA decode, as in 34B; guessed tokens checked
against the cache, as prompt lookup, assisted and speculative decoding do).

SDPA's CPU kernel multiplies the queries by the cache as ``q @ K^T``. The scores here are
``K @ q^T`` (each key's dot products with a KV head's queries, read along the key), which torch's
MKL streams from memory several times as fast in fp32 for one query; the weighted sum ``p @ V``
has no faster orientation. In bf16, SDPA's one-query kernel reads the cache at about a third of
its fp32 speed, and a bf16 product over a cache slice with spare slots (the engine's caches keep
some) copies the slice first. In fp16, SDPA is slow in every form (a CPU without fp16 arithmetic):
over 7B's and 34B's heads at 2048-4096 cached keys it took about twice as long as this path for up
to 88 queries per KV head, 1.3x at 128, and ran at parity from 256. Here each block of heads' keys
and values is widened to fp32 into one reused buffer that stays in the L3 cache, and the scores,
softmax and weighted sum run in fp32, rounded to the cache's dtype once at the end (SDPA rounds
the probabilities to bf16 before they meet V). A KV head's queries (its query heads' new tokens)
ride along one product, as ``reference.attention`` folds them. Timings:
benches/bench_cpu_attention.py.

The same attention as ``reference.attention`` (query i sees slot j when j <= its slot and j >=
kv_start[b], and its own slot) up to rounding: the sums run in another order.
"""

from __future__ import annotations

import math

import torch

from ..kernels import reference
from .scratch import fp32_buffer

# The fewest cache elements (B x Hkv x L x D, of K alone) that take this path: its extra steps (the
# scaled query, a softmax of its own, the mask's layout) cost tens of microseconds a call, which a
# short cache does not win back (7B's heads at 64 keys: parity in fp32).
MIN_CACHE_ELEMENTS = 2**19
# In fp32 the gain is SDPA's slower reading of 128-wide (and wider) heads, every Code Llama's;
# over 64-wide heads (the 110M benchmark model's) the two run at parity.
MIN_FP32_HEAD_DIM = 128
# The most queries per KV head (query heads per KV head x new tokens) an fp16 call may hold: the
# gain over SDPA shrinks as they grow (at 2048 keys, 34B's heads: 2.0x at 88 and 128 queries, 1.5x
# at 192, parity at 256; 7B's: 1.9x at 64, 1.3x at 128, parity at 256). Longer fp16 chunks keep SDPA.
MAX_FP16_QUERIES_PER_KV_HEAD = 128
# Elements widened to fp32 per block in bf16 and fp16 (8 MiB): small enough to stay in the L3 cache
# between the widening and the product that reads it.
WIDEN_BLOCK_ELEMENTS = 2**21


def applies(q: torch.Tensor, k_cache: torch.Tensor, kv_len: int) -> bool:
    """q [B, T, Hq, D], k_cache [B, Hkv, S, D] on the CPU, over at least MIN_CACHE_ELEMENTS keys'
    elements: in fp16, at most MAX_FP16_QUERIES_PER_KV_HEAD queries per KV head (T x Hq / Hkv);
    in bf16, and fp32 with heads MIN_FP32_HEAD_DIM wide or wider, one query per KV head (T == 1,
    Hq == Hkv). bf16 and fp32 with more queries keep SDPA, which ran them as fast or faster."""
    b, t, hq, d = q.shape
    hkv = k_cache.shape[1]
    if q.device.type != "cpu" or k_cache.dtype != q.dtype or b * hkv * int(kv_len) * d < MIN_CACHE_ELEMENTS:
        return False
    if q.dtype == torch.float16:
        return t * (hq // hkv) <= MAX_FP16_QUERIES_PER_KV_HEAD
    one_each = t == 1 and hq == hkv
    return one_each and (q.dtype == torch.bfloat16 or (q.dtype == torch.float32 and d >= MIN_FP32_HEAD_DIM))


def attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, q_start: int, kv_start: torch.Tensor,
              kv_len: int) -> torch.Tensor:
    """q [B, T, Hq, D] (slots q_start..q_start+T-1) against k_cache, v_cache [B, Hkv, S, D] (slots <
    kv_len) -> [B, T, Hq, D]; see ``applies``."""
    b, t, hq, d = q.shape
    hkv = k_cache.shape[1]
    group = hq // hkv  # KV head h serves query heads h*group .. h*group+group-1
    q_start, n = int(q_start), int(kv_len)
    bh, per_head = b * hkv, group * t  # each KV head's queries: its query heads' T tokens, head-major
    keys = k_cache[:, :, :n].reshape(bh, n, d)  # a view of the cache: [B*Hkv, L, D]
    values = v_cache[:, :, :n].reshape(bh, n, d)
    # [B*Hkv, D, G*T] as the transpose of a contiguous [B*Hkv, G*T, D]: MKL streams K @ q^T as fast
    # as it reads memory in this layout, and several times slower with q^T contiguous (the same numbers).
    heads_first = q.transpose(1, 2).reshape(bh, per_head, d)  # [B, Hq, T, D] -> [B*Hkv, G*T, D]
    query = (heads_first.to(torch.float32) * (1.0 / math.sqrt(d))).transpose(1, 2)
    scores = torch.empty(bh, n, per_head, dtype=torch.float32)  # [B*Hkv, L, G*T]
    for s, e, block in fp32_blocks(keys):
        torch.bmm(block, query[s:e], out=scores[s:e])
    mask = reference.attention_mask_or_none(q_start, t, n, kv_start, bool(kv_start.any()))  # [B, 1, T, L]
    if mask is not None:  # token i's mask row, for every KV head and each of its query heads
        hidden = ~mask.transpose(2, 3)[:, :, :, None, :]  # [B, 1, L, 1, T]
        scores.view(b, hkv, n, group, t).masked_fill_(hidden, float("-inf"))
    probs = torch.softmax(scores, dim=1).transpose(1, 2)  # [B*Hkv, G*T, L] (a view; for G*T == 1 contiguous)
    out = torch.empty(bh, per_head, d, dtype=torch.float32)
    for s, e, block in fp32_blocks(values):
        torch.bmm(probs[s:e], block, out=out[s:e])
    return out.view(b, hq, t, d).transpose(1, 2).to(q.dtype)


def fp32_blocks(x: torch.Tensor):
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

