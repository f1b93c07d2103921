"""A prompt's prefill (only the last position's logits wanted) runs the last layer's attention
output and MLP for the last position alone: its logits equal transformers' last-position logits and
the last row of our full forward to fp32 rounding, and the cache gets the same keys and values."""

from __future__ import annotations

import pytest
import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("name", ["mha", "gqa4-d16"])
def test_last_position_forward_matches_the_full_one(tmp_path, backend, name):
    pytest.importorskip("transformers")
    from codellama_fast.engine import load_model
    from codellama_fast.engine.cache import KVCache
    from codellama_fast.engine.model import StepContext
    from tests.engine_helpers import fresh_seed, make_hf_model, save

    hf = make_hf_model(name, seed=fresh_seed())
    model = load_model(save(hf, tmp_path / "m"), dtype="float32", device=DEVICE, backend="torch")
    if backend == "triton":
        from codellama_fast.kernels.triton_ops import TritonOps

        model.ops = TritonOps()  # the interpreter on CPU
    b, t = 2, 37
    ids = torch.randint(3, model.config.vocab_size, (b, t), device=DEVICE)
    kv_start = torch.tensor([0, 5], device=DEVICE)  # the second row is left-padded
    positions = (torch.arange(t, device=DEVICE)[None, :] - kv_start[:, None]).clamp_min(0)
    ctx = StepContext(positions, torch.arange(t, device=DEVICE), 0, kv_start, t)
    caches = [KVCache(model.config, b, t + 3, torch.float32, torch.device(DEVICE)) for _ in range(2)]
    with torch.no_grad():
        last = model(ids, ctx, caches[0].layers, last_only=True)
        full = model(ids, ctx, caches[1].layers, last_only=False)
    assert last.shape == (b, model.config.vocab_size)
    scale = full.abs().max().item()
    torch.testing.assert_close(last, full[:, -1], rtol=0, atol=1e-5 * scale)
    for (k0, v0), (k1, v1) in zip(caches[0].layers, caches[1].layers, strict=True):
        assert torch.equal(k0, k1) and torch.equal(v0, v1)

    mask = (torch.arange(t, device=DEVICE)[None, :] >= kv_start[:, None]).long()
    with torch.no_grad():
        ref = hf.to(DEVICE)(input_ids=ids, attention_mask=mask, position_ids=positions).logits[:, -1]
    torch.testing.assert_close(last, ref, rtol=0, atol=1e-4 * scale)
