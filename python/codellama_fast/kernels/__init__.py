"""Triton kernels for the engine's hot paths, one op per file (kernel + launcher + reference).

``reference`` is plain torch and imports no Triton; the Triton modules are imported on first use.
"""

from __future__ import annotations

from typing import Any

_LAZY = {"TritonOps": ("codellama_fast.kernels.triton_ops", "TritonOps")}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(name)


__all__ = ["TritonOps"]
