"""Decode attention for a batch whose rows come in runs that share their prompt's keys and values
(the ``num_return_sequences`` samples of a prompt, a prompt's beams): every row of a run holds the
same keys and values in slots < P, so they are read once per run instead of once per row.

A decode step reads the whole cache: n samples of a P-token prompt hold n copies of its keys and
values, and at 8 samples of 2048 tokens over 7B's heads that is 256 MiB per step and layer of
fp16, against 386 MiB of weights; reading one copy saves seven eighths of it.

Three launches after the RoPE + cache-write step (kernels/rope.py) has rotated q:
1. ``_part_kernel`` over the prompt's slots [kv_start, P): one program per (run, KV head, split,
   query tile) loads a block of keys and values of the run's first row once and scores it against
   the queries of every row of the run and every query head of the KV head (runs x group rows,
   in tiles of up to 64, padded to 16 for the tensor cores).
2. ``_part_kernel`` again over each row's own slots [max(kv_start, P), kv_len) (its generated
   tokens and the new one), a run of one row.
3. ``_merge_kernel``: one program per (sequence, query head) merges the partials (max, sum, acc)
   of both parts' splits.
A split without keys writes only its max (-inf); the merge loads the sums and accumulators of the
splits that hold keys alone, so the partials' traffic follows the keys, not the splits.

The splits depend on the batch, runs and heads alone, never on the cache's size or the call's
lengths (read from device tensors in the kernel), so the launches can be captured in a CUDA graph
and a call gives the same bits in a cache of any size.

q [B, 1, Hq, D] (rotated), k_cache/v_cache [B, Hkv, S, D], kv_start [B], kv_len and prompt_slots:
ints or 1-element tensors. The query sits in slot kv_len - 1; keys kv_start[b] <= j < kv_len are
visible; rows r*runs .. r*runs+runs-1 share slots < prompt_slots (and their kv_start).
``reference.attention`` is the oracle: the rows hold copies, so it is plain decode attention.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .attention_decode import _attend_keys, _chunk, num_splits
from .layout import check_cache_layout
from .reference import attention as attention_reference  # noqa: F401  (the oracle)
from .tuning import INTERPRET

MAX_QUERY_TILE = 64  # rows of queries a program scores a key block against (runs x group, tiled)

# The fewest bytes of keys and values per layer that reading the prompt once must save: the path
# takes about three launches more than the one-launch decode attention (RoPE and the cache write
# apart, the second part, the merge), a few microseconds each, in which an H100 reads tens of MiB.
# By that arithmetic, not yet timed: 7B at 8 samples from ~300 prompt tokens, at 2 from ~2048;
# 34B (8 KV heads) at 8 samples from ~1200.
MIN_SAVED_BYTES = 32 * 2**20


def saves_enough(batch: int, runs: int, prompt_slots: int, kv_heads: int, head_dim: int, element_size: int) -> bool:
    """Whether reading `prompt_slots` slots once per run of `runs` rows (of `batch`) instead of once
    per row saves at least MIN_SAVED_BYTES of keys and values per layer."""
    copies_skipped = batch - batch // max(runs, 1)
    return copies_skipped * prompt_slots * kv_heads * head_dim * 2 * element_size >= MIN_SAVED_BYTES


@triton.jit
def _part_kernel(
    Q, KC, VC, KV_START, LO, HI, M_WS, L_WS, ACC_WS,
    sqb, sqh, skb, skh, sks, svb, svh, svs,
    HKV, RUNS, NSPLIT, NSPLIT_ALL, SPLIT0, qk_scale,
    GROUP: tl.constexpr, D: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_N: tl.constexpr, IEEE: tl.constexpr,
):
    """Partials of the keys in [max(kv_start, LO), HI) for the RUNS rows of a run: the cache of
    the run's first row is read. LO, HI: 1-element device tensors (the prompt's part: 0 and P;
    each row's own, a run of one: P and kv_len)."""
    rh = tl.program_id(0)  # (run, KV head)
    split = tl.program_id(1)
    tile = tl.program_id(2)
    r = (rh // HKV).to(tl.int64)
    hk = (rh % HKV).to(tl.int64)
    first = r * RUNS  # the run's first row: its cache slots are read for every row of the run
    kv_start = tl.load(KV_START + first).to(tl.int32)
    lo_all = tl.maximum(kv_start, tl.load(LO).to(tl.int32))
    hi_all = tl.load(HI).to(tl.int32)
    span = tl.maximum(hi_all - lo_all, 0)
    chunk = _chunk(span, NSPLIT, BLOCK_N)
    lo = lo_all + split * chunk
    hi = tl.minimum(lo + chunk, hi_all)

    # the tile's queries: row i of the run's RUNS*GROUP is row first + i // GROUP, head hk*GROUP + i % GROUP
    offs_i = tile * BLOCK_Q + tl.arange(0, BLOCK_Q)
    i_mask = offs_i < RUNS * GROUP
    rows = first + (offs_i // GROUP).to(tl.int64)
    heads = hk * GROUP + (offs_i % GROUP).to(tl.int64)
    offs_d = tl.arange(0, D)
    q = tl.load(Q + rows[:, None] * sqb + heads[:, None] * sqh + offs_d[None, :], mask=i_mask[:, None], other=0.0)

    m_i = tl.full([BLOCK_Q], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_Q], dtype=tl.float32)
    acc = tl.zeros([BLOCK_Q, D], dtype=tl.float32)
    k_base = KC + first * skb + hk * skh
    v_base = VC + first * svb + hk * svh
    m_i, l_i, acc = _attend_keys(q, m_i, l_i, acc, k_base, v_base, sks, svs, lo, hi, qk_scale, D, BLOCK_N, IEEE)

    # partials [B, Hq, NSPLIT_ALL] and [B, Hq, NSPLIT_ALL, D]: this part's splits from SPLIT0. Every
    # split writes its max (-inf where it holds no keys); only those with keys write the rest.
    hq_total = HKV * GROUP
    slot = (rows * hq_total + heads) * NSPLIT_ALL + SPLIT0 + split
    tl.store(M_WS + slot, m_i, mask=i_mask)
    if lo < hi:
        tl.store(L_WS + slot, l_i, mask=i_mask)
        tl.store(ACC_WS + slot[:, None] * D + offs_d[None, :], acc, mask=i_mask[:, None])


@triton.jit
def _merge_kernel(M_WS, L_WS, ACC_WS, O, HQ, NSPLIT_ALL, sob, soh,
                  D: tl.constexpr, BLOCK_S: tl.constexpr, MERGE_S: tl.constexpr):
    """One program per (sequence, query head): the weighted sum of its splits' partials, in split
    order, MERGE_S splits at a time; a split's sum and accumulator are loaded only where it holds keys."""
    bh = tl.program_id(0).to(tl.int64)
    b = bh // HQ
    h = bh % HQ
    base = bh * NSPLIT_ALL
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, D)
    m_all = tl.max(tl.load(M_WS + base + offs_s, mask=offs_s < NSPLIT_ALL, other=float("-inf")), axis=0)
    acc = tl.zeros([D], dtype=tl.float32)
    total = 0.0
    for s0 in range(0, NSPLIT_ALL, MERGE_S):
        offs_c = s0 + tl.arange(0, MERGE_S)
        m_c = tl.load(M_WS + base + offs_c, mask=offs_c < NSPLIT_ALL, other=float("-inf"))
        has = m_c != float("-inf")
        l_c = tl.load(L_WS + base + offs_c, mask=has, other=0.0)
        part = tl.load(ACC_WS + (base + offs_c[:, None]) * D + offs_d[None, :], mask=has[:, None], other=0.0)
        w = tl.where(has, tl.math.exp2(m_c - m_all), 0.0)
        total += tl.sum(w * l_c, axis=0)
        acc += tl.sum(w[:, None] * part, axis=0)
    out = acc / tl.where(total == 0.0, 1.0, total)
    tl.store(O + b * sob + h * soh + offs_d, out.to(O.dtype.element_ty))


MERGE_SPLITS = 2 if INTERPRET else 16  # splits merged at a time (small in the interpreter: tests cross several)


def _as_tensor(x: int | torch.Tensor, device: torch.device) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.reshape(1)
    return torch.tensor([int(x)], dtype=torch.int32, device=device)


def query_tile(runs: int, group: int) -> int:
    """Query rows per program: a run's runs x group queries, at least 16 (tl.dot), at most
    MAX_QUERY_TILE (more rows are tiled; each tile reads the keys again, mostly from L2)."""
    return min(MAX_QUERY_TILE, max(16, triton.next_power_of_2(runs * group)))


def split_counts(batch: int, runs: int, hkv: int, group: int, device: torch.device) -> tuple[int, int]:
    """(splits of the prompt's slots, splits of each row's own slots): enough programs for the GPU
    (attention_decode.num_splits), set by the shapes alone."""
    tiles = triton.cdiv(runs * group, query_tile(runs, group))
    return num_splits(batch // runs * hkv * tiles, device), num_splits(batch * hkv, device)


def attention_shared_decode(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, kv_start: torch.Tensor,
                            kv_len: int | torch.Tensor, runs: int, prompt_slots: int | torch.Tensor,
                            splits: tuple[int, int] | None = None) -> torch.Tensor:
    """Decode attention of q [B, 1, Hq, D] (rotated; its key and value already in the cache) over
    the cache, reading slots < prompt_slots once per run of `runs` rows -> [B, 1, Hq, D].
    ``splits`` overrides ``split_counts`` (tests)."""
    b, t, hq, d = q.shape
    if t != 1:
        raise ValueError(f"decode attention takes one new token per sequence, got {t}")
    if d not in (16, 32, 64, 128, 256):
        raise ValueError(f"head_dim {d} is not supported by the Triton attention kernel")
    if runs < 1 or b % runs:
        raise ValueError(f"a batch of {b} rows does not come in runs of {runs}")
    assert q.stride(-1) == 1
    check_cache_layout(k_cache, v_cache)
    hkv = k_cache.shape[1]
    group = hq // hkv
    dev = q.device
    kv_len_t = _as_tensor(kv_len, dev)
    prompt_t = _as_tensor(prompt_slots, dev)
    zero = torch.zeros(1, dtype=torch.int32, device=dev)
    n_prompt, n_own = splits or split_counts(b, runs, hkv, group, dev)
    n_all = n_prompt + n_own
    m = torch.empty((b, hq, n_all), dtype=torch.float32, device=dev)
    l = torch.empty_like(m)
    acc = torch.empty((b, hq, n_all, d), dtype=torch.float32, device=dev)
    if INTERPRET:  # the tests: a merge that read a partial no split wrote would show as NaN
        for buf in (l, acc):
            buf.fill_(float("nan"))
    out = torch.empty((b, 1, hq, d), dtype=q.dtype, device=dev)
    block_n = 32 if INTERPRET else 64
    scale = (1.0 / d**0.5) * 1.4426950408889634  # log2(e): softmax via exp2
    common = (m, l, acc, q.stride(0), q.stride(2), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
              v_cache.stride(0), v_cache.stride(1), v_cache.stride(2), hkv)
    ieee = q.dtype == torch.float32
    for rows_per_run, lo, hi, n_splits, first_split in ((runs, zero, prompt_t, n_prompt, 0),
                                                        (1, prompt_t, kv_len_t, n_own, n_prompt)):
        tile = query_tile(rows_per_run, group)
        grid = (b // rows_per_run * hkv, n_splits, triton.cdiv(rows_per_run * group, tile))
        # 8 warps for 64 query rows: 123 registers a thread on sm_90 against 178 with 4, no spills
        # either way (benches/kernel_resources.py)
        _part_kernel[grid](q, k_cache, v_cache, kv_start, lo, hi, *common, rows_per_run, n_splits, n_all, first_split,
                           scale, GROUP=group, D=d, BLOCK_Q=tile, BLOCK_N=block_n, IEEE=ieee, num_warps=8 if tile >= 64 else 4,
                           num_stages=1 if INTERPRET else 2)
    _merge_kernel[(b * hq,)](m, l, acc, out, hq, n_all, out.stride(0), out.stride(2), D=d,
                             BLOCK_S=triton.next_power_of_2(n_all), MERGE_S=MERGE_SPLITS, num_warps=4)
    return out
