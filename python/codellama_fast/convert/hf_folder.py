"""Writing an HF Llama folder from a stream of tensors: sharded safetensors + index, config,
generation config and tokenizer files, into a temporary folder that is renamed into place only
when everything is written (an interrupted conversion never leaves a complete-looking model)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch

from ..engine.config import LlamaConfig
from ..engine.progress import Progress
from ..errors import ConversionError
from .safetensors_writer import SafetensorsWriter

Plan = Sequence[tuple[str, tuple[int, ...]]]


def prepare_output(output: Path, force: bool) -> Path:
    output = Path(output)
    if output.exists() and any(output.iterdir()) and not force:
        raise ConversionError(f"{output} exists and is not empty; pass --force to replace it")
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.parent / f".{output.name}.partial-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    return tmp


def finish_output(tmp: Path, output: Path) -> None:
    if output.exists():
        shutil.rmtree(output)
    os.replace(tmp, output)


def write_model(
    tmp: Path,
    cfg: LlamaConfig,
    plan: Plan,
    produce: Callable[[str], torch.Tensor],
    dtype: torch.dtype,
    max_shard_bytes: int = 2 * 1024**3,
    progress: bool | None = None,
) -> None:
    """Writes every planned tensor (HF name, shape), produced one at a time by `produce(name)`."""
    elem = torch.empty((), dtype=dtype).element_size()
    shards: list[list[tuple[str, torch.dtype, tuple[int, ...]]]] = [[]]
    size = 0
    for name, shape in plan:
        n = elem
        for s in shape:
            n *= s
        if shards[-1] and size + n > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append((name, dtype, tuple(shape)))
        size += n
    total = sum(elem * _numel(s) for _, s in plan)
    bar = Progress("converting", total, enabled=progress)
    weight_map: dict[str, str] = {}
    names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))] if len(shards) > 1 else ["model.safetensors"]
    for fname, entries in zip(names, shards):
        writer = SafetensorsWriter(tmp / fname, entries, metadata={"format": "pt"})
        try:
            for name, _, _shape in entries:
                t = produce(name).to(dtype).contiguous()
                writer.write(name, t)
                bar.update(t.numel() * elem)
                weight_map[name] = fname
                del t
        except BaseException:
            writer.abort()
            raise
        writer.close()
    bar.close()
    if len(shards) > 1:
        (tmp / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    hf = cfg.to_hf_dict()
    hf["torch_dtype"] = str(dtype).split(".")[-1]
    (tmp / "generation_config.json").write_text(json.dumps({"bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_id, "_from_model_config": True}, indent=2))
    # config.json last: a folder without it is not a model.
    (tmp / "config.json").write_text(json.dumps(hf, indent=2))


def hf_plan(cfg: LlamaConfig) -> list[tuple[str, tuple[int, ...]]]:
    from ..engine.loader import expected_shapes

    shapes = expected_shapes(cfg)
    order = ["model.embed_tokens.weight"]
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        order += [p + n for n in ("input_layernorm.weight", "self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight",
                                  "self_attn.o_proj.weight", "post_attention_layernorm.weight", "mlp.gate_proj.weight",
                                  "mlp.up_proj.weight", "mlp.down_proj.weight")]
    order.append("model.norm.weight")
    if not cfg.tie_word_embeddings:
        order.append("lm_head.weight")
    return [(n, shapes[n]) for n in order]


def permute_rotary(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Meta/llama2.c rotate interleaved pairs (x0,x1),(x2,x3)...; HF rotates halves. Reorders the
    rows of a q/k projection [n_heads * head_dim, dim] so HF's rotate-half gives the same result."""
    rows, cols = w.shape
    return w.view(n_heads, rows // n_heads // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


def save_tokenizer(tmp: Path, tokenizer_model: Path | None, extra_config: dict | None = None) -> int | None:
    """Copies a sentencepiece model and writes the HF tokenizer files; returns the vocabulary size."""
    if tokenizer_model is None:
        return None
    from ..tokenizer import CodeLlamaTokenizerFast

    tok = CodeLlamaTokenizerFast.from_pretrained(tokenizer_model)
    tok.save_pretrained(tmp)
    return tok.vocab_size


def _numel(shape: Iterable[int]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n
