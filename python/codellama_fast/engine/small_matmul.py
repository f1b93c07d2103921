"""x @ w.T for the few rows of a decode step on the CPU, in the layout the BLAS streams fastest.

A decode step multiplies each weight by only a handful of rows (batch × 1 new token, or a beam
group, or a few guessed tokens), so its time is how fast the BLAS reads the weights. With torch's
MKL in fp32, ``w @ x.T`` reads a weight that is not in cache faster than ``F.linear(x, w)`` does
(x [M, K] times w.T): on the 2-core AMD EPYC machines, over the 110M benchmark model's and Code
Llama 7B's weight shapes, a median 2.3× at M = 2-4, 0.78-2.45× at M = 6-8, 0.76-1.63× past that
(benches/results/small-matmul-cpu-20261207T015302Z.json). One row takes F.linear's
matrix-vector path, which streams as slowly, so it is doubled (the copy's products are dropped):
0.87-2.8× on the 110M shapes, 0.65-1.03× on 7B's, where fp32 on a CPU is rare. So on the CPU in
fp32, up to ``SMALL_ROWS`` rows times a weight of at least ``MIN_WEIGHT_ELEMENTS`` go through
``weight_first``; more rows, a smaller weight, another device or another dtype take ``F.linear``
(in bf16, oneDNN's kernels, ``w @ x.T`` was 0.30-1.15× F.linear).

The sum is the same mathematically but not in order: the rows differ from F.linear's in the last
bits, as F.linear's own rows differ between batch sizes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# the most rows (the product of x's leading dims) that take w @ x.T; 0 turns it off
SMALL_ROWS = 8
# The fewest weight elements that take it (1 MiB in fp32). The gain is in streaming a weight from
# memory; a weight small enough to stay in the caches (the bundled 260K-parameter demo model's)
# gains nothing, and the path's extra steps (the copies into and out of its layout) cost a few
# microseconds a call.
MIN_WEIGHT_ELEMENTS = 2**18


def uses_small_rows(x: torch.Tensor, w: torch.Tensor) -> bool:
    rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
    return (x.device.type == "cpu" and x.dtype == torch.float32 and 0 < rows <= SMALL_ROWS
            and w.numel() >= MIN_WEIGHT_ELEMENTS)


def linear(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x [..., K] @ w.T (w [N, K]) -> [..., N]: ``weight_first`` where ``uses_small_rows``, else F.linear."""
    return weight_first(x, w) if uses_small_rows(x, w) else F.linear(x, w)


def weight_first(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x [..., K] @ w.T (w [N, K]) computed as w @ x.T, a single row doubled -> [..., N], contiguous."""
    k = x.shape[-1]
    rows = x.reshape(-1, k).contiguous()  # [M, K]: the layout the fast path needs (x.T read by column)
    m = rows.shape[0]
    if m == 1:
        rows = rows.expand(2, k).contiguous()  # one row alone takes the slow gemv path
    out = (w @ rows.t())[:, :m].t().contiguous()  # [N, M] -> [M, N]
    return out.view(*x.shape[:-1], w.shape[0])
