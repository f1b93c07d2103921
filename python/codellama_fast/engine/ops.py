"""The small ops interface the model calls for its hot paths, and its plain-PyTorch implementation.

Shapes (B batch, T new tokens, S cache slots, Hq/Hkv query/KV heads, D head dim):
  rms_norm(x [..., C], w [C]) -> [..., C]
  add_rms_norm(x, residual, w) -> (norm(x + residual), x + residual)
  rope_cache_update(q [B,T,Hq,D], k [B,T,Hkv,D], v [B,T,Hkv,D], positions [B,T] int64, inv_freq [D/2] fp32,
                    k_cache [B,Hkv,S,D], v_cache [B,Hkv,S,D], slots [T] int64) -> q rotated [B,T,Hq,D];
                    rotated k and v are written into the cache at `slots`.
  attention(q [B,T,Hq,D], k_cache, v_cache, q_start, kv_start [B], kv_len) -> [B,T,Hq,D]
      query i sits in slot q_start + i; it sees cache slots j < kv_len with j <= q_start + i and
      j >= kv_start[b] (left padding before kv_start), and always its own slot. shared_prompt
      (runs, slots), optional: rows come in runs whose first `slots` slots (an int, or a 1-element
      device tensor in a captured step) hold the same keys and values, which an implementation may
      read once per run (the result is the same up to rounding).
  decode_reads_prompt_once(batch, runs, prompt_slots, kv_heads, head_dim, dtype, device) -> bool
      whether every decode step of such rows (one query each, after the prompt; an int
      prompt_slots) reads the prompt's slots from each run's first row alone: the engine then
      leaves the other rows' copies of them unwritten.
  rope_attention(q, k, v, positions, inv_freq, k_cache, v_cache, slots, q_start, kv_start, kv_len) -> [B,T,Hq,D]
      the layer's whole attention step: rope_cache_update, then attention of the rotated q
      (an implementation may fuse them, e.g. in one launch for decode).
  swiglu(gate_up [..., 2F]) -> silu(gate) * up, [..., F]   (gate is the first half)
  linear(x [..., K], w [N, K]) -> x @ w.T [..., N]   (the model's projections)
  norm_linear(x [M,K], norm_w [K], w [N,K], eps) -> rms_norm(x) @ w.T [M,N]
  norm_linear_swiglu(x [M,K], norm_w [K], w13 [2F,K], eps) -> swiglu(rms_norm(x) @ w13.T) [M,F]
  linear_residual(x [M,K], w [N,K], residual [M,N]) -> residual + x @ w.T
      (the fused decode step of ``engine.fused_decode``; an implementation may fuse each into one
      launch, e.g. for a single row)

RoPE is the Hugging Face rotate-half convention with angles computed in fp32.
The Triton implementation (``codellama_fast.kernels``) follows the same contract.
"""

from __future__ import annotations

import threading
from typing import Protocol

import torch

from ..errors import DeviceError
from ..kernels import reference
from . import cpu_attention, cpu_prefill_attention, shared_prompt_attention, small_matmul, widened_attention, widened_linear


class Ops(Protocol):
    name: str

    def rms_norm(self, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor: ...

    def add_rms_norm(self, x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]: ...

    def rope_cache_update(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor,
                          k_cache: torch.Tensor, v_cache: torch.Tensor, slots: torch.Tensor) -> torch.Tensor: ...

    def attention(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, q_start: int | torch.Tensor,
                  kv_start: torch.Tensor, kv_len: int | torch.Tensor, shared_prompt: tuple[int, int | torch.Tensor] | None = None) -> torch.Tensor: ...

    def rope_attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor,
                       k_cache: torch.Tensor, v_cache: torch.Tensor, slots: torch.Tensor, q_start: int | torch.Tensor,
                       kv_start: torch.Tensor, kv_len: int | torch.Tensor, shared_prompt: tuple[int, int | torch.Tensor] | None = None) -> torch.Tensor: ...

    def swiglu(self, gate_up: torch.Tensor) -> torch.Tensor: ...

    def linear(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor: ...

    def norm_linear(self, x: torch.Tensor, norm_w: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor: ...

    def norm_linear_swiglu(self, x: torch.Tensor, norm_w: torch.Tensor, w13: torch.Tensor, eps: float) -> torch.Tensor: ...

    def linear_residual(self, x: torch.Tensor, w: torch.Tensor, residual: torch.Tensor) -> torch.Tensor: ...

    def decode_reads_prompt_once(self, batch: int, runs: int, prompt_slots: int, kv_heads: int, head_dim: int,
                                 dtype: torch.dtype, device: torch.device) -> bool: ...


class TorchOps:
    """Reference implementation on plain PyTorch ops (any device, any float dtype)."""

    name = "torch"

    def __init__(self) -> None:
        # cos/sin of the last positions tensor: every layer of one forward rotates with the same
        # angles, so they are computed once per step. The tensor itself is kept, so its identity
        # cannot be reused by another; the engine never changes positions in place on this path
        # (the graph decode's step hands an uncaptured forward a fresh copy). Kept per thread: two
        # threads' forwards through the same model must not read each other's angles.
        self._rope = threading.local()

    def rms_norm(self, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        return reference.rms_norm(x, weight, eps)

    def add_rms_norm(self, x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
        return reference.rms_norm(x, weight, eps, residual)

    def rope_cache_update(self, q, k, v, positions, inv_freq, k_cache, v_cache, slots):
        last = self._rope
        if getattr(last, "pos", None) is not positions or last.freq is not inv_freq:
            last.pos, last.freq, last.cs = positions, inv_freq, reference.rope_cos_sin(positions, inv_freq)
        cos, sin = last.cs
        q_rot = reference.apply_rope(q, cos, sin)
        k_cache.index_copy_(2, slots, reference.apply_rope(k, cos, sin).transpose(1, 2).to(k_cache.dtype))
        v_cache.index_copy_(2, slots, v.transpose(1, 2).to(v_cache.dtype))
        return q_rot

    def attention(self, q, k_cache, v_cache, q_start, kv_start, kv_len, shared_prompt=None):
        if shared_prompt is not None and shared_prompt_attention.applies(q, k_cache, q_start, *shared_prompt):
            return shared_prompt_attention.attention(q, k_cache, v_cache, q_start, kv_start, kv_len, *shared_prompt)  # samples' prompt read once
        if cpu_prefill_attention.applies(q, q_start, kv_len):  # a CPU prefill of whole prompts: a padded batch row by row
            return cpu_prefill_attention.attention(q, k_cache, v_cache, kv_start)
        if cpu_attention.applies(q, k_cache, kv_len):  # a CPU decode step (fp16: few queries): the layouts MKL streams fastest
            return cpu_attention.attention(q, k_cache, v_cache, q_start, kv_start, kv_len)
        if widened_attention.applies(q, k_cache, kv_len):  # any other fp16 call on the CPU: SDPA in fp32
            return widened_attention.attention(q, k_cache, v_cache, q_start, kv_start, kv_len)
        return reference.attention(q, k_cache, v_cache, q_start, kv_start, kv_len)

    def rope_attention(self, q, k, v, positions, inv_freq, k_cache, v_cache, slots, q_start, kv_start, kv_len, shared_prompt=None):
        q_rot = self.rope_cache_update(q, k, v, positions, inv_freq, k_cache, v_cache, slots)
        return self.attention(q_rot, k_cache, v_cache, q_start, kv_start, kv_len, shared_prompt)

    def decode_reads_prompt_once(self, batch, runs, prompt_slots, kv_heads, head_dim, dtype, device):
        """Whether every decode step (one query per row after the prompt, in the cache's dtype) of
        `batch` rows in runs of `runs` sharing `prompt_slots` slots reads those from each run's
        first row alone: on the CPU where they are enough (shared_prompt_attention.applies)."""
        return torch.device(device).type == "cpu" and shared_prompt_attention.worth(batch, runs, prompt_slots, kv_heads, head_dim)

    def swiglu(self, gate_up: torch.Tensor) -> torch.Tensor:
        return reference.swiglu(gate_up)

    def linear(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        if widened_linear.applies(x, w):  # fp16 on the CPU, many rows: through fp32 blocks
            return widened_linear.linear(x, w)
        return small_matmul.linear(x, w)  # F.linear, or on the CPU for few rows the layout MKL streams fastest

    def norm_linear(self, x, norm_w, w, eps):
        return reference.norm_linear(x, norm_w, w, eps)

    def norm_linear_swiglu(self, x, norm_w, w13, eps):
        return reference.norm_linear_swiglu(x, norm_w, w13, eps)

    def linear_residual(self, x, w, residual):
        return reference.linear_residual(x, w, residual)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """The device to load onto: CUDA when present unless one is named. A named device must parse,
    be a CPU or CUDA device, and exist, or DeviceError says which part failed."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise DeviceError(f"unknown device {device!r}; use 'cuda', 'cuda:N' or 'cpu'") from exc
    if dev.type == "cpu":
        return dev
    if dev.type != "cuda":
        raise DeviceError(f"device type {dev.type!r} is not supported; use 'cuda', 'cuda:N' or 'cpu'")
    if not torch.cuda.is_available():
        built = f"built with CUDA {torch.version.cuda}" if torch.version.cuda else "built without CUDA"
        raise DeviceError(f"device {str(dev)!r} was asked for but torch finds no CUDA GPU here (torch {torch.__version__}, {built}); "
                          "use device='cpu'")
    if dev.index is not None and dev.index >= torch.cuda.device_count():
        raise DeviceError(f"device {str(dev)!r} does not exist: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return dev


def select_ops(device: torch.device, backend: str = "auto") -> Ops:
    """``auto``: Triton kernels on CUDA when Triton imports, else the torch reference."""
    if backend == "torch":
        return TorchOps()
    if backend in ("auto", "triton"):
        if device.type == "cuda" or backend == "triton":
            try:
                from ..kernels.triton_ops import TritonOps
                from ..kernels.tuning import INTERPRET
            except ImportError as exc:
                if backend == "triton":
                    raise DeviceError(f"the Triton backend is unavailable: {exc}") from exc
                return TorchOps()
            if device.type != "cuda" and not INTERPRET:
                raise DeviceError(f"the Triton backend runs on CUDA devices, not {device.type}; use backend='torch' there "
                                  "(or set TRITON_INTERPRET=1 before importing codellama_fast to run the kernels in Triton's slow interpreter)")
            return TritonOps()
        return TorchOps()
    raise DeviceError(f"unknown ops backend {backend!r}; use 'auto', 'torch' or 'triton'")
