"""Causal flash attention for prefill (and chunked prefill) over the KV cache.

Online softmax in fp32 (exp2 with the scale folded into log2 e), the S×S score matrix is never
materialised. GQA without copying: query head h reads KV head h // (Hq/Hkv). Left padding: keys
before kv_start[b] are masked, and key blocks wholly inside the padding are skipped.

q [B, T, Hq, D] (rotated), k_cache/v_cache [B, Hkv, S, D], query i in slot q_start + i,
keys 0..kv_len-1 -> out [B, T, Hq, D].
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from .reference import attention as attention_reference  # noqa: F401  (the oracle)

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


@triton.jit
def _prefill_kernel(
    Q, KC, VC, O, KV_START,
    sqb, sqt, sqh, skb, skh, sks, svb, svh, svs, sob, sot, soh,
    T, HQ, GROUP, q_start, kv_len, qk_scale,
    D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, IEEE: tl.constexpr,
):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // HQ).to(tl.int64)
    h = (bh % HQ).to(tl.int64)
    hk = h // GROUP
    kv_start = tl.load(KV_START + b).to(tl.int32)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # query rows
    offs_d = tl.arange(0, D)
    offs_n = tl.arange(0, BLOCK_N)
    q_slot = q_start + offs_m  # [BLOCK_M]
    q_ptrs = Q + b * sqb + h * sqh + offs_m[:, None].to(tl.int64) * sqt + offs_d[None, :]
    q = tl.load(q_ptrs, mask=offs_m[:, None] < T, other=0.0)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, D], dtype=tl.float32)

    k_base = KC + b * skb + hk * skh
    v_base = VC + b * svb + hk * svh
    # Keys this block of queries can see: [lo, hi).
    hi = tl.minimum(kv_len, q_start + (pid_m + 1) * BLOCK_M)
    lo = (kv_start // BLOCK_N) * BLOCK_N
    # A block of padding queries only sees its own slots.
    lo = tl.minimum(lo, ((q_start + pid_m * BLOCK_M) // BLOCK_N) * BLOCK_N)
    first_q = q_start + pid_m * BLOCK_M
    for start_n in range(lo, hi, BLOCK_N):
        k_slot = start_n + offs_n  # [BLOCK_N]
        in_range = k_slot < kv_len
        k = tl.load(k_base + k_slot[None, :].to(tl.int64) * sks + offs_d[:, None], mask=in_range[None, :], other=0.0)
        if IEEE:
            s = tl.dot(q, k, input_precision="ieee")
        else:
            s = tl.dot(q, k)
        s = s * qk_scale
        # Masking is only needed on blocks that touch the padding boundary or the diagonal.
        if (start_n < kv_start) | (start_n + BLOCK_N > first_q) | (start_n + BLOCK_N > kv_len):
            visible = (k_slot[None, :] <= q_slot[:, None]) & (k_slot[None, :] >= kv_start) & in_range[None, :]
            visible = visible | (k_slot[None, :] == q_slot[:, None])
            s = tl.where(visible, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.math.exp2(s - m_safe[:, None])
        alpha = tl.math.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None]
        v = tl.load(v_base + k_slot[:, None].to(tl.int64) * svs + offs_d[None, :], mask=in_range[:, None], other=0.0)
        if IEEE:
            acc += tl.dot(p.to(v.dtype), v, input_precision="ieee")
        else:
            acc += tl.dot(p.to(v.dtype), v)
        m_i = m_new
    l_safe = tl.where(l_i == 0.0, 1.0, l_i)
    out = acc / l_safe[:, None]
    o_ptrs = O + b * sob + h * soh + offs_m[:, None].to(tl.int64) * sot + offs_d[None, :]
    tl.store(o_ptrs, out.to(O.dtype.element_ty), mask=offs_m[:, None] < T)


# On a GPU the block shape is tuned once per (head_dim, precision) among a few configurations
# that suit Hopper/Ampere; the interpreter runs one fixed small configuration.
_TUNED = None
if not _INTERPRET and torch.cuda.is_available():
    _TUNED = triton.autotune(
        configs=[
            triton.Config({"BLOCK_M": 128, "BLOCK_N": 64}, num_warps=8, num_stages=3),
            triton.Config({"BLOCK_M": 128, "BLOCK_N": 128}, num_warps=8, num_stages=3),
            triton.Config({"BLOCK_M": 64, "BLOCK_N": 64}, num_warps=4, num_stages=3),
            triton.Config({"BLOCK_M": 128, "BLOCK_N": 32}, num_warps=4, num_stages=4),
        ],
        key=["D", "IEEE"],
    )(_prefill_kernel)


def _config(d: int, dtype: torch.dtype) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps, num_stages)."""
    if _INTERPRET:
        return 32, 32, 4, 1
    if dtype == torch.float32:
        return 64, 32, 4, 2
    if d <= 64:
        return 128, 64, 4, 3
    return 128, 64, 8, 3


def attention_prefill(q, k_cache, v_cache, q_start: int, kv_start: torch.Tensor, kv_len: int) -> torch.Tensor:
    b, t, hq, d = q.shape
    hkv = k_cache.shape[1]
    if d not in (16, 32, 64, 128, 256):
        raise ValueError(f"head_dim {d} is not supported by the Triton attention kernel")
    assert q.stride(-1) == 1 and k_cache.stride(-1) == 1 and v_cache.stride(-1) == 1
    out = torch.empty((b, t, hq, d), dtype=q.dtype, device=q.device)
    scale = (1.0 / d**0.5) * 1.4426950408889634  # log2(e): softmax via exp2
    ieee = q.dtype == torch.float32
    if _TUNED is not None and q.is_cuda and not ieee:
        _TUNED[lambda meta: (triton.cdiv(t, meta["BLOCK_M"]), b * hq)](
            q, k_cache, v_cache, out, kv_start,
            q.stride(0), q.stride(1), q.stride(2), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
            v_cache.stride(0), v_cache.stride(1), v_cache.stride(2), out.stride(0), out.stride(1), out.stride(2),
            t, hq, hq // hkv, int(q_start), int(kv_len), scale, D=d, IEEE=False,
        )
        return out
    bm, bn, warps, stages = _config(d, q.dtype)
    grid = (triton.cdiv(t, bm), b * hq)
    _prefill_kernel[grid](
        q, k_cache, v_cache, out, kv_start,
        q.stride(0), q.stride(1), q.stride(2), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2), out.stride(0), out.stride(1), out.stride(2),
        t, hq, hq // hkv, int(q_start), int(kv_len), scale,
        D=d, BLOCK_M=bm, BLOCK_N=bn, IEEE=q.dtype == torch.float32, num_warps=warps, num_stages=stages,
    )
    return out
