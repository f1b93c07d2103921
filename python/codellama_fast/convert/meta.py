"""Meta's original checkpoints (``consolidated.NN.pth`` + ``params.json`` + ``tokenizer.model``) to an
HF Llama folder, streaming tensor by tensor.

Each model-parallel shard holds a slice of every parallel tensor: column-parallel weights (wq, wk,
wv, w1, w3, output) are split along the output rows (dim 0), row-parallel ones (wo, w2) and the
parallel embedding along dim 1; norms are replicated. Shards are opened memory-mapped with
``torch.load(mmap=True, weights_only=True)`` and reopened per layer, so resident memory stays near
one merged tensor. wq/wk are permuted from Meta's interleaved RoPE to HF's rotate-half layout.
"""

from __future__ import annotations

import gc
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from ..engine.config import LlamaConfig
from ..engine.loader import load_state_dict
from ..errors import ConversionError
from ..jsonfile import read_json_object
from .hf_folder import finish_output, hf_plan, permute_rotary, prepare_output, save_tokenizer, write_model

KNOWN_PARAMS = {"dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "multiple_of", "ffn_dim_multiplier", "norm_eps", "rope_theta",
                "max_seq_len", "max_batch_size", "use_scaled_rope"}
SIZES = {4096: ("7B", 1), 5120: ("13B", 2), 8192: ("34B", 4)}
CAT_DIM = {"wq": 0, "wk": 0, "wv": 0, "w1": 0, "w3": 0, "output": 0, "wo": 1, "w2": 1, "tok_embeddings": 1}


def read_params(folder: Path) -> dict[str, Any]:
    path = folder / "params.json"
    if not path.is_file():
        raise ConversionError(f"{folder} has no params.json; is it a Meta checkpoint folder?")
    params = read_json_object(path, ConversionError)
    unknown = set(params) - KNOWN_PARAMS
    if unknown:
        raise ConversionError(f"{path} has parameters this converter does not know: {', '.join(sorted(unknown))}")
    if params.get("use_scaled_rope"):
        raise ConversionError(f"{path}: use_scaled_rope (Llama 3.1) is not supported; Code Llama uses plain RoPE")
    for key in ("dim", "n_layers", "n_heads"):
        if not isinstance(params.get(key), int) or params[key] <= 0:
            raise ConversionError(f"{path}: '{key}' must be a positive integer, got {params.get(key)!r}")
    return params


def find_shards(folder: Path, model_size: str | None, dim: int) -> list[Path]:
    shards = sorted(folder.glob("consolidated.*.pth"))
    if not shards:
        raise ConversionError(f"{folder} holds no consolidated.NN.pth shards")
    numbers = []
    for s in shards:
        m = re.fullmatch(r"consolidated\.(\d+)\.pth", s.name)
        if not m:
            raise ConversionError(f"unexpected shard name {s.name}")
        numbers.append(int(m.group(1)))
    missing = sorted(set(range(max(numbers) + 1)) - set(numbers))
    if missing:
        raise ConversionError(f"{folder}: shard(s) {', '.join(f'consolidated.{n:02d}.pth' for n in missing)} are missing")
    expected = None
    if model_size:
        expected = {"7B": 1, "13B": 2, "34B": 4}.get(model_size.upper())
        if expected is None:
            raise ConversionError(f"unknown model size {model_size!r}; use 7B, 13B or 34B")
        inferred = SIZES.get(dim, (None,))[0]
        if inferred and inferred != model_size.upper():
            raise ConversionError(f"--model-size {model_size} does not match params.json (dim {dim} is {inferred})")
    elif dim in SIZES:
        expected = SIZES[dim][1]
    if expected is not None and len(shards) != expected:
        raise ConversionError(f"{folder}: {len(shards)} shard(s) found but a {SIZES.get(dim, (model_size,))[0]} checkpoint has {expected}; a shard is missing or extra")
    return shards


class ShardSet:
    """The shards' state dicts, memory-mapped, opened for one layer at a time."""

    def __init__(self, shards: list[Path]) -> None:
        self.shards = shards
        self._key: Any = None
        self._dicts: list[dict[str, torch.Tensor]] = []

    def open(self, key: Any) -> list[dict[str, torch.Tensor]]:
        if key != self._key:
            self._dicts = []
            gc.collect()  # unmap the previous layer's pages
            self._dicts = [load_state_dict(s, ConversionError) for s in self.shards]
            self._key = key
        return self._dicts

    def merged(self, name: str, key: Any) -> torch.Tensor:
        dicts = self.open(key)
        parts = []
        for s, sd in zip(self.shards, dicts):
            if name not in sd:
                raise ConversionError(f"{s} lacks tensor {name}")
            parts.append(sd[name])
        leaf = name.split(".")[-2] if name.endswith(".weight") else name
        # Merged in the stored dtype (the writer casts once): no fp32 copies of large tensors.
        if len(parts) == 1:
            return parts[0]
        if leaf not in CAT_DIM:  # replicated (norms)
            if any(p.shape != parts[0].shape for p in parts):
                raise ConversionError(f"replicated tensor {name} has different shapes across shards: {[tuple(p.shape) for p in parts]}")
            return parts[0]
        dim = CAT_DIM[leaf]
        other = 1 - dim
        if any(p.shape[other] != parts[0].shape[other] or p.ndim != 2 for p in parts):
            raise ConversionError(f"shards disagree on the shape of {name}: {[tuple(p.shape) for p in parts]}")
        return torch.cat(parts, dim=dim)

    def shape_of(self, name: str) -> tuple[int, ...]:
        dicts = self.open(("shapes",))
        parts = [sd[name].shape for sd in dicts if name in sd]
        if len(parts) != len(dicts):
            raise ConversionError(f"tensor {name} is missing from some shards")
        leaf = name.split(".")[-2]
        if leaf not in CAT_DIM or len(parts) == 1:
            return tuple(parts[0])
        dim = CAT_DIM[leaf]
        shape = list(parts[0])
        shape[dim] = sum(p[dim] for p in parts)
        return tuple(shape)


def convert_meta(input_dir: Path, output: Path, model_size: str | None = None, dtype: torch.dtype = torch.float16,
                 force: bool = False, progress: bool | None = None, max_shard_bytes: int = 5 * 1024**3) -> Path:
    input_dir = Path(input_dir)
    params = read_params(input_dir)
    shards = find_shards(input_dir, model_size, params["dim"])
    sset = ShardSet(shards)
    vocab, dim = sset.shape_of("tok_embeddings.weight")
    ffn = sset.shape_of("layers.0.feed_forward.w1.weight")[0]
    n_kv = params.get("n_kv_heads") or params["n_heads"]
    if params.get("vocab_size", -1) not in (-1, vocab):
        raise ConversionError(f"params.json vocab_size {params['vocab_size']} differs from the embedding's {vocab} rows")
    if dim != params["dim"]:
        raise ConversionError(f"params.json dim {params['dim']} differs from the embedding's width {dim} across {len(shards)} shard(s); a shard may be missing")
    cfg = LlamaConfig(hidden_size=dim, num_hidden_layers=params["n_layers"], num_attention_heads=params["n_heads"],
                      num_key_value_heads=n_kv, intermediate_size=ffn, vocab_size=vocab,
                      rms_norm_eps=float(params.get("norm_eps", 1e-5)), rope_theta=float(params.get("rope_theta", 10000.0)),
                      max_position_embeddings=16384 if params.get("rope_theta", 10000.0) >= 1e6 else 4096)
    # every planned tensor must exist with the shape the config implies
    for l in range(cfg.num_hidden_layers):
        for leaf, want in (("attention.wq", (cfg.q_size, dim)), ("attention.wk", (cfg.kv_size, dim)), ("attention.wv", (cfg.kv_size, dim)),
                           ("attention.wo", (dim, cfg.q_size)), ("feed_forward.w1", (ffn, dim)), ("feed_forward.w2", (dim, ffn)),
                           ("feed_forward.w3", (ffn, dim))):
            got = sset.shape_of(f"layers.{l}.{leaf}.weight")
            if got != want:
                raise ConversionError(f"layers.{l}.{leaf}.weight merges to {list(got)} across {len(shards)} shard(s), but params.json implies {list(want)}; a shard may be missing")
    tmp = prepare_output(output, force)
    try:
        tok_model = input_dir / "tokenizer.model"
        if not tok_model.is_file() and (input_dir.parent / "tokenizer.model").is_file():
            tok_model = input_dir.parent / "tokenizer.model"
        n_pieces = save_tokenizer(tmp, tok_model if tok_model.is_file() else None)
        if n_pieces is not None and n_pieces != vocab:
            raise ConversionError(f"tokenizer.model has {n_pieces} pieces but the embedding has {vocab} rows")

        def produce(name: str) -> torch.Tensor:
            if name == "model.embed_tokens.weight":
                return sset.merged("tok_embeddings.weight", "embed")
            if name == "model.norm.weight":
                return sset.merged("norm.weight", "final")
            if name == "lm_head.weight":
                return sset.merged("output.weight", "final")
            l = int(name.split(".")[2])
            leaf = ".".join(name.split(".")[3:])
            src = {
                "input_layernorm.weight": "attention_norm.weight", "post_attention_layernorm.weight": "ffn_norm.weight",
                "self_attn.q_proj.weight": "attention.wq.weight", "self_attn.k_proj.weight": "attention.wk.weight",
                "self_attn.v_proj.weight": "attention.wv.weight", "self_attn.o_proj.weight": "attention.wo.weight",
                "mlp.gate_proj.weight": "feed_forward.w1.weight", "mlp.up_proj.weight": "feed_forward.w3.weight",
                "mlp.down_proj.weight": "feed_forward.w2.weight",
            }[leaf]
            t = sset.merged(f"layers.{l}.{src}", l)
            if leaf == "self_attn.q_proj.weight":
                t = permute_rotary(t, cfg.num_attention_heads)
            elif leaf == "self_attn.k_proj.weight":
                t = permute_rotary(t, cfg.num_key_value_heads)
            return t

        write_model(tmp, cfg, hf_plan(cfg), produce, dtype, max_shard_bytes=max_shard_bytes, progress=progress)
        sset.open(None)
        finish_output(tmp, Path(output))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Path(output)
