"""Per-thread fp32 scratch buffers for the CPU paths that widen half-precision blocks to fp32
(``cpu_attention``, ``widened_linear``).

A buffer is kept between calls: a fresh one of a few MiB each call comes from the system zeroed
page by page, which cost as much as the product it feeds. Each thread has its own, so threads that
share an Engine never write into each other's.
"""

from __future__ import annotations

import threading

import torch

_local = threading.local()


def fp32_buffer(name: str, elements: int, reserve: int = 0) -> torch.Tensor:
    """This thread's fp32 buffer ``name``, its first ``elements`` (1-D). A buffer too small is replaced by
    one of max(elements, reserve): ``reserve`` spares a caller whose size creeps up (a cache growing by a
    key a step) a new allocation every call."""
    bufs = _local.__dict__.setdefault("bufs", {})
    buf = bufs.get(name)
    if buf is None or buf.numel() < elements:
        buf = bufs[name] = torch.empty(max(elements, reserve), dtype=torch.float32)
    return buf[:elements]
