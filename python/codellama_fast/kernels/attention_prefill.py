"""Causal flash attention for prefill (and chunked prefill) over the KV cache.

Online softmax in fp32 (exp2 with the scale folded into log2 e), the S×S score matrix is never
materialised. GQA without copying: query head h reads KV head h // (Hq/Hkv). Left padding: keys
before kv_start[b] are masked, and key blocks wholly inside the padding are skipped.

q [B, T, Hq, D] (rotated), k_cache/v_cache [B, Hkv, S, D], query i in slot q_start + i,
keys 0..kv_len-1 -> out [B, T, Hq, D].
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .layout import check_cache_layout
from .reference import attention as attention_reference  # noqa: F401  (the oracle)
from .tuning import INTERPRET, tuned


@triton.jit
def _attend_blocks(
    acc, l_i, m_i, q, k_base, v_base, sks, svs, q_slot, first_q, kv_start, kv_len, qk_scale, lo, hi,
    BLOCK_N: tl.constexpr, D: tl.constexpr, MASK: tl.constexpr, IEEE: tl.constexpr,
):
    """Online-softmax update of (acc [BM, D], l_i [BM], m_i [BM]) over the key blocks [lo, hi).
    MASK 0: blocks every query of the block sees in full (no padding, no diagonal, inside kv_len),
    so the loop carries no mask arithmetic at all; 1: every block masked; 2: each block checks at
    run time whether it touches the padding edge, the diagonal or kv_len, and masks only then."""
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D)
    for start_n in range(lo, hi, BLOCK_N):
        k_slot = start_n + offs_n  # [BLOCK_N]
        in_range = k_slot < kv_len
        if MASK == 0:
            k = tl.load(k_base + k_slot[None, :] * sks + offs_d[:, None])
        else:
            k = tl.load(k_base + k_slot[None, :] * sks + offs_d[:, None], mask=in_range[None, :], other=0.0)
        if IEEE:
            s = tl.dot(q, k, input_precision="ieee")
        else:
            s = tl.dot(q, k)
        if MASK == 0:
            # every score is finite here: scale inside the exponent (one FMA per score)
            m_new = tl.maximum(m_i, tl.max(s, axis=1) * qk_scale)
            m_safe = m_new
            p = tl.math.exp2(s * qk_scale - m_safe[:, None])
        else:
            s = s * qk_scale
            if (MASK == 1) | (start_n < kv_start) | (start_n + BLOCK_N > first_q) | (start_n + BLOCK_N > kv_len):
                visible = (k_slot[None, :] <= q_slot[:, None]) & (k_slot[None, :] >= kv_start) & in_range[None, :]
                visible = visible | (k_slot[None, :] == q_slot[:, None])  # a padding query sees its own slot
                s = tl.where(visible, s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, axis=1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            p = tl.math.exp2(s - m_safe[:, None])
        alpha = tl.math.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None]
        if MASK == 0:
            v = tl.load(v_base + k_slot[:, None] * svs + offs_d[None, :])
        else:
            v = tl.load(v_base + k_slot[:, None] * svs + offs_d[None, :], mask=in_range[:, None], other=0.0)
        if IEEE:
            acc += tl.dot(p.to(v.dtype), v, input_precision="ieee")
        else:
            acc += tl.dot(p.to(v.dtype), v)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _prefill_kernel(
    Q, KC, VC, O, KV_START,
    sqb, sqt, sqh, skb, skh, sks, svb, svh, svs, sob, sot, soh,
    T, HQ, GROUP, q_start, kv_len, qk_scale, T_BUCKET,
    D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, IEEE: tl.constexpr, SPLIT_LOOPS: tl.constexpr,
):
    # Causal work grows with the query block index: the heaviest blocks are launched first so the
    # light ones fill the tail of the grid.
    pid_m = tl.num_programs(0) - 1 - tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // HQ).to(tl.int64)
    h = (bh % HQ).to(tl.int64)
    hk = h // GROUP
    kv_start = tl.load(KV_START + b).to(tl.int32)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # query rows
    offs_d = tl.arange(0, D)
    q_slot = q_start + offs_m  # [BLOCK_M]
    q_ptrs = Q + b * sqb + h * sqh + offs_m[:, None].to(tl.int64) * sqt + offs_d[None, :]
    q = tl.load(q_ptrs, mask=offs_m[:, None] < T, other=0.0)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, D], dtype=tl.float32)

    k_base = KC + b * skb + hk * skh
    v_base = VC + b * svb + hk * svh
    # Keys this block of queries can see: [lo, hi), in whole key blocks.
    first_q = q_start + pid_m * BLOCK_M
    hi = tl.minimum(kv_len, first_q + BLOCK_M)
    lo = (kv_start // BLOCK_N) * BLOCK_N
    lo = tl.minimum(lo, (first_q // BLOCK_N) * BLOCK_N)  # a block of padding queries sees its own slots
    if SPLIT_LOOPS:
        # Three runs of key blocks: [lo, a_end) touches the padding boundary (masked); [a_end, b_end)
        # is seen in full by every query of the block (no mask); [b_end, hi) holds the diagonal (masked).
        full_lo = tl.cdiv(kv_start, BLOCK_N) * BLOCK_N  # first block wholly after the padding
        full_hi = (first_q // BLOCK_N) * BLOCK_N  # blocks ending at or before the first query slot
        a_end = tl.minimum(tl.maximum(full_lo, lo), hi)
        b_end = tl.maximum(a_end, tl.minimum(full_hi, hi))
        acc, l_i, m_i = _attend_blocks(acc, l_i, m_i, q, k_base, v_base, sks, svs, q_slot, first_q, kv_start, kv_len,
                                       qk_scale, lo, a_end, BLOCK_N, D, 1, IEEE)
        acc, l_i, m_i = _attend_blocks(acc, l_i, m_i, q, k_base, v_base, sks, svs, q_slot, first_q, kv_start, kv_len,
                                       qk_scale, a_end, b_end, BLOCK_N, D, 0, IEEE)
        acc, l_i, m_i = _attend_blocks(acc, l_i, m_i, q, k_base, v_base, sks, svs, q_slot, first_q, kv_start, kv_len,
                                       qk_scale, b_end, hi, BLOCK_N, D, 1, IEEE)
    else:
        # One loop that decides per block whether to mask: fewer registers live at once, which
        # can matter more than the mask arithmetic (the tuner measures both on the GPU).
        acc, l_i, m_i = _attend_blocks(acc, l_i, m_i, q, k_base, v_base, sks, svs, q_slot, first_q, kv_start, kv_len,
                                       qk_scale, lo, hi, BLOCK_N, D, 2, IEEE)
    l_safe = tl.where(l_i == 0.0, 1.0, l_i)
    out = acc / l_safe[:, None]
    o_ptrs = O + b * sob + h * soh + offs_m[:, None].to(tl.int64) * sot + offs_d[None, :]
    tl.store(o_ptrs, out.to(O.dtype.element_ty), mask=offs_m[:, None] < T)


# On a GPU the block shape is tuned among configurations that suit Hopper/Ampere, once per head
# size, precision and prompt-length bucket (short prompts and 16k prompts favour different shapes);
# the interpreter runs one fixed small configuration.
# Shapes that compile without heavy spilling on sm_90 (benches/kernel_resources.py), each with the
# key blocks in three loops or in one.
PREFILL_CONFIGS = [
    triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "SPLIT_LOOPS": split}, num_warps=w, num_stages=st)
    for bm, bn, w, st in ((128, 64, 8, 3), (128, 64, 8, 4), (128, 128, 8, 3), (64, 64, 4, 3))
    for split in (True, False)
]
_TUNED = tuned(_prefill_kernel, PREFILL_CONFIGS, key=["D", "IEEE", "T_BUCKET"])


def _length_bucket(t: int) -> int:
    """Tuning bucket of a prompt length: 0 (<= 512), 1 (<= 2048), 2 (longer)."""
    return 0 if t <= 512 else 1 if t <= 2048 else 2


def _config(d: int, dtype: torch.dtype) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps, num_stages)."""
    if INTERPRET:
        return 32, 32, 4, 1
    if dtype == torch.float32:
        return 64, 32, 4, 2
    if d <= 64:
        return 128, 64, 4, 3
    return 128, 64, 8, 3


def attention_prefill(q, k_cache, v_cache, q_start: int, kv_start: torch.Tensor, kv_len: int,
                      split_loops: bool = True) -> torch.Tensor:
    """Causal attention of the new queries over the cache. ``split_loops`` applies where the launch
    shape is fixed (no tuning: interpreter, fp32): key blocks in three loops, or one (see the kernel)."""
    b, t, hq, d = q.shape
    hkv = k_cache.shape[1]
    if d not in (16, 32, 64, 128, 256):
        raise ValueError(f"head_dim {d} is not supported by the Triton attention kernel")
    assert q.stride(-1) == 1
    check_cache_layout(k_cache, v_cache)
    out = torch.empty((b, t, hq, d), dtype=q.dtype, device=q.device)
    scale = (1.0 / d**0.5) * 1.4426950408889634  # log2(e): softmax via exp2
    ieee = q.dtype == torch.float32
    if _TUNED is not None and q.is_cuda and not ieee:
        _TUNED[lambda meta: (triton.cdiv(t, meta["BLOCK_M"]), b * hq)](
            q, k_cache, v_cache, out, kv_start,
            q.stride(0), q.stride(1), q.stride(2), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
            v_cache.stride(0), v_cache.stride(1), v_cache.stride(2), out.stride(0), out.stride(1), out.stride(2),
            t, hq, hq // hkv, int(q_start), int(kv_len), scale, _length_bucket(t), D=d, IEEE=False,
        )
        return out
    bm, bn, warps, stages = _config(d, q.dtype)
    grid = (triton.cdiv(t, bm), b * hq)
    _prefill_kernel[grid](
        q, k_cache, v_cache, out, kv_start,
        q.stride(0), q.stride(1), q.stride(2), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2), out.stride(0), out.stride(1), out.stride(2),
        t, hq, hq // hkv, int(q_start), int(kv_len), scale, 0,
        D=d, BLOCK_M=bm, BLOCK_N=bn, IEEE=q.dtype == torch.float32, SPLIT_LOOPS=split_loops, num_warps=warps,
        num_stages=stages,
    )
    return out
