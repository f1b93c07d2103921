"""A batch whose rows repeat (each prompt's ``num_return_sequences`` samples, or one prompt given
several times) prefills each distinct row once. The rows come in runs of n identical rows (the
same tokens and the same padding): the prefill runs on every n-th row, through views of the cache
that skip the others ([B, Hkv, S, D] sliced [::n] along the batch, no copy), and then each run's
first row's slots are copied into the rest of its run, and its last logits repeated.

A slot's key and value depend only on the row's tokens up to it, so the copied rows hold what
their own prefill computes (up to the rounding a batch of another size may give), and the repeated
logits are the row's own. Sampling then draws each row's tokens apart, as before.
"""

from __future__ import annotations

from math import gcd

import torch


def run_length(tokens: torch.Tensor, kv_start: torch.Tensor) -> int:
    """The largest n such that the rows of tokens [B, T] (left-padded from kv_start [B]) come in
    B / n consecutive runs of n identical rows; 1 where no two neighbouring rows are alike."""
    b = tokens.shape[0]
    if b == 1:
        return 1
    same = ((tokens[1:] == tokens[:-1]).all(dim=1) & (kv_start[1:] == kv_start[:-1])).tolist()  # [B-1]: row i+1 is row i
    n, run = 0, 1
    for alike in same:
        if alike:
            run += 1
        else:
            n, run = gcd(n, run), 1
    return gcd(n, run)


def distinct_rows(layers: list[tuple[torch.Tensor, torch.Tensor]], n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each layer's key and value [B, Hkv, S, D] as views of their rows 0, n, 2n, ... [B / n, Hkv, S, D]."""
    return [(k[::n], v[::n]) for k, v in layers]


def copy_to_repeats(layers: list[tuple[torch.Tensor, torch.Tensor]], n: int, slots: int) -> None:
    """Every run of n rows takes its first row's first `slots` slots, in every layer."""
    for pair in layers:
        for x in pair:
            runs = x[:, :, :slots].unflatten(0, (-1, n))  # [B / n, n, Hkv, slots, D], a view
            runs[:, 1:].copy_(runs[:, :1].expand_as(runs[:, 1:]))
