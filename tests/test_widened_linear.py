"""widened_linear: fp16 projections on the CPU with many rows, through fp32 blocks, against a float64
product of the same fp16 values; which calls take it; and an fp16 model's prefill through it
against transformers' fp32 logits."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from codellama_fast.engine import widened_linear as WL  # noqa: E402
from codellama_fast.engine.ops import TorchOps  # noqa: E402
from tests.engine_helpers import fresh_seed, spy_shapes  # noqa: E402


@pytest.mark.parametrize("weight_first", [True, False])
@pytest.mark.parametrize("lead,k,n", [((70,), 96, 50), ((2, 33), 40, 129), ((64,), 8, 7)])
def test_equals_the_float64_product_rounded_once(monkeypatch, lead, k, n, weight_first):
    monkeypatch.setattr(WL, "WEIGHT_FIRST_BELOW", 10**9 if weight_first else 0)  # each orientation
    # small blocks, so the rows and the weight both split, each with a remainder
    monkeypatch.setattr(WL, "WEIGHT_BLOCK_ELEMENTS", 16 * k)
    monkeypatch.setattr(WL, "ROW_BLOCK_ELEMENTS", 24 * k)
    torch.manual_seed(fresh_seed())
    x = torch.randn(*lead, k).half()
    w = (torch.randn(n, k) * 0.1).half()
    got = WL.linear(x, w)
    want = x.double() @ w.double().t()
    assert got.shape == (*lead, n) and got.dtype == torch.float16
    # rounded to fp16 once (half an ulp: at most 2^-11 of the value) after an fp32 sum of exact
    # products (a few fp32 ulps of the sum of their sizes)
    bound = want.abs() * 2.0**-11 + (x.double().abs() @ w.double().abs().t()) * k * 2.0**-24
    assert bool(((got.double() - want).abs() <= bound).all())


@pytest.mark.parametrize("dtype,rows,taken", [
    (torch.float16, WL.MIN_ROWS, True), (torch.float16, WL.MIN_ROWS - 1, False),  # a decode step keeps F.linear
    (torch.bfloat16, 256, False), (torch.float32, 256, False),
])
def test_which_calls_take_it(monkeypatch, dtype, rows, taken):
    calls = spy_shapes(monkeypatch, WL, "linear")
    x, w = torch.randn(rows, 32).to(dtype), torch.randn(48, 32).to(dtype)
    out = TorchOps().linear(x, w)
    assert calls == ([(rows, 32)] if taken else [])
    assert out.dtype == dtype and out.shape == (rows, 48)


def test_an_fp16_model_prefills_through_it_near_transformers_fp32(monkeypatch, tmp_path):
    """An fp16 model on the CPU (``torch_dtype=torch.float16``, as the model cards load it): its
    prefill's projections take the fp32 blocks and its logits stay within fp16's reach of
    transformers' fp32 logits (the bound of the fp16 prefill in test_engine)."""
    from codellama_fast.engine import load_model
    from codellama_fast.engine.cache import KVCache
    from codellama_fast.engine.model import StepContext
    from tests.engine_helpers import make_hf_model, save

    hf = make_hf_model("mha", fresh_seed())
    path = save(hf, tmp_path / "m")
    calls = spy_shapes(monkeypatch, WL, "linear")
    model = load_model(path, dtype="float16", device="cpu")
    ids = torch.randint(0, hf.config.vocab_size, (2, 40))
    with torch.no_grad():
        ref = hf(ids).logits
    b, t = ids.shape
    cache = KVCache(model.config, b, t, torch.float16, torch.device("cpu"))
    ctx = StepContext(torch.arange(t).expand(b, t), torch.arange(t), 0, torch.zeros(b, dtype=torch.long), t)
    with torch.no_grad():
        got = model(ids, ctx, cache.layers, last_only=False)
    # every layer's 4 projections (qkv, output, gate/up, down) of all 80 rows, and the output head's
    assert len(calls) == 4 * hf.config.num_hidden_layers + 1 and all(c[0] * c[1] == b * t for c in calls)
    assert ((got.float() - ref).abs().max() / ref.abs().max()).item() < 2e-2
