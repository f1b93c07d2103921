"""A CPU prefill's attention (whole prompts: every query in slots 0..T-1 against the same T keys) in
the forms SDPA's CPU kernels run fastest.

- A left-padded batch (prompts of different lengths) runs one causal SDPA call per row over the
  row's own tokens, instead of one call with a materialised [B, 1, T, T] mask, which reads the mask
  and computes every padded key: at 2048 tokens over 7B's heads, a batch of 4 with three rows
  padded, the masked call took about twice as long (fp32 and bf16). A padding query sees only its
  own slot (the masking rule of ``reference.attention``), so its output is its own value.
- fp16 is widened to fp32 and the output rounded once: torch's CPU SDPA in fp16 took 1.2-1.4x as
  long as widening, SDPA in fp32 and rounding back, on a CPU without fp16 arithmetic.

The same attention as ``reference.attention`` up to rounding (fp16: rounded once from fp32).
"""

from __future__ import annotations

import torch

from ..kernels import reference
from . import widened_attention

# The fewest elements of one row's queries (T x Hq x D) for which the padded batch runs row by row:
# a call costs tens of microseconds, which a short prompt over few heads does not win back (16 rows
# of 32 tokens over 12 heads of 64: the one masked call took 0.6x as long).
MIN_ROW_ELEMENTS = 2**16


def applies(q: torch.Tensor, q_start: int | torch.Tensor, kv_len: int | torch.Tensor) -> bool:
    """q [B, T, Hq, D] on the CPU is a whole prompt's prefill: its T queries sit in slots 0..T-1 and
    see the first T = kv_len keys (T > 1)."""
    t = q.shape[1]
    return q.device.type == "cpu" and t > 1 and int(q_start) == 0 and int(kv_len) == t


def attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, kv_start: torch.Tensor) -> torch.Tensor:
    """q [B, T, Hq, D] against k_cache, v_cache [B, Hkv, S, D] (slots < T; row b's tokens from slot
    kv_start[b]) -> [B, T, Hq, D]; see ``applies``."""
    b, t, hq, d = q.shape
    starts = kv_start.tolist()
    keys, values = k_cache[:, :, :t], v_cache[:, :, :t]  # [B, Hkv, T, D] views
    if not any(starts) or t * hq * d < MIN_ROW_ELEMENTS:  # one call: causal, or with the mask
        return _widened_attention(q, keys, values, kv_start)
    out = torch.empty_like(q)
    no_padding = torch.zeros(1, dtype=kv_start.dtype)
    for row, start in enumerate(starts):  # a row of padding alone (start == T) has no tokens of its own: an empty call
        # A padding query (slot < start) sees its own slot alone (its softmax weight is exactly 1):
        # its output is its KV head's value there, [Hkv, start, D] -> [start, Hq, D].
        own = reference.repeat_heads(values[row : row + 1, :, :start], hq // values.shape[1])[0]
        out[row, :start] = own.transpose(0, 1).to(q.dtype)
        out[row : row + 1, start:] = _widened_attention(q[row : row + 1, start:], keys[row : row + 1, :, start:],
                                                        values[row : row + 1, :, start:], no_padding)
    return out


def _widened_attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, kv_start: torch.Tensor) -> torch.Tensor:
    """``reference.attention`` of a whole prompt (q [B, T, Hq, D], keys/values [B, Hkv, T, D]), fp16 run in fp32
    and rounded once."""
    t = q.shape[1]
    if q.dtype != torch.float16:
        return reference.attention(q, keys, values, 0, kv_start, t)
    return widened_attention.attention(q, keys, values, 0, kv_start, t)
