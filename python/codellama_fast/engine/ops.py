"""The small ops interface the model calls for its hot paths, and its plain-PyTorch implementation.

Shapes (B batch, T new tokens, S cache slots, Hq/Hkv query/KV heads, D head dim):
  rms_norm(x [..., C], w [C]) -> [..., C]
  add_rms_norm(x, residual, w) -> (norm(x + residual), x + residual)
  rope_cache_update(q [B,T,Hq,D], k [B,T,Hkv,D], v [B,T,Hkv,D], positions [B,T] int64, inv_freq [D/2] fp32,
                    k_cache [B,Hkv,S,D], v_cache [B,Hkv,S,D], slots [T] int64) -> q rotated [B,T,Hq,D];
                    rotated k and v are written into the cache at `slots`.
  attention(q [B,T,Hq,D], k_cache, v_cache, q_start, kv_start [B], kv_len) -> [B,T,Hq,D]
      query i sits in slot q_start + i; it sees cache slots j < kv_len with j <= q_start + i and
      j >= kv_start[b] (left padding before kv_start), and always its own slot.
  swiglu(gate_up [..., 2F]) -> silu(gate) * up, [..., F]   (gate is the first half)

RoPE is the Hugging Face rotate-half convention with angles computed in fp32.
The Triton implementation (``codellama_fast.kernels``) follows the same contract.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F


class Ops(Protocol):
    name: str

    def rms_norm(self, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor: ...

    def add_rms_norm(self, x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]: ...

    def rope_cache_update(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor,
                          k_cache: torch.Tensor, v_cache: torch.Tensor, slots: torch.Tensor) -> torch.Tensor: ...

    def attention(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, q_start: int | torch.Tensor,
                  kv_start: torch.Tensor, kv_len: int | torch.Tensor) -> torch.Tensor: ...

    def swiglu(self, gate_up: torch.Tensor) -> torch.Tensor: ...


def rope_cos_sin(positions: torch.Tensor, inv_freq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of shape [B, T, D] (halves repeated, as HF), fp32."""
    freqs = positions.to(torch.float32)[..., None] * inv_freq.to(torch.float32)  # [B, T, D/2]
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, T, H, D]; cos/sin [B, T, D] fp32. Computed in fp32, returned in x's dtype."""
    xf = x.to(torch.float32)
    c, s = cos[:, :, None, :], sin[:, :, None, :]
    return (xf * c + rotate_half(xf) * s).to(x.dtype)


def attention_mask(q_start: int, t: int, kv_len: int, kv_start: torch.Tensor) -> torch.Tensor:
    """Boolean [B, 1, T, kv_len]: True where query i may attend key j."""
    device = kv_start.device
    q_slot = torch.arange(q_start, q_start + t, device=device)[:, None]  # [T, 1]
    k_slot = torch.arange(kv_len, device=device)[None, :]  # [1, S]
    causal = k_slot <= q_slot  # [T, S]
    not_pad = k_slot[None] >= kv_start[:, None, None]  # [B, 1, S]
    own = (k_slot == q_slot)[None]  # a padding query sees itself, so no row is empty
    return ((causal[None] & not_pad) | own)[:, None]


class TorchOps:
    """Reference implementation on plain PyTorch ops (any device, any float dtype)."""

    name = "torch"

    def rms_norm(self, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        xf = x.to(torch.float32)
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
        return weight * y.to(x.dtype)

    def add_rms_norm(self, x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
        summed = x + residual
        return self.rms_norm(summed, weight, eps), summed

    def rope_cache_update(self, q, k, v, positions, inv_freq, k_cache, v_cache, slots):
        cos, sin = rope_cos_sin(positions, inv_freq)
        q_rot = apply_rope(q, cos, sin)
        k_rot = apply_rope(k, cos, sin)
        # cache layout [B, Hkv, S, D]; new entries [B, Hkv, T, D]
        k_cache.index_copy_(2, slots, k_rot.transpose(1, 2).to(k_cache.dtype))
        v_cache.index_copy_(2, slots, v.transpose(1, 2).to(v_cache.dtype))
        return q_rot

    def attention(self, q, k_cache, v_cache, q_start, kv_start, kv_len):
        b, t, hq, d = q.shape
        hkv = k_cache.shape[1]
        q_start, kv_len = int(q_start), int(kv_len)
        k = k_cache[:, :, :kv_len]
        v = v_cache[:, :, :kv_len]
        group = hq // hkv
        if group > 1:  # GQA: every KV head serves `group` consecutive query heads
            k = k[:, :, None].expand(b, hkv, group, kv_len, d).reshape(b, hq, kv_len, d)
            v = v[:, :, None].expand(b, hkv, group, kv_len, d).reshape(b, hq, kv_len, d)
        mask = attention_mask(q_start, t, kv_len, kv_start)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k, v, attn_mask=mask)  # [B, Hq, T, D]
        return out.transpose(1, 2)

    def swiglu(self, gate_up: torch.Tensor) -> torch.Tensor:
        gate, up = gate_up.chunk(2, dim=-1)
        return F.silu(gate) * up


def select_ops(device: torch.device, backend: str = "auto") -> Ops:
    """``auto``: Triton kernels on CUDA when Triton imports, else the torch reference."""
    if backend == "torch":
        return TorchOps()
    if backend in ("auto", "triton"):
        if device.type == "cuda" or backend == "triton":
            try:
                from ..kernels import TritonOps
            except ImportError as exc:
                if backend == "triton":
                    raise RuntimeError(f"the Triton backend is unavailable: {exc}") from exc
                return TorchOps()
            return TritonOps()
        return TorchOps()
    raise ValueError(f"unknown ops backend {backend!r}; use 'auto', 'torch' or 'triton'")
