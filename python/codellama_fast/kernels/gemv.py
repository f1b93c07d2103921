"""Matrix products of a few rows (the decode step of up to MAX_ROWS sequences) with the small steps
around them fused in, where every launch between the big weight reads costs time:

  norm_linear(x [M,K], norm_w [K], W [N,K])        -> rms_norm(x, norm_w) @ W.T            [M, N]
  norm_linear_swiglu(x [M,K], norm_w [K], W [2F,K]) -> swiglu(rms_norm(x, norm_w) @ W.T)    [M, F]
  linear_residual(x [M,K], W [N,K], res [M,N])      -> res + x @ W.T                        [M, N]

Each program owns BLOCK_N output features and streams their weight rows once (for SwiGLU, the gate
row f and the up row F + f together). One row runs on the CUDA cores (`_gemv_kernel`); 2..16 rows
feed the tensor cores with the rows padded to 16 (`_few_rows_kernel`). The RMSNorm statistics of
the input rows are recomputed by every program from cache: a few KB against the MBs of weights it
reads. Rounding follows the unfused ops: the normalised input, the projection output and the
residual sum are rounded to the model dtype where those ops store them.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .reference import linear_residual as linear_residual_reference  # noqa: F401  (the oracles)
from .reference import norm_linear as norm_linear_reference  # noqa: F401
from .reference import norm_linear_swiglu as norm_linear_swiglu_reference  # noqa: F401
from .tuning import INTERPRET, pdl_supported, tuned


@triton.jit
def _input_tile(X, NORM_W, kk, k_mask, rstd, PRE_NORM: tl.constexpr, OUT_DTYPE: tl.constexpr):
    """x[kk] as fp32 [1, BLOCK_K], normalised (rounded as the unfused RMSNorm stores it) with PRE_NORM."""
    x = tl.load(X + kk, mask=k_mask, other=0.0)
    if PRE_NORM:
        nw = tl.load(NORM_W + kk, mask=k_mask, other=0.0)
        x = (x.to(tl.float32) * rstd).to(OUT_DTYPE) * nw.to(OUT_DTYPE)
    return x.to(tl.float32)[None, :]


@triton.jit
def _gemv_kernel(X, W, Y, RES, NORM_W, K, N, eps, stride_w,
                 PRE_NORM: tl.constexpr, SWIGLU: tl.constexpr, ADD_RES: tl.constexpr,
                 BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, USE_GDC: tl.constexpr = False):
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < N
    rows = offs_n.to(tl.int64)
    offs_k = tl.arange(0, BLOCK_K)
    if USE_GDC:
        # Programmatic dependent launch (sm_90+): this program may start while the kernel before
        # it finishes. No kernel of a step writes the weights, so their first tile is read before
        # the wait; the input, the residual and every store of this kernel come after it, and the
        # next kernel may launch only once every program has passed it.
        w_mask0 = n_mask[:, None] & (offs_k < K)[None, :]
        w_first = tl.load(W + rows[:, None] * stride_w + offs_k[None, :], mask=w_mask0, other=0.0)
        if SWIGLU:
            wu_first = tl.load(W + (rows + N)[:, None] * stride_w + offs_k[None, :], mask=w_mask0, other=0.0)
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()
    rstd = 1.0
    if PRE_NORM:
        sq = tl.zeros([BLOCK_K], dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            x = tl.load(X + k0 + offs_k, mask=k0 + offs_k < K, other=0.0).to(tl.float32)
            sq += x * x
        rstd = 1.0 / tl.sqrt(tl.sum(sq, axis=0) / K + eps)
    # Partial products accumulate elementwise in [BLOCK_N, BLOCK_K] and are summed over K once at
    # the end: no cross-thread reduction (and barrier) inside the streaming loop.
    acc2 = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
    acc2_up = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
    k_start = 0
    if USE_GDC:  # the first tile, read before the wait (same products, same order)
        xf = _input_tile(X, NORM_W, offs_k, offs_k < K, rstd, PRE_NORM, Y.dtype.element_ty)
        acc2 += w_first.to(tl.float32) * xf
        if SWIGLU:
            acc2_up += wu_first.to(tl.float32) * xf
        k_start = BLOCK_K
    for k0 in range(k_start, K, BLOCK_K):
        kk = k0 + offs_k
        k_mask = kk < K
        xf = _input_tile(X, NORM_W, kk, k_mask, rstd, PRE_NORM, Y.dtype.element_ty)
        w_mask = n_mask[:, None] & k_mask[None, :]
        w = tl.load(W + rows[:, None] * stride_w + kk[None, :], mask=w_mask, other=0.0)
        acc2 += w.to(tl.float32) * xf
        if SWIGLU:
            wu = tl.load(W + (rows + N)[:, None] * stride_w + kk[None, :], mask=w_mask, other=0.0)
            acc2_up += wu.to(tl.float32) * xf
    y = tl.sum(acc2, axis=1).to(Y.dtype.element_ty)  # the projection's output, as the matmul stores it
    if SWIGLU:
        g = y.to(tl.float32)
        u = tl.sum(acc2_up, axis=1).to(Y.dtype.element_ty).to(tl.float32)
        y = (g / (1.0 + tl.exp(-g)) * u).to(Y.dtype.element_ty)
    if ADD_RES:
        r = tl.load(RES + offs_n, mask=n_mask, other=0.0)
        y = (y.to(tl.float32) + r.to(tl.float32)).to(Y.dtype.element_ty)
    tl.store(Y + offs_n, y, mask=n_mask)


@triton.jit
def _few_rows_kernel(X, W, Y, RES, NORM_W, M, K, N, eps, stride_x, stride_w, stride_y, stride_r,
                     PRE_NORM: tl.constexpr, SWIGLU: tl.constexpr, ADD_RES: tl.constexpr, IEEE: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    # BLOCK_M = 16: the rows padded to the tensor cores' smallest tile
    offs_m = tl.arange(0, BLOCK_M)
    m_mask = offs_m < M
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < N
    rows = offs_n.to(tl.int64)
    offs_k = tl.arange(0, BLOCK_K)
    x_rows = X + offs_m[:, None].to(tl.int64) * stride_x
    if PRE_NORM:
        sq = tl.zeros([BLOCK_M, BLOCK_K], dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            kk = k0 + offs_k
            x = tl.load(x_rows + kk[None, :], mask=m_mask[:, None] & (kk < K)[None, :], other=0.0).to(tl.float32)
            sq += x * x
        rstd = 1.0 / tl.sqrt(tl.sum(sq, axis=1) / K + eps)  # [BLOCK_M]
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    acc_up = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + offs_k
        k_mask = kk < K
        x = tl.load(x_rows + kk[None, :], mask=m_mask[:, None] & k_mask[None, :], other=0.0)
        if PRE_NORM:
            nw = tl.load(NORM_W + kk, mask=k_mask, other=0.0)
            x = (x.to(tl.float32) * rstd[:, None]).to(Y.dtype.element_ty) * nw.to(Y.dtype.element_ty)[None, :]
        x = x.to(W.dtype.element_ty)
        w_mask = k_mask[:, None] & n_mask[None, :]
        w = tl.load(W + rows[None, :] * stride_w + kk[:, None], mask=w_mask, other=0.0)  # [BLOCK_K, BLOCK_N] = W.T tile
        if IEEE:
            acc = tl.dot(x, w, acc, input_precision="ieee")
        else:
            acc = tl.dot(x, w, acc)
        if SWIGLU:
            wu = tl.load(W + (rows + N)[None, :] * stride_w + kk[:, None], mask=w_mask, other=0.0)
            if IEEE:
                acc_up = tl.dot(x, wu, acc_up, input_precision="ieee")
            else:
                acc_up = tl.dot(x, wu, acc_up)
    y = acc.to(Y.dtype.element_ty)
    if SWIGLU:
        g = y.to(tl.float32)
        u = acc_up.to(Y.dtype.element_ty).to(tl.float32)
        y = (g / (1.0 + tl.exp(-g)) * u).to(Y.dtype.element_ty)
    out_mask = m_mask[:, None] & n_mask[None, :]
    if ADD_RES:
        r = tl.load(RES + offs_m[:, None].to(tl.int64) * stride_r + offs_n[None, :], mask=out_mask, other=0.0)
        y = (y.to(tl.float32) + r.to(tl.float32)).to(Y.dtype.element_ty)
    tl.store(Y + offs_m[:, None].to(tl.int64) * stride_y + offs_n[None, :], y, mask=out_mask)


# 32 accumulator elements per thread (BLOCK_N * BLOCK_K / threads): with twice that, the SwiGLU
# variant (two accumulators) spills on sm_90 (benches/kernel_resources.py)
GEMV_CONFIGS = [
    triton.Config({"BLOCK_N": bn, "BLOCK_K": bk}, num_warps=w)
    for bn, bk, w in ((4, 1024, 4), (4, 2048, 8), (8, 512, 4), (8, 1024, 8), (16, 256, 4), (16, 512, 8),
                      (32, 128, 4), (32, 256, 8))
]
_TUNED = tuned(_gemv_kernel, GEMV_CONFIGS, key=["K", "N", "PRE_NORM", "SWIGLU", "ADD_RES", "USE_GDC"])


FEW_ROWS_CONFIGS = [
    triton.Config({"BLOCK_N": bn, "BLOCK_K": bk}, num_warps=w, num_stages=st)
    for bn, bk, w, st in ((16, 256, 4, 3), (32, 128, 4, 3), (32, 256, 4, 3), (64, 128, 4, 3), (64, 64, 4, 4), (32, 512, 8, 2))
]
_FEW_TUNED = tuned(_few_rows_kernel, FEW_ROWS_CONFIGS, key=["K", "N", "PRE_NORM", "SWIGLU", "ADD_RES", "IEEE"])
MAX_ROWS = 16


def _check(x: torch.Tensor, w: torch.Tensor) -> None:
    if x.dim() != 2 or not 1 <= x.shape[0] <= MAX_ROWS:
        raise ValueError(f"the fused projection kernels take 1 to {MAX_ROWS} rows, got {tuple(x.shape)}")
    if x.shape[1] != w.shape[1] or w.stride(1) != 1 or x.stride(1) != 1:
        raise ValueError(f"input {tuple(x.shape)} does not match a row-major weight {tuple(w.shape)}")


def _launch(x, w, n_out, res, norm_w, eps, pre_norm: bool, swiglu: bool, add_res: bool, pdl: bool = False) -> torch.Tensor:
    _check(x, w)
    m, k = x.shape
    y = torch.empty((m, n_out), dtype=x.dtype, device=x.device)
    res = res if res is not None else y
    norm_w = norm_w if norm_w is not None else x
    flags = dict(PRE_NORM=pre_norm, SWIGLU=swiglu, ADD_RES=add_res)
    if m == 1:
        args = (x, w, y, res, norm_w, k, n_out, float(eps), w.stride(0))
        if pdl and pdl_supported(x.device):
            flags.update(USE_GDC=True, launch_pdl=True)
        if _TUNED is not None and x.is_cuda:
            _TUNED[lambda meta: (triton.cdiv(n_out, meta["BLOCK_N"]),)](*args, **flags)
        else:
            bn, bk, warps = (16, 64, 4) if INTERPRET else (16, 512, 8)
            _gemv_kernel[(triton.cdiv(n_out, bn),)](*args, **flags, BLOCK_N=bn, BLOCK_K=bk, num_warps=warps)
        return y
    args = (x, w, y, res, norm_w, m, k, n_out, float(eps), x.stride(0), w.stride(0), y.stride(0), res.stride(0))
    flags.update(IEEE=x.dtype == torch.float32, BLOCK_M=16)
    if _FEW_TUNED is not None and x.is_cuda and x.dtype != torch.float32:
        _FEW_TUNED[lambda meta: (triton.cdiv(n_out, meta["BLOCK_N"]),)](*args, **flags)
    else:
        bn, bk = (16, 32) if INTERPRET else (32, 128)
        _few_rows_kernel[(triton.cdiv(n_out, bn),)](*args, **flags, BLOCK_N=bn, BLOCK_K=bk, num_warps=4,
                                                     num_stages=1 if INTERPRET else 2)
    return y


# pdl=True: a one-row launch uses programmatic dependent launch where the GPU has it (sm_90+): it
# may start while the kernel before it finishes, reading its first weight tile meanwhile. Same bits.


def norm_linear(x: torch.Tensor, norm_w: torch.Tensor, w: torch.Tensor, eps: float, pdl: bool = False) -> torch.Tensor:
    return _launch(x, w, w.shape[0], None, norm_w, eps, True, False, False, pdl)


def norm_linear_swiglu(x: torch.Tensor, norm_w: torch.Tensor, w13: torch.Tensor, eps: float, pdl: bool = False) -> torch.Tensor:
    if w13.shape[0] % 2:
        raise ValueError(f"the gate/up weight needs an even number of rows, got {w13.shape[0]}")
    return _launch(x, w13, w13.shape[0] // 2, None, norm_w, eps, True, True, False, pdl)


def linear_residual(x: torch.Tensor, w: torch.Tensor, residual: torch.Tensor, pdl: bool = False) -> torch.Tensor:
    if residual.shape != (x.shape[0], w.shape[0]) or residual.stride(-1) != 1:
        raise ValueError(f"the residual must be [{x.shape[0]}, {w.shape[0]}], got {tuple(residual.shape)}")
    return _launch(x, w, w.shape[0], residual, None, 0.0, False, False, True, pdl)
