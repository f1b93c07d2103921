"""The CPU prefill attention of whole prompts (engine/cpu_prefill_attention.py: a padded batch row by
row, fp16 through fp32) against the masking rule applied key by key in float64; which calls take it;
and a model prefilling a padded batch through it generating what transformers generates."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from codellama_fast.engine import cpu_prefill_attention as CPA  # noqa: E402
from codellama_fast.engine.ops import TorchOps  # noqa: E402
from tests.engine_helpers import fresh_seed, spy_shapes  # noqa: E402
from tests.test_reference_attention import _loop_attention  # noqa: E402

# (batch, tokens, query heads, KV heads, head dim, left padding)
CASES = [
    (3, 13, 4, 4, 16, [0, 5, 12], "MHA, padded rows; one row is its last token alone"),
    (2, 11, 8, 2, 16, [3, 0], "GQA 4, the first row padded"),
    (2, 9, 8, 1, 32, [0, 0], "GQA 8, no padding (one causal call)"),
    (4, 7, 6, 3, 8, [1, 2, 3, 6], "GQA 2, every row padded"),
    (2, 5, 4, 2, 8, [0, 5], "a row of padding alone (each query sees only itself)"),
]


def _run(dtype, b, t, hq, hkv, d, pads):
    q = torch.randn(b, t, hq, d).to(dtype)
    kc = torch.randn(b, hkv, t + 4, d).to(dtype)  # slots past the prompt hold keys no query may see
    vc = torch.randn(b, hkv, t + 4, d).to(dtype)
    kv_start = torch.tensor(pads)
    return CPA.attention(q, kc, vc, kv_start), _loop_attention(q, kc, vc, 0, kv_start, t)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("b,t,hq,hkv,d,pads,what", CASES, ids=[c[-1] for c in CASES])
def test_attention_equals_the_masking_rule_key_by_key(monkeypatch, dtype, b, t, hq, hkv, d, pads, what):
    monkeypatch.setattr(CPA, "MIN_ROW_ELEMENTS", 0)  # the tiny shapes run row by row
    torch.manual_seed(fresh_seed())
    got, want = _run(dtype, b, t, hq, hkv, d, pads)
    assert got.shape == (b, t, hq, d) and got.dtype == dtype
    err = (got.double() - want).abs()
    if dtype == torch.float32:
        # each output is a convex mix of values of size ~3: a few fp32 ulps of that
        assert err.max().item() <= 2e-5 * max(1.0, want.abs().max().item()), f"{what}: max error {err.max().item()}"
    elif dtype == torch.float16:
        # run in fp32 and rounded to fp16 once: half an ulp (at most 2^-11 of each output), plus the fp32 sums' few ulps
        assert bool((err <= want.abs() * 2.0**-11 + 1e-5).all()), f"{what}: max error {err.max().item()}"
    else:
        # bf16 SDPA as transformers runs it (the probabilities rounded to bf16 before they meet V): a few bf16 ulps
        assert bool((err <= want.abs() * 2.0**-6 + 2.0**-6).all()), f"{what}: max error {err.max().item()}"
    # a padding query sees its own slot alone: its output is its own value, exactly
    for row, pad in enumerate(pads):
        assert torch.equal(got[row, :pad].double(), want[row, :pad]), f"{what}: row {row}'s padding"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_the_one_masked_call_below_the_row_floor_is_the_same_attention(dtype):
    torch.manual_seed(fresh_seed())
    got, want = _run(dtype, 3, 10, 4, 2, 8, [0, 4, 9])  # 10 x 4 x 8 elements a row: under MIN_ROW_ELEMENTS
    bound = 2e-5 if dtype == torch.float32 else 2.0**-11
    assert bool(((got.double() - want).abs() <= want.abs() * bound + 1e-5).all())


@pytest.mark.parametrize("t,q_start,kv_len,pads,calls_expected", [
    (16, 0, 16, [0, 5], [(1, 16, 32, 128), (1, 11, 32, 128)]),  # padded prompts: one call a row, over its own tokens
    (16, 0, 16, [0, 0], [(2, 16, 32, 128)]),                    # no padding: one causal call
    (4, 0, 4, [0, 1], [(2, 4, 32, 128)]),                       # 4 x 32 x 128 elements a row: under the floor, one masked call
    (16, 8, 24, [0, 5], None),                                  # a later chunk of a prompt: not a whole prefill
    (1, 16, 17, [0, 5], None),                                  # a decode step
])
def test_which_calls_take_it(monkeypatch, t, q_start, kv_len, pads, calls_expected):
    taken = spy_shapes(monkeypatch, CPA, "attention")
    inner = spy_shapes(monkeypatch, CPA, "_widened_attention")
    q = torch.randn(2, t, 32, 128)
    kc, vc = torch.randn(2, 32, kv_len + 2, 128), torch.randn(2, 32, kv_len + 2, 128)
    TorchOps().attention(q, kc, vc, q_start, torch.tensor(pads), kv_len)
    assert CPA.applies(q, q_start, kv_len) == (calls_expected is not None)
    assert taken == ([(2, t, 32, 128)] if calls_expected is not None else [])
    assert inner == (calls_expected or [])


@pytest.fixture(scope="module")
def padded_model(tmp_path_factory):
    """A GQA model (8 query heads of 32, 4 per KV head; 3 layers) written by transformers."""
    from tests.engine_helpers import make_hf_model, save

    hf = make_hf_model("gqa4", fresh_seed(), hidden_size=256, num_hidden_layers=3)
    return hf, save(hf, tmp_path_factory.mktemp("prefill-rows"))


def test_a_padded_batch_prefilled_row_by_row_generates_what_transformers_generates(monkeypatch, padded_model, tok):
    """Greedy decoding of prompts of different lengths, the prefill's attention row by row in every
    layer, equals transformers' fp32 greedy for each prompt alone."""
    from tests.engine_helpers import fp32_engine

    monkeypatch.setattr(CPA, "MIN_ROW_ELEMENTS", 0)
    inner = spy_shapes(monkeypatch, CPA, "_widened_attention")
    hf, path = padded_model
    engine = fp32_engine(path, tok)
    prompts = ["def quicksort(items):\n    ", "x = 1", "import os\nimport sys\n\ndef main():"]
    got = engine.generate(prompts, max_new_tokens=16, stop_at_eos=False)
    lengths = [len(tok.encode(p)) for p in prompts]
    # every layer but the last (which runs for the last position alone) calls once for each row
    assert sorted(c[1] for c in inner) == sorted(lengths * (hf.config.num_hidden_layers - 1))
    for prompt, ids in zip(prompts, got.token_ids, strict=True):
        x = torch.tensor([tok.encode(prompt)])
        want = hf.generate(x, max_new_tokens=16, do_sample=False, eos_token_id=None, pad_token_id=0)[0, x.shape[1]:]
        assert ids == want.tolist()


def test_fp16_prefill_logits_stay_near_transformers_fp32(monkeypatch, padded_model, tok):
    """An fp16 model prefilling a padded batch through this path: the last position's logits of each
    prompt within fp16's reach of transformers' fp32 logits for that prompt alone."""
    from codellama_fast.engine import load_model
    from codellama_fast.engine.cache import KVCache
    from codellama_fast.engine.model import StepContext

    monkeypatch.setattr(CPA, "MIN_ROW_ELEMENTS", 0)
    inner = spy_shapes(monkeypatch, CPA, "_widened_attention")
    hf, path = padded_model
    model = load_model(path, dtype="float16", device="cpu")
    rows = [tok.encode("def add(a, b):\n    return a + b"), tok.encode("# hi")]
    t = max(len(r) for r in rows)
    ids = torch.tensor([[0] * (t - len(r)) + r for r in rows])  # left padded
    kv_start = torch.tensor([t - len(r) for r in rows])
    positions = (torch.arange(t)[None] - kv_start[:, None]).clamp(min=0)
    cache = KVCache(model.config, 2, t, torch.float16, torch.device("cpu"))
    with torch.no_grad():
        got = model(ids, StepContext(positions, torch.arange(t), 0, kv_start, t), cache.layers)  # [2, vocab]
        for row, r in enumerate(rows):
            ref = hf(torch.tensor([r])).logits[0, -1]
            rel = ((got[row].float() - ref).abs().max() / ref.abs().max()).item()
            assert rel < 2e-2, (row, rel)
    assert len(inner) == 2 * (hf.config.num_hidden_layers - 1)
