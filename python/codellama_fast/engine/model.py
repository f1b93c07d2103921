"""The Llama-2 architecture as Code Llama uses it, with its hot paths behind the ``Ops`` interface.

Weights are fused at load time: ``wqkv`` = [q; k; v] projections and ``w13`` = [gate; up], so each
block runs two big matmuls per sub-layer instead of five.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .config import LlamaConfig
from .ops import Ops, TorchOps


@dataclass
class StepContext:
    """Where the new tokens of one forward call sit.

    positions [B, T] int64: rotary position of each new token (real position, padding excluded).
    slots [T] int64: cache slots the new tokens are written to (shared by the batch).
    q_start: slot of the first new token (int, or a 0-d tensor for graph-captured decode).
    kv_start [B] int64: first non-padding slot of each sequence (left padding before it).
    kv_len: number of cache slots holding data after this step (int or 0-d tensor).
    """

    positions: torch.Tensor
    slots: torch.Tensor
    q_start: int | torch.Tensor
    kv_start: torch.Tensor
    kv_len: int | torch.Tensor


class Attention(nn.Module):
    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        self.n_heads, self.n_kv, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.wqkv = nn.Linear(cfg.hidden_size, cfg.q_size + 2 * cfg.kv_size, bias=False)
        self.wo = nn.Linear(cfg.q_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor, ctx: StepContext, inv_freq: torch.Tensor, cache: tuple[torch.Tensor, torch.Tensor], ops: Ops) -> torch.Tensor:
        b, t, _ = x.shape
        qkv = self.wqkv(x)  # [B, T, (Hq + 2 Hkv) D]
        q_size, kv_size = self.n_heads * self.head_dim, self.n_kv * self.head_dim
        q = qkv[..., :q_size].view(b, t, self.n_heads, self.head_dim)
        k = qkv[..., q_size : q_size + kv_size].view(b, t, self.n_kv, self.head_dim)
        v = qkv[..., q_size + kv_size :].view(b, t, self.n_kv, self.head_dim)
        k_cache, v_cache = cache
        out = ops.rope_attention(q, k, v, ctx.positions, inv_freq, k_cache, v_cache, ctx.slots,
                                 ctx.q_start, ctx.kv_start, ctx.kv_len)  # [B, T, Hq, D]
        return self.wo(out.reshape(b, t, q_size))


class MLP(nn.Module):
    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        self.w13 = nn.Linear(cfg.hidden_size, 2 * cfg.intermediate_size, bias=False)
        self.w2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor, ops: Ops) -> torch.Tensor:
        return self.w2(ops.swiglu(self.w13(x)))


class Block(nn.Module):
    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        self.attn_norm = nn.Parameter(torch.ones(cfg.hidden_size))
        self.mlp_norm = nn.Parameter(torch.ones(cfg.hidden_size))
        self.attn = Attention(cfg)
        self.mlp = MLP(cfg)


class LlamaModel(nn.Module):
    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        self.config = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = nn.Parameter(torch.ones(cfg.hidden_size))
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.ops: Ops = TorchOps()
        self.register_buffer("inv_freq", self.rope_inv_freq(cfg), persistent=False)

    @staticmethod
    def rope_inv_freq(cfg: LlamaConfig, device: torch.device | str | None = None) -> torch.Tensor:
        # As transformers computes it: 1 / theta^(2i/D), in fp32; linear scaling (position
        # interpolation) divides it by the factor, which turns each angle into (pos / factor) * freq.
        exponents = torch.arange(0, cfg.head_dim, 2, dtype=torch.int64, device=device).to(torch.float32) / cfg.head_dim
        inv_freq = 1.0 / (cfg.rope_theta**exponents)
        return inv_freq / cfg.rope_scaling_factor if cfg.rope_scaling_factor != 1.0 else inv_freq

    def forward(
        self,
        tokens: torch.Tensor,
        ctx: StepContext,
        caches: list[tuple[torch.Tensor, torch.Tensor]],
        last_only: bool = True,
    ) -> torch.Tensor:
        """tokens [B, T] -> logits [B, V] (last position) or [B, T, V], in fp32."""
        ops, eps = self.ops, self.config.rms_norm_eps
        residual = self.embed(tokens)  # [B, T, C]
        h = ops.rms_norm(residual, self.layers[0].attn_norm, eps)
        n = len(self.layers)
        for i, layer in enumerate(self.layers):
            a = layer.attn(h, ctx, self.inv_freq, caches[i], ops)
            h, residual = ops.add_rms_norm(a, residual, layer.mlp_norm, eps)
            m = layer.mlp(h, ops)
            next_norm = self.layers[i + 1].attn_norm if i + 1 < n else self.norm
            h, residual = ops.add_rms_norm(m, residual, next_norm, eps)
        if last_only:
            h = h[:, -1]
        return self.lm_head(h).float()
