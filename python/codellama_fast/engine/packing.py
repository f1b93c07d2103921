"""A left-padded batch's positions packed without their padding: a prompt's prefill projects,
normalises and runs the MLP over the prompts' own tokens alone, [1, N, C] instead of [B, T, C]
(a batch of prompts of different lengths spends the padding's share of those matmuls otherwise).
Attention still sees the [B, T] layout: its inputs are unpacked, zeros at the padding positions
(whose keys no real query sees and whose outputs are dropped), and its output packed again.
"""

from __future__ import annotations

import torch

# The least share of a call's positions that must be padding for it to be packed: below it the
# gathers cost about what the skipped rows would.
MIN_PADDING_SHARE = 1 / 8


def rows_without_padding(starts: list[int], c0: int, c1: int, device: torch.device) -> torch.Tensor | None:
    """The flat indices (b * T + i, in order) of the positions of slots c0..c1-1 (T = c1 - c0) that are
    not padding, row b's tokens starting at slot starts[b]; None where under MIN_PADDING_SHARE of them
    are padding."""
    t = c1 - c0
    padding = [min(max(s - c0, 0), t) for s in starts]
    if sum(padding) < MIN_PADDING_SHARE * t * len(starts):
        return None
    rows = torch.cat([torch.arange(b * t + p, (b + 1) * t) for b, p in enumerate(padding)])
    return rows.to(device)


def pack(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """x [B, T, F] -> [1, N, F]: the positions `rows` (flat indices into B x T) in order."""
    return x.reshape(-1, x.shape[-1]).index_select(0, rows)[None]


def unpack(x: torch.Tensor, rows: torch.Tensor, b: int, t: int) -> torch.Tensor:
    """x [1, N, F] -> [B, T, F]: each row back at its position, zeros at the others."""
    full = x.new_zeros(b * t, x.shape[-1])
    return full.index_copy_(0, rows, x[0]).view(b, t, -1)
