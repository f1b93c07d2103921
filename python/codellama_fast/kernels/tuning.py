"""Block-shape tuning on the GPU, shared by the kernels that tune.

``tuned(kernel, configs, key)`` wraps ``triton.autotune``: each new key value times every
configuration once and keeps the fastest. The choice is also written to Triton's on-disk cache
(where this Triton supports it), so a later process (e.g. the next CLI call) reuses it instead of
timing again. Returns None where there is nothing to tune (interpreter, no CUDA): callers then
launch their fixed configuration.
"""

from __future__ import annotations

import inspect
import os
from typing import Any

import torch
import triton

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


def tuned(kernel: Any, configs: list[triton.Config], key: list[str]) -> Any | None:
    if INTERPRET or not torch.cuda.is_available():
        return None
    options: dict[str, Any] = {}
    if "cache_results" in inspect.signature(triton.autotune).parameters:
        options["cache_results"] = True
    return triton.autotune(configs=configs, key=key, **options)(kernel)


_PDL: dict[int, bool] = {}


def pdl_supported(device: torch.device) -> bool:
    """Whether kernels on `device` can be launched with programmatic dependent launch (CUDA
    compute capability 9.0 and up, compiled, not the interpreter)."""
    if INTERPRET or device.type != "cuda":
        return False
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _PDL:
        _PDL[index] = torch.cuda.get_device_capability(index)[0] >= 9
    return _PDL[index]
