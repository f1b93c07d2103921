"""Decode attention (one new token per sequence) over the KV cache.

Split along the cache length (flash-decoding) so that a batch of 1 still fills the GPU: each program
takes one (sequence, KV head, split) and loads the whole query group that shares the KV head
(Hq/Hkv rows, padded to 16 for the tensor cores), so every K/V element is read once. Each split
that holds keys writes an unnormalised partial (max, sum, acc). Two ways to merge them:
``merge="last"`` bumps a per-(sequence, KV head) counter and the split that arrives last merges
the partials, writes the output and resets the counter (one launch); ``merge="kernel"`` merges in
a second launch, one program per query head (no serial tail where a query group is large: the last
arrival merges its whole group one head after another). ``launch_defaults`` picks by group size and
batch; the kernel benchmark times both. One split writes the output directly.

``rope_attention_decode`` also does the RoPE + cache-write step of the layer in the same launch:
the programs rotate q themselves, and split 0 rotates the new k, writes k and v into the cache and
counts the new key from registers, while the splits read only the older cache slots.

kv_len and kv_start are read from device tensors and the split ranges are computed in the kernel,
so a launch has static shapes and can be captured in a CUDA graph.

q [B, 1, Hq, D], k_cache/v_cache [B, Hkv, S, D], kv_start [B], kv_len 0-d/1-elem tensor -> [B, 1, Hq, D].
The query sits in slot kv_len - 1: keys kv_start[b] <= j < kv_len are visible.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .layout import check_cache_layout
from .reference import attention as attention_reference  # noqa: F401  (the oracle)
from .reference import rope_attention as rope_attention_reference  # noqa: F401  (the oracle)
from .tuning import INTERPRET, pdl_supported

MAX_SPLITS = 64


@triton.jit
def _decode_kernel(
    Q, K_NEW, V_NEW, POS, INV_FREQ, SLOT, KC, VC, KV_START, KV_LEN, M_WS, L_WS, ACC_WS, COUNT, O,
    sqb, sqh, sknb, sknh, svnb, svnh, sposb,
    skb, skh, sks, svb, svh, svs, sob, soh,
    HKV, NSPLIT, qk_scale,
    GROUP: tl.constexpr, D: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_S: tl.constexpr,
    FUSE_ROPE: tl.constexpr, SINGLE: tl.constexpr, IEEE: tl.constexpr, MERGE_LAST: tl.constexpr,
    MERGE_S: tl.constexpr, USE_GDC: tl.constexpr = False,
):
    if USE_GDC:
        # Programmatic dependent launch (sm_90+): the program may start while the kernel before it
        # (the projection that wrote q, k, v) finishes; it waits for that kernel before any load
        # or store, and the next kernel may launch once every program has passed the wait.
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()
    bh = tl.program_id(0)
    split = tl.program_id(1)
    b = (bh // HKV).to(tl.int64)
    hk = (bh % HKV).to(tl.int64)
    kv_len = tl.load(KV_LEN).to(tl.int32)
    kv_start = tl.load(KV_START + b).to(tl.int32)

    offs_g = tl.arange(0, BLOCK_G)
    offs_d = tl.arange(0, D)
    heads = hk * GROUP + offs_g  # query heads of this group
    g_mask = offs_g < GROUP
    q_ptrs = Q + b * sqb + heads[:, None] * sqh
    q = tl.load(q_ptrs + offs_d[None, :], mask=g_mask[:, None], other=0.0)

    m_i = tl.full([BLOCK_G], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_G], dtype=tl.float32)
    acc = tl.zeros([BLOCK_G, D], dtype=tl.float32)
    if FUSE_ROPE:
        # Rotate-half RoPE, written per element: x'[d] = x[d] cos + sign(d) x[partner(d)] sin with
        # partner(d) = (d + D/2) mod D and sign -1 on the first half. Angles in fp32.
        partner = (offs_d + D // 2) % D
        sign = tl.where(offs_d < D // 2, -1.0, 1.0)
        ang = tl.load(POS + b * sposb).to(tl.float32) * tl.load(INV_FREQ + offs_d % (D // 2))
        cos = tl.cos(ang)
        sin = tl.sin(ang)
        q_p = tl.load(q_ptrs + partner[None, :], mask=g_mask[:, None], other=0.0).to(tl.float32)
        # rounded to the model dtype, as the separate RoPE step stores it
        q = (q.to(tl.float32) * cos[None, :] + sign[None, :] * q_p * sin[None, :]).to(Q.dtype.element_ty)
        cache_hi = kv_len - 1  # the new key is not read from the cache
        if split == 0:
            kn_ptrs = K_NEW + b * sknb + hk * sknh
            k_rot = tl.load(kn_ptrs + offs_d).to(tl.float32) * cos + sign * tl.load(kn_ptrs + partner).to(tl.float32) * sin
            k_rot = k_rot.to(KC.dtype.element_ty)
            v_new = tl.load(V_NEW + b * svnb + hk * svnh + offs_d).to(VC.dtype.element_ty)
            slot = tl.load(SLOT).to(tl.int64)
            tl.store(KC + b * skb + hk * skh + slot * sks + offs_d, k_rot)
            tl.store(VC + b * svb + hk * svh + slot * svs + offs_d, v_new)
            # the new key is every query's own slot: start the running softmax with it
            m_i = tl.sum(q.to(tl.float32) * k_rot.to(tl.float32)[None, :], axis=1) * qk_scale
            l_i = tl.full([BLOCK_G], 1.0, dtype=tl.float32)
            acc = tl.zeros([BLOCK_G, D], dtype=tl.float32) + v_new.to(tl.float32)[None, :]
    else:
        cache_hi = kv_len

    # Split the cache range [kv_start, cache_hi) into NSPLIT chunks of whole blocks.
    span = cache_hi - kv_start
    chunk = _chunk(span, NSPLIT, BLOCK_N)
    lo = kv_start + split * chunk
    hi = tl.minimum(lo + chunk, cache_hi)
    k_base = KC + b * skb + hk * skh
    v_base = VC + b * svb + hk * svh
    m_i, l_i, acc = _attend_keys(q, m_i, l_i, acc, k_base, v_base, sks, svs, lo, hi, qk_scale, D, BLOCK_N, IEEE)

    if SINGLE:
        out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
        tl.store(O + b * sob + heads[:, None] * soh + offs_d[None, :], out.to(O.dtype.element_ty), mask=g_mask[:, None])
    else:
        # partials: [B, Hq, NSPLIT] and [B, Hq, NSPLIT, D], contiguous. Only the splits that hold
        # keys write one (split 0 always does: in the fused step it holds the new key); the
        # merge reads those alone.
        hq_total = HKV * GROUP
        used = _used_splits(span, chunk)
        if split < used:
            row = (b * hq_total + heads) * NSPLIT + split
            tl.store(M_WS + row, m_i, mask=g_mask)
            tl.store(L_WS + row, l_i, mask=g_mask)
            tl.store(ACC_WS + row[:, None] * D + offs_d[None, :], acc, mask=g_mask[:, None])
        if MERGE_LAST:
            # Every thread's partial stores come before the counter bump (barrier), the bump
            # releases them and the last arrival acquires them; it reads them from L2 (".cg").
            tl.debug_barrier()
            arrived = tl.atomic_add(COUNT + bh, 1, sem="acq_rel", scope="gpu")
            if arrived == NSPLIT - 1:
                for g in range(GROUP):  # a loop, not unrolled: one head's merge live at a time
                    _merge_head(M_WS, L_WS, ACC_WS, O, b, hk * GROUP + g, hq_total, NSPLIT, used, sob, soh, D,
                                BLOCK_S, MERGE_S)
                tl.atomic_xchg(COUNT + bh, 0)  # ready for the next launch (or graph replay)


@triton.jit
def _attend_keys(q, m_i, l_i, acc, k_base, v_base, sks, svs, lo, hi, qk_scale, D: tl.constexpr, BLOCK_N: tl.constexpr,
                 IEEE: tl.constexpr):
    """The online softmax of the query rows q [R, D] over the keys and values in slots lo..hi-1
    (k_base / v_base: one sequence's KV head, slot stride sks / svs), BLOCK_N slots at a time,
    carried on from the running max m_i [R], sum l_i [R] and weighted sum acc [R, D] (fp32);
    returns them updated."""
    offs_d = tl.arange(0, D)
    offs_n = tl.arange(0, BLOCK_N)
    for start_n in range(lo, hi, BLOCK_N):
        k_slot = start_n + offs_n
        valid = k_slot < hi
        k = tl.load(k_base + k_slot[None, :] * sks + offs_d[:, None], mask=valid[None, :], other=0.0)
        v = tl.load(v_base + k_slot[:, None] * svs + offs_d[None, :], mask=valid[:, None], other=0.0)
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
        if IEEE:
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision="ieee")
        else:
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m_i = m_new
    return m_i, l_i, acc


@triton.jit
def _chunk(span, NSPLIT, BLOCK_N: tl.constexpr):
    """Keys per split: whole blocks, at least one (an empty range has one empty split)."""
    return tl.maximum(tl.cdiv(tl.cdiv(span, NSPLIT), BLOCK_N), 1) * BLOCK_N


@triton.jit
def _used_splits(span, chunk):
    """How many splits hold keys (at least 1); the rest exit without a partial."""
    return tl.maximum(tl.cdiv(span, chunk), 1)


@triton.jit
def _merge_head(M_WS, L_WS, ACC_WS, O, b, h, hq_total, NSPLIT, used, sob, soh, D: tl.constexpr, BLOCK_S: tl.constexpr,
                MERGE_S: tl.constexpr):
    """Merges the partials of the `used` splits of query head h of sequence b and writes its output
    row. The [split, D] partials are summed MERGE_S splits at a time, in split order: few registers
    live, and the same order at any cache size."""
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, D)
    base = (b * hq_total + h) * NSPLIT
    m = tl.load(M_WS + base + offs_s, mask=offs_s < used, other=float("-inf"), cache_modifier=".cg")
    m_all = tl.max(m, axis=0)
    acc = tl.zeros([D], dtype=tl.float32)
    total = 0.0
    for s0 in range(0, used, MERGE_S):
        offs_c = s0 + tl.arange(0, MERGE_S)
        c_mask = offs_c < used
        m_c = tl.load(M_WS + base + offs_c, mask=c_mask, other=float("-inf"), cache_modifier=".cg")
        l_c = tl.load(L_WS + base + offs_c, mask=c_mask, other=0.0, cache_modifier=".cg")
        part = tl.load(ACC_WS + (base + offs_c[:, None]) * D + offs_d[None, :], mask=c_mask[:, None], other=0.0,
                       cache_modifier=".cg")
        w = tl.where(m_c == float("-inf"), 0.0, tl.math.exp2(m_c - m_all))
        total += tl.sum(w * l_c, axis=0)
        acc += tl.sum(w[:, None] * part, axis=0)
    out = acc / tl.where(total == 0.0, 1.0, total)
    tl.store(O + b * sob + h * soh + offs_d, out.to(O.dtype.element_ty))


@triton.jit
def _merge_kernel(M_WS, L_WS, ACC_WS, O, KV_START, KV_LEN, HQ, NSPLIT, sob, soh, FUSED: tl.constexpr,
                  D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_S: tl.constexpr, MERGE_S: tl.constexpr):
    """merge="kernel": one program per (sequence, query head). It finds the used splits as the
    decode kernel split the range."""
    bh = tl.program_id(0)
    b = (bh // HQ).to(tl.int64)
    span = tl.load(KV_LEN).to(tl.int32) - FUSED - tl.load(KV_START + b).to(tl.int32)
    used = _used_splits(span, _chunk(span, NSPLIT, BLOCK_N))
    _merge_head(M_WS, L_WS, ACC_WS, O, b, (bh % HQ).to(tl.int64), HQ, NSPLIT, used, sob, soh, D, BLOCK_S, MERGE_S)


def num_splits(batch_kv_heads: int, device: torch.device) -> int:
    """Splits per (sequence, KV head): enough programs for ~4 waves of the GPU. It depends on the
    batch and heads alone, never on the cache's size: the splits fix how the keys are summed, so a
    call gives the same bits in a cache of any size (a kept decode state larger than the call, or a
    cache of its own); splits past the keys a call has exit at once."""
    if INTERPRET or device.type != "cuda":
        return 4
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return int(max(1, min(triton.cdiv(4 * sms, batch_kv_heads), MAX_SPLITS)))


def new_counters(batch_kv_heads: int, device: torch.device | str) -> torch.Tensor:
    """The zeroed int32 counters a launch needs, one per (sequence, KV head). Each launch leaves
    them zeroed, so a caller may keep one buffer for every layer and step (one stream at a time)."""
    return torch.zeros(batch_kv_heads, dtype=torch.int32, device=device)


MERGES = ("last", "kernel")
# Splits the merge sums at a time (a small number under the interpreter, so that tests cross
# several of its steps).
MERGE_SPLITS = 2 if INTERPRET else 16


def launch_defaults(group: int, batch_kv_heads: int) -> tuple[str, int]:
    """(merge, pipeline stages of the key loop) where the caller names none. From two H200 runs
    (graph replays) of two versions of this kernel: the last-split merge over a 2-stage loop
    (kernels-20261128T135229Z.json) against the two-launch merge over a 3-stage loop
    (kernels-20261127T092350Z.json). With one query head per KV head and few programs (a 7B/13B
    batch of 1) the first was ahead: 77% / 92% of copy bandwidth at 2k / 16k keys, against 65% /
    86%. Everywhere else the second was: MHA batch 8 94% / 107% against 76% / 86%; 34B's groups of
    8 heads (which the last split merges one after another) at batch 1 29% / 65% against 14% /
    39%. bench_kernels times all four pairings side by side. Neither choice changes the
    arithmetic: same bits either way."""
    merge = "last" if group == 1 and batch_kv_heads <= 64 else "kernel"
    return merge, 1 if INTERPRET else 2 if merge == "last" else 3


def _launch(q, k_new, v_new, positions, inv_freq, slot, k_cache, v_cache, kv_start, kv_len,
            splits: int | None, counters: torch.Tensor | None, merge: str | None = None,
            stages: int | None = None, pdl: bool = False) -> torch.Tensor:
    b, t, hq, d = q.shape
    if t != 1:
        raise ValueError(f"decode attention takes one new token per sequence, got {t}")
    if d not in (16, 32, 64, 128, 256):
        raise ValueError(f"head_dim {d} is not supported by the Triton attention kernel")
    hkv = k_cache.shape[1]
    group = hq // hkv
    default_merge, default_stages = launch_defaults(group, b * hkv)
    merge = default_merge if merge is None else merge
    if merge not in MERGES:
        raise ValueError(f"merge must be one of {MERGES} (or None for the default), got {merge!r}")
    assert q.stride(-1) == 1
    check_cache_layout(k_cache, v_cache)
    if not isinstance(kv_len, torch.Tensor):
        kv_len = torch.tensor([int(kv_len)], dtype=torch.int32, device=q.device)
    block_n = 32 if INTERPRET else 64
    block_g = max(16, triton.next_power_of_2(group))
    nsplit = max(1, min(int(splits or num_splits(b * hkv, q.device)), MAX_SPLITS))
    single = nsplit == 1
    merge_last = merge == "last"
    out = torch.empty((b, 1, hq, d), dtype=q.dtype, device=q.device)
    if single:
        m = l = acc = count = out  # unused
    else:
        m = torch.empty((b, hq, nsplit), dtype=torch.float32, device=q.device)
        l = torch.empty_like(m)
        acc = torch.empty((b, hq, nsplit, d), dtype=torch.float32, device=q.device)
        if INTERPRET:  # the tests: a merge that read a partial no split wrote would show as NaN
            for buf in (m, l, acc):
                buf.fill_(float("nan"))
        if merge_last:
            count = counters if counters is not None else new_counters(b * hkv, q.device)
            if count.numel() < b * hkv or count.dtype != torch.int32:
                raise ValueError(f"counters must be int32 with at least {b * hkv} elements")
        else:
            count = m  # unused
    fuse = k_new is not None
    if not fuse:
        k_new = v_new = positions = inv_freq = slot = q  # unused
    scale = (1.0 / d**0.5) * 1.4426950408889634  # log2(e): softmax via exp2
    gdc = dict(USE_GDC=True, launch_pdl=True) if pdl and pdl_supported(q.device) else {}
    _decode_kernel[(b * hkv, nsplit)](
        q, k_new, v_new, positions, inv_freq, slot, k_cache, v_cache, kv_start, kv_len, m, l, acc, count, out,
        q.stride(0), q.stride(2),
        k_new.stride(0), k_new.stride(2), v_new.stride(0), v_new.stride(2), positions.stride(0),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        out.stride(0), out.stride(2),
        hkv, nsplit, scale,
        GROUP=group, D=d, BLOCK_G=block_g, BLOCK_N=block_n, BLOCK_S=triton.next_power_of_2(nsplit),
        FUSE_ROPE=fuse, SINGLE=single, IEEE=q.dtype == torch.float32, MERGE_LAST=merge_last, MERGE_S=MERGE_SPLITS,
        num_warps=4, num_stages=stages or default_stages, **gdc,
    )
    if not single and not merge_last:
        _merge_kernel[(b * hq,)](m, l, acc, out, kv_start, kv_len, hq, nsplit, out.stride(0), out.stride(2),
                                 FUSED=int(fuse), D=d, BLOCK_N=block_n, BLOCK_S=triton.next_power_of_2(nsplit),
                                 MERGE_S=MERGE_SPLITS, num_warps=4)
    return out


def attention_decode(q, k_cache, v_cache, kv_start: torch.Tensor, kv_len, num_splits: int | None = None,
                     counters: torch.Tensor | None = None, merge: str | None = None,
                     stages: int | None = None, pdl: bool = False) -> torch.Tensor:
    """Attention of q (already rotated, its k/v already in the cache) over the cache. ``merge``
    and ``stages`` (software-pipelining depth of the key loop) override the defaults, for A/B
    timing. ``pdl``: launch with programmatic dependent launch where the GPU has it (sm_90+), so
    the kernel's start overlaps the end of the one before it; same bits."""
    return _launch(q, None, None, None, None, None, k_cache, v_cache, kv_start, kv_len, num_splits, counters, merge,
                   stages, pdl)


def rope_attention_decode(q, k, v, positions, inv_freq, k_cache, v_cache, slots, kv_start: torch.Tensor, kv_len,
                          num_splits: int | None = None, counters: torch.Tensor | None = None,
                          merge: str | None = None, stages: int | None = None, pdl: bool = False) -> torch.Tensor:
    """RoPE on q and the new k, the cache write of k and v at ``slots`` (= kv_len - 1), and
    attention, in one launch (plus the merge's, where the merge takes a second). q [B,1,Hq,D], k/v [B,1,Hkv,D] (views of the fused qkv output are
    fine), positions [B,1] int64, inv_freq [D/2] fp32, slots [1] int64."""
    if positions.dim() != 2 or positions.shape[1] != 1:
        raise ValueError(f"positions must be [B, 1], got {tuple(positions.shape)}")
    positions = positions.expand(q.shape[0], 1)
    return _launch(q, k, v, positions, inv_freq, slots, k_cache, v_cache, kv_start, kv_len, num_splits, counters, merge,
                   stages, pdl)
