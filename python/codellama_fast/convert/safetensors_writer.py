"""A streaming safetensors writer: the header (names, dtypes, shapes, offsets) is written first from
a plan, then each tensor's bytes as it is produced, so at most one tensor is in memory at a time.
The file format is safetensors': u64 little-endian header size, JSON header, raw little-endian data."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Sequence

import torch

_DTYPES = {torch.float16: "F16", torch.bfloat16: "BF16", torch.float32: "F32"}


class SafetensorsWriter:
    def __init__(self, path: Path, plan: Sequence[tuple[str, torch.dtype, tuple[int, ...]]], metadata: dict[str, str] | None = None) -> None:
        self.path = Path(path)
        self.order = [name for name, _, _ in plan]
        self.expected = {name: (dtype, tuple(shape)) for name, dtype, shape in plan}
        header: dict[str, object] = {}
        offset = 0
        for name, dtype, shape in plan:
            n = 1
            for s in shape:
                n *= s
            size = n * torch.empty((), dtype=dtype).element_size()
            header[name] = {"dtype": _DTYPES[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
            offset += size
        if metadata:
            header["__metadata__"] = metadata
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # data starts 8-byte aligned
        self.total = offset
        self._f = open(self.path, "wb")
        self._f.write(struct.pack("<Q", len(raw)))
        self._f.write(raw)
        self._next = 0

    def write(self, name: str, tensor: torch.Tensor) -> None:
        if self._next >= len(self.order) or self.order[self._next] != name:
            raise RuntimeError(f"tensor {name} written out of order (expected {self.order[self._next] if self._next < len(self.order) else 'nothing'})")
        dtype, shape = self.expected[name]
        if tensor.dtype != dtype or tuple(tensor.shape) != shape:
            raise RuntimeError(f"tensor {name}: got {tensor.dtype} {tuple(tensor.shape)}, planned {dtype} {shape}")
        data = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
        self._f.write(memoryview(data))
        self._next += 1

    def close(self) -> None:
        if self._next != len(self.order):
            self._f.close()
            raise RuntimeError(f"{self.path}: {len(self.order) - self._next} planned tensors were never written")
        self._f.close()

    def abort(self) -> None:
        self._f.close()
