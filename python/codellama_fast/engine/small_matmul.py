"""x @ w.T for the few rows of a decode step on the CPU, in the layout the BLAS streams fastest.

A decode step multiplies each weight by only a handful of rows (batch × 1 new token, or a beam
group, or a few guessed tokens), so its time is how fast the BLAS reads the weights. With torch's
MKL in fp32, ``F.linear(x, w)`` (x [M, K] times w.T) reads a weight that is not in cache at a
third to a fifth of the rate that ``w @ x.T`` reaches for M <= 4, and its one-row path (gemv) is
as slow: on the 2-core AMD EPYC test machines, per call, ``w @ x.T`` took 1/1.1 to 1/5.5 of the
time for M = 1 (as two rows) to 4 over the 110M and 7B weight shapes, about the same to 1/1.6 at
M = 8, and no gain past that. So on the CPU in fp32, up to ``SMALL_ROWS`` rows go through
``w @ x.T``, a single row doubled (the second copy's products are dropped); more rows, another
device or another dtype (bf16 on the CPU runs oneDNN's kernels, where F.linear's layout is the
faster) take ``F.linear``.

The sum is the same mathematically but not in order: the rows differ from F.linear's in the last
bits, as F.linear's own rows differ between batch sizes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# the most rows (the product of x's leading dims) that take w @ x.T; 0 turns it off
SMALL_ROWS = 8


def uses_small_rows(x: torch.Tensor) -> bool:
    rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
    return x.device.type == "cpu" and x.dtype == torch.float32 and 0 < rows <= SMALL_ROWS


def linear(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x [..., K] @ w.T (w [N, K]) -> [..., N]: ``weight_first`` where ``uses_small_rows``, else F.linear."""
    return weight_first(x, w) if uses_small_rows(x) else F.linear(x, w)


def weight_first(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x [..., K] @ w.T (w [N, K]) computed as w @ x.T, a single row doubled -> [..., N], contiguous."""
    k = x.shape[-1]
    rows = x.reshape(-1, k).contiguous()  # [M, K]: the layout the fast path needs (x.T read by column)
    m = rows.shape[0]
    if m == 1:
        rows = rows.expand(2, k).contiguous()  # one row alone takes the slow gemv path
    out = (w @ rows.t())[:, :m].t().contiguous()  # [N, M] -> [M, N]
    return out.view(*x.shape[:-1], w.shape[0])
