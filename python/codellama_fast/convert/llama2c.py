"""llama2.c checkpoints (``.bin``) to an HF Llama folder.

Formats (karpathy/llama2.c ``export.py``):
- legacy v0: 7 int32 (dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len; a negative
  vocab_size means a separate classifier), then fp32 tensors: embedding, attention norms, wq, wk, wv,
  wo, ffn norms, w1, w2, w3, final norm, two unused RoPE tables, [classifier].
- v1: 256-byte header (magic "ak42", version 1, the 7 ints, shared-classifier byte), fp32 tensors:
  attention norms, ffn norms, final norm, embedding, wq, wk, wv, wo, w1, w2, w3, [classifier].
- v2: like v1 plus group_size; norms fp32, then each matrix as int8 values followed by fp32 scales
  per group (Q8_0), dequantised here.
Matrices are PyTorch Linear weights ([out, in], row-major). llama2.c rotates interleaved pairs, so
wq/wk are permuted to HF's rotate-half layout.
"""

from __future__ import annotations

import struct
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..data import BUNDLED_VOCAB_SIZE
from ..engine.config import LlamaConfig
from ..errors import ConversionError
from .hf_folder import finish_output, hf_plan, permute_rotary, prepare_output, save_tokenizer, write_model

MAGIC = 0x616B3432


@dataclass
class Llama2cHeader:
    version: int
    dim: int
    hidden_dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    vocab_size: int
    seq_len: int
    shared_classifier: bool
    group_size: int = 0
    data_offset: int = 0


def read_header(path: Path) -> Llama2cHeader:
    raw = Path(path).read_bytes()[:256]
    if len(raw) < 28:
        raise ConversionError(f"{path} is too short to be a llama2.c checkpoint")
    magic = struct.unpack("<I", raw[:4])[0]
    if magic == MAGIC:
        version = struct.unpack("<i", raw[4:8])[0]
        if version not in (1, 2):
            raise ConversionError(f"{path}: llama2.c checkpoint version {version} is not supported (0, 1 and 2 are)")
        dim, hidden, layers, heads, kv, vocab, seq = struct.unpack("<7i", raw[8:36])
        shared = bool(raw[36])
        group = struct.unpack("<i", raw[37:41])[0] if version == 2 else 0
        h = Llama2cHeader(version, dim, hidden, layers, heads, kv, vocab, seq, shared, group, 256)
    else:
        dim, hidden, layers, heads, kv, vocab, seq = struct.unpack("<7i", raw[:28])
        h = Llama2cHeader(0, dim, hidden, layers, heads, kv, abs(vocab), seq, vocab > 0, 0, 28)
    if min(h.dim, h.hidden_dim, h.n_layers, h.n_heads, h.n_kv_heads, h.vocab_size) <= 0 or h.dim % h.n_heads or h.n_heads % h.n_kv_heads:
        raise ConversionError(f"{path}: implausible llama2.c header {h}")
    return h


class _Reader:
    def __init__(self, path: Path, offset: int) -> None:
        self.buf = np.memmap(path, dtype=np.uint8, mode="r")
        self.pos = offset
        self.path = path

    def f32(self, *shape: int) -> torch.Tensor:
        n = int(np.prod(shape))
        end = self.pos + 4 * n
        if end > len(self.buf):
            raise ConversionError(f"{self.path} is truncated: needs {end} bytes, has {len(self.buf)}")
        out = torch.from_numpy(np.frombuffer(self.buf[self.pos : end].tobytes(), dtype="<f4").reshape(shape).copy())
        self.pos = end
        return out

    def q80(self, group: int, *shape: int) -> torch.Tensor:
        n = int(np.prod(shape))
        end = self.pos + n
        if end + 4 * (n // group) > len(self.buf):
            raise ConversionError(f"{self.path} is truncated")
        q = np.frombuffer(self.buf[self.pos : end].tobytes(), dtype=np.int8).astype(np.float32)
        self.pos = end
        scales = self.f32(n // group).numpy()
        return torch.from_numpy((q.reshape(-1, group) * scales[:, None]).reshape(shape))

    def skip(self, nbytes: int) -> None:
        self.pos += nbytes


def read_llama2c(path: Path) -> tuple[Llama2cHeader, dict[str, torch.Tensor]]:
    """All weights in llama2.c's (Meta's) naming, fp32, before any permutation."""
    h = read_header(path)
    r = _Reader(path, h.data_offset)
    L, d, f, hd = h.n_layers, h.dim, h.hidden_dim, h.dim // h.n_heads
    kvd = h.n_kv_heads * hd
    w: dict[str, torch.Tensor] = {}
    mats = [("wq", d, d), ("wk", kvd, d), ("wv", kvd, d), ("wo", d, d)]
    ffn = [("w1", f, d), ("w2", d, f), ("w3", f, d)]
    if h.version == 0:
        w["tok_embeddings"] = r.f32(h.vocab_size, d)
        w["attention_norm"] = r.f32(L, d)
        for name, o, i in mats:
            w[name] = r.f32(L, o, i)
        w["ffn_norm"] = r.f32(L, d)
        for name, o, i in ffn:
            w[name] = r.f32(L, o, i)
        w["norm"] = r.f32(d)
        r.skip(4 * h.seq_len * hd)  # freq_cis_real/imag (unused)
        if not h.shared_classifier:
            w["output"] = r.f32(h.vocab_size, d)
    else:
        w["attention_norm"] = r.f32(L, d)
        w["ffn_norm"] = r.f32(L, d)
        w["norm"] = r.f32(d)
        read = (lambda *s: r.f32(*s)) if h.version == 1 else (lambda *s: r.q80(h.group_size, *s))
        w["tok_embeddings"] = read(h.vocab_size, d)
        for name, o, i in mats + ffn:
            w[name] = torch.stack([read(o, i) for _ in range(L)])
        if not h.shared_classifier:
            w["output"] = read(h.vocab_size, d)
    if r.pos != len(r.buf):
        raise ConversionError(f"{path}: {len(r.buf) - r.pos} bytes left over after the weights; the header does not match the data")
    return h, w


def convert_llama2c(checkpoint: Path, tokenizer_model: Path | None, output: Path, dtype: torch.dtype = torch.float32,
                    rope_theta: float = 10000.0, force: bool = False, progress: bool | None = None) -> Path:
    checkpoint = Path(checkpoint)
    h, w = read_llama2c(checkpoint)
    cfg = LlamaConfig(hidden_size=h.dim, num_hidden_layers=h.n_layers, num_attention_heads=h.n_heads,
                      num_key_value_heads=h.n_kv_heads, intermediate_size=h.hidden_dim, vocab_size=h.vocab_size,
                      rms_norm_eps=1e-5, rope_theta=rope_theta, max_position_embeddings=h.seq_len,
                      tie_word_embeddings=h.shared_classifier)
    tmp = prepare_output(output, force)
    try:
        vocab = save_tokenizer(tmp, Path(tokenizer_model) if tokenizer_model else None)
        if vocab is not None and vocab != h.vocab_size:
            raise ConversionError(f"the tokenizer has {vocab} pieces but the checkpoint's vocabulary is {h.vocab_size}")

        def produce(name: str) -> torch.Tensor:
            if name == "model.embed_tokens.weight":
                return w["tok_embeddings"]
            if name == "model.norm.weight":
                return w["norm"]
            if name == "lm_head.weight":
                return w["output"]
            i = int(name.split(".")[2])
            leaf = ".".join(name.split(".")[3:])
            table = {
                "input_layernorm.weight": lambda: w["attention_norm"][i],
                "post_attention_layernorm.weight": lambda: w["ffn_norm"][i],
                "self_attn.q_proj.weight": lambda: permute_rotary(w["wq"][i], h.n_heads),
                "self_attn.k_proj.weight": lambda: permute_rotary(w["wk"][i], h.n_kv_heads),
                "self_attn.v_proj.weight": lambda: w["wv"][i],
                "self_attn.o_proj.weight": lambda: w["wo"][i],
                "mlp.gate_proj.weight": lambda: w["w1"][i],
                "mlp.down_proj.weight": lambda: w["w2"][i],
                "mlp.up_proj.weight": lambda: w["w3"][i],
            }
            return table[leaf]()

        write_model(tmp, cfg, hf_plan(cfg), produce, dtype, progress=progress)
        finish_output(tmp, Path(output))
    except BaseException:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if tokenizer_model is None and h.vocab_size != BUNDLED_VOCAB_SIZE:
        warnings.warn(f"{output} has no tokenizer: pass the checkpoint's sentencepiece tokenizer.model when converting "
                      "(tokenizer_model, --tokenizer), or a tokenizer when loading it", RuntimeWarning, stacklevel=2)
    return Path(output)
