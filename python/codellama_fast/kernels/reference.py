"""Plain-PyTorch reference implementations of every kernel, in the kernels' own convention.
No Triton import: the engine's CPU path (``TorchOps``) runs these.

Shapes (B batch, T new tokens, S cache slots, Hq/Hkv query/KV heads, D head dim):
  rms_norm(x [..., C], w [C], eps, residual=None) -> y  |  (y, x + residual)
  swiglu(gate_up [..., 2F]) -> silu(gate) * up [..., F]
  rope_cache_update(q [B,T,Hq,D], k, v [B,T,Hkv,D], positions [B,T], inv_freq [D/2], k_cache, v_cache [B,Hkv,S,D],
                    slots [T]) -> rotated q; rotated k and v written into the cache at `slots`
  attention(q [B,T,Hq,D], k_cache, v_cache, q_start, kv_start [B], kv_len) -> [B,T,Hq,D]
  rope_attention(q, k, v, positions, inv_freq, k_cache, v_cache, slots, q_start, kv_start, kv_len)
      = attention(rope_cache_update(...), ...): the whole attention step of a layer
  norm_linear(x [M,K], norm_w [K], w [N,K], eps) -> rms_norm(x) @ w.T [M,N]
  norm_linear_swiglu(x, norm_w, w13 [2F,K], eps) -> swiglu(rms_norm(x) @ w13.T) [M,F]
  linear_residual(x [M,K], w [N,K], residual [M,N]) -> residual + x @ w.T
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None):
    if residual is not None:
        s = x + residual  # the add happens in the model dtype, as in transformers
        return rms_norm(s, weight, eps), s
    xf = x.to(torch.float32)
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * y.to(x.dtype)


def swiglu(gate_up: torch.Tensor) -> torch.Tensor:
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


def rope_cos_sin(positions: torch.Tensor, inv_freq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [B, T, D] in fp32 (the half-dim angles repeated, as transformers does)."""
    freqs = positions.to(torch.float32)[..., None] * inv_freq.to(torch.float32)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, T, H, D] rotated in fp32, returned in x's dtype."""
    xf = x.to(torch.float32)
    c, s = cos[:, :, None, :], sin[:, :, None, :]
    return (xf * c + rotate_half(xf) * s).to(x.dtype)


def rope_cache_update(q, k, v, positions, inv_freq, k_cache, v_cache, slots) -> torch.Tensor:
    cos, sin = rope_cos_sin(positions, inv_freq)
    q_rot = apply_rope(q, cos, sin)
    k_rot = apply_rope(k, cos, sin)
    k_cache.index_copy_(2, slots, k_rot.transpose(1, 2).to(k_cache.dtype))
    v_cache.index_copy_(2, slots, v.transpose(1, 2).to(v_cache.dtype))
    return q_rot


def attention_mask(q_start: int, t: int, kv_len: int, kv_start: torch.Tensor) -> torch.Tensor:
    """Boolean [B, 1, T, kv_len]: query i (slot q_start+i) sees key j when j <= its slot and
    j >= kv_start[b]; a padding query also sees its own slot, so no row is empty."""
    device = kv_start.device
    q_slot = torch.arange(q_start, q_start + t, device=device)[:, None]
    k_slot = torch.arange(kv_len, device=device)[None, :]
    causal = k_slot <= q_slot
    not_pad = k_slot[None] >= kv_start[:, None, None]
    own = (k_slot == q_slot)[None]
    return ((causal[None] & not_pad) | own)[:, None]


def attention_mask_or_none(q_start: int, t: int, kv_len: int, kv_start: torch.Tensor, padded: bool) -> torch.Tensor | None:
    """``attention_mask``, or None where it would hide nothing: no row padded (``padded``, i.e.
    ``kv_start.any()``, which the caller has read) and one query at the cache's end."""
    return None if not padded and t == 1 and q_start == kv_len - 1 else attention_mask(q_start, t, kv_len, kv_start)


def repeat_heads(x: torch.Tensor, group: int) -> torch.Tensor:
    """[B, Hkv, L, D] -> [B, Hkv*group, L, D], KV head h serving query heads h*group .. h*group+group-1
    (a copy where group > 1)."""
    if group == 1:
        return x
    b, hkv, n, d = x.shape
    return x[:, :, None].expand(b, hkv, group, n, d).reshape(b, hkv * group, n, d)


def attention(q, k_cache, v_cache, q_start, kv_start, kv_len) -> torch.Tensor:
    b, t, hq, d = q.shape
    hkv = k_cache.shape[1]
    q_start, kv_len = int(q_start), int(kv_len)
    k = k_cache[:, :, :kv_len]  # [B, Hkv, L, D]
    v = v_cache[:, :, :kv_len]
    group = hq // hkv
    qh = q.transpose(1, 2)  # [B, Hq, T, D]
    # Without padding the mask is plain causal (prefill) or empty (one query at the end): let SDPA
    # pick its fused kernels instead of reading a materialised mask.
    padded = bool(kv_start.any())
    if not padded and q_start == 0 and t == kv_len and t > 1:
        k, v = repeat_heads(k, group), repeat_heads(v, group)
        return F.scaled_dot_product_attention(qh, k, v, is_causal=True).transpose(1, 2)
    mask = attention_mask_or_none(q_start, t, kv_len, kv_start, padded)
    # GQA without copying K/V: a KV head's query heads ride along the query axis, [B, Hkv, group*T,
    # D] against [B, Hkv, L, D], each row with its own query's mask row. Repeating K/V per query
    # head copies the cache group times: on the CPU, 34B's decode attention took 9-35x as long
    # that way (benches/bench_cpu_attention.py). The mask's rows are repeated instead, so a long
    # prompt's later chunk (T > 2*Hkv*D*bytes per element, where those rows would outweigh the
    # copy) keeps the copy, as does a whole prompt's causal prefill (above, SDPA's causal kernel).
    if group > 1 and t <= 2 * hkv * d * k.element_size():
        qh = qh.reshape(b, hkv, group * t, d)
        if mask is not None and t > 1:
            mask = mask[:, :, None].expand(b, 1, group, t, kv_len).reshape(b, 1, group * t, kv_len)
    else:
        k, v = repeat_heads(k, group), repeat_heads(v, group)
    out = F.scaled_dot_product_attention(qh, k, v, attn_mask=mask)  # [B, Hkv or Hq, group*T or T, D]
    return out.reshape(b, hq, t, d).transpose(1, 2)


def rope_attention(q, k, v, positions, inv_freq, k_cache, v_cache, slots, q_start, kv_start, kv_len) -> torch.Tensor:
    q_rot = rope_cache_update(q, k, v, positions, inv_freq, k_cache, v_cache, slots)
    return attention(q_rot, k_cache, v_cache, q_start, kv_start, kv_len)


def norm_linear(x: torch.Tensor, norm_w: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    return F.linear(rms_norm(x, norm_w, eps), w)


def norm_linear_swiglu(x: torch.Tensor, norm_w: torch.Tensor, w13: torch.Tensor, eps: float) -> torch.Tensor:
    return swiglu(F.linear(rms_norm(x, norm_w, eps), w13))


def linear_residual(x: torch.Tensor, w: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    return residual + F.linear(x, w)  # the add in the model dtype, as the unfused model does it
