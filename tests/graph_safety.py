"""What a CUDA graph capture of the decode step would freeze, seen on any device (the CPU included).

A captured step replays the kernels its capture launched with the arguments they had then. So the
step (``GraphDecoder._body``) must
1. never read a device value on the host: the value read at capture would stand for every replay
   (and on CUDA a read during capture fails), and no op may size its output by the data
   (``nonzero``, boolean indexing) or build a tensor from host data (``torch.tensor([...])``);
2. launch the same ops, of the same shapes and host-side arguments, at every step: whatever
   changes from step to step must live in the step's device buffers.

``record_decode_steps`` runs the engine's graph-decode steps uncaptured (``use_cuda_graph="eager"``)
and records, per step, every torch op at the dispatcher and every Triton launch (the kernel, its
grid, its scalar arguments, its tensors' shapes and the addresses of those the step did not make),
along with the host reads among them.
``record_decode_loop_reads`` records the host reads of the loop around those steps, which should
read the device once per block of steps, never per token.
"""

from __future__ import annotations

import contextlib
import sys
import traceback
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

# Ops that read a device value on the host, or size their output by the data (both sync on CUDA).
# Under inference mode (the engine's) `int(t)`/`float(t)` dispatch `item` and `bool(t)` `is_nonzero`;
# elsewhere both reach `_local_scalar_dense`.
HOST_READ_OPS = frozenset({"item", "is_nonzero", "_local_scalar_dense", "allclose", "equal", "nonzero", "nonzero_static",
                           "masked_select", "_unique2", "unique_dim", "unique_consecutive", "lift_fresh", "lift_fresh_copy"})


def _storage(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


def _summary(value, made: set[int] = frozenset()) -> object:
    """A hashable stand-in for an op's argument: a tensor's shape, dtype and strides, and, for a
    tensor the step did not make (`made`: the storages its ops created), its storage's address; a
    scalar's repr (so NaN equals NaN); any other object's type. A captured step reads and writes
    the outside tensors it had at capture (weights, the cache, its buffers): a step handed another
    one (a scratch buffer a launcher replaced) would replay on memory that may be gone."""
    if isinstance(value, torch.Tensor):
        outside = () if _storage(value) in made else ("outside", _storage(value))
        return ("tensor", tuple(value.shape), str(value.dtype), tuple(value.stride())) + outside
    if isinstance(value, (bool, int, float, str, type(None), torch.dtype, torch.device, torch.memory_format)):
        return repr(value)
    if isinstance(value, (tuple, list)):
        return tuple(_summary(v, made) for v in value)
    return type(value).__name__


@dataclass
class StepRecord:
    """One decode step: its torch ops and Triton launches in order, and its host reads (each with
    the engine's line that asked for it)."""

    ops: list[tuple] = field(default_factory=list)
    host_reads: list[str] = field(default_factory=list)
    made: set[int] = field(default_factory=set)  # storages the step's ops created


TESTS = str(Path(__file__).resolve().parent)


def _caller() -> str:
    """The innermost frame of the package (or of the tests) that led here."""
    for frame in reversed(traceback.extract_stack()[:-2]):
        if "codellama_fast" in frame.filename or frame.filename.startswith(TESTS):
            return f"{Path(frame.filename).name}:{frame.lineno} {frame.line}"
    return "?"


def _reads_host(func, args, kwargs) -> bool:
    """Whether an op reads device data on the host (or sizes its output by it), outside the
    Triton interpreter's own copies."""
    name = func.overloadpacket.__name__
    reads = name in HOST_READ_OPS
    if name == "index" and any(isinstance(t, torch.Tensor) and t.dtype in (torch.bool, torch.uint8)
                               for t in tree_flatten(args[1:])[0]):
        reads = True  # a boolean mask as an index: its output's size is the mask's count
    if name == "repeat_interleave" and kwargs.get("output_size") is None and isinstance(args[0], torch.Tensor) and (
            len(args) == 1 or isinstance(args[1], torch.Tensor)):
        reads = True  # repeats from a tensor without output_size
    return reads and not _in_triton()


class _StepOps(TorchDispatchMode):
    """Records a step's torch ops, except those a Triton launch runs (the interpreter's copies of
    its arguments; the launch itself is recorded, with its arguments): `launching()` says when."""

    def __init__(self, record: StepRecord, launching: Callable[[], bool]) -> None:
        super().__init__()
        self.record, self.launching = record, launching

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.launching():
            return func(*args, **kwargs)
        if _reads_host(func, args, kwargs):
            self.record.host_reads.append(f"{func}: {_caller()}")
        flat = tree_flatten((args, kwargs))[0]
        self.record.ops.append((str(func), tuple(_summary(a, self.record.made) for a in flat)))
        out = func(*args, **kwargs)
        known = {_storage(t) for t in flat if isinstance(t, torch.Tensor)}
        self.record.made.update(_storage(t) for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor) and _storage(t) not in known)
        return out


@lru_cache(maxsize=1)
def _triton_folder() -> str:
    import triton

    return str(Path(triton.__file__).parent)


def _in_triton() -> bool:
    """Whether the Triton interpreter itself runs a kernel here (it copies its arguments to the host
    by design; what a launch receives is recorded at the launch)."""
    package = _triton_folder()
    frame = sys._getframe(2)
    while frame is not None:
        if frame.f_code.co_filename.startswith(package):
            return True
        frame = frame.f_back
    return False


@contextlib.contextmanager
def record_decode_steps() -> Iterator[dict[int, list[StepRecord]]]:
    """Records each decode step that ``GraphDecoder`` runs uncaptured while the block runs: a dict
    from each decoder's id to its steps' records, in order."""
    from triton.runtime.jit import KernelInterface

    from codellama_fast.engine import cuda_graph

    steps: dict[int, list[StepRecord]] = {}
    current: list[StepRecord] = []
    real_body = cuda_graph.GraphDecoder._body
    real_getitem = KernelInterface.__getitem__

    launching = [0]  # Triton launches under way

    def body(self) -> None:
        record = StepRecord()
        steps.setdefault(id(self), []).append(record)
        current.append(record)
        try:
            with _StepOps(record, lambda: launching[0] > 0):
                real_body(self)
        finally:
            current.pop()

    def getitem(kernel, grid):
        launch = real_getitem(kernel, grid)

        def recorded(*args, **kwargs):
            if current:
                made = current[-1].made
                name = getattr(kernel, "__name__", None) or getattr(getattr(kernel, "fn", None), "__name__", type(kernel).__name__)
                shown = grid if not callable(grid) else f"grid function {getattr(grid, '__qualname__', grid)}"
                current[-1].ops.append(("triton " + str(name), _summary(shown), tuple(_summary(a, made) for a in args),
                                        tuple(sorted((k, _summary(v, made)) for k, v in kwargs.items()))))
            launching[0] += 1
            try:
                return launch(*args, **kwargs)
            finally:
                launching[0] -= 1

        return recorded

    cuda_graph.GraphDecoder._body = body
    KernelInterface.__getitem__ = getitem
    try:
        with _data_reads(lambda: current[-1].host_reads if current else None):
            yield steps
    finally:
        cuda_graph.GraphDecoder._body = real_body
        KernelInterface.__getitem__ = real_getitem


@contextlib.contextmanager
def _data_reads(reads: Callable[[], list | None]) -> Iterator[None]:
    """While the block runs, `Tensor.tolist`/`numpy` (which read a tensor's data without a
    dispatched op on the CPU) note each call in the list `reads()` gives, where it gives one."""
    real_tolist, real_numpy = torch.Tensor.tolist, torch.Tensor.numpy

    def noting(real):
        def read(self, *args, **kwargs):
            into = reads()
            if into is not None and not _in_triton():
                into.append(f"Tensor.{real.__name__}: {_caller()}")
            return real(self, *args, **kwargs)
        return read

    torch.Tensor.tolist, torch.Tensor.numpy = noting(real_tolist), noting(real_numpy)
    try:
        yield
    finally:
        torch.Tensor.tolist, torch.Tensor.numpy = real_tolist, real_numpy


class _LoopReads(TorchDispatchMode):
    def __init__(self, reads: Callable[[], list | None]) -> None:
        super().__init__()
        self.reads = reads

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        into = self.reads()
        if into is not None and _reads_host(func, args, kwargs):
            into.append(f"{func}: {_caller()}")
        return func(*args, **kwargs)


@contextlib.contextmanager
def record_decode_loop_reads() -> Iterator[list[list[str]]]:
    """Records the host reads of each graph decode loop that runs in the block: from its decoder's
    ``start`` (after the prefill) to the next ``start`` or the block's end (so what the call does
    after its loop counts too), one list per loop, each read named by the line that asked for it.
    The loop should read the device once per block of steps (``check_every``), not per token."""
    from codellama_fast.engine import cuda_graph

    loops: list[list[str]] = []
    active = [False]
    real_start = cuda_graph.GraphDecoder.start

    def start(self, *args, **kwargs):
        real_start(self, *args, **kwargs)
        loops.append([])
        active[0] = True

    def reads() -> list | None:
        return loops[-1] if active[0] else None

    cuda_graph.GraphDecoder.start = start
    try:
        with _data_reads(reads), _LoopReads(reads):
            yield loops
    finally:
        cuda_graph.GraphDecoder.start = real_start


def differences(first: StepRecord, other: StepRecord, most: int = 3) -> list[str]:
    """Where two steps' ops differ (up to `most`), for assertion messages."""
    out = []
    if len(first.ops) != len(other.ops):
        out.append(f"{len(first.ops)} ops against {len(other.ops)}")
    for i, (a, b) in enumerate(zip(first.ops, other.ops)):
        if a != b:
            out.append(f"op {i}: {a} against {b}")
            if len(out) >= most:
                break
    return out
