"""fp16 attention on the CPU run in fp32 (engine/widened_attention.py) against the masking rule
applied key by key in float64; which calls take it; and an fp16 model prefilling a prompt in
chunks through it, near transformers' fp32 logits."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from codellama_fast.engine import widened_attention as WA  # noqa: E402
from codellama_fast.engine.ops import TorchOps  # noqa: E402
from tests.engine_helpers import fresh_seed, spy_shapes  # noqa: E402
from tests.test_reference_attention import CASES, _loop_attention  # noqa: E402


@pytest.mark.parametrize("b,t,hq,hkv,d,q_start,kv_len,pads,what", CASES, ids=[c[-1] for c in CASES])
def test_attention_equals_the_masking_rule_key_by_key(b, t, hq, hkv, d, q_start, kv_len, pads, what):
    torch.manual_seed(fresh_seed())
    q = torch.randn(b, t, hq, d).half()
    kc = torch.randn(b, hkv, kv_len + 3, d).half()  # slots past kv_len hold keys no query may see
    vc = torch.randn(b, hkv, kv_len + 3, d).half()
    kv_start = torch.tensor(pads)
    got = WA.attention(q, kc, vc, q_start, kv_start, kv_len)
    want = _loop_attention(q, kc, vc, q_start, kv_start, kv_len)  # float64 over the same stored values
    assert got.shape == (b, t, hq, d) and got.dtype == torch.float16
    # run in fp32 and rounded to fp16 once: half an ulp (at most 2^-11 of each output), plus the fp32 sums' few ulps
    err = (got.double() - want).abs()
    assert bool((err <= want.abs() * 2.0**-11 + 1e-5).all()), f"{what}: max error {err.max().item()}"


@pytest.mark.parametrize("dtype,b,t,hq,hkv,d,q_start,kv_len,fits,taken", [
    (torch.float16, 1, 300, 64, 8, 128, 724, 1024, True, True),    # a long chunk over 34B's heads (too many queries for cpu_attention)
    (torch.float16, 1, 1, 32, 32, 128, 63, 64, True, True),        # a short cache, under cpu_attention's floor
    (torch.float16, 1, 1, 4, 2, 16, 99, 100, False, False),        # tiny heads: fp16 SDPA
    (torch.float16, 1, 1, 32, 32, 128, 3, 4, True, True),          # 2^14 key elements: the floor
    (torch.float16, 1, 1, 32, 32, 128, 2, 3, False, False),        # under it
    (torch.float16, 1, 1, 32, 32, 128, 4095, 4096, True, False),   # cpu_attention is asked first and takes it
    (torch.bfloat16, 1, 300, 64, 8, 128, 724, 1024, False, False),  # bf16: SDPA in bf16
    (torch.float32, 1, 300, 64, 8, 128, 724, 1024, False, False),
])
def test_which_calls_take_it(monkeypatch, dtype, b, t, hq, hkv, d, q_start, kv_len, fits, taken):
    calls = spy_shapes(monkeypatch, WA, "attention")
    q = torch.randn(b, t, hq, d).to(dtype)
    kc, vc = torch.randn(b, hkv, kv_len + 2, d).to(dtype), torch.randn(b, hkv, kv_len + 2, d).to(dtype)
    TorchOps().attention(q, kc, vc, q_start, torch.zeros(b, dtype=torch.long), kv_len)
    assert WA.applies(q, kc, kv_len) == fits
    assert calls == ([(b, t, hq, d)] if taken else [])


def test_fp16_chunked_scoring_stays_near_transformers_fp32(monkeypatch, tmp_path, tok):
    """An fp16 GQA model scoring a text in chunks of 8 tokens, the chunks after the first (queries
    after earlier keys) through this path in every layer: each token's log-probability within
    fp16's reach of transformers' fp32."""
    from codellama_fast.engine import Engine, load_model
    from tests.engine_helpers import make_hf_model, save

    monkeypatch.setattr(WA, "MIN_KEY_ELEMENTS", 0)
    calls = spy_shapes(monkeypatch, WA, "attention")
    hf = make_hf_model("gqa4", fresh_seed(), hidden_size=256, num_hidden_layers=3)
    engine = Engine(load_model(save(hf, tmp_path / "m"), dtype="float16", device="cpu"), tok)
    engine.prefill_chunk_tokens = 8
    prompt = tok.encode("def quicksort(items):\n    if len(items) <= 1:\n        return items\n")
    t = len(prompt)
    got = engine.score(input_ids=[prompt]).token_logprobs[0]  # each token's log-probability after the ones before it
    with torch.no_grad():
        want = hf(torch.tensor([prompt])).logits[0].log_softmax(-1)
    ref = [want[i - 1, prompt[i]].item() for i in range(1, t)]
    assert max(abs(a - b) for a, b in zip(got, ref, strict=True)) < 5e-2
    fed = t - 1  # the last token's own logits are not needed
    # every chunk in every layer: the later ones from TorchOps.attention, the first (a whole
    # prompt's) from cpu_prefill_attention, which widens fp16 through it too
    chunks = [min(8, fed - c0) for c0 in range(0, fed, 8)]
    assert len(chunks) >= 3 and sorted(calls) == sorted((1, n, 8, 32) for n in chunks for _ in range(3))
