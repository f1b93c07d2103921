"""The kernels at real sizes on a GPU (skipped elsewhere): Code Llama 7B and 34B head layouts,
4k-16k prefill, 16k-slot decode, fp16 and bf16. References are independent: torch SDPA (flash
backend, causal) on each sequence's unpadded part, and exact fp32 attention on sampled rows."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.gpu

if torch.cuda.is_available():
    from codellama_fast.kernels import gemv
    from codellama_fast.kernels import reference as R
    from codellama_fast.kernels.attention_decode import attention_decode, rope_attention_decode
    from codellama_fast.kernels.attention_prefill import attention_prefill

TOL = {torch.float16: 1e-2, torch.bfloat16: 4e-2}


def _sdpa_causal(q, k, v):
    """q [T, Hq, D], k/v [S, Hkv, D] (T == S, no padding) -> [T, Hq, D], fp32 accumulation in SDPA."""
    hq, hkv = q.shape[1], k.shape[1]
    qh, kh, vh = q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None]
    out = torch.nn.functional.scaled_dot_product_attention(qh, kh, vh, is_causal=True, enable_gqa=hq != hkv)
    return out[0].transpose(0, 1)


def _exact_rows(q, k, v, rows):
    """fp32 causal attention for selected query rows (no padding). q [T,Hq,D], k/v [S,Hkv,D]."""
    hq, hkv, d = q.shape[1], k.shape[1], q.shape[2]
    g = hq // hkv
    out = []
    for r in rows:
        kk = k[: r + 1].float().repeat_interleave(g, dim=1)  # [r+1, Hq, D]
        vv = v[: r + 1].float().repeat_interleave(g, dim=1)
        s = torch.einsum("hd,shd->hs", q[r].float(), kk) / d**0.5
        out.append(torch.einsum("hs,shd->hd", torch.softmax(s, -1), vv))
    return torch.stack(out)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("hq,hkv,s,pads", [(32, 32, 4096, [0]), (64, 8, 4096, [0, 1000]), (32, 32, 16384, [0])])
def test_prefill_real_sizes(dtype, hq, hkv, s, pads):
    d, b = 128, len(pads)
    q = torch.randn(b, s, hq, d, device="cuda", dtype=dtype)
    kc = torch.randn(b, hkv, s, d, device="cuda", dtype=dtype)
    vc = torch.randn(b, hkv, s, d, device="cuda", dtype=dtype)
    kv_start = torch.tensor(pads, device="cuda")
    out = attention_prefill(q, kc, vc, 0, kv_start, s)
    assert torch.isfinite(out).all()
    for i, p in enumerate(pads):
        qi, ki, vi = q[i, p:], kc[i, :, p:].transpose(0, 1), vc[i, :, p:].transpose(0, 1)
        ref = _sdpa_causal(qi, ki, vi)
        err = (out[i, p:].float() - ref.float()).abs().max().item()
        assert err < TOL[dtype], err
        rows = torch.randint(0, s - p, (16,)).tolist()
        exact = _exact_rows(qi, ki, vi, rows)
        err = (out[i, p:][rows].float() - exact).abs().max().item()
        assert err < TOL[dtype], err


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("b,hq,hkv,L", [(1, 32, 32, 16384), (4, 32, 32, 4099), (8, 64, 8, 16384)])
def test_decode_real_sizes(dtype, b, hq, hkv, L):
    d = 128
    q = torch.randn(b, 1, hq, d, device="cuda", dtype=dtype)
    kc = torch.randn(b, hkv, L + 64, d, device="cuda", dtype=dtype)
    vc = torch.randn(b, hkv, L + 64, d, device="cuda", dtype=dtype)
    pads = [0] + [int(x) for x in torch.randint(0, L // 2, (b - 1,))]
    kv_start = torch.tensor(pads, device="cuda")
    out = attention_decode(q, kc, vc, kv_start, torch.tensor([L], device="cuda", dtype=torch.int32))
    for i, p in enumerate(pads):
        k = kc[i, :, p:L].float().repeat_interleave(hq // hkv, dim=0)  # [Hq, n, D]
        v = vc[i, :, p:L].float().repeat_interleave(hq // hkv, dim=0)
        s = torch.einsum("hd,hnd->hn", q[i, 0].float(), k) / d**0.5
        ref = torch.einsum("hn,hnd->hd", torch.softmax(s, -1), v)
        err = (out[i, 0].float() - ref).abs().max().item()
        assert err < TOL[dtype], err


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("b,hq,hkv,L", [(1, 32, 32, 2048), (1, 64, 8, 16384), (8, 64, 8, 4099), (32, 32, 32, 2048)])
def test_fused_rope_decode_real_sizes(dtype, b, hq, hkv, L):
    """The one-launch decode step (RoPE, cache write, split attention, in-kernel merge) vs the
    reference steps in fp32, twice in a row on the same counters."""
    d = 128
    qkv = torch.randn(b, 1, (hq + 2 * hkv) * d, device="cuda", dtype=dtype)
    q, k, v = qkv[..., : hq * d].view(b, 1, hq, d), qkv[..., hq * d : (hq + hkv) * d].view(b, 1, hkv, d), qkv[..., (hq + hkv) * d :].view(b, 1, hkv, d)
    kc = torch.randn(b, hkv, L + 64, d, device="cuda", dtype=dtype)
    vc = torch.randn_like(kc)
    pads = [0] + [int(x) for x in torch.randint(0, L // 2, (b - 1,))]
    kv_start = torch.tensor(pads, device="cuda")
    pos = (L - 1 - kv_start)[:, None]
    inv = 1.0 / (1e6 ** (torch.arange(0, d, 2, device="cuda").float() / d))
    slots = torch.tensor([L - 1], device="cuda")
    ref_kc, ref_vc = kc.float(), vc.float()
    want = R.rope_attention(q.float(), k.float(), v.float(), pos, inv, ref_kc, ref_vc, slots, L - 1, kv_start, L)
    counters = torch.zeros(b * hkv, dtype=torch.int32, device="cuda")
    for _ in range(2):
        out = rope_attention_decode(q, k, v, pos, inv, kc, vc, slots, kv_start, torch.tensor([L], device="cuda", dtype=torch.int32),
                                    counters=counters)
        torch.cuda.synchronize()
        err = (out.float() - want).abs().max().item()
        assert err < TOL[dtype], err
        assert not counters.any()
    assert (kc[:, :, L - 1].float() - ref_kc[:, :, L - 1]).abs().max().item() < TOL[dtype]
    assert torch.equal(vc[:, :, L - 1].float(), ref_vc[:, :, L - 1])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("b,runs,hq,hkv,prompt,L", [(8, 8, 32, 32, 4000, 4099), (8, 4, 64, 8, 8000, 8192), (16, 2, 32, 32, 2048, 2100)])
def test_shared_decode_real_sizes(dtype, b, runs, hq, hkv, prompt, L):
    """The decode attention that reads a run's shared prompt slots once (7B and 34B heads, 2-8
    samples per prompt) vs exact fp32 attention over each row's whole cache. Every row but each
    run's first holds NaN in the prompt slots: a kernel that read a copy would return NaN."""
    from codellama_fast.kernels.attention_shared_decode import attention_shared_decode

    d = 128
    q = torch.randn(b, 1, hq, d, device="cuda", dtype=dtype)
    kc = torch.randn(b, hkv, L + 64, d, device="cuda", dtype=dtype)
    vc = torch.randn_like(kc)
    pads = [int(x) for x in torch.randint(0, prompt // 2, (b // runs,))]
    kv_start = torch.tensor([p for p in pads for _ in range(runs)], device="cuda")
    poisoned_k, poisoned_v = kc.clone(), vc.clone()
    for row in range(b):
        if row % runs:
            poisoned_k[row, :, :prompt] = float("nan")
            poisoned_v[row, :, :prompt] = float("nan")
    out = attention_shared_decode(q, poisoned_k, poisoned_v, kv_start, torch.tensor([L], device="cuda", dtype=torch.int32), runs,
                                  torch.tensor([prompt], device="cuda", dtype=torch.int32))
    assert torch.isfinite(out).all()
    for i in range(b):
        first, p = i - i % runs, int(kv_start[i])
        # the run's first row's prompt slots, then the row's own
        keys = torch.cat([kc[first, :, p:prompt], kc[i, :, prompt:L]], dim=1).float().repeat_interleave(hq // hkv, dim=0)
        values = torch.cat([vc[first, :, p:prompt], vc[i, :, prompt:L]], dim=1).float().repeat_interleave(hq // hkv, dim=0)
        s = torch.einsum("hd,hnd->hn", q[i, 0].float(), keys) / d**0.5
        ref = torch.einsum("hn,hnd->hd", torch.softmax(s, -1), values)
        err = (out[i, 0].float() - ref).abs().max().item()
        assert err < TOL[dtype], (i, err)


@pytest.mark.parametrize("m", [1, 8])
@pytest.mark.parametrize("k,n", [(4096, 12288), (4096, 4096), (11008, 4096), (8192, 8192)])
def test_fused_gemv_real_sizes(m, k, n):
    """The few-row fused projections at Code Llama sizes vs the composed ops in fp32."""
    x = torch.randn(m, k, device="cuda", dtype=torch.float16)
    nw = (torch.rand(k, device="cuda") + 0.5).half()
    w = (torch.randn(n, k, device="cuda") / k**0.5).half()
    res = torch.randn(m, n, device="cuda", dtype=torch.float16)
    f = lambda t: t.float()  # noqa: E731
    for got, want in (
        (gemv.norm_linear(x, nw, w, 1e-5), R.norm_linear(f(x), f(nw), f(w), 1e-5)),
        (gemv.norm_linear_swiglu(x, nw, w, 1e-5), R.norm_linear_swiglu(f(x), f(nw), f(w), 1e-5)),
        (gemv.linear_residual(x, w, res), R.linear_residual(f(x), f(w), f(res))),
    ):
        scale = max(1.0, want.abs().max().item())
        assert (got.float() - want).abs().max().item() < 1e-2 * scale


@pytest.mark.parametrize("step", ["fused", "auto"])
def test_graph_decode_batch1_fused_step(step):
    """Batch 1, 7B layer shapes: the fused step's logits match the plain step's, and the captured
    step (fused, or whichever `auto` keeps) generates what the same step does uncaptured."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benches"))
    from llm_bench import SHAPES, random_engine

    from codellama_fast import CodeLlamaTokenizerFast
    from codellama_fast.engine.cache import KVCache
    from codellama_fast.engine.fused_decode import fused_decode_forward
    from codellama_fast.engine.model import StepContext

    SHAPES["7B-2layers"] = dict(SHAPES["7B"], num_hidden_layers=2)
    tok = CodeLlamaTokenizerFast.from_pretrained()
    eng = random_engine("7B-2layers", "cuda", torch.float16, tok)
    model = eng.model
    ids = torch.randint(3, 32000, (1, 301), device="cuda")
    logits = []
    for fwd in (model, lambda t, c, k: fused_decode_forward(model, t, c, k)):
        cache = KVCache(model.config, 1, 302, torch.float16, torch.device("cuda"))
        zero = torch.zeros(1, dtype=torch.long, device="cuda")
        with torch.inference_mode():
            model(ids[:, :300], StepContext(torch.arange(300, device="cuda")[None], torch.arange(300, device="cuda"), 0, zero, 300), cache.layers)
            ctx = StepContext(torch.tensor([[300]], device="cuda"), torch.tensor([300], device="cuda"), 300, zero, 301)
            logits.append(fwd(ids[:, 300:], ctx, cache.layers))
    scale = max(1.0, logits[0].abs().max().item())
    assert (logits[1] - logits[0]).abs().max().item() < 2e-2 * scale

    prompt = [[1] + torch.randint(3, 32000, (300,)).tolist()]
    eng.decode_step = step
    eng.use_cuda_graph = True
    graphed = eng.generate(input_ids=prompt, max_new_tokens=40, stop_at_eos=False).token_ids
    used = eng.decode_step_used
    assert used in ("plain", "fused") and (step == "auto" or used == step)
    eng.decode_step = used
    eng.use_cuda_graph = "eager"  # the same static-buffer step, uncaptured
    eng._graphs.clear()
    assert eng.generate(input_ids=prompt, max_new_tokens=40, stop_at_eos=False).token_ids == graphed


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] < 9,
                    reason="programmatic dependent launch needs sm_90+")
def test_programmatic_dependent_launch_gives_the_same_bits():
    """The one-row projections and the decode attention launched with programmatic dependent
    launch equal the plain launches bit for bit (and the projections the composed ops in fp32),
    alone and in the captured fused decode step of a 2-layer model with 7B's layer shapes (tokens
    of 40 greedy steps)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benches"))
    from llm_bench import SHAPES, random_engine

    from codellama_fast import CodeLlamaTokenizerFast

    x = torch.randn(1, 4096, device="cuda", dtype=torch.float16)
    nw = (torch.rand(4096, device="cuda") + 0.5).half()
    w = (torch.randn(11008 * 2, 4096, device="cuda") / 64).half()
    res = torch.randn(1, 11008 * 2, device="cuda", dtype=torch.float16)
    f = lambda t: t.float()  # noqa: E731
    cases = ((lambda pdl: gemv.norm_linear(x, nw, w, 1e-5, pdl=pdl), R.norm_linear(f(x), f(nw), f(w), 1e-5)),
             (lambda pdl: gemv.norm_linear_swiglu(x, nw, w, 1e-5, pdl=pdl), R.norm_linear_swiglu(f(x), f(nw), f(w), 1e-5)),
             (lambda pdl: gemv.linear_residual(x, w, res, pdl=pdl), R.linear_residual(f(x), f(w), f(res))))
    for fn, want in cases:
        got = fn(True)
        assert torch.equal(got, fn(False))
        assert (got.float() - want).abs().max().item() < 1e-2 * max(1.0, want.abs().max().item())
    SHAPES["7B-2layers"] = dict(SHAPES["7B"], num_hidden_layers=2)
    eng = random_engine("7B-2layers", "cuda", torch.float16, CodeLlamaTokenizerFast.from_pretrained())
    eng.decode_step, eng.use_cuda_graph = "fused", True
    prompt = [[1] + torch.randint(3, 32000, (300,)).tolist()]
    tokens = []
    for pdl in (False, True):
        eng.model.ops.pdl = pdl
        eng.release_cache()
        tokens.append(eng.generate(input_ids=prompt, max_new_tokens=40, stop_at_eos=False).token_ids)
    assert tokens[0] == tokens[1]


def test_graph_decode_7b_layout_matches_eager():
    """A 2-layer model with 7B's layer shapes: graph-captured greedy decode == uncaptured loop."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benches"))
    from llm_bench import SHAPES, random_engine

    from codellama_fast import CodeLlamaTokenizerFast

    SHAPES["7B-2layers"] = dict(SHAPES["7B"], num_hidden_layers=2)
    tok = CodeLlamaTokenizerFast.from_pretrained()
    eng = random_engine("7B-2layers", "cuda", torch.float16, tok)
    ids = [[1] + torch.randint(3, 32000, (300,)).tolist(), [1] + torch.randint(3, 32000, (77,)).tolist()]
    eng.use_cuda_graph = False
    eager = eng.generate(input_ids=ids, max_new_tokens=40, stop_at_eos=False).token_ids
    eng.use_cuda_graph = True
    graphed = eng.generate(input_ids=ids, max_new_tokens=40, stop_at_eos=False).token_ids
    assert graphed == eager


def test_a_chats_next_turn_on_the_captured_state_prefills_only_its_new_tokens():
    """7B layer shapes, 2 layers, fp16, the captured step: a prompt that begins with the last call's
    prompt and output takes their keys and values from the state's cache and prefills the rest;
    its first step's logits are the whole prompt's (an engine prefilling it whole, uncaptured)
    within fp16 rounding."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benches"))
    from llm_bench import SHAPES, random_engine

    from codellama_fast import CodeLlamaTokenizerFast

    SHAPES["7B-2layers"] = dict(SHAPES["7B"], num_hidden_layers=2)
    tok = CodeLlamaTokenizerFast.from_pretrained()
    eng = random_engine("7B-2layers", "cuda", torch.float16, tok)
    eng.reuse_prompt_cache, eng.use_cuda_graph = True, True
    first = [1] + torch.randint(3, 32000, (299,)).tolist()
    kw = {"stop_at_eos": False, "output_logits": True}  # both turns on the state without the captured argmax
    reply = eng.generate(input_ids=[first], max_new_tokens=20, **kw).token_ids[0]
    turn2 = first + reply + torch.randint(3, 32000, (40,)).tolist()
    got = eng.generate(input_ids=[turn2], max_new_tokens=6, **kw)
    assert got.prompt_tokens_reused == 300 + 19 and eng._graphs.builds == 1
    whole = random_engine("7B-2layers", "cuda", torch.float16, tok)  # the same weights
    whole.use_cuda_graph = False
    want = whole.generate(input_ids=[turn2], max_new_tokens=6, **kw)
    a, b = got.logits[0].float(), want.logits[0].float()
    assert (a - b).abs().max().item() < 2e-2 * max(1.0, b.abs().max().item())


def test_conversations_taking_turns_on_the_captured_state():
    """7B layer shapes, 2 layers, fp16, the captured step: two conversations taking turns on one
    decode state. Each next turn finds its own dialog (kept aside when the other one's call came)
    copied back into the state's cache and prefills only its new tokens; its first step's logits are
    the whole prompt's (an engine prefilling it whole, uncaptured) within fp16 rounding."""
    eng = _captured_7b_two_layers()
    eng.reuse_prompt_cache = True
    kw = {"stop_at_eos": False, "output_logits": True}
    dialogs = [[1] + torch.randint(3, 32000, (299,)).tolist(), [1] + torch.randint(3, 32000, (249,)).tolist()]
    replies = [eng.generate(input_ids=[d], max_new_tokens=20, **kw).token_ids[0] for d in dialogs]
    whole = _captured_7b_two_layers()  # the same weights (random_engine's seed)
    whole.use_cuda_graph = False
    for d, reply in zip(dialogs, replies):
        turn2 = d + reply + torch.randint(3, 32000, (40,)).tolist()
        got = eng.generate(input_ids=[turn2], max_new_tokens=6, **kw)
        assert got.prompt_tokens_reused == len(d) + 19
        want = whole.generate(input_ids=[turn2], max_new_tokens=6, **kw)
        a, b = got.logits[0].float(), want.logits[0].float()
        assert (a - b).abs().max().item() < 2e-2 * max(1.0, b.abs().max().item())
    assert eng._graphs.builds == 1


def test_shared_prompt_tokens_on_the_captured_state(monkeypatch):
    """7B layer shapes, 2 layers, fp16, the captured step: 3 samples each of two prompts that begin
    with the same 300 tokens. The shared tokens run in one row, then one row per prompt (through
    views of every third cache row), the copies fill the rest; every row's first logits are its
    prompt's own (each prompt prefilled alone, uncaptured) within fp16 rounding."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benches"))
    from llm_bench import SHAPES, random_engine

    from codellama_fast import CodeLlamaTokenizerFast
    from codellama_fast.engine import shared_prompts

    monkeypatch.setattr(shared_prompts, "MIN_SAVED_TOKENS", 1)
    SHAPES["7B-2layers"] = dict(SHAPES["7B"], num_hidden_layers=2)
    tok = CodeLlamaTokenizerFast.from_pretrained()
    eng = random_engine("7B-2layers", "cuda", torch.float16, tok)
    eng.use_cuda_graph = True
    shared = [1] + torch.randint(3, 32000, (299,)).tolist()
    prompts = [shared + torch.randint(3, 32000, (40,)).tolist(), shared + torch.randint(3, 32000, (77,)).tolist()]
    batches = []
    real = eng.model.forward
    eng.model.forward = lambda tokens, *a, **k: batches.append(tuple(tokens.shape)) or real(tokens, *a, **k)
    got = eng.generate(input_ids=prompts, num_return_sequences=3, max_new_tokens=4, temperature=1.0, seed=0,
                       stop_at_eos=False, output_logits=True)
    assert [x for x in batches if x[1] > 1] == [(1, 300), (2, 77)]  # the prefill's passes (the captures run one token)
    alone = random_engine("7B-2layers", "cuda", torch.float16, tok)  # the same weights
    alone.use_cuda_graph = False
    for i, p in enumerate(prompts):
        want = alone.generate(input_ids=[p], max_new_tokens=1, stop_at_eos=False, output_logits=True).logits[0][0].float()
        for row in range(3 * i, 3 * i + 3):
            a = got.logits[0][row].float()
            assert (a - want).abs().max().item() < 2e-2 * max(1.0, want.abs().max().item())


def _captured_7b_two_layers():
    """An fp16 engine with random weights in 7B's layer shapes, 2 layers, on captured decode steps."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benches"))
    from llm_bench import SHAPES, random_engine

    from codellama_fast import CodeLlamaTokenizerFast

    SHAPES["7B-2layers"] = dict(SHAPES["7B"], num_hidden_layers=2)
    eng = random_engine("7B-2layers", "cuda", torch.float16, CodeLlamaTokenizerFast.from_pretrained())
    eng.use_cuda_graph = True
    return eng


def test_samples_read_their_prompt_once_on_the_captured_state():
    """7B layer shapes, 2 layers, fp16: a chat's next turn, a 1100-token prompt, sampled 4 times
    after its first 1000 tokens and 20 greedy ones: the samples' captured step, built for runs of 4
    (its attention reads the prompt's slots once per step), beside the one-sequence state, whose
    slots it copies (1019 reused); each sample's log-probabilities equal those of its whole text
    scored in one prefill (another kernel) within fp16 rounding. The turn after, continuing a
    sample, reuses the whole 1100-token prompt, and its log-probabilities are its scored text's."""
    eng = _captured_7b_two_layers()
    eng.reuse_prompt_cache = True
    first = [1] + torch.randint(3, 32000, (999,)).tolist()
    reply = eng.generate(input_ids=[first], max_new_tokens=20, stop_at_eos=False).token_ids[0]
    prompt = first + reply + torch.randint(3, 32000, (80,)).tolist()
    got = eng.generate(input_ids=[prompt], num_return_sequences=4, max_new_tokens=8, temperature=1.0, seed=0,
                       stop_at_eos=False, return_logprobs=True)
    assert [(s.batch, s.runs) for s in eng._graphs._states] == [(1, 1), (4, 4)]
    assert got.prompt_tokens_reused == 1000 + 19
    scored = eng.score(input_ids=[prompt + row for row in got.token_ids])
    for row, lps in enumerate(got.token_logprobs):
        want = scored.token_logprobs[row][-len(lps):]
        assert all(abs(a - b) <= 3e-2 * max(1.0, abs(b)) for a, b in zip(lps, want)), (row, lps, want)
    # the turn after continues the second sample: the samples' prompt (row 0's slots of their
    # state, kept when they ended) is copied into the one-sequence state
    third = prompt + got.token_ids[1] + torch.randint(3, 32000, (30,)).tolist()
    nxt = eng.generate(input_ids=[third], max_new_tokens=4, stop_at_eos=False, return_logprobs=True)
    assert nxt.prompt_tokens_reused == len(prompt)
    want = eng.score(input_ids=[third + nxt.token_ids[0]]).token_logprobs[0][-4:]
    assert all(abs(a - b) <= 3e-2 * max(1.0, abs(b)) for a, b in zip(nxt.token_logprobs[0], want)), (nxt.token_logprobs, want)


def test_beams_on_the_captured_state():
    """7B layer shapes, 2 layers, fp16: 4 beams of an 1100-token prompt on a captured step built for
    runs of 4 (the prompt's slots read once per step): each beam's score (summed log-probabilities,
    length_penalty 0) equals that of its text scored in one prefill within fp16 rounding, and the
    logits kept per step are each step's own (the step's buffer is rewritten by every replay). A
    turn continuing the best beam reuses the prompt's keys and values and the beam's (from the
    row of the state's cache it came from), with its scored text's log-probabilities."""
    eng = _captured_7b_two_layers()
    eng.reuse_prompt_cache = True
    prompt = [1] + torch.randint(3, 32000, (1099,)).tolist()
    got = eng.generate(input_ids=[prompt], num_beams=4, num_return_sequences=4, max_new_tokens=8, length_penalty=0.0,
                       stop_at_eos=False, output_logits=True)
    assert [(s.batch, s.runs) for s in eng._graphs._states] == [(4, 4)]
    assert not torch.equal(got.logits[1], got.logits[2])
    scored = eng.score(input_ids=[prompt + row for row in got.token_ids])
    for row, total in enumerate(got.sequence_scores):
        want = sum(scored.token_logprobs[row][-len(got.token_ids[row]):])
        assert abs(total - want) <= 3e-2 * max(1.0, abs(want)), (row, total, want)
    nxt = prompt + got.token_ids[0] + torch.randint(3, 32000, (20,)).tolist()
    after = eng.generate(input_ids=[nxt], max_new_tokens=4, stop_at_eos=False, return_logprobs=True)
    assert after.prompt_tokens_reused == len(prompt) + 7
    want = eng.score(input_ids=[nxt + after.token_ids[0]]).token_logprobs[0][-4:]
    assert all(abs(a - b) <= 3e-2 * max(1.0, abs(b)) for a, b in zip(after.token_logprobs[0], want)), (after.token_logprobs, want)


def test_kept_captured_state_serves_calls_of_other_lengths():
    """7B layer shapes, 2 layers, fp16: calls of other prompt lengths and token budgets replay one
    kept captured state (its cache larger than they need and holding the last call's keys), with
    the uncaptured loop's tokens; one state is built for them all, a call past its cache builds a
    larger one, and another batch size builds its own, both kept for the calls after."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benches"))
    from llm_bench import SHAPES, random_engine

    from codellama_fast import CodeLlamaTokenizerFast

    SHAPES["7B-2layers"] = dict(SHAPES["7B"], num_hidden_layers=2)
    eng = random_engine("7B-2layers", "cuda", torch.float16, CodeLlamaTokenizerFast.from_pretrained())
    # the last three: a batch of 2 (a new state), a batch of 1 (its state, kept beside the new one),
    # and a batch of 2 of other lengths (its state)
    for lengths, new, builds in (((700,), 60, 1), ((90,), 40, 1), ((410,), 300, 1), ((1200,), 80, 2), ((30,), 16, 2),
                                 ((300, 77), 16, 3), ((150,), 16, 3), ((40, 120), 30, 3)):
        ids = [[1] + torch.randint(3, 32000, (n - 1,)).tolist() for n in lengths]
        eng.use_cuda_graph = False
        eager = eng.generate(input_ids=ids, max_new_tokens=new, stop_at_eos=False).token_ids
        eng.use_cuda_graph = True
        assert eng.generate(input_ids=ids, max_new_tokens=new, stop_at_eos=False).token_ids == eager, lengths
        assert eng._graphs.builds == builds, lengths


def test_logprobs_guesses_and_scoring_on_the_captured_paths():
    """7B layer shapes, 2 layers, fp16: log-probabilities read off the captured step equal the
    uncaptured loop's; prompt lookup (captured one-token steps between eager guess checks on the
    same cache) and an assistant model (guessing on its own captured step) give the plain greedy
    tokens; scoring through the kernels equals the torch ops."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benches"))
    from llm_bench import SHAPES, random_engine

    from codellama_fast import CodeLlamaTokenizerFast
    from codellama_fast.engine.ops import TorchOps
    from tests.engine_helpers import logprobs_close

    SHAPES["7B-2layers"] = dict(SHAPES["7B"], num_hidden_layers=2)
    tok = CodeLlamaTokenizerFast.from_pretrained()
    eng = random_engine("7B-2layers", "cuda", torch.float16, tok)
    block = torch.randint(3, 32000, (150,)).tolist()
    prompt = [[1] + block + block + block[:20]]  # its last n-grams occur earlier: the first steps have guesses
    kw = dict(max_new_tokens=40, stop_at_eos=False)
    eng.use_cuda_graph = True
    graphed = eng.generate(input_ids=prompt, return_logprobs=True, **kw)
    eng.use_cuda_graph = False
    eager = eng.generate(input_ids=prompt, return_logprobs=True, **kw)
    assert graphed.token_ids == eager.token_ids
    assert logprobs_close(graphed.token_logprobs[0], eager.token_logprobs[0], 2e-2)
    eng.use_cuda_graph = True
    plain = eng.generate(input_ids=prompt, **kw).token_ids
    assert eng.generate(input_ids=prompt, prompt_lookup_num_tokens=8, **kw).token_ids == plain
    twin = random_engine("7B-2layers", "cuda", torch.float16, tok)  # the same weights: its guesses are kept
    for draft in (twin, eng):  # on its own captured step; the model itself (its step is in use: a cache of its own)
        assert eng.generate(input_ids=prompt, assistant_model=draft, num_assistant_tokens=6, **kw).token_ids == plain
    texts = ["def f(x):\n    return x + 1\n" * 8, "import os\nprint(os.getcwd())"]
    fast = eng.score(texts)
    triton_ops, eng.model.ops = eng.model.ops, TorchOps()
    try:
        ref = eng.score(texts)
    finally:
        eng.model.ops = triton_ops
    for a, b in zip(fast.token_logprobs, ref.token_logprobs):
        assert logprobs_close(a, b, 2e-2)


@pytest.mark.parametrize("shape", ["7B", "34B"])
def test_prefill_activation_estimate_bounds_the_measured_peak(shape):
    """The per-token activation bytes that size prefill chunks (engine.memory) are at least what a
    prefill of 4096 tokens really allocates beyond the weights and the KV cache (one layer of the
    real shape, Triton ops, fp16)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benches"))
    from llm_bench import SHAPES, random_engine

    from codellama_fast import CodeLlamaTokenizerFast
    from codellama_fast.engine import memory
    from codellama_fast.engine.cache import KVCache
    from codellama_fast.engine.model import StepContext
    from tests.conftest import LLAMA2_MODEL

    SHAPES[shape + "-1layer"] = dict(SHAPES[shape], num_hidden_layers=1)
    # 34B has Llama 2's 32000-piece vocabulary: its tokenizer
    tok = CodeLlamaTokenizerFast.from_pretrained(*([str(LLAMA2_MODEL)] if SHAPES[shape]["vocab_size"] == 32000 else []))
    eng = random_engine(shape + "-1layer", "cuda", torch.float16, tok)
    t = 4096
    ids = torch.randint(3, 32000, (1, t), device="cuda")
    # held whole: the peak is the prefill's own
    cache = KVCache(eng.model.config, 1, t, torch.float16, torch.device("cuda"), grow=False)
    zero = torch.zeros(1, dtype=torch.long, device="cuda")
    ctx = StepContext(torch.arange(t, device="cuda")[None], torch.arange(t, device="cuda"), 0, zero, t)
    with torch.inference_mode():
        eng.model(ids, ctx, cache.layers)  # tunes and compiles first
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        eng.model(ids, ctx, cache.layers)
        torch.cuda.synchronize()
    measured = torch.cuda.max_memory_allocated() - base
    estimate = memory.prefill_bytes_per_token(eng.model.config, torch.float16) * t
    assert measured <= estimate, (measured, estimate)


def test_threads_sharing_an_engine_on_the_captured_paths():
    """Three threads share one engine on CUDA (7B layer shapes, 2 layers, fp16): graph captures,
    replays and the uncaptured loop of an overlapping generation take turns under the engine's
    lock; each call returns what it returns alone."""
    import random
    import sys
    import threading
    from pathlib import Path

    from codellama_fast import CodeLlamaTokenizerFast

    from tests.engine_helpers import logprobs_close

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benches"))
    from llm_bench import SHAPES, random_engine

    SHAPES["7B-2layers"] = dict(SHAPES["7B"], num_hidden_layers=2)
    tok = CodeLlamaTokenizerFast.from_pretrained()
    eng = random_engine("7B-2layers", "cuda", torch.float16, tok)
    eng.decode_step = "plain"  # the captured and the uncaptured step run the same kernels
    prompts = [[1] + torch.randint(3, 32000, (n,)).tolist() for n in (50, 120, 300)]
    kw = {"max_new_tokens": 24, "stop_at_eos": False}

    def run(kind: str, i: int):
        if kind == "generate":
            return eng.generate(input_ids=[prompts[i]], **kw).token_ids
        if kind == "batch":
            return eng.generate(input_ids=[prompts[i], prompts[(i + 1) % 3]], **kw).token_ids
        if kind == "stream":
            return "".join(eng.stream(prompts[i], **kw))
        return eng.score(input_ids=[prompts[i]]).token_logprobs[0]

    calls = [(kind, i) for kind in ("generate", "batch", "stream", "score") for i in range(3)]
    alone = {c: run(*c) for c in calls}
    failures: list[str] = []

    def worker(seed: int) -> None:
        r = random.Random(seed)
        for _ in range(5):
            c = r.choice(calls)
            try:
                got = run(*c)
                same = logprobs_close(got, alone[c], 1e-3) if c[0] == "score" else got == alone[c]
                if not same:
                    failures.append(f"{c}: a different answer")
            except Exception as exc:  # noqa: BLE001  (reported with the call that raised)
                failures.append(f"{c}: {type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures, failures[:5]
