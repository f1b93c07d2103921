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
from .packing import pack, unpack


@dataclass
class StepContext:
    """Where the new tokens of one forward call sit.

    positions [B, T] int64: rotary position of each new token (real position, padding excluded).
    slots [T] int64: cache slots the new tokens are written to (shared by the batch).
    q_start: slot of the first new token (int, or a 0-d tensor for graph-captured decode).
    kv_start [B] int64: first non-padding slot of each sequence (left padding before it).
    kv_len: number of cache slots holding data after this step (int or 0-d tensor).
    rope_len: the sequence length dynamic RoPE scaling sees (the whole prompt while it is
    prefilled in chunks, as transformers prefills it at once); None: the last position + 1.
    rows [N] int64 on the device, or None: where the caller packs a padded call (engine.packing),
    the flat indices (b * T + i, in order) of its N positions that are not padding; projections,
    norms and the MLP then run on those rows alone, [1, N, C], and the cache's padding slots hold
    zeros. None: every position.
    shared_prompt (runs, slots), or None: the batch's rows come in runs of `runs` whose first
    `slots` slots hold the same keys and values (samples of one prompt, engine.shared_prompts); an
    attention that knows it may read them once per run. `slots` is a 1-element device tensor in a
    captured step (engine.cuda_graph).
    """

    positions: torch.Tensor
    slots: torch.Tensor
    q_start: int | torch.Tensor
    kv_start: torch.Tensor
    kv_len: int | torch.Tensor
    rope_len: int | None = None
    rows: torch.Tensor | None = None
    shared_prompt: tuple[int, int | torch.Tensor] | None = None


def reserve_step(caches: list[tuple[torch.Tensor, torch.Tensor]], ctx: StepContext) -> None:
    """A growing cache (``KVCache.layers``) makes room for the slots a step writes before it writes
    them; a step whose kv_len is a device tensor (a captured one) runs on a whole cache."""
    reserve = getattr(caches, "reserve", None)
    if reserve is not None and isinstance(ctx.kv_len, int):
        reserve(ctx.kv_len)


class Attention(nn.Module):
    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        self.n_heads, self.n_kv, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.wqkv = nn.Linear(cfg.hidden_size, cfg.q_size + 2 * cfg.kv_size, bias=False)
        self.wo = nn.Linear(cfg.q_size, cfg.hidden_size, bias=False)

    def split_qkv(self, qkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The fused projection's output [B, T, (Hq + 2 Hkv) D] as views q [B, T, Hq, D], k and v
        [B, T, Hkv, D]."""
        b, t = qkv.shape[0], qkv.shape[1]
        q_size, kv_size = self.n_heads * self.head_dim, self.n_kv * self.head_dim
        q = qkv[..., :q_size].view(b, t, self.n_heads, self.head_dim)
        k = qkv[..., q_size : q_size + kv_size].view(b, t, self.n_kv, self.head_dim)
        v = qkv[..., q_size + kv_size :].view(b, t, self.n_kv, self.head_dim)
        return q, k, v

    def qkv(self, x: torch.Tensor, ctx: StepContext, ops: Ops) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [B, T, C] (or packed [1, N, C], ctx.rows) -> q [B, T, Hq, D], k and v [B, T, Hkv, D]."""
        qkv = ops.linear(x, self.wqkv.weight)
        if ctx.rows is not None:
            qkv = unpack(qkv, ctx.rows, ctx.positions.shape[0], ctx.positions.shape[1])
        return self.split_qkv(qkv)

    def forward(self, x: torch.Tensor, ctx: StepContext, inv_freq: torch.Tensor, cache: tuple[torch.Tensor, torch.Tensor], ops: Ops) -> torch.Tensor:
        q, k, v = self.qkv(x, ctx, ops)
        b, t = q.shape[0], q.shape[1]
        k_cache, v_cache = cache
        out = ops.rope_attention(q, k, v, ctx.positions, inv_freq, k_cache, v_cache, ctx.slots, ctx.q_start, ctx.kv_start,
                                 ctx.kv_len, shared_prompt=ctx.shared_prompt).reshape(b, t, -1)  # [B, T, Hq*D]
        return ops.linear(out if ctx.rows is None else pack(out, ctx.rows), self.wo.weight)

    def forward_last(self, x: torch.Tensor, ctx: StepContext, inv_freq: torch.Tensor, cache: tuple[torch.Tensor, torch.Tensor],
                     ops: Ops) -> torch.Tensor:
        """As forward, for the last new position's output alone [B, 1, C]: every new position's
        key and value still goes into the cache, but only the last query attends (it sits in slot
        kv_len - 1) and only its output is projected."""
        q, k, v = self.qkv(x, ctx, ops)  # the keys and values of every position are needed
        b, t = q.shape[0], q.shape[1]
        k_cache, v_cache = cache
        q_rot = ops.rope_cache_update(q, k, v, ctx.positions, inv_freq, k_cache, v_cache, ctx.slots)
        out = ops.attention(q_rot[:, -1:], k_cache, v_cache, ctx.q_start + t - 1, ctx.kv_start, ctx.kv_len)  # [B, 1, Hq, D]
        return ops.linear(out.reshape(b, 1, -1), self.wo.weight)


class MLP(nn.Module):
    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        self.w13 = nn.Linear(cfg.hidden_size, 2 * cfg.intermediate_size, bias=False)
        self.w2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor, ops: Ops) -> torch.Tensor:
        return ops.linear(ops.swiglu(ops.linear(x, self.w13.weight)), self.w2.weight)


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
        # Built on the meta device and filled by the loader: the weight is given, not initialised
        # (normal_ on the meta device runs torch's Python decompositions, which import
        # torch._dynamo: about 1 s of a process's first load)
        self.embed = nn.Embedding(cfg.vocab_size, cfg.hidden_size, _weight=torch.empty(cfg.vocab_size, cfg.hidden_size))
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = nn.Parameter(torch.ones(cfg.hidden_size))
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.ops: Ops = TorchOps()
        # computed on the CPU and moved to the device the model is built on (the meta device, as
        # above: arithmetic there would run the decompositions too)
        self.register_buffer("inv_freq", self.rope_inv_freq(cfg, "cpu").to(torch.get_default_device()), persistent=False)

    @staticmethod
    def rope_inv_freq(cfg: LlamaConfig, device: torch.device | str | None = None) -> torch.Tensor:
        # As transformers computes it: 1 / theta^(2i/D), in fp32; linear scaling (position
        # interpolation) divides it by the factor, which turns each angle into (pos / factor) * freq.
        exponents = torch.arange(0, cfg.head_dim, 2, dtype=torch.int64, device=device).to(torch.float32) / cfg.head_dim
        inv_freq = 1.0 / (cfg.rope_theta**exponents)
        return inv_freq / cfg.rope_scaling_factor if cfg.rope_scaling_type == "linear" else inv_freq

    def rope_freqs(self, ctx: StepContext) -> torch.Tensor:
        """inv_freq [D/2] fp32 for one forward call: the fixed one, or with dynamic NTK scaling the
        one for the sequence length so far (on the device: a captured step recomputes it)."""
        cfg = self.config
        if cfg.rope_scaling_type != "dynamic":
            return self.inv_freq
        seq = ctx.positions.max() + 1 if ctx.rope_len is None else torch.full((), ctx.rope_len, device=self.inv_freq.device)
        return dynamic_ntk_inv_freq(cfg, self.inv_freq, seq)

    def forward(
        self,
        tokens: torch.Tensor,
        ctx: StepContext,
        caches: list[tuple[torch.Tensor, torch.Tensor]],
        last_only: bool = True,
    ) -> torch.Tensor:
        """tokens [B, T] -> logits [B, V] (last position) or [B, T, V], in fp32."""
        reserve_step(caches, ctx)
        ops, eps = self.ops, self.config.rms_norm_eps
        b, t = tokens.shape
        rows = ctx.rows
        residual = self.embed(tokens if rows is None else tokens.reshape(1, -1)[:, rows])  # [B, T, C], or packed [1, N, C]
        h = ops.rms_norm(residual, self.layers[0].attn_norm, eps)
        n = len(self.layers)
        inv_freq = self.rope_freqs(ctx)
        for i, layer in enumerate(self.layers):
            if last_only and i == n - 1 and t > 1:
                # Only the last position's logits are wanted (a prompt's prefill): the last layer
                # writes every position's key and value but attends, projects and runs its MLP
                # for the last position alone (a 1/layers share of a long prompt's work saved).
                a = layer.attn.forward_last(h, ctx, inv_freq, caches[i], ops)  # [B, 1, C]
                # (packed: a row of padding alone in an early chunk has a zero residual there; its
                # logits are a chunk's, which the caller drops)
                residual = residual[:, -1:] if rows is None else unpack(residual, rows, b, t)[:, -1:]
                rows = None
            else:
                a = layer.attn(h, ctx, inv_freq, caches[i], ops)
            h, residual = ops.add_rms_norm(a, residual, layer.mlp_norm, eps)
            m = layer.mlp(h, ops)
            next_norm = self.layers[i + 1].attn_norm if i + 1 < n else self.norm
            h, residual = ops.add_rms_norm(m, residual, next_norm, eps)
        if rows is not None:  # a packed call's logits, its rows' alone projected: zeros at the padding
            logits = unpack(ops.linear(h, self.lm_head.weight).float(), rows, b, t)  # [B, T, V]
            return logits[:, -1] if last_only else logits
        if last_only:
            h = h[:, -1]
        return ops.linear(h, self.lm_head.weight).float()


def dynamic_ntk_inv_freq(cfg: LlamaConfig, default: torch.Tensor, seq_len: torch.Tensor) -> torch.Tensor:
    """transformers' dynamic NTK RoPE scaling, in its fp32 arithmetic: up to max_position_embeddings
    positions the plain inv_freq (`default` [D/2]); past it, the base grows to theta * (factor *
    seq_len / max_pos - (factor - 1)) ** (D / (D - 2)). seq_len: [] int64 on the device. As in
    transformers, keys already in the cache keep the rotation they were written with."""
    max_pos, d, factor = cfg.max_position_embeddings, cfg.head_dim, cfg.rope_scaling_factor
    seq = seq_len.clamp_min(max_pos)
    base = cfg.rope_theta * ((factor * seq / max_pos) - (factor - 1)) ** (d / (d - 2))
    exponents = torch.arange(0, d, 2, dtype=torch.int64, device=default.device).to(torch.float32) / d
    return torch.where(seq_len > max_pos, 1.0 / (base**exponents), default)
