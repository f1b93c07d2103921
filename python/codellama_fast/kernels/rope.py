"""Rotary embedding (HF rotate-half convention) fused with the KV-cache write.

One launch rotates q and k of the new tokens with angles pos * inv_freq computed in fp32 from a
positions tensor (so left-padded batches work), writes the rotated k and the untouched v into the
cache at the given slots, and returns the rotated q.

q [B, T, Hq, D], k/v [B, T, Hkv, D] (any strides, e.g. views of the fused qkv output);
positions [B, T] int64; inv_freq [D/2] fp32; k_cache/v_cache [B, Hkv, S, D]; slots [T] int64.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .reference import rope_cache_update as rope_cache_update_reference  # noqa: F401  (the oracle)


@triton.jit
def _rope_cache_kernel(
    Q, K, V, POS, INV_FREQ, QO, KC, VC, SLOTS,
    sqb, sqt, sqh, skb, skt, skh, svb, svt, svh,
    sob, sot, soh, scb, sch, scs, svcb, svch, svcs,
    T, HQ, HKV,
    HALF: tl.constexpr, BLOCK_H: tl.constexpr,
):
    bt = tl.program_id(0).to(tl.int64)  # one (batch, token)
    hb = tl.program_id(1)  # a block of heads over [q heads | k heads]
    b = bt // T
    t = bt % T
    pos = tl.load(POS + bt).to(tl.float32)
    d = tl.arange(0, HALF)
    freq = tl.load(INV_FREQ + d)
    ang = pos * freq
    cos = tl.cos(ang)[None, :]
    sin = tl.sin(ang)[None, :]
    heads = hb * BLOCK_H + tl.arange(0, BLOCK_H)
    is_q = heads < HQ
    is_k = (heads >= HQ) & (heads < HQ + HKV)
    hq = tl.where(is_q, heads, 0).to(tl.int64)
    hk = tl.where(is_k, heads - HQ, 0).to(tl.int64)
    # q heads
    qp = Q + b * sqb + t * sqt + hq[:, None] * sqh + d[None, :]
    q1 = tl.load(qp, mask=is_q[:, None], other=0.0).to(tl.float32)
    q2 = tl.load(qp + HALF, mask=is_q[:, None], other=0.0).to(tl.float32)
    op = QO + b * sob + t * sot + hq[:, None] * soh + d[None, :]
    tl.store(op, (q1 * cos - q2 * sin).to(QO.dtype.element_ty), mask=is_q[:, None])
    tl.store(op + HALF, (q2 * cos + q1 * sin).to(QO.dtype.element_ty), mask=is_q[:, None])
    # k heads: rotate and write into the cache; v copied alongside
    slot = tl.load(SLOTS + t).to(tl.int64)
    kp = K + b * skb + t * skt + hk[:, None] * skh + d[None, :]
    k1 = tl.load(kp, mask=is_k[:, None], other=0.0).to(tl.float32)
    k2 = tl.load(kp + HALF, mask=is_k[:, None], other=0.0).to(tl.float32)
    cp = KC + b * scb + hk[:, None] * sch + slot * scs + d[None, :]
    tl.store(cp, (k1 * cos - k2 * sin).to(KC.dtype.element_ty), mask=is_k[:, None])
    tl.store(cp + HALF, (k2 * cos + k1 * sin).to(KC.dtype.element_ty), mask=is_k[:, None])
    vp = V + b * svb + t * svt + hk[:, None] * svh + d[None, :]
    vcp = VC + b * svcb + hk[:, None] * svch + slot * svcs + d[None, :]
    tl.store(vcp, tl.load(vp, mask=is_k[:, None], other=0.0).to(VC.dtype.element_ty), mask=is_k[:, None])
    tl.store(vcp + HALF, tl.load(vp + HALF, mask=is_k[:, None], other=0.0).to(VC.dtype.element_ty), mask=is_k[:, None])


def rope_cache_update(q, k, v, positions, inv_freq, k_cache, v_cache, slots) -> torch.Tensor:
    b, t, hq, d = q.shape
    hkv = k.shape[2]
    assert q.stride(-1) == k.stride(-1) == v.stride(-1) == 1, "the head dim must be contiguous"
    assert k_cache.stride(-1) == 1 and v_cache.stride(-1) == 1
    q_out = torch.empty((b, t, hq, d), dtype=q.dtype, device=q.device)
    positions = positions.expand(b, t).contiguous()
    block_h = min(16, triton.next_power_of_2(hq + hkv))
    grid = (b * t, triton.cdiv(hq + hkv, block_h))
    _rope_cache_kernel[grid](
        q, k, v, positions, inv_freq, q_out, k_cache, v_cache, slots,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2), v.stride(0), v.stride(1), v.stride(2),
        q_out.stride(0), q_out.stride(1), q_out.stride(2),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        t, hq, hkv, HALF=d // 2, BLOCK_H=block_h, num_warps=4,
    )
    return q_out

