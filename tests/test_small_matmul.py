"""small_matmul.linear: x @ w.T for the few rows of a CPU decode step, against an fp64 product with
the error bound of any fp32 summation order; which calls take the w @ x.T path; and that the
model's projections go through it (the CPU decode speed depends on it)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from codellama_fast.engine import small_matmul  # noqa: E402
from tests.engine_helpers import fresh_seed  # noqa: E402


def _check_within_fp32_bound(got: torch.Tensor, x: torch.Tensor, w: torch.Tensor) -> None:
    """|got - x @ w.T| <= K u sum_k |x_k w_k| (+ the rounding of the result): the forward error
    bound of a K-term fp32 dot product summed in any order (u = 2^-24)."""
    x64, w64 = x.double(), w.double()
    want = x64 @ w64.T
    k = x.shape[-1]
    bound = k * 2.0**-24 * (x64.abs() @ w64.abs().T) + want.abs() * 2.0**-24
    err = (got.double() - want).abs()
    assert bool((err <= bound).all()), f"max error {err.max().item():.3g} over bound {(err / bound).max().item():.3g}×"
    # and not merely within the bound: an fp32 product, far closer than bf16 would be
    assert err.max().item() <= 1e-5 * want.abs().max().item()


@pytest.mark.parametrize("n,k", [(96, 64), (257, 33), (1000, 300)])
@pytest.mark.parametrize("m", [1, 2, 3, 5, 8, 9, 17])
def test_linear_is_an_fp32_product_at_any_row_count(n, k, m, monkeypatch):
    monkeypatch.setattr(small_matmul, "MIN_WEIGHT_ELEMENTS", 0)  # these small weights too
    g = torch.Generator().manual_seed(fresh_seed())
    w = torch.randn(n, k, generator=g)
    x = torch.randn(m, k, generator=g)
    for got in (small_matmul.linear(x, w), small_matmul.weight_first(x, w)):
        assert got.shape == (m, n) and got.dtype == torch.float32 and got.is_contiguous()
        _check_within_fp32_bound(got, x, w)
    assert small_matmul.uses_small_rows(x, w) == (m <= small_matmul.SMALL_ROWS)


def test_linear_takes_any_leading_shape_and_layout(monkeypatch):
    monkeypatch.setattr(small_matmul, "MIN_WEIGHT_ELEMENTS", 0)
    g = torch.Generator().manual_seed(fresh_seed())
    w = torch.randn(70, 48, generator=g)
    cases = {
        "[B, T, K]": torch.randn(3, 1, 48, generator=g),
        "[B, K] transposed view": torch.randn(48, 4, generator=g).t(),
        "every other row": torch.randn(8, 48, generator=g)[::2],
        "[1, 1, K]": torch.randn(1, 1, 48, generator=g),
        "a column slice": torch.randn(2, 96, generator=g)[:, 10:58],
    }
    for name, x in cases.items():
        got = small_matmul.linear(x, w)
        assert got.shape == (*x.shape[:-1], 70) and got.is_contiguous(), name
        _check_within_fp32_bound(got.reshape(-1, 70), x.reshape(-1, 48), w)


def test_other_dtypes_devices_sizes_and_row_counts_are_f_linear():
    g = torch.Generator().manual_seed(fresh_seed())
    w = torch.randn(small_matmul.MIN_WEIGHT_ELEMENTS // 32, 32, generator=g)  # the smallest weight that takes the path
    x = torch.randn(2, 32, generator=g)
    assert small_matmul.uses_small_rows(x, w)
    assert not small_matmul.uses_small_rows(x, w[:-1])
    assert not small_matmul.uses_small_rows(x.to(torch.bfloat16), w.to(torch.bfloat16))
    assert not small_matmul.uses_small_rows(x.double(), w.double())
    assert not small_matmul.uses_small_rows(torch.randn(small_matmul.SMALL_ROWS + 1, 32), w)
    assert not small_matmul.uses_small_rows(torch.randn(0, 32), w)
    for xs, ws in ((x.to(torch.bfloat16), w.to(torch.bfloat16)), (torch.randn(12, 32, generator=g), w), (x, w[:-1])):
        assert torch.equal(small_matmul.linear(xs, ws), torch.nn.functional.linear(xs, ws))
    assert small_matmul.linear(torch.randn(0, 32), w).shape == (0, w.shape[0])


def test_the_models_cpu_decode_projections_take_the_small_path(monkeypatch, tmp_path):
    """Every projection of a CPU fp32 decode step (batch 2: qkv, o, gate/up, down per layer and the
    LM head) goes through w @ x.T; the prompt's prefill (more rows) through F.linear, but for the
    projections of its last position alone. (The test model's layer weights are below the size
    that takes the path, which is lowered to take them; at the default size only its LM head does.)"""
    pytest.importorskip("transformers")
    from codellama_fast import CodeLlamaTokenizerFast
    from codellama_fast.engine import Engine, load_model
    from tests.engine_helpers import make_hf_model, save

    folder = save(make_hf_model("gqa4", seed=fresh_seed()), tmp_path / "m")
    engine = Engine(load_model(folder, dtype="float32", device="cpu"), CodeLlamaTokenizerFast.from_pretrained())
    seen: list[tuple[int, bool]] = []
    vocab = engine.model.config.vocab_size
    heads: list[bool] = []  # per small call: its weight is the LM head's
    uses = small_matmul.uses_small_rows

    def recording(x, w):
        small = uses(x, w)
        seen.append((x.numel() // x.shape[-1], small))
        if small:
            heads.append(w.shape[0] == vocab)
        return small

    monkeypatch.setattr(small_matmul, "uses_small_rows", recording)
    prompts = ["def f(x):", "import os"]
    engine.generate(prompts, max_new_tokens=4, stop_at_eos=False)
    # at the default size only the LM head ([vocab, C]) is large enough: the prefill's and 3 steps'
    assert heads == [True] * 4 and engine.model.lm_head.weight.numel() >= small_matmul.MIN_WEIGHT_ELEMENTS
    assert engine.model.layers[0].mlp.w13.weight.numel() < small_matmul.MIN_WEIGHT_ELEMENTS
    seen.clear()
    monkeypatch.setattr(small_matmul, "MIN_WEIGHT_ELEMENTS", 0)
    engine.generate(prompts, max_new_tokens=4, stop_at_eos=False)
    layers = engine.model.config.num_hidden_layers
    small = [rows for rows, fast in seen if fast]
    # 3 decode steps (the first token comes from the prefill) of 4 projections per layer and the LM
    # head, and the prefill's last-position tail: the last layer's o, gate/up and down, the LM head
    assert small == [2] * (3 * (4 * layers + 1) + 4), seen
    assert all(rows > small_matmul.SMALL_ROWS for rows, fast in seen if not fast)
