"""SwiGLU activation: out = silu(gate) * up, with gate_up = [gate | up] along the last dim (the
fused gate/up projection's output). One read of each input element, one write."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .reference import swiglu as swiglu_reference  # noqa: F401  (the oracle)


@triton.jit
def _swiglu_kernel(GU, OUT, stride_gu, stride_out, F, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < F
    g = tl.load(GU + row * stride_gu + cols, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(GU + row * stride_gu + F + cols, mask=mask, other=0.0).to(tl.float32)
    silu = g / (1.0 + tl.exp(-g))
    tl.store(OUT + row * stride_out + cols, (silu * u).to(OUT.dtype.element_ty), mask=mask)


def swiglu(gate_up: torch.Tensor) -> torch.Tensor:
    """gate_up [..., 2F] -> [..., F]."""
    *lead, two_f = gate_up.shape
    f = two_f // 2
    x = gate_up.reshape(-1, two_f)
    if x.stride(-1) != 1:
        x = x.contiguous()
    n = x.shape[0]
    out = torch.empty((n, f), dtype=gate_up.dtype, device=gate_up.device)
    block = min(4096, triton.next_power_of_2(f))
    _swiglu_kernel[(n, triton.cdiv(f, block))](x, out, x.stride(0), out.stride(0), f, BLOCK=block, num_warps=8 if block >= 2048 else 4)
    return out.view(*lead, f)

