"""Checks on the KV-cache layout the attention kernels rely on.

The kernels address one (sequence, KV head) block of the cache [B, Hkv, S, D] from a 64-bit base
pointer plus 32-bit offsets (slot * slot_stride + d): 64-bit offset tensors cost the tile loads so
many registers that the kernels spill. A head block must therefore span less than 2^31 elements
(16M slots at D = 128), which holds for any cache that fits on a GPU.
"""

from __future__ import annotations

import torch

INT32_LIMIT = 2**31


def check_cache_layout(k_cache: torch.Tensor, v_cache: torch.Tensor) -> None:
    for name, cache in (("k_cache", k_cache), ("v_cache", v_cache)):
        if cache.dim() != 4 or cache.stride(-1) != 1:
            raise ValueError(f"{name} must be [B, Hkv, S, D] with a contiguous head dim, got shape {tuple(cache.shape)} "
                             f"strides {cache.stride()}")
        if cache.shape[2] * cache.stride(2) + cache.shape[3] >= INT32_LIMIT:
            raise ValueError(f"{name} has {cache.shape[2]} slots of stride {cache.stride(2)}: one head's block exceeds "
                             "2^31 elements, more than the attention kernels address")
