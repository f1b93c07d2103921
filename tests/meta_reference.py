"""A Meta-style Llama written here as the independent reference for conversion tests: complex
(interleaved) RoPE as in Meta's llama/model.py, plus Meta's model-parallel sharding layout."""

from __future__ import annotations

import json
from pathlib import Path

import torch

COLUMN = ("wq", "wk", "wv", "w1", "w3", "output")  # split along dim 0
ROW = ("wo", "w2", "tok_embeddings")  # split along dim 1


def random_meta_weights(dim: int, n_layers: int, n_heads: int, n_kv: int, ffn: int, vocab: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    hd = dim // n_heads

    def r(*shape, scale=0.08):
        return torch.randn(*shape, generator=g) * scale

    w = {"tok_embeddings.weight": r(vocab, dim, scale=1.0), "norm.weight": 1 + r(dim, scale=0.1), "output.weight": r(vocab, dim)}
    for i in range(n_layers):
        p = f"layers.{i}."
        w.update({
            p + "attention.wq.weight": r(n_heads * hd, dim), p + "attention.wk.weight": r(n_kv * hd, dim),
            p + "attention.wv.weight": r(n_kv * hd, dim), p + "attention.wo.weight": r(dim, n_heads * hd),
            p + "feed_forward.w1.weight": r(ffn, dim), p + "feed_forward.w2.weight": r(dim, ffn), p + "feed_forward.w3.weight": r(ffn, dim),
            p + "attention_norm.weight": 1 + r(dim, scale=0.1), p + "ffn_norm.weight": 1 + r(dim, scale=0.1),
        })
    return w


def save_meta_checkpoint(folder: Path, w: dict[str, torch.Tensor], shards: int, params: dict, tokenizer_model: Path | None,
                         dtype: torch.dtype = torch.float32) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    parts: list[dict[str, torch.Tensor]] = [{} for _ in range(shards)]
    for name, t in w.items():
        leaf = name.split(".")[-2]
        if leaf in COLUMN:
            chunks = t.chunk(shards, dim=0)
        elif leaf in ROW:
            chunks = t.chunk(shards, dim=1)
        else:
            chunks = [t] * shards
        for k in range(shards):
            parts[k][name] = chunks[k].to(dtype).clone()
    for k in range(shards):
        parts[k]["rope.freqs"] = torch.zeros(4)  # Meta checkpoints carry this unused buffer
        torch.save(parts[k], folder / f"consolidated.{k:02d}.pth")
    (folder / "params.json").write_text(json.dumps(params))
    if tokenizer_model is not None:
        (folder / "tokenizer.model").write_bytes(tokenizer_model.read_bytes())


def meta_forward(w: dict[str, torch.Tensor], tokens: torch.Tensor, n_heads: int, n_kv: int, eps: float, theta: float) -> torch.Tensor:
    """Logits [B, T, V] in fp32, following Meta's llama/model.py (complex RoPE, repeat_kv)."""
    x = w["tok_embeddings.weight"][tokens].float()
    b, t, dim = x.shape
    hd = dim // n_heads
    freqs = 1.0 / (theta ** (torch.arange(0, hd, 2)[: hd // 2].float() / hd))
    freqs_cis = torch.polar(torch.ones(t, hd // 2), torch.outer(torch.arange(t).float(), freqs))

    def norm(v, weight):
        return v * torch.rsqrt(v.pow(2).mean(-1, keepdim=True) + eps) * weight

    def rope(v):
        vc = torch.view_as_complex(v.float().reshape(*v.shape[:-1], -1, 2))
        return torch.view_as_real(vc * freqs_cis[None, :, None, :]).flatten(3)

    mask = torch.full((t, t), float("-inf")).triu(1)
    n_layers = len({k.split(".")[1] for k in w if k.startswith("layers.")})
    for i in range(n_layers):
        p = f"layers.{i}."
        h = norm(x, w[p + "attention_norm.weight"])
        q = (h @ w[p + "attention.wq.weight"].T).view(b, t, n_heads, hd)
        k = (h @ w[p + "attention.wk.weight"].T).view(b, t, n_kv, hd)
        v = (h @ w[p + "attention.wv.weight"].T).view(b, t, n_kv, hd)
        q, k = rope(q), rope(k)
        k = k.repeat_interleave(n_heads // n_kv, dim=2)
        v = v.repeat_interleave(n_heads // n_kv, dim=2)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        scores = torch.softmax(q @ k.transpose(2, 3) / hd**0.5 + mask, dim=-1)
        x = x + (scores @ v).transpose(1, 2).reshape(b, t, -1) @ w[p + "attention.wo.weight"].T
        h = norm(x, w[p + "ffn_norm.weight"])
        ff = (torch.nn.functional.silu(h @ w[p + "feed_forward.w1.weight"].T) * (h @ w[p + "feed_forward.w3.weight"].T)) @ w[p + "feed_forward.w2.weight"].T
        x = x + ff
    return norm(x, w["norm.weight"]) @ w["output.weight"].T


def meta_chat_reference(sp, dialog):
    """Meta's chat_completion (llama/generation.py) on sentencepiece: [bos]+encode(turn)+[eos] per
    finished exchange, then the open user turn if the dialog ends with one."""
    B_INST, E_INST, B_SYS, E_SYS = "[INST]", "[/INST]", "<<SYS>>\n", "\n<</SYS>>\n\n"
    if dialog[0]["role"] == "system":
        dialog = [{"role": dialog[1]["role"], "content": B_SYS + dialog[0]["content"] + E_SYS + dialog[1]["content"]}] + dialog[2:]
    ids = []
    for p, a in zip(dialog[::2], dialog[1::2]):
        ids += [1] + sp.encode(f"{B_INST} {p['content'].strip()} {E_INST} {a['content'].strip()} ") + [2]
    if len(dialog) % 2:
        ids += [1] + sp.encode(f"{B_INST} {dialog[-1]['content'].strip()} {E_INST}")
    return ids
