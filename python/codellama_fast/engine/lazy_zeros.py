"""Zero-filled CPU tensors whose pages are touched only when written.

``torch.zeros`` on the CPU allocates and then writes every byte. A tensor of tens of MiB or more
comes from a fresh mapping of the C allocator anyway (glibc maps every block past its 32 MiB
threshold), so that fill costs a page fault and a write per 4 KiB page, whether or not the
tensor's owner ever writes there. A KV cache is such a tensor, and much of it may never be
written: the slots past the tokens a call ends with, and the rows of samples whose decode steps
read their prompt from the first row alone (engine.shared_prompts). An anonymous private mapping
is zero on every page already, and a page costs nothing until it is first written; reading an
untouched page reads the kernel's shared zero page. So a tensor made here is ``torch.zeros`` bit
for bit, for less, where it is large.

Smaller tensors, other devices, and a platform without anonymous mappings take ``torch.zeros``:
the C allocator reuses its warm pages for those, which a new mapping would fault in again as they
are written; a tensor its owner will mostly leave unwritten (``sparse``) takes a mapping from 1
MiB up.
"""

from __future__ import annotations

import math
import mmap

import torch

# The size from which a CPU tensor takes a lazily zeroed mapping (glibc's largest mmap threshold:
# from there, malloc maps fresh pages for every block).
LAZY_BYTES = 32 * 2**20
# The size from which a tensor its owner knows it will mostly leave unwritten takes one (the rows
# of samples that hold no copy of their prompt): a page it never writes costs nothing there, where
# malloc's warm pages would each be written with zeros.
SPARSE_LAZY_BYTES = 2**20

_FLAGS = getattr(mmap, "MAP_PRIVATE", None), getattr(mmap, "MAP_ANONYMOUS", None)


def zeros(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, sparse: bool = False) -> torch.Tensor:
    """``torch.zeros(shape, dtype=dtype, device=device)``: on the CPU from LAZY_BYTES up (`sparse`:
    mostly left unwritten, from SPARSE_LAZY_BYTES up), a view of a private anonymous mapping,
    freed with the last tensor that views it. The allocator's failure is a RuntimeError, as
    torch's."""
    nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
    if torch.device(device).type != "cpu" or nbytes < (SPARSE_LAZY_BYTES if sparse else LAZY_BYTES) or None in _FLAGS:
        return torch.zeros(shape, dtype=dtype, device=device)
    return mapped(shape, dtype)


def can_map(device: torch.device) -> bool:
    """Whether ``mapped`` makes tensors for `device`: the CPU, where anonymous mappings exist."""
    return torch.device(device).type == "cpu" and None not in _FLAGS


def address_space_limit() -> int | None:
    """This process's address-space limit in bytes (``ulimit -v``); None: none."""
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    except (ImportError, OSError, ValueError):
        return None
    return None if soft == resource.RLIM_INFINITY else soft


def strict_overcommit() -> bool:
    """Whether the kernel charges every private mapping whole against its commit limit
    (``vm.overcommit_memory = 2``)."""
    try:
        with open("/proc/sys/vm/overcommit_memory") as f:
            return f.read().strip() == "2"
    except OSError:
        return False


def room_is_free() -> bool:
    """Whether pages mapped but never written cost nothing: not under an address-space limit, nor
    under strict overcommit, where a mapping's untouched pages count as used and room mapped
    ahead could make other allocations fail."""
    return address_space_limit() is None and not strict_overcommit()


def mapped(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """A zero-filled CPU tensor viewing a private anonymous mapping of its own, whatever its size
    (where ``can_map``): no page is resident until written, so a tensor larger than its owner may
    ever write costs only address space. Freed with the last tensor that views it; the mapping's
    failure is a RuntimeError."""
    nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
    private, anonymous = _FLAGS
    try:
        mapping = mmap.mmap(-1, max(nbytes, 1), flags=private | anonymous)
    except (OSError, ValueError, OverflowError) as exc:
        raise RuntimeError(f"could not map {nbytes} bytes: {exc}") from exc
    # frombuffer holds a reference to the mapping: it is unmapped once no tensor views it
    return torch.frombuffer(mapping, dtype=torch.uint8)[:nbytes].view(dtype).view(shape)


def reference_zeros(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """What ``zeros`` gives, the plain way."""
    return torch.zeros(shape, dtype=dtype, device=device)
