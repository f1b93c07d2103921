"""The decode step written for few launches per layer: the same model and the same math as
``LlamaModel.forward`` for one new token per sequence, with the RMSNorms, the SwiGLU and the
residual adds folded into the projections (``Ops.norm_linear``, ``norm_linear_swiglu``,
``linear_residual``) and the attention step in one ``Ops.rope_attention``. With the Triton ops and
a batch of up to 16 sequences, a layer is five launches instead of eight.

Which step runs faster depends on the GPU (the fused projections are Triton matrix-vector kernels,
the plain step uses cuBLAS), so the engine captures both and keeps the faster
(``cuda_graph.pick_faster``).
"""

from __future__ import annotations

import torch

from .model import Block, LlamaModel, StepContext, reserve_step
from .ops import Ops


def fused_decode_forward(model: LlamaModel, tokens: torch.Tensor, ctx: StepContext,
                         caches: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """tokens [B, 1] -> logits [B, V] in fp32, as ``model(tokens, ctx, caches)``."""
    reserve_step(caches, ctx)
    ops, eps = model.ops, model.config.rms_norm_eps
    b = tokens.shape[0]
    s = model.embed(tokens).view(b, -1)  # the residual stream [B, C]
    inv_freq = model.rope_freqs(ctx)
    for i, layer in enumerate(model.layers):
        s = fused_decode_layer(layer, ops, s, ctx, inv_freq, caches[i], eps)
    return ops.linear(ops.rms_norm(s, model.norm, eps), model.lm_head.weight).float()


def fused_decode_layer(layer: Block, ops: Ops, s: torch.Tensor, ctx: StepContext, inv_freq: torch.Tensor,
                       cache: tuple[torch.Tensor, torch.Tensor], eps: float) -> torch.Tensor:
    """One layer of the fused step: the residual stream s [B, C] in, the layer's output stream out."""
    b = s.shape[0]
    attn = layer.attn
    qkv = ops.norm_linear(s, layer.attn_norm, attn.wqkv.weight, eps)  # [B, (Hq + 2 Hkv) D]
    q, k, v = attn.split_qkv(qkv[:, None])  # [B, 1, H, D] each
    k_cache, v_cache = cache
    a = ops.rope_attention(q, k, v, ctx.positions, inv_freq, k_cache, v_cache, ctx.slots,
                           ctx.q_start, ctx.kv_start, ctx.kv_len, shared_prompt=ctx.shared_prompt)  # [B, 1, Hq, D]
    s = ops.linear_residual(a.reshape(b, -1), attn.wo.weight, s)
    act = ops.norm_linear_swiglu(s, layer.mlp_norm, layer.mlp.w13.weight, eps)  # [B, F]
    return ops.linear_residual(act, layer.mlp.w2.weight, s)
