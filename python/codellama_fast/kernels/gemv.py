"""Single-row matrix-vector products with the small steps around them fused in, for the decode step
of one sequence, where every launch between the big weight reads costs time:

  norm_linear(x [1,K], norm_w [K], W [N,K])        -> rms_norm(x, norm_w) @ W.T            [1, N]
  norm_linear_swiglu(x [1,K], norm_w [K], W [2F,K]) -> swiglu(rms_norm(x, norm_w) @ W.T)    [1, F]
  linear_residual(x [1,K], W [N,K], res [1,N])      -> res + x @ W.T                        [1, N]

Each program owns BLOCK_N output features and streams their weight rows once (for SwiGLU, the gate
row f and the up row F + f together). The RMSNorm statistics of the one input row are recomputed
by every program from cache: a few KB against the MBs of weights it reads. Rounding follows the
unfused ops: the normalised input, the projection output and the residual sum are rounded to the
model dtype where those ops store them.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .reference import linear_residual as linear_residual_reference  # noqa: F401  (the oracles)
from .reference import norm_linear as norm_linear_reference  # noqa: F401
from .reference import norm_linear_swiglu as norm_linear_swiglu_reference  # noqa: F401
from .tuning import INTERPRET, tuned


@triton.jit
def _gemv_kernel(X, W, Y, RES, NORM_W, K, N, eps, stride_w,
                 PRE_NORM: tl.constexpr, SWIGLU: tl.constexpr, ADD_RES: tl.constexpr,
                 BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < N
    rows = offs_n.to(tl.int64)
    offs_k = tl.arange(0, BLOCK_K)
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
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + offs_k
        k_mask = kk < K
        x = tl.load(X + kk, mask=k_mask, other=0.0)
        if PRE_NORM:
            nw = tl.load(NORM_W + kk, mask=k_mask, other=0.0)
            x = (x.to(tl.float32) * rstd).to(Y.dtype.element_ty) * nw.to(Y.dtype.element_ty)
        xf = x.to(tl.float32)[None, :]
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


# 32 accumulator elements per thread (BLOCK_N * BLOCK_K / threads): with twice that, the SwiGLU
# variant (two accumulators) spills on sm_90 (benches/kernel_resources.py)
GEMV_CONFIGS = [
    triton.Config({"BLOCK_N": bn, "BLOCK_K": bk}, num_warps=w)
    for bn, bk, w in ((4, 1024, 4), (4, 2048, 8), (8, 512, 4), (8, 1024, 8), (16, 256, 4), (16, 512, 8),
                      (32, 128, 4), (32, 256, 8))
]
_TUNED = tuned(_gemv_kernel, GEMV_CONFIGS, key=["K", "N", "PRE_NORM", "SWIGLU", "ADD_RES"])


def _check(x: torch.Tensor, w: torch.Tensor) -> None:
    if x.dim() != 2 or x.shape[0] != 1:
        raise ValueError(f"the fused matrix-vector kernels take one row, got {tuple(x.shape)}")
    if x.shape[1] != w.shape[1] or w.stride(1) != 1 or x.stride(1) != 1:
        raise ValueError(f"input [1, {x.shape[1]}] does not match a row-major weight {tuple(w.shape)}")


def _launch(x, w, n_out, res, norm_w, eps, pre_norm: bool, swiglu: bool, add_res: bool) -> torch.Tensor:
    _check(x, w)
    k = x.shape[1]
    y = torch.empty((1, n_out), dtype=x.dtype, device=x.device)
    res = res if res is not None else y
    norm_w = norm_w if norm_w is not None else x
    args = (x, w, y, res, norm_w, k, n_out, float(eps), w.stride(0))
    flags = dict(PRE_NORM=pre_norm, SWIGLU=swiglu, ADD_RES=add_res)
    if _TUNED is not None and x.is_cuda:
        _TUNED[lambda meta: (triton.cdiv(n_out, meta["BLOCK_N"]),)](*args, **flags)
    else:
        bn, bk, warps = (16, 64, 4) if INTERPRET else (16, 512, 8)
        _gemv_kernel[(triton.cdiv(n_out, bn),)](*args, **flags, BLOCK_N=bn, BLOCK_K=bk, num_warps=warps)
    return y


def norm_linear(x: torch.Tensor, norm_w: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    return _launch(x, w, w.shape[0], None, norm_w, eps, True, False, False)


def norm_linear_swiglu(x: torch.Tensor, norm_w: torch.Tensor, w13: torch.Tensor, eps: float) -> torch.Tensor:
    if w13.shape[0] % 2:
        raise ValueError(f"the gate/up weight needs an even number of rows, got {w13.shape[0]}")
    return _launch(x, w13, w13.shape[0] // 2, None, norm_w, eps, True, True, False)


def linear_residual(x: torch.Tensor, w: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    if residual.shape != (1, w.shape[0]) or residual.stride(-1) != 1:
        raise ValueError(f"the residual must be [1, {w.shape[0]}], got {tuple(residual.shape)}")
    return _launch(x, w, w.shape[0], residual, None, 0.0, False, False, True)
