"""A batch's prompts that share tokens are prefilled once where they share them.

- Rows that repeat (each prompt's ``num_return_sequences`` samples, or one prompt given several
  times) come in runs of n identical rows (the same tokens and the same padding): the prefill runs
  on every n-th row, through views of the cache that skip the others ([B, Hkv, S, D] sliced [::n]
  along the batch, no copy); then each run's first row's slots are copied into the rest of its
  run, and its last logits repeated.
- Rows that begin alike (a system prompt, few-shot examples): the shared tokens are prefilled in
  one row (one with no padding), copied into the others' slots for them, and the batch's prefill
  starts after them.

A slot's key and value depend only on the row's tokens up to it and their positions (a row's
first token is at position 0 wherever its padding puts it), so a copied slot holds what the row's
own prefill computes (up to the rounding a batch of another size may give), and the repeated logits
are the row's own. Sampling then draws each row's tokens apart, as before.
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


# A batch's rows that begin alike (a system prompt, few-shot examples, an instruction before each
# question) have those tokens prefilled once, in one row, and copied into the others. The extra
# pass reads every weight once more, as a decode step does, and the copies cost a little: it is
# made only where a prefix of at least MIN_PREFIX_TOKENS saves at least MIN_SAVED_TOKENS in all.
MIN_PREFIX_TOKENS = 32
MIN_SAVED_TOKENS = 256


def shared_prefix(tokens: torch.Tensor, kv_start: torch.Tensor) -> int:
    """How many leading tokens every row of tokens [B, T] shares (row b's tokens begin at slot
    kv_start[b]), at most the shortest row's length - 1 (each row's last token is fed for its
    logits); 0 where that saves too little (MIN_PREFIX_TOKENS, MIN_SAVED_TOKENS)."""
    b, t = tokens.shape
    starts = kv_start.tolist()
    shortest = t - max(starts)
    if b == 1 or shortest - 1 < MIN_PREFIX_TOKENS:
        return 0
    # row b's first `shortest` tokens, aligned: [B, shortest]
    aligned = torch.stack([tokens[row, s : s + shortest] for row, s in enumerate(starts)])
    differs = (aligned != aligned[:1]).any(dim=0).tolist()  # [shortest]: some row differs there
    n = differs.index(True) if True in differs else shortest
    n = min(n, shortest - 1)
    saved = sum(max(n - s, 0) for s in starts) - n  # every row but one whose prefix starts at slot 0
    return n if n >= MIN_PREFIX_TOKENS and saved >= MIN_SAVED_TOKENS else 0


def copy_prefix(layers: list[tuple[torch.Tensor, torch.Tensor]], head: int, starts: list[int], n: int) -> None:
    """Every row b takes row `head`'s slots 0..n-1 (the shared prefix, from slot 0) into its slots
    starts[b]..starts[b]+n-1, in every layer."""
    by_start: dict[int, list[int]] = {}
    for row, s in enumerate(starts):
        if row != head:
            by_start.setdefault(s, []).append(row)
    for pair in layers:
        for x in pair:  # [B, Hkv, S, D]
            source = x[head : head + 1, :, :n]
            for s, rows in by_start.items():
                x[torch.tensor(rows, device=x.device), :, s : s + n] = source
