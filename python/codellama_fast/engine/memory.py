"""Memory budgets: the device's free memory, whether a model's weights fit in it, and the prompt
tokens one prefill chunk may hold so that its activations fit in it."""

from __future__ import annotations

import torch

from ..errors import OutOfMemoryError
from .config import LlamaConfig


def _meminfo_bytes(field: str) -> int | None:
    """A /proc/meminfo field (e.g. "MemAvailable") in bytes; None where it cannot be read."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def free_memory_bytes(device: torch.device) -> int:
    """Bytes that can still be allocated on `device` (on CUDA: free on the device plus what
    PyTorch's allocator holds unused; on the CPU: the kernel's MemAvailable)."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free) + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    available = _meminfo_bytes("MemAvailable")
    if available is not None:
        return available
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        return 1 << 62


def swap_free_bytes() -> int:
    """The kernel's SwapFree (0 where it cannot be read)."""
    return _meminfo_bytes("SwapFree") or 0


def check_weights_fit(nbytes: int, device: torch.device, dtype: torch.dtype, name: str) -> None:
    """Refuses, before any weight is read, a model whose weights in `dtype` (`nbytes`) exceed what
    `device` can still allocate: on CUDA its free memory, on the CPU the available memory plus the
    free swap (past both, the process would be killed partway through the load)."""
    free = free_memory_bytes(device)
    room = free + (swap_free_bytes() if device.type == "cpu" else 0)
    if nbytes <= room:
        return
    gib = lambda n: f"{n / 2**30:.2f} GiB"  # noqa: E731
    where = f"{gib(free)} free" + (f" (and {gib(room - free)} of swap)" if room > free else "")
    hint = ("; dtype='bfloat16' takes half the memory" if dtype == torch.float32
            else "; use a machine with more memory")
    raise OutOfMemoryError(f"{name}'s weights need {gib(nbytes)} in {str(dtype).replace('torch.', '')} but "
                           f"{device} has {where}{hint}")


def prefill_bytes_per_token(cfg: LlamaConfig, dtype: torch.dtype) -> int:
    """Activation bytes one prompt token holds at the peak of a layer's forward: the residual and
    the normed input, plus the larger of
      - the attention step: q/k/v, up to six query-sized temporaries (the torch ops' rotate-half
        RoPE, the attention output and its relayout) and the output projection, and
      - the MLP step: the gate/up output, silu(gate) and the SwiGLU product (apart in the torch
        ops), then the down projection.
    An upper bound on what the forward allocates per token, measured in tests/test_engine.py (torch
    ops) and tests/test_gpu.py (Triton ops). The torch ops' padding mask (chunk × length bytes
    per row) comes on top."""
    elem = dtype.itemsize
    h, q = cfg.hidden_size, cfg.num_attention_heads * cfg.head_dim
    attn = (cfg.num_attention_heads + 2 * cfg.num_key_value_heads) * cfg.head_dim + 6 * q + 2 * h
    mlp = 4 * cfg.intermediate_size + 2 * h
    return elem * (2 * h + max(attn, mlp))


def prefill_chunk_tokens(cfg: LlamaConfig, dtype: torch.dtype, device: torch.device, cap: int, share: float = 0.5) -> int:
    """Prompt tokens (batch × length) per prefill chunk: at most `cap`, and no more than `share`
    of the free memory holds at the peak; at least 1."""
    fit = int(share * free_memory_bytes(device)) // prefill_bytes_per_token(cfg, dtype)
    return max(1, min(cap, fit))
