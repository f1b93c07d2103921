"""x @ w.T for fp16 weights on the CPU with many rows (a prompt's prefill, a large batch's decode
step), through fp32 blocks.

torch's CPU matmul has no fast fp16 kernel on CPUs without native fp16 arithmetic: 256 rows times
Code Llama 7B's MLP weight took 3.6x as long in fp16 as through fp32 on the 2-core AMD EPYC
machines (about 8.5x bf16's time). Loading with ``torch_dtype=torch.float16``, as the model cards write
it, puts a CPU user on that path. Here each block of the weight's rows is widened to fp32 in a
buffer that stays in cache, multiplied by a block of x's rows in fp32, and rounded to fp16 once:
fp16 products are exact in fp32, so this is what an fp16 matmul that accumulates in fp32 gives,
summed in another order. Fewer rows (a decode step) keep F.linear, whose one read of the fp16
weight is then as fast or faster.
"""

from __future__ import annotations

import torch

from .scratch import fp32_buffer

# The fewest rows (the product of x's leading dims) that take the fp32 blocks. The blocks gain by
# staying in the L3 cache, and on the shared 2-core machines that gain came and went (as if other
# work took the cache). Over 7B's MLP weight: 32 rows 2.9x F.linear, 16 rows 1.9x; in a slow
# spell the x-first product's 1.3x at 16 rows turned into 0.55x and its 2.7x at 64 into 1.4x, so
# 16 rows (a batch or beams decoding together) keep F.linear.
MIN_ROWS = 32
# Below this many rows the product runs as w_block @ x_block.T, the orientation in which torch's
# MKL streams a block for few rows fastest (as engine/small_matmul.py finds in fp32): 1.2-1.5x the
# x-first product at 32-128 rows, parity at 256, 0.96x at 1024.
WEIGHT_FIRST_BELOW = 256
# fp32 elements per block of the weight's rows, of x's rows, and of their product (8, 16 and 8 MiB
# at most): blocks that stay in the L3 cache while the product reads them
WEIGHT_BLOCK_ELEMENTS = 2**21
ROW_BLOCK_ELEMENTS = 2**22
PRODUCT_BLOCK_ELEMENTS = 2**21


def applies(x: torch.Tensor, w: torch.Tensor) -> bool:
    rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
    return x.device.type == "cpu" and x.dtype == torch.float16 and w.dtype == torch.float16 and rows >= MIN_ROWS


def linear(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x [..., K] @ w.T (w [N, K], both fp16) -> [..., N] fp16, summed in fp32."""
    k, n = x.shape[-1], w.shape[0]
    rows = x.reshape(-1, k)  # [M, K]
    m = rows.shape[0]
    out = torch.empty(m, n, dtype=x.dtype)
    per_w = max(1, WEIGHT_BLOCK_ELEMENTS // k)  # weight rows per block
    per_x = max(1, min(ROW_BLOCK_ELEMENTS // k, PRODUCT_BLOCK_ELEMENTS // min(per_w, n)))  # x rows per block
    wide_w = fp32_buffer("linear-w", min(per_w, n) * k)
    wide_x = fp32_buffer("linear-x", min(per_x, m) * k)
    partial = fp32_buffer("linear-out", min(per_x, m) * min(per_w, n))
    for r0 in range(0, m, per_x):
        r1 = min(m, r0 + per_x)
        xb = wide_x[: (r1 - r0) * k].view(r1 - r0, k).copy_(rows[r0:r1])  # [rows, K] fp32
        for c0 in range(0, n, per_w):
            c1 = min(n, c0 + per_w)
            wb = wide_w[: (c1 - c0) * k].view(c1 - c0, k).copy_(w[c0:c1])  # [cols, K] fp32
            if m < WEIGHT_FIRST_BELOW:  # few rows: the weight block first, [cols, rows]
                prod = partial[: (c1 - c0) * (r1 - r0)].view(c1 - c0, r1 - r0)
                torch.mm(wb, xb.t(), out=prod)
                out[r0:r1, c0:c1].copy_(prod.t())  # rounded to fp16 once
            else:
                prod = partial[: (r1 - r0) * (c1 - c0)].view(r1 - r0, c1 - c0)
                torch.mm(xb, wb.t(), out=prod)
                out[r0:r1, c0:c1].copy_(prod)
    return out.view(*x.shape[:-1], n)

