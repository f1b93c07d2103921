"""Static, preallocated KV cache: one [B, Hkv, S, D] key and value tensor per layer, sized from
batch × max length and checked against the device's free memory before allocation. A generation
whose whole cache does not fit may take as much as fits (`at_most`) and end there."""

from __future__ import annotations

import torch

from ..errors import OutOfMemoryError
from .config import LlamaConfig
from .memory import free_memory_bytes


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


# the share of the free memory a KV cache may take (the rest: activations, logits)
HEADROOM = 0.9


class KVCache:
    def __init__(self, cfg: LlamaConfig, batch: int, max_len: int, dtype: torch.dtype, device: torch.device) -> None:
        if batch <= 0 or max_len <= 0:
            raise ValueError(f"KV cache needs a positive batch and length, got batch={batch}, max_len={max_len}")
        self.cfg, self.batch, self.max_len, self.dtype, self.device = cfg, batch, max_len, dtype, torch.device(device)
        elem = torch.empty((), dtype=dtype).element_size()
        self.nbytes = batch * max_len * cfg.kv_bytes_per_token(elem)
        free = free_memory_bytes(self.device)
        if self.nbytes > HEADROOM * free:
            raise OutOfMemoryError(
                f"the KV cache needs {_gib(self.nbytes)} (batch {batch} × {max_len} tokens × {cfg.num_hidden_layers} layers × "
                f"{cfg.num_key_value_heads} KV heads × {cfg.head_dim} dims × 2 × {elem} bytes) but {self.device} has "
                f"{_gib(free)} free; lower max_new_tokens, the prompt length or the batch size"
            )
        shape = (batch, cfg.num_key_value_heads, max_len, cfg.head_dim)
        self.layers: list[tuple[torch.Tensor, torch.Tensor]] = [
            (torch.zeros(shape, dtype=dtype, device=self.device), torch.zeros(shape, dtype=dtype, device=self.device))
            for _ in range(cfg.num_hidden_layers)
        ]

    def reorder_rows(self, order: torch.Tensor, filled: int) -> None:
        """Row i becomes row order[i] ([B] int64) in the first `filled` slots of every layer (the
        rest is empty in every row): beam search's regrouping of the beams by parent."""
        for kc, vc in self.layers:
            kc[:, :, :filled] = kc[:, :, :filled].index_select(0, order)
            vc[:, :, :filled] = vc[:, :, :filled].index_select(0, order)

    @staticmethod
    def slots_that_fit(cfg: LlamaConfig, batch: int, dtype: torch.dtype, device: torch.device) -> int:
        """The most slots a cache for `batch` sequences may have in the device's free memory now."""
        per_slot = batch * cfg.kv_bytes_per_token(torch.empty((), dtype=dtype).element_size())
        return int(HEADROOM * free_memory_bytes(torch.device(device)) // per_slot)

    @classmethod
    def at_most(cls, cfg: LlamaConfig, batch: int, needed: int, least: int, dtype: torch.dtype, device: torch.device) -> KVCache:
        """A cache of `needed` slots where they fit in memory, else of as many as fit when that is
        at least `least` (the generation then ends at the end of the cache); else the
        OutOfMemoryError for `needed`."""
        try:
            return cls(cfg, batch, needed, dtype, device)
        except OutOfMemoryError:
            fit = min(needed, cls.slots_that_fit(cfg, batch, dtype, device))
            if fit < least:
                raise
        return cls(cfg, batch, fit, dtype, device)
