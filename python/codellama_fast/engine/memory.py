"""Memory budgets: the device's free memory, and the prompt tokens one prefill chunk may hold so
that its activations fit in it."""

from __future__ import annotations

import torch

from .config import LlamaConfig


def free_memory_bytes(device: torch.device) -> int:
    """Bytes that can still be allocated on `device` (on CUDA: free on the device plus what
    PyTorch's allocator holds unused; on the CPU: the kernel's MemAvailable)."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free) + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        return 1 << 62


def prefill_bytes_per_token(cfg: LlamaConfig, dtype: torch.dtype) -> int:
    """Activation bytes one prompt token holds at the peak of a layer's forward: the residual and
    the normed input, plus the larger of the attention step (q/k/v, rotated q, attention output,
    output projection) and the MLP step (gate/up output with its SwiGLU, then the down
    projection). An upper bound on what the model's forward allocates (tests/test_gpu.py measures it)."""
    elem = torch.empty((), dtype=dtype).element_size()
    h, q = cfg.hidden_size, cfg.num_attention_heads * cfg.head_dim
    attn = (cfg.num_attention_heads + 2 * cfg.num_key_value_heads) * cfg.head_dim + 2 * q + h
    mlp = 3 * cfg.intermediate_size + h
    return elem * (2 * h + max(attn, mlp))


def prefill_chunk_tokens(cfg: LlamaConfig, dtype: torch.dtype, device: torch.device, cap: int, share: float = 0.5) -> int:
    """Prompt tokens (batch × length) per prefill chunk: at most `cap`, and no more than `share`
    of the free memory holds at the peak; at least 1."""
    fit = int(share * free_memory_bytes(device)) // prefill_bytes_per_token(cfg, dtype)
    return max(1, min(cap, fit))
