"""Decode attention (one new token per sequence) over the KV cache, split along the cache length
(flash-decoding) so that a batch of 1 still fills the GPU.

Each program takes one (sequence, KV head, split): it loads the whole query group that shares the
KV head (Hq/Hkv rows, padded to 16 for the tensor cores), so every K/V element is read once, and
writes an unnormalised partial (max, sum, acc). A second small kernel merges the splits.
kv_len and kv_start are read from device tensors and the split ranges are computed in the
kernel, so the launch has static shapes and can be captured in a CUDA graph.

q [B, 1, Hq, D], k_cache/v_cache [B, Hkv, S, D], kv_start [B], kv_len 0-d/1-elem tensor -> [B, 1, Hq, D].
Query slot = kv_len - 1: keys kv_start[b] <= j < kv_len are visible.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from .reference import attention as attention_reference  # noqa: F401  (the oracle)

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


@triton.jit
def _decode_split_kernel(
    Q, KC, VC, KV_START, KV_LEN, M_OUT, L_OUT, ACC_OUT,
    sqb, sqh, skb, skh, sks, svb, svh, svs,
    HKV, GROUP, NSPLIT, qk_scale,
    D: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_N: tl.constexpr, IEEE: tl.constexpr,
):
    bh = tl.program_id(0)
    split = tl.program_id(1)
    b = (bh // HKV).to(tl.int64)
    hk = (bh % HKV).to(tl.int64)
    kv_len = tl.load(KV_LEN).to(tl.int32)
    kv_start = tl.load(KV_START + b).to(tl.int32)
    # Split the visible range [kv_start, kv_len) into NSPLIT chunks of whole blocks.
    span = kv_len - kv_start
    chunk = tl.cdiv(tl.cdiv(span, NSPLIT), BLOCK_N) * BLOCK_N
    lo = kv_start + split * chunk
    hi = tl.minimum(lo + chunk, kv_len)

    offs_g = tl.arange(0, BLOCK_G)
    offs_d = tl.arange(0, D)
    offs_n = tl.arange(0, BLOCK_N)
    heads = hk * GROUP + offs_g  # query heads of this group
    g_mask = offs_g < GROUP
    q = tl.load(Q + b * sqb + heads[:, None] * sqh + offs_d[None, :], mask=g_mask[:, None], other=0.0)

    m_i = tl.full([BLOCK_G], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_G], dtype=tl.float32)
    acc = tl.zeros([BLOCK_G, D], dtype=tl.float32)
    k_base = KC + b * skb + hk * skh
    v_base = VC + b * svb + hk * svh
    for start_n in range(lo, hi, BLOCK_N):
        k_slot = start_n + offs_n
        valid = k_slot < hi
        k = tl.load(k_base + k_slot[None, :].to(tl.int64) * sks + offs_d[:, None], mask=valid[None, :], other=0.0)
        if IEEE:
            s = tl.dot(q, k, input_precision="ieee")
        else:
            s = tl.dot(q, k)
        s = tl.where(valid[None, :], s * qk_scale, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.math.exp2(s - m_safe[:, None])
        alpha = tl.math.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v = tl.load(v_base + k_slot[:, None].to(tl.int64) * svs + offs_d[None, :], mask=valid[:, None], other=0.0)
        if IEEE:
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision="ieee")
        else:
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m_i = m_new
    # partials: [B, Hq, NSPLIT] and [B, Hq, NSPLIT, D], contiguous
    hq_total = HKV * GROUP
    row = (b * hq_total + heads) * NSPLIT + split
    tl.store(M_OUT + row, m_i, mask=g_mask)
    tl.store(L_OUT + row, l_i, mask=g_mask)
    tl.store(ACC_OUT + row[:, None] * D + offs_d[None, :], acc, mask=g_mask[:, None])


@triton.jit
def _decode_merge_kernel(M_IN, L_IN, ACC_IN, O, sob, soh, HQ, NSPLIT, D: tl.constexpr, BLOCK_S: tl.constexpr):
    bh = tl.program_id(0).to(tl.int64)
    b = bh // HQ
    h = bh % HQ
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, D)
    smask = offs_s < NSPLIT
    base = bh * NSPLIT
    m = tl.load(M_IN + base + offs_s, mask=smask, other=float("-inf"))
    l = tl.load(L_IN + base + offs_s, mask=smask, other=0.0)
    acc = tl.load(ACC_IN + (base + offs_s[:, None]) * D + offs_d[None, :], mask=smask[:, None], other=0.0)
    m_all = tl.max(m, axis=0)
    w = tl.where(m == float("-inf"), 0.0, tl.math.exp2(m - m_all))
    total = tl.sum(w * l, axis=0)
    out = tl.sum(w[:, None] * acc, axis=0) / tl.where(total == 0.0, 1.0, total)
    tl.store(O + b * sob + h * soh + offs_d, out.to(O.dtype.element_ty))


def _num_splits(batch_heads: int, capacity: int, block_n: int, device: torch.device) -> int:
    if _INTERPRET or device.type != "cuda":
        return max(1, min(4, capacity // block_n))
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    want = triton.cdiv(4 * sms, batch_heads)
    return int(max(1, min(want, capacity // block_n, 128)))


def attention_decode(q, k_cache, v_cache, kv_start: torch.Tensor, kv_len, num_splits: int | None = None) -> torch.Tensor:
    b, t, hq, d = q.shape
    assert t == 1, "decode attention takes one new token per sequence"
    hkv, capacity = k_cache.shape[1], k_cache.shape[2]
    group = hq // hkv
    if not isinstance(kv_len, torch.Tensor):
        kv_len = torch.tensor([int(kv_len)], dtype=torch.int32, device=q.device)
    block_n = 32 if _INTERPRET else 64
    block_g = max(16, triton.next_power_of_2(group))
    nsplit = num_splits or _num_splits(b * hkv, capacity, block_n, q.device)
    m = torch.empty((b, hq, nsplit), dtype=torch.float32, device=q.device)
    l = torch.empty_like(m)
    acc = torch.empty((b, hq, nsplit, d), dtype=torch.float32, device=q.device)
    scale = (1.0 / d**0.5) * 1.4426950408889634
    _decode_split_kernel[(b * hkv, nsplit)](
        q, k_cache, v_cache, kv_start, kv_len, m, l, acc,
        q.stride(0), q.stride(2), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        hkv, group, nsplit, scale,
        D=d, BLOCK_G=block_g, BLOCK_N=block_n, IEEE=q.dtype == torch.float32, num_warps=4, num_stages=1 if _INTERPRET else 3,
    )
    out = torch.empty((b, 1, hq, d), dtype=q.dtype, device=q.device)
    _decode_merge_kernel[(b * hq,)](m, l, acc, out, out.stride(0), out.stride(2), hq, nsplit, D=d,
                                    BLOCK_S=triton.next_power_of_2(nsplit), num_warps=4)
    return out
