"""Loading a Hugging Face Llama folder: ``config.json``, single or sharded ``*.safetensors`` (or
``pytorch_model*.bin`` through ``torch.load(weights_only=True)`` only). The model is built on the
meta device and each weight is read from the memory-mapped file, converted and placed once, so
loading needs about the model's size in memory, not twice it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn

from ..errors import CheckpointError
from . import memory
from .config import LlamaConfig
from .folders import model_folder
from .model import LlamaModel
from .ops import resolve_device, select_ops
from .progress import Progress

_DTYPES = {
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
}
# Tensors some checkpoints carry that the model recomputes.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


def parse_dtype(dtype: str | torch.dtype | None, device: torch.device, stored: torch.dtype | None = None) -> torch.dtype:
    """None: fp16 on CUDA, fp32 elsewhere; ``"auto"``: the checkpoint's stored dtype."""
    if isinstance(dtype, torch.dtype):
        if dtype not in (torch.float16, torch.bfloat16, torch.float32):
            raise ValueError(f"dtype {dtype} is not supported; use float16, bfloat16 or float32")
        return dtype
    if dtype is None:
        return torch.float16 if device.type == "cuda" else torch.float32
    if dtype == "auto":
        return stored if stored in (torch.float16, torch.bfloat16, torch.float32) else torch.float32
    try:
        return _DTYPES[str(dtype).lower()]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; use 'float16', 'bfloat16', 'float32' or 'auto'") from None


def expected_shapes(cfg: LlamaConfig) -> dict[str, tuple[int, ...]]:
    """HF tensor names and shapes for `cfg`."""
    d, f, v = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (v, d), "model.norm.weight": (d,)}
    if not cfg.tie_word_embeddings:
        shapes["lm_head.weight"] = (v, d)
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        shapes.update({
            p + "self_attn.q_proj.weight": (cfg.q_size, d),
            p + "self_attn.k_proj.weight": (cfg.kv_size, d),
            p + "self_attn.v_proj.weight": (cfg.kv_size, d),
            p + "self_attn.o_proj.weight": (d, cfg.q_size),
            p + "mlp.gate_proj.weight": (f, d),
            p + "mlp.up_proj.weight": (f, d),
            p + "mlp.down_proj.weight": (d, f),
            p + "input_layernorm.weight": (d,),
            p + "post_attention_layernorm.weight": (d,),
        })
    return shapes


class WeightSource:
    """Name -> tensor reader over the checkpoint's files, opened lazily and memory-mapped."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.files: dict[str, Path] = {}  # tensor name -> file
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.dtypes: dict[str, torch.dtype] = {}
        self._open: dict[Path, Any] = {}
        self._discover()

    def _discover(self) -> None:
        f = self.folder
        st_index, st_single = f / "model.safetensors.index.json", f / "model.safetensors"
        pt_index, pt_single = f / "pytorch_model.bin.index.json", f / "pytorch_model.bin"
        if st_index.is_file():
            self._from_index(st_index, self._scan_safetensors)
        elif st_single.is_file():
            self._scan_safetensors(st_single)
        elif pt_index.is_file():
            self._from_index(pt_index, self._scan_torch)
        elif pt_single.is_file():
            self._scan_torch(pt_single)
        else:
            shards = sorted(f.glob("*.safetensors"))
            if not shards:
                raise CheckpointError(f"{f} holds no weights: expected model.safetensors, model.safetensors.index.json or pytorch_model.bin")
            for s in shards:
                self._scan_safetensors(s)

    def _from_index(self, index: Path, scan: Callable[[Path], None]) -> None:
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{index} is not a valid index (needs a 'weight_map'): {exc}") from None
        shard_names = sorted(set(weight_map.values()))
        for name in shard_names:
            shard = self.folder / name
            if not shard.is_file():
                owners = [k for k, v in weight_map.items() if v == name]
                raise CheckpointError(f"shard {shard} listed in {index.name} is missing (it holds {len(owners)} tensors, e.g. {owners[0]})")
            scan(shard)
        for tensor, shard in weight_map.items():
            if tensor not in self.files:
                raise CheckpointError(f"{index.name} says {tensor} is in {shard}, but that file does not hold it")

    def _scan_safetensors(self, path: Path) -> None:
        from safetensors import safe_open

        try:
            handle = safe_open(str(path), framework="pt", device="cpu")
            for name in handle.keys():
                sl = handle.get_slice(name)
                self.files[name] = path
                self.shapes[name] = tuple(sl.get_shape())
                self.dtypes[name] = _st_dtype(sl.get_dtype(), path)
        except CheckpointError:
            raise
        except Exception as exc:  # safetensors raises its own error types for corrupt headers
            raise CheckpointError(f"{path} is not a readable safetensors file (truncated or corrupt?): {exc}") from None
        self._open[path] = handle

    def _scan_torch(self, path: Path) -> None:
        sd = load_state_dict(path, CheckpointError)
        for name, t in sd.items():
            self.files[name] = path
            self.shapes[name] = tuple(t.shape)
            self.dtypes[name] = t.dtype
        self._open[path] = sd

    def get(self, name: str) -> torch.Tensor:
        path = self.files[name]
        handle = self._open[path]
        if isinstance(handle, dict):
            return handle[name]
        try:
            return handle.get_tensor(name)
        except Exception as exc:
            raise CheckpointError(f"{path}: cannot read tensor {name} (file truncated or corrupt?): {exc}") from None

    def names(self) -> Iterator[str]:
        return iter(self.files)


def load_state_dict(path: Path, error: type[Exception] = CheckpointError) -> dict[str, torch.Tensor]:
    """A ``.bin``/``.pth`` state dict, memory-mapped, through ``torch.load(weights_only=True)`` only
    (never arbitrary unpickling); anything else raises `error` naming the file."""
    try:
        sd = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:
        raise error(f"{path} could not be loaded with torch.load(weights_only=True) (truncated, or not only plain tensors): {exc}") from None
    if not isinstance(sd, dict):
        raise error(f"{path} does not hold a state dict")
    for name, t in sd.items():
        if not isinstance(t, torch.Tensor):
            raise error(f"{path}: entry {name!r} is not a tensor")
    return sd


def _st_dtype(name: str, path: Path) -> torch.dtype:
    table = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64}
    if name not in table:
        raise CheckpointError(f"{path}: tensor dtype {name} is not a float type this engine loads")
    return table[name]


def validate(cfg: LlamaConfig, src: WeightSource) -> None:
    want = expected_shapes(cfg)
    have = {n for n in src.names() if not n.endswith(_IGNORED_SUFFIXES)}
    if cfg.tie_word_embeddings:
        have.discard("lm_head.weight")
    missing = sorted(set(want) - have)
    if missing:
        where = f"{len(missing)} tensors, e.g. {', '.join(missing[:3])}"
        raise CheckpointError(f"{src.folder}: the checkpoint lacks {where} that config.json requires")
    unexpected = sorted(have - set(want))
    if unexpected:
        raise CheckpointError(f"{src.folder}: unexpected tensors not in the Llama architecture: {', '.join(unexpected[:5])}"
                              f"{' …' if len(unexpected) > 5 else ''} (file {src.files[unexpected[0]].name})")
    for name, shape in want.items():
        if src.shapes[name] != shape:
            raise CheckpointError(f"{src.files[name]}: tensor {name} has shape {list(src.shapes[name])} but config.json implies {list(shape)}")


def load_model(
    path: str | Path,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
    backend: str = "auto",
    progress: bool | None = None,
    adapter: Any = None,
    revision: str | None = None,
) -> LlamaModel:
    """Loads an HF Llama folder into a ready-to-run ``LlamaModel`` (eval mode, no grads).
    ``path``: a folder, or a repository name ("org/name") fetched earlier into the local Hugging
    Face cache (at ``revision``; hub_cache). ``adapter``: an engine.lora.LoraAdapter merged into
    the weights as they load."""
    folder = model_folder(path, revision)
    device = resolve_device(device)
    ops = select_ops(device, backend)  # a bad device or backend fails before any weight is read
    cfg = LlamaConfig.from_file(folder / "config.json")
    src = WeightSource(folder)
    validate(cfg, src)
    stored = src.dtypes["model.embed_tokens.weight"]
    target = parse_dtype(dtype, device, stored)
    memory.check_weights_fit(sum(_numel(src.shapes[n]) for n in src.names()) * _size(target), device, target, folder.name)
    with torch.device("meta"):
        model = LlamaModel(cfg)
    total = sum(_numel(src.shapes[n]) * _size(src.dtypes[n]) for n in src.names())
    bar = Progress(f"loading {folder.name}", total, enabled=progress if progress is not None else (None if total > 2e9 else False))

    def fetch(*names: str) -> torch.Tensor:
        parts = []
        for n in names:
            t = src.get(n)
            bar.update(t.numel() * t.element_size())
            if adapter is not None:  # merged in fp32 on the target device, then cast once
                t = adapter.apply(n, t.to(device))
            parts.append(t)
        out = parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)
        return out.to(device=device, dtype=target)

    def put(module: nn.Module, attr: str, tensor: torch.Tensor) -> None:
        setattr(module, attr, nn.Parameter(tensor, requires_grad=False))

    put(model.embed, "weight", fetch("model.embed_tokens.weight"))
    for i, layer in enumerate(model.layers):
        p = f"model.layers.{i}."
        put(layer.attn.wqkv, "weight", fetch(p + "self_attn.q_proj.weight", p + "self_attn.k_proj.weight", p + "self_attn.v_proj.weight"))
        put(layer.attn.wo, "weight", fetch(p + "self_attn.o_proj.weight"))
        put(layer.mlp.w13, "weight", fetch(p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight"))
        put(layer.mlp.w2, "weight", fetch(p + "mlp.down_proj.weight"))
        put(layer, "attn_norm", fetch(p + "input_layernorm.weight"))
        put(layer, "mlp_norm", fetch(p + "post_attention_layernorm.weight"))
    put(model, "norm", fetch("model.norm.weight"))
    if cfg.tie_word_embeddings:
        model.lm_head.weight = model.embed.weight
    else:
        put(model.lm_head, "weight", fetch("lm_head.weight"))
    bar.close()
    if adapter is not None:
        adapter.check_all_used()
    model.inv_freq = LlamaModel.rope_inv_freq(cfg, device)
    model.ops = ops
    model.eval()
    return model


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()
