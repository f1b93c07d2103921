"""transformers' ``from_pretrained`` arguments, read for ``Engine.from_pretrained``, so that code
written for transformers (``from_pretrained(name, torch_dtype=torch.float16, device_map="auto")``,
as the Code Llama model cards show it) runs unchanged. Each either holds here already (loading
always streams from memory-mapped files; nothing is downloaded, and no code from the folder runs),
chooses the one device the engine runs on, or is refused by name."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ..errors import UnsupportedConfigError

# What transformers asks with these is always so here: loading always streams tensor by tensor,
# nothing is downloaded (so no Hub token is used), Llama needs no code from the folder and none
# runs, and the attention is the engine's own (Triton kernels on CUDA, torch SDPA on the CPU).
_ALREADY_SO = frozenset({"low_cpu_mem_usage", "local_files_only", "trust_remote_code", "token", "attn_implementation"})
_REFUSED = {
    "load_in_8bit": "8-bit quantized weights",
    "load_in_4bit": "4-bit quantized weights",
    "quantization_config": "quantized weights",
    "max_memory": "per-device memory limits (the engine runs on one device)",
    "offload_folder": "offloading weights to disk",
    "force_download": "downloads (it reads local folders and the local Hugging Face cache only)",
}
# transformers' device_map strategies that spread a model over every device: here, the one device
_STRATEGIES = {"auto", "balanced", "balanced_low_0", "sequential"}


def read_load_args(kwargs: Mapping[str, Any], device: str | torch.device | None) -> str | torch.device | None:
    """The device to load onto given ``device`` and transformers' arguments ``kwargs``
    (``device_map`` and the ones above); raises TypeError for an argument neither takes."""
    for name, value in kwargs.items():
        if name in _REFUSED:
            if value in (None, False):
                continue
            raise UnsupportedConfigError(f"{name} asks for {_REFUSED[name]}, which this engine does not do")
        if name not in _ALREADY_SO and name != "device_map":
            raise TypeError(f"Engine.from_pretrained() got an unexpected keyword argument {name!r}")
    mapped = _device_of_map(kwargs.get("device_map"))
    if mapped is None:
        return device
    if device is not None and _same_device(device, mapped) is False:
        raise ValueError(f"device={device!r} and device_map={kwargs['device_map']!r} name different devices; give one")
    return mapped


def _same_device(a: Any, b: Any) -> bool | None:
    """Whether a and b name the same device; None when one does not parse (resolve_device says why)."""
    try:
        return torch.device(_as_device(a)) == torch.device(_as_device(b))
    except (RuntimeError, TypeError, ValueError):
        return None


def _as_device(where: Any) -> Any:
    # transformers reads a bare integer as a CUDA device index
    return f"cuda:{where}" if isinstance(where, int) and not isinstance(where, bool) else where


def _device_of_map(device_map: Any) -> str | torch.device | None:
    """One device from transformers' device_map, or None for "the default one"."""
    if device_map is None or (isinstance(device_map, str) and device_map in _STRATEGIES):
        return None
    if isinstance(device_map, Mapping):
        places = {str(_as_device(v)) for v in device_map.values()}
        if len(places) != 1:
            raise UnsupportedConfigError(f"device_map places the model's modules on {len(places)} devices ({', '.join(sorted(places))}); "
                                         "this engine runs a model on one device: pass device= (e.g. 'cuda:0')")
        (where,) = places
    else:
        where = _as_device(device_map)
    if str(where) == "disk" or str(where) == "meta":
        raise UnsupportedConfigError(f"device_map puts the weights on {where!r}; this engine runs them on one CPU or CUDA device")
    return where
