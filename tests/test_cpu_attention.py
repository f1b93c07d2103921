"""The CPU attention against the KV cache (engine/cpu_attention.py: one query per KV head, and in
fp16 a few queries per KV head) against the masking rule applied key by key in float64, in fp32,
bf16 and fp16; which calls take it; and models decoding through it (MHA, and GQA checking guessed
tokens) generating what transformers generates.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from codellama_fast.engine import cpu_attention as CA  # noqa: E402
from codellama_fast.engine.ops import TorchOps  # noqa: E402
from tests.engine_helpers import fresh_seed, spy_shapes  # noqa: E402
from tests.test_reference_attention import _loop_attention  # noqa: E402

# (batch, new tokens, query heads, KV heads, head dim, the first query's slot, keys, left padding)
CASES = [
    (1, 1, 4, 4, 128, 40, 41, [0], "one sequence at the end of its cache"),
    (3, 1, 2, 2, 128, 30, 31, [0, 7, 30], "padded rows; one sees only its own key"),
    (2, 1, 3, 3, 64, 20, 33, [0, 4], "a query before the cache's end (keys past it unseen)"),
    (5, 1, 3, 3, 32, 52, 53, [0, 0, 1, 9, 50], "more heads than a widening block holds (bf16/fp16: blocks of 1-2 heads)"),
    (3, 1, 8, 2, 64, 30, 31, [0, 5, 30], "GQA 4 decode, padded; one row sees only its own key"),
    (2, 5, 8, 2, 32, 17, 22, [0, 3], "GQA 4, guessed tokens checked at the end of the cache, padded"),
    (1, 4, 8, 1, 16, 6, 15, [0], "GQA 8, queries before the cache's end (keys past them unseen)"),
    (3, 7, 3, 3, 32, 40, 47, [0, 10, 44], "MHA guessed tokens over blocks of 2 heads; a row padded into the guesses"),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("b,t,hq,hkv,d,q_start,kv_len,pads,what", CASES, ids=[c[-1] for c in CASES])
def test_attention_equals_the_masking_rule_key_by_key(monkeypatch, dtype, b, t, hq, hkv, d, q_start, kv_len, pads, what):
    monkeypatch.setattr(CA, "WIDEN_BLOCK_ELEMENTS", 2 * kv_len * d)  # bf16: blocks of 2 heads, a remainder where h is odd
    torch.manual_seed(fresh_seed())
    q = torch.randn(b, t, hq, d).to(dtype)
    kc = torch.randn(b, hkv, kv_len + 5, d).to(dtype)  # slots past kv_len hold keys no query may see
    vc = torch.randn(b, hkv, kv_len + 5, d).to(dtype)
    kv_start = torch.tensor(pads)
    got = CA.attention(q, kc, vc, q_start, kv_start, kv_len)
    want = _loop_attention(q, kc, vc, q_start, kv_start, kv_len)  # float64 over the same stored values
    assert got.shape == (b, t, hq, d) and got.dtype == dtype
    err = (got.double() - want).abs()
    if dtype == torch.float32:
        # each output is a convex mix of values of size ~3: a few fp32 ulps of that
        assert err.max().item() <= 2e-5 * max(1.0, want.abs().max().item()), f"{what}: max error {err.max().item()}"
    else:
        # everything runs in fp32 and is rounded to bf16 / fp16 once: half an ulp (at most 2^-8 / 2^-11
        # of each output), plus the fp32 sums' few ulps
        half_ulp = 2.0**-8 if dtype == torch.bfloat16 else 2.0**-11
        assert bool((err <= want.abs() * half_ulp + 1e-5).all()), f"{what}: max error {err.max().item()}"


def test_bf16_is_closer_than_sdpa():
    """bf16 SDPA rounds the probabilities to bf16 before they meet V; this path does not, so over a
    long cache its output is closer to the float64 attention than SDPA's (about two thirds of
    SDPA's mean error here; the bound leaves room for the random draw)."""
    torch.manual_seed(fresh_seed())
    b, h, d, n = 2, 8, 128, 1500
    q = torch.randn(b, 1, h, d).bfloat16()
    kc, vc = torch.randn(b, h, n, d).bfloat16(), torch.randn(b, h, n, d).bfloat16()
    kv_start = torch.tensor([0, 100])
    exact = _loop_attention(q, kc, vc, n - 1, kv_start, n)
    from codellama_fast.kernels import reference

    ours = (CA.attention(q, kc, vc, n - 1, kv_start, n).double() - exact).abs().mean().item()
    sdpa = (reference.attention(q, kc, vc, n - 1, kv_start, n).double() - exact).abs().mean().item()
    assert ours <= sdpa * 0.9, (ours, sdpa)


@pytest.mark.parametrize("dtype,b,t,hq,hkv,d,kv_len,taken", [
    (torch.float32, 1, 1, 32, 32, 128, 128, True),     # 7B heads: 2^19 elements of K
    (torch.float32, 1, 1, 32, 32, 128, 127, False),    # one key fewer: SDPA
    (torch.bfloat16, 4, 1, 12, 12, 64, 256, True),     # bf16 takes 64-wide heads too
    (torch.float32, 4, 1, 12, 12, 64, 4096, False),    # fp32 64-wide heads: parity, SDPA kept
    (torch.float32, 1, 2, 32, 32, 128, 4096, False),   # two queries (guessed tokens): SDPA
    (torch.bfloat16, 1, 2, 32, 32, 128, 4096, False),  # bf16 too
    (torch.bfloat16, 1, 1, 64, 8, 128, 4096, False),   # bf16 GQA: the folded SDPA call
    (torch.float32, 1, 1, 64, 8, 128, 4096, False),    # fp32 GQA too
    (torch.float16, 1, 1, 32, 32, 128, 4096, True),    # fp16, as bf16
    (torch.float16, 1, 1, 64, 8, 128, 1024, True),     # fp16 GQA (34B heads): 2^20 elements of K
    (torch.float16, 1, 11, 32, 32, 128, 4096, True),   # fp16, 10 guessed tokens and the last one checked
    (torch.float16, 1, 16, 64, 8, 128, 1024, True),    # fp16 GQA: 8 x 16 = 128 queries per KV head
    (torch.float16, 1, 17, 64, 8, 128, 1024, False),   # 136 queries per KV head: SDPA
    (torch.float16, 1, 11, 32, 32, 128, 127, False),   # fp16 over fewer than 2^19 elements: SDPA
])
def test_which_calls_take_it(monkeypatch, dtype, b, t, hq, hkv, d, kv_len, taken):
    calls = spy_shapes(monkeypatch, CA, "attention")
    q = torch.randn(b, t, hq, d).to(dtype)
    kc, vc = torch.randn(b, hkv, kv_len + 2, d).to(dtype), torch.randn(b, hkv, kv_len + 2, d).to(dtype)
    TorchOps().attention(q, kc, vc, kv_len - t, torch.zeros(b, dtype=torch.long), kv_len)
    assert CA.applies(q, kc, kv_len) == taken
    assert calls == ([(b, t, hq, d)] if taken else [])


def test_a_whole_prompts_prefill_keeps_its_own_path(monkeypatch):
    """An fp16 prefill of whole prompts (queries in slots 0..T-1) whose shape this path would take
    runs on engine/cpu_prefill_attention.py, which runs padded rows alone."""
    from codellama_fast.engine import cpu_prefill_attention as CPA

    calls, prefills = spy_shapes(monkeypatch, CA, "attention"), spy_shapes(monkeypatch, CPA, "attention")
    b, t, h, d = 8, 32, 32, 128
    q = torch.randn(b, t, h, d).half()
    kc, vc = torch.randn(b, h, t, d).half(), torch.randn(b, h, t, d).half()
    assert CA.applies(q, kc, t)
    TorchOps().attention(q, kc, vc, 0, torch.zeros(b, dtype=torch.long), t)
    assert calls == [] and prefills == [(b, t, h, d)]


@pytest.mark.parametrize("heads,per", [(40, 3), (32, 5), (3, 2), (64, 64)])
def test_widening_blocks_cover_every_head_once_and_avoid_single_heads(monkeypatch, heads, per):
    n, d = 10, 4
    monkeypatch.setattr(CA, "WIDEN_BLOCK_ELEMENTS", per * n * d)
    x = torch.randn(heads, n, d).bfloat16()
    blocks = [(s, e, blk.clone()) for s, e, blk in CA.fp32_blocks(x)]
    assert [s for s, _, _ in blocks] == [0] + [e for _, e, _ in blocks[:-1]] and blocks[-1][1] == heads
    assert all(torch.equal(blk, x[s:e].float()) for s, e, blk in blocks)
    assert all(e - s <= max(2, per) for s, e, _ in blocks)
    assert all(e - s >= 2 for s, e, _ in blocks) or heads < 2 * 2  # 3 heads in blocks of 2: one of 1


@pytest.fixture(scope="module")
def wide_heads(tmp_path_factory):
    """An MHA model with two 128-wide heads (Code Llama's head dim), written by transformers."""
    from tests.engine_helpers import make_hf_model, save

    hf = make_hf_model("mha", fresh_seed(), hidden_size=256, num_attention_heads=2, num_key_value_heads=2)
    return hf, save(hf, tmp_path_factory.mktemp("wide-heads"))


def test_a_model_decoding_through_it_generates_what_transformers_generates(monkeypatch, wide_heads, tok):
    """Greedy decoding of a batch with a padded row, every decode step's attention on this path
    (the size floor lowered for the tiny model), equals transformers' fp32 greedy for each prompt.
    (The prefill's last layer, which runs for the last position alone, takes it too.)"""
    from tests.engine_helpers import fp32_engine

    monkeypatch.setattr(CA, "MIN_CACHE_ELEMENTS", 0)
    calls = spy_shapes(monkeypatch, CA, "attention")
    hf, path = wide_heads
    engine = fp32_engine(path, tok)
    prompts = ["def quicksort(items):\n    ", "x = 1"]
    got = engine.generate(prompts, max_new_tokens=24, stop_at_eos=False)
    # every decode step after the prefill's token, and the prefill's last layer for its last position
    assert len(calls) == 23 * hf.config.num_hidden_layers + 1
    for prompt, ids in zip(prompts, got.token_ids, strict=True):
        x = torch.tensor([tok.encode(prompt)])
        want = hf.generate(x, max_new_tokens=24, do_sample=False, eos_token_id=None, pad_token_id=0)[0, x.shape[1]:]
        assert ids == want.tolist()


def _run_slots(model, ids, cache, s0: int, s1: int, last_only: bool = True) -> torch.Tensor:
    """One sequence's tokens ids[:, s0:s1] through the model in slots s0..s1-1 of `cache` (earlier
    slots filled): its logits, the last position's or (last_only=False) every one's."""
    from codellama_fast.engine.model import StepContext

    slots = torch.arange(s0, s1)
    ctx = StepContext(slots[None], slots, s0, torch.zeros(1, dtype=torch.long), s1)
    with torch.no_grad():
        return model(ids[:, s0:s1], ctx, cache.layers, last_only=last_only)


def test_bf16_decode_logits_stay_near_transformers_fp32(monkeypatch, wide_heads):
    """A bf16 model decoding through this path: each step's logits within bf16's reach of
    transformers' fp32 logits for the same sequence (the same bound as the bf16 prefill's)."""
    from codellama_fast.engine import load_model
    from codellama_fast.engine.cache import KVCache

    monkeypatch.setattr(CA, "MIN_CACHE_ELEMENTS", 0)
    calls = spy_shapes(monkeypatch, CA, "attention")
    hf, path = wide_heads
    model = load_model(path, dtype="bfloat16", device="cpu")
    t0, steps = 12, 6
    ids = torch.randint(0, hf.config.vocab_size, (1, t0 + steps))
    with torch.no_grad():
        ref = hf(ids).logits[0, t0 - 1: t0 + steps - 1]
    cache = KVCache(model.config, 1, t0 + steps, torch.bfloat16, torch.device("cpu"))
    got = [_run_slots(model, ids, cache, 0, t0)[0]]
    got += [_run_slots(model, ids, cache, s, s + 1)[0] for s in range(t0, t0 + steps - 1)]
    assert len(calls) == (steps - 1) * hf.config.num_hidden_layers + 1  # and the prefill's last position
    rel = ((torch.stack(got).float() - ref).abs().max() / ref.abs().max()).item()
    assert rel < 6e-2


@pytest.fixture(scope="module")
def gqa_model(tmp_path_factory):
    """A GQA model (8 query heads of 32, 4 per KV head; 2 layers) written by transformers."""
    from tests.engine_helpers import make_hf_model, save

    hf = make_hf_model("gqa4", fresh_seed(), hidden_size=256)
    return hf, save(hf, tmp_path_factory.mktemp("gqa-guesses"))


def test_assisted_decoding_through_it_generates_what_transformers_generates(monkeypatch, gqa_model, tok):
    """Assisted greedy decoding of a GQA model, every attention call but the prefills' on this path
    (taken in fp32 here, as fp16 takes it), equals transformers' greedy: the guessed tokens' queries,
    their causal mask among themselves and the GQA fold meet the cache as the masking rule says. The
    draft has the model's own weights, so each check holds 4 guesses and the model's next token."""
    from tests.engine_helpers import fp32_engine

    monkeypatch.setattr(CA, "applies", lambda q, k_cache, kv_len: q.device.type == "cpu")
    calls = spy_shapes(monkeypatch, CA, "attention")
    hf, path = gqa_model
    engine, draft = fp32_engine(path, tok), fp32_engine(path, tok)
    prompts = ["def quicksort(items):\n    ", "import os\n"]
    for prompt in prompts:
        ids = torch.tensor([tok.encode(prompt)])
        want = hf.generate(ids, max_new_tokens=21, do_sample=False, eos_token_id=None, pad_token_id=0)[0, ids.shape[1]:]
        got = engine.generate(prompt, max_new_tokens=21, stop_at_eos=False, assistant_model=draft,
                              num_assistant_tokens=4, assistant_confidence_threshold=0.0)
        assert got.token_ids[0] == want.tolist()
    checks = [c for c in calls if c[1] == 5]
    assert len(checks) == 2 * 4 * hf.config.num_hidden_layers  # per prompt 4 checks of 4 guesses + 1, each layer


def test_fp16_guessed_tokens_logits_stay_near_transformers_fp32(monkeypatch, gqa_model):
    """An fp16 GQA model checking 6 guessed tokens against its cache through this path (as fp16
    takes it): each position's logits within fp16's reach of transformers' fp32 logits."""
    from codellama_fast.engine import load_model
    from codellama_fast.engine.cache import KVCache

    monkeypatch.setattr(CA, "MIN_CACHE_ELEMENTS", 0)
    calls = spy_shapes(monkeypatch, CA, "attention")
    hf, path = gqa_model
    model = load_model(path, dtype="float16", device="cpu")
    t0, guesses = 20, 6
    ids = torch.randint(0, hf.config.vocab_size, (1, t0 + guesses))
    with torch.no_grad():
        ref = hf(ids).logits[0, t0:]
    cache = KVCache(model.config, 1, t0 + guesses, torch.float16, torch.device("cpu"))
    _run_slots(model, ids, cache, 0, t0)
    got = _run_slots(model, ids, cache, t0, t0 + guesses, last_only=False)[0]  # [guesses, vocab]
    layers = hf.config.num_hidden_layers
    assert calls.count((1, guesses, 8, 32)) == layers  # the guesses' call in every layer
    rel = ((got.float() - ref).abs().amax(-1) / ref.abs().amax(-1)).max().item()
    assert rel < 2e-2, rel
