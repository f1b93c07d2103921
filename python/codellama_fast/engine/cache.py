"""KV cache: one [B, Hkv, S, D] key and value tensor per layer, sized from batch × max length
and checked against the device's free memory before allocation. A generation whose whole cache
does not fit may take as much as fits (`at_most`) and end there.

A cache grows as it fills, so that the memory held follows the tokens held (as transformers'
dynamic cache does) rather than max_new_tokens: it starts at `INITIAL_SLOTS` slots and grows to
twice the slots a step needs when that step needs more (the model asks through `layers.reserve`
before it writes), never past the `max_len` checked up front. A caller whose steps move the write
slot on the device (a captured or kept decode state: its step and the attention launches tuned for
it need fixed addresses and shapes) or that writes every slot at once asks for the whole cache
(`grow=False`). On CUDA the growth runs outside any graph capture, and the kernels take the cache
by its strides, so a grown cache needs no new kernel.

A cache that may be kept for a longer call (a chat's next turn: engine.prompt_cache) asks for
`headroom`. On the CPU its tensors then view lazily zeroed mappings (engine.lazy_zeros) of
`capacity` slots, more than max_len: their pages become resident only as slots are written, so the
room costs address space alone, and the layers hold all of max_len at once and never grow. A later
call of up to `capacity` slots takes those mappings over (``adopt``) with no copy, where growing
would copy every slot the dialog holds on each turn. Under an address-space limit or strict
overcommit, where room mapped ahead is charged as used, the cache grows instead."""

from __future__ import annotations

import weakref

import torch

from ..errors import OutOfMemoryError
from . import lazy_zeros
from .config import LlamaConfig
from .memory import free_memory_bytes


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


# the share of the free memory a KV cache may take (the rest: activations, logits)
HEADROOM = 0.9

# slots a growing cache starts with
INITIAL_SLOTS = 256


def headroom_slots(cfg: LlamaConfig, max_len: int) -> int:
    """The slots a cache with headroom maps for a call of `max_len`: twice that (the next turns of
    a chat add its answer and a message), and at least the model's context length."""
    return max(2 * max_len, cfg.max_position_embeddings)


class CacheLayers(list):
    """The per-layer (key, value) pairs the model reads and writes, plus `reserve(n)`: make every
    layer hold at least n slots (n <= the cache's max_len) before a step writes up to slot n - 1.
    A pair may be replaced by a longer one there: hold the list, not its pairs, across steps.

    The list refers to its cache weakly: a cycle between them would keep the tensors (gigabytes)
    alive after the cache's last user drops it, until Python's cycle collector happens to run."""

    def __init__(self, pairs: list[tuple[torch.Tensor, torch.Tensor]], cache: KVCache) -> None:
        super().__init__(pairs)
        self._cache = weakref.ref(cache)

    def reserve(self, n: int) -> None:
        cache = self._cache()
        if cache is not None:
            cache.reserve(n)
        elif self and self[0][0].shape[2] < n:
            raise RuntimeError(f"these cache layers hold {self[0][0].shape[2]} slots, not {n}, and the KV cache that grew "
                               "them is gone: hold the KVCache while its layers are in use")


class KVCache:
    def __init__(self, cfg: LlamaConfig, batch: int, max_len: int, dtype: torch.dtype, device: torch.device,
                 grow: bool = True, adopting_bytes: int = 0, sparse: bool = False, headroom: bool = False) -> None:
        """`grow`: start small and grow as the steps need (default); False: allocate all of max_len now.
        `adopting_bytes`: memory already held by tensors this cache will take over as its own (a
        kept prompt's, engine/prompt_cache.py): only the rest must be free. `sparse`: most rows
        will leave their prompt's slots unwritten (samples or beams that read the prompt from one
        row): on the CPU its tensors are lazily zeroed from a smaller size (engine.lazy_zeros).
        `headroom`: the cache may be kept for a longer call; on the CPU its layers view mappings
        of ``headroom_slots`` slots (see the module's docstring)."""
        self.sparse = sparse
        if batch <= 0 or max_len <= 0:
            raise ValueError(f"KV cache needs a positive batch and length, got batch={batch}, max_len={max_len}")
        self.cfg, self.batch, self.max_len, self.dtype, self.device = cfg, batch, max_len, dtype, torch.device(device)
        elem = torch.empty((), dtype=dtype).element_size()
        self.nbytes = self._nbytes(max_len)
        free = free_memory_bytes(self.device)
        if self.nbytes - adopting_bytes > HEADROOM * free:
            raise OutOfMemoryError(
                f"the KV cache needs {_gib(self.nbytes)} (batch {batch} × {max_len} tokens × {cfg.num_hidden_layers} layers × "
                f"{cfg.num_key_value_heads} KV heads × {cfg.head_dim} dims × 2 × {elem} bytes) but {self.device} has "
                f"{_gib(free)} free; lower max_new_tokens, the prompt length or the batch size"
            )
        self.touched = 0  # the most slots any call has asked for (``reserve``): those written, at most
        self._mapped: list[tuple[torch.Tensor, torch.Tensor]] | None = None  # the headroom's mappings, per layer
        self.layers = CacheLayers([], self)
        if headroom and lazy_zeros.can_map(self.device) and lazy_zeros.room_is_free():
            try:
                mappings = [(self._map(), self._map()) for _ in range(cfg.num_hidden_layers)]
            except RuntimeError:  # no address space for the room: a growing cache
                mappings = None
            if mappings is not None:
                self._view(mappings)
                return
        self.capacity = self.allocated = min(max_len, INITIAL_SLOTS) if grow else max_len  # slots each layer holds now
        self.layers[:] = [(self._zeros(self.allocated), self._zeros(self.allocated)) for _ in range(cfg.num_hidden_layers)]

    @property
    def mapped(self) -> bool:
        """Whether the layers view mappings with room past max_len (`headroom`)."""
        return self._mapped is not None

    def _map(self) -> torch.Tensor:
        return lazy_zeros.mapped(self._shape(headroom_slots(self.cfg, self.max_len)), self.dtype)

    def _view(self, mapped: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """The layers become the first max_len slots of `mapped` (per layer: key, value [B, Hkv, C, D])."""
        self._mapped = mapped
        self.capacity = mapped[0][0].shape[2]
        self.allocated = self.max_len
        # the same CacheLayers object: callers may hold it
        self.layers[:] = [(k[:, :, : self.max_len], v[:, :, : self.max_len]) for k, v in mapped]

    def _nbytes(self, slots: int) -> int:
        """What `slots` slots of every row, layer, key and value take."""
        return self.batch * slots * self.cfg.kv_bytes_per_token(torch.empty((), dtype=self.dtype).element_size())

    def _shape(self, slots: int) -> tuple[int, int, int, int]:
        return (self.batch, self.cfg.num_key_value_heads, slots, self.cfg.head_dim)

    def _zeros(self, slots: int) -> torch.Tensor:
        """One layer's key or value tensor of `slots` slots; the allocator's failure (a RuntimeError
        on the CPU, torch.OutOfMemoryError on CUDA) as an OutOfMemoryError."""
        try:
            # a large CPU one (or a sparse one): its pages touched as written
            return lazy_zeros.zeros(self._shape(slots), self.dtype, self.device, self.sparse)
        except RuntimeError as exc:
            raise OutOfMemoryError(
                f"the KV cache could not take {slots} slots per sequence ({_gib(self.nbytes * slots / self.max_len)} in all) "
                f"on {self.device}: {exc}; lower max_new_tokens, the prompt length or the batch size") from exc

    def reserve(self, n: int) -> None:
        """Every layer holds at least min(n, max_len) slots: a cache that holds fewer grows to
        2n slots (at most max_len), keeping what it holds, so that a long prompt's prefill leaves
        room for as many new tokens before the next growth and the memory held stays within twice
        what is used. One tensor at a time is copied and the old one dropped, so the peak is the
        new cache plus one old tensor."""
        self.touched = max(self.touched, min(n, self.max_len))
        if n <= self.allocated or self.allocated == self.max_len:
            return  # (past max_len: the step's own write reports it)
        slots = min(self.max_len, 2 * n)
        for i in range(len(self.layers)):
            for j in (0, 1):
                pair = list(self.layers[i])
                longer = self._zeros(slots)  # on failure every layer still holds its first `allocated` slots
                longer[:, :, : self.allocated].copy_(pair[j][:, :, : self.allocated])
                pair[j] = longer
                self.layers[i] = (pair[0], pair[1])
                del pair, longer  # the old tensor's last reference was the replaced pair
        self.capacity = self.allocated = slots

    @property
    def held_bytes(self) -> int:
        """Bytes the layers hold now (`nbytes`: what the whole max_len takes); of mappings, those of
        the slots written (up to a page per row, head and layer more are resident)."""
        if self._mapped is not None:
            return self.nbytes * self.touched // self.max_len
        return sum(k.nbytes + v.nbytes for k, v in self.layers)

    def adoptable_by(self, max_len: int) -> bool:
        """Whether a cache of `max_len` slots takes this one's tensors with no copy (``adopt``):
        its slots fit there (of a mapping: the slots written fit, and its room holds max_len)."""
        if self._mapped is not None:
            return self.touched <= max_len <= self.capacity
        return self.allocated <= max_len

    def has_room(self, max_len: int) -> bool:
        """Whether ``widen(max_len)`` can view max_len slots of this cache's mappings."""
        return self._mapped is not None and max_len <= self.capacity

    def widen(self, max_len: int) -> None:
        """A cache with room (``has_room``) holds max_len slots from now on, in the same mappings:
        what it holds stays, with no copy (a kept prompt taking the next tokens' slots)."""
        if not self.has_room(max_len):
            raise ValueError(f"this cache has no room for {max_len} slots")
        self.max_len = max(self.max_len, max_len)
        self.nbytes = self._nbytes(self.max_len)
        self._view(self._mapped)

    def pop_layer(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The first remaining layer's (key, value), no longer held here (a spent cache's layers
        go one at a time as they are copied)."""
        if self._mapped is not None:
            self._mapped.pop(0)
            if not self._mapped:
                self._mapped = None
        return self.layers.pop(0)

    def adopt(self, kept: KVCache) -> None:
        """Takes over `kept`'s tensors (``kept.adoptable_by(max_len)``; one sequence, the same
        model, dtype and device), which is spent: its slots become this cache's, and this cache's
        own tensors go. The slots past those `kept` wrote hold stale keys or zeros, which every
        step writes before it reads them."""
        if kept._mapped is not None:
            self._view(kept._mapped)
        else:
            self._mapped = None
            self.layers[:] = list(kept.layers)  # CacheLayers stays bound to this cache
            self.capacity = self.allocated = kept.allocated
        self.touched = max(self.touched, kept.touched)
        kept._mapped = None
        kept.layers.clear()

    def reorder_rows(self, order: torch.Tensor, filled: int, start: int = 0) -> None:
        """Row i becomes row order[i] ([B] int64) in slots start..filled-1 of every layer (the
        rest is empty in every row, or, before `start`, the same in row i and row order[i]): beam
        search's regrouping of the beams by parent."""
        for kc, vc in self.layers:
            kc[:, :, start:filled] = kc[:, :, start:filled].index_select(0, order)
            vc[:, :, start:filled] = vc[:, :, start:filled].index_select(0, order)

    @staticmethod
    def slots_that_fit(cfg: LlamaConfig, batch: int, dtype: torch.dtype, device: torch.device) -> int:
        """The most slots a cache for `batch` sequences may have in the device's free memory now."""
        per_slot = batch * cfg.kv_bytes_per_token(torch.empty((), dtype=dtype).element_size())
        return int(HEADROOM * free_memory_bytes(torch.device(device)) // per_slot)

    @classmethod
    def at_most(cls, cfg: LlamaConfig, batch: int, needed: int, least: int, dtype: torch.dtype, device: torch.device,
                grow: bool = True, sparse: bool = False, headroom: bool = False) -> KVCache:
        """A cache of `needed` slots where they fit in memory, else of as many as fit when that is
        at least `least` (the generation then ends at the end of the cache); else the
        OutOfMemoryError for `needed`."""
        try:
            return cls(cfg, batch, needed, dtype, device, grow, sparse=sparse, headroom=headroom)
        except OutOfMemoryError:
            fit = min(needed, cls.slots_that_fit(cfg, batch, dtype, device))
            if fit < least:
                raise
        return cls(cfg, batch, fit, dtype, device, grow, sparse=sparse, headroom=headroom)
