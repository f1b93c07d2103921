"""Triton kernels vs their torch references and an fp32 reference, in the Triton interpreter on CPU
(small shapes) or on a GPU when present. Fresh random inputs every run.

Tolerances: fp32 inputs ~1e-5 absolute on O(1) values; fp16 inputs ~1e-2 (fp16 has 11 bits, the
kernels accumulate in fp32, the fp16 references round intermediate results)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
triton = pytest.importorskip("triton")

from codellama_fast.kernels import reference as R  # noqa: E402
from codellama_fast.kernels.attention_decode import attention_decode, new_counters, rope_attention_decode  # noqa: E402
from codellama_fast.kernels.attention_prefill import attention_prefill  # noqa: E402
from codellama_fast.kernels.rmsnorm import rms_norm  # noqa: E402
from codellama_fast.kernels.rope import rope_cache_update  # noqa: E402
from codellama_fast.kernels.swiglu import swiglu  # noqa: E402
from tests.engine_helpers import fresh_seed  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if DEVICE == "cuda" else [])
TOL = {torch.float32: 2e-5, torch.float16: 1.5e-2, torch.bfloat16: 6e-2}


def _close(got: torch.Tensor, want: torch.Tensor, dtype: torch.dtype) -> None:
    err = (got.float() - want.float()).abs().max().item()
    scale = max(1.0, want.float().abs().max().item())
    assert err <= TOL[dtype] * scale, f"max error {err} > {TOL[dtype] * scale}"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 8), (3, 37), (2, 5, 200), (4, 1000), (7, 64)])
def test_rms_norm(dtype, shape):
    x = torch.randn(shape, dtype=dtype, device=DEVICE)
    w = (torch.rand(shape[-1], device=DEVICE) + 0.5).to(dtype)
    _close(rms_norm(x, w, 1e-5), R.rms_norm(x, w, 1e-5), dtype)
    _close(rms_norm(x, w, 1e-5), R.rms_norm(x.double(), w.double(), 1e-5), dtype)  # fp64 oracle
    r = torch.randn(shape, dtype=dtype, device=DEVICE)
    y, s = rms_norm(x, w, 1e-6, residual=r)
    y_ref, s_ref = R.rms_norm(x, w, 1e-6, residual=r)
    assert torch.equal(s, s_ref)  # the add is the same rounding either way
    _close(y, y_ref, dtype)
    # several rows per program (the shape prefill may tune to), row counts that do not divide
    for rows in (2, 4):
        _close(rms_norm(x, w, 1e-5, rows_per_program=rows), R.rms_norm(x.double(), w.double(), 1e-5), dtype)
        y, s = rms_norm(x, w, 1e-6, residual=r, rows_per_program=rows)
        assert torch.equal(s, s_ref)
        _close(y, y_ref, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 2 * 11), (3, 4, 2 * 100), (2, 2 * 4100)])
def test_swiglu(dtype, shape):
    gu = torch.randn(shape, dtype=dtype, device=DEVICE) * 3
    _close(swiglu(gu), R.swiglu(gu), dtype)
    _close(swiglu(gu), R.swiglu(gu.double()), dtype)


def _qkv(b, t, hq, hkv, d, dtype):
    qkv = torch.randn(b, t, (hq + 2 * hkv) * d, dtype=dtype, device=DEVICE)
    q = qkv[..., : hq * d].view(b, t, hq, d)
    k = qkv[..., hq * d : (hq + hkv) * d].view(b, t, hkv, d)
    v = qkv[..., (hq + hkv) * d :].view(b, t, hkv, d)
    return q, k, v


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("b,t,hq,hkv,d,theta,offset", [(1, 1, 4, 4, 16, 1e4, 0), (2, 7, 8, 2, 32, 1e6, 5), (3, 5, 8, 1, 64, 1e6, 100), (1, 3, 6, 3, 128, 1e6, 16000)])
def test_rope_cache_update(dtype, b, t, hq, hkv, d, theta, offset):
    q, k, v = _qkv(b, t, hq, hkv, d, dtype)
    # different positions per sequence (as with left padding), including large ones
    pos = torch.stack([torch.arange(t) + offset + 3 * i for i in range(b)]).to(DEVICE)
    inv = 1.0 / (theta ** (torch.arange(0, d, 2, device=DEVICE).float() / d))
    slots = torch.arange(2, 2 + t, device=DEVICE)
    caches = [torch.zeros(b, hkv, t + 4, d, dtype=dtype, device=DEVICE) for _ in range(4)]
    qo = rope_cache_update(q, k, v, pos, inv, caches[0], caches[1], slots)
    qr = R.rope_cache_update(q, k, v, pos, inv, caches[2], caches[3], slots)
    _close(qo, qr, dtype)
    _close(caches[0], caches[2], dtype)
    assert torch.equal(caches[1], caches[3])
    # fp64 oracle for the rotation itself
    cos, sin = R.rope_cos_sin(pos.double(), inv.double())
    _close(qo, R.apply_rope(q.double(), cos, sin), dtype)


def _cache(b, hkv, s, d, dtype):
    return torch.randn(b, hkv, s, d, dtype=dtype, device=DEVICE), torch.randn(b, hkv, s, d, dtype=dtype, device=DEVICE)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("b,t,hq,hkv,d,q_start,pads", [
    (1, 37, 4, 4, 64, 0, [0]),          # MHA, length not a block multiple
    (2, 45, 8, 2, 32, 0, [0, 13]),       # GQA 4, left padding
    (3, 20, 8, 1, 16, 0, [19, 5, 0]),    # GQA 8, a sequence that is almost all padding
    (2, 9, 4, 1, 128, 30, [2, 31]),      # chunked prefill at an offset, head_dim 128
    (2, 100, 4, 2, 32, 37, [0, 45]),     # long enough for unmasked key blocks between padding and diagonal
])
def test_prefill_attention(dtype, b, t, hq, hkv, d, q_start, pads):
    kv_len = q_start + t
    q = torch.randn(b, t, hq, d, dtype=dtype, device=DEVICE)
    kc, vc = _cache(b, hkv, kv_len + 3, d, dtype)
    kv_start = torch.tensor(pads, device=DEVICE)
    want = R.attention(q, kc, vc, q_start, kv_start, kv_len)
    want64 = R.attention(q.double(), kc.double(), vc.double(), q_start, kv_start, kv_len)
    for split in (True, False):  # key blocks in three loops / in one loop with per-block masking
        got = attention_prefill(q, kc, vc, q_start, kv_start, kv_len, split_loops=split)
        for i in range(b):  # rows of padding queries are don't-care
            real = slice(max(0, pads[i] - q_start), t)
            _close(got[i, real], want[i, real], dtype)
            _close(got[i, real], want64[i, real], dtype)
        assert torch.isfinite(got).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_decode_attention_gives_the_same_bits_in_a_cache_of_any_size(dtype):
    """The same keys in caches of other sizes (a kept decode state larger than the call, a cache of
    the call's own) give bit-identical outputs, so a call's tokens never depend on which cache
    served it. The splits sum the keys in an order that must not follow the cache's size."""
    b, hq, hkv, d = 2, 8, 2, 32
    for kv_len in (40, 70, 150):
        q = torch.randn(b, 1, hq, d, dtype=dtype, device=DEVICE)
        small_k, small_v = _cache(b, hkv, kv_len + 2, d, dtype)
        outs = []
        for capacity in (kv_len + 2, kv_len + 100, 4 * kv_len + 300):
            kc = torch.zeros(b, hkv, capacity, d, dtype=dtype, device=DEVICE)
            vc = torch.zeros_like(kc)
            kc[:, :, : kv_len + 2] = small_k
            vc[:, :, : kv_len + 2] = small_v
            outs.append(attention_decode(q, kc, vc, torch.tensor([0, 3], device=DEVICE), torch.tensor([kv_len], device=DEVICE)))
        _close(outs[0], R.attention(q, small_k, small_v, kv_len - 1, torch.tensor([0, 3], device=DEVICE), kv_len), dtype)
        for other in outs[1:]:
            assert torch.equal(other, outs[0]), kv_len


@pytest.mark.parametrize("merge", ["last", "kernel"])
def test_decode_attention_splits_past_the_keys_change_nothing(merge):
    """More splits than a call's keys fill: the extra ones exit without a partial, and the merge
    reads only the splits that hold keys, so the bits match those of fewer splits that cut the
    keys the same way (and the reference)."""
    b, hq, hkv, d = 2, 8, 2, 32
    kv_len = 70  # 3 blocks of 32 (interpreter) for sequence 0, 2 for sequence 1 (kv_start 30)
    q = torch.randn(b, 1, hq, d, dtype=torch.float32, device=DEVICE)
    kc, vc = _cache(b, hkv, kv_len + 10, d, torch.float32)
    kv_start = torch.tensor([0, 30], device=DEVICE)
    kv = torch.tensor([kv_len], device=DEVICE)
    # 8, 32 and 64 splits all cut 70 keys into one block each (chunk 32): 3 and 2 splits hold keys
    outs = [attention_decode(q, kc, vc, kv_start, kv, num_splits=n, merge=merge) for n in (8, 32, 64)]
    _close(outs[0], R.attention(q.double(), kc.double(), vc.double(), kv_len - 1, kv_start, kv_len).float(), torch.float32)
    for other in outs[1:]:
        assert torch.equal(other, outs[0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("b,hq,hkv,d,kv_lens_pads", [
    (1, 4, 4, 64, (77, [0])),
    (2, 8, 2, 32, (130, [0, 50])),
    (3, 16, 2, 16, (65, [0, 7, 64])),   # GQA 8; one sequence has a single visible key
    (2, 8, 1, 128, (33, [1, 0])),
])
def test_decode_attention(dtype, b, hq, hkv, d, kv_lens_pads):
    kv_len, pads = kv_lens_pads
    q = torch.randn(b, 1, hq, d, dtype=dtype, device=DEVICE)
    kc, vc = _cache(b, hkv, kv_len + 40, d, dtype)
    kv_start = torch.tensor(pads, device=DEVICE)
    counters = new_counters(b * hkv, DEVICE)
    # the repeat reuses the counters the previous launch left; "kernel" merges in a second launch;
    # None takes the default; 16 splits leave most without keys
    for splits, merge in ((None, None), (None, "last"), (1, "last"), (3, "last"), (3, "last"), (None, "kernel"),
                          (3, "kernel"), (16, "last"), (16, "kernel")):
        got = attention_decode(q, kc, vc, kv_start, torch.tensor([kv_len], device=DEVICE), num_splits=splits,
                               counters=counters, merge=merge)
        _close(got, R.attention(q, kc, vc, kv_len - 1, kv_start, kv_len), dtype)
        _close(got, R.attention(q.double(), kc.double(), vc.double(), kv_len - 1, kv_start, kv_len), dtype)
        assert not counters.any(), "a launch must leave its counters zeroed"
    with pytest.raises(ValueError, match="merge"):
        attention_decode(q, kc, vc, kv_start, kv_len, merge="sideways")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("b,hq,hkv,d,kv_len,pads,theta", [
    (1, 4, 4, 64, 77, [0], 1e4),
    (2, 8, 2, 32, 130, [0, 50], 1e6),    # GQA 4, left padding
    (3, 16, 2, 16, 65, [0, 7, 64], 1e6),  # GQA 8; one sequence sees only the new key
    (2, 8, 1, 128, 33, [1, 0], 1e6),
    (1, 2, 2, 16, 1, [0], 1e4),           # the very first token: nothing in the cache yet
])
def test_rope_attention_decode(dtype, b, hq, hkv, d, kv_len, pads, theta):
    """The fused decode step (RoPE, cache write, attention) against the separate reference steps,
    and against an fp64 oracle of the same steps."""
    q, k, v = _qkv(b, 1, hq, hkv, d, dtype)
    slot = kv_len - 1
    pos = torch.tensor([[slot - p + 5 * i] for i, p in enumerate(pads)], device=DEVICE)  # differ per sequence
    inv = 1.0 / (theta ** (torch.arange(0, d, 2, device=DEVICE).float() / d))
    kc, vc = _cache(b, hkv, kv_len + 40, d, dtype)
    kv_start = torch.tensor(pads, device=DEVICE)
    slots = torch.tensor([slot], device=DEVICE)
    kv = torch.tensor([kv_len], device=DEVICE, dtype=torch.int32)
    ref_kc, ref_vc = kc.clone(), vc.clone()
    want = R.rope_attention(q, k, v, pos, inv, ref_kc, ref_vc, slots, slot, kv_start, kv_len)
    o64_kc, o64_vc = kc.double(), vc.double()
    want64 = R.rope_attention(q.double(), k.double(), v.double(), pos.double(), inv.double(), o64_kc, o64_vc, slots,
                              slot, kv_start, kv_len)
    counters = new_counters(b * hkv, DEVICE)
    for splits, merge in ((None, None), (None, "last"), (1, "last"), (2, "last"), (3, "last"), (3, "kernel"),
                          (16, "last"), (16, "kernel")):
        got_kc, got_vc = kc.clone(), vc.clone()
        got = rope_attention_decode(q, k, v, pos, inv, got_kc, got_vc, slots, kv_start, kv, num_splits=splits,
                                    counters=counters, merge=merge)
        _close(got, want, dtype)
        _close(got, want64, dtype)
        _close(got_kc, ref_kc, dtype)
        assert torch.equal(got_vc, ref_vc)
        assert not counters.any()
    with pytest.raises(ValueError):
        rope_attention_decode(q, k, v, pos[:, 0], inv, kc, vc, slots, kv_start, kv)


def _triton_engine(folder, graph: bool, **settings):
    """An fp32 engine on the Triton ops (interpreter on CPU) for the model in `folder`: with the
    graph-decode step (captured on CUDA, run eagerly on CPU) or the plain decode loop."""
    from codellama_fast import CodeLlamaTokenizerFast
    from codellama_fast.engine import Engine, load_model
    from codellama_fast.kernels.triton_ops import TritonOps

    eng = Engine(load_model(folder, dtype="float32", device=DEVICE, backend="torch"), CodeLlamaTokenizerFast.from_pretrained())
    eng.model.ops = TritonOps()
    eng.use_cuda_graph = ("eager" if DEVICE == "cpu" else True) if graph else False
    for name, value in settings.items():
        setattr(eng, name, value)
    return eng


@pytest.mark.parametrize("name", ["mha", "gqa4-d16"])
def test_engine_with_triton_ops_matches_torch_path(tmp_path, name):
    pytest.importorskip("transformers")
    from codellama_fast import CodeLlamaTokenizerFast
    from codellama_fast.engine import Engine, load_model
    from codellama_fast.kernels.triton_ops import TritonOps
    from tests.engine_helpers import logprobs_close, make_hf_model, save

    folder = save(make_hf_model(name, seed=fresh_seed()), tmp_path / "m")
    tok = CodeLlamaTokenizerFast.from_pretrained()
    ref = Engine(load_model(folder, dtype="float32", device=DEVICE, backend="torch"), tok)
    fast = Engine(load_model(folder, dtype="float32", device=DEVICE, backend="torch"), tok)
    fast.model.ops = TritonOps()
    prompts = ["def f(x):\n    return", "import os"]
    a = ref.generate(prompts, max_new_tokens=12, stop_at_eos=False)
    b = fast.generate(prompts, max_new_tokens=12, stop_at_eos=False)
    assert a.token_ids == b.token_ids
    # scoring (a prefill keeping every position's logits) through the kernels, in two chunks
    fast.prefill_chunk_tokens = ref.prefill_chunk_tokens = 7
    sa, sb = ref.score(prompts), fast.score(prompts)
    assert all(logprobs_close(rb, ra, 1e-3) for ra, rb in zip(sa.token_logprobs, sb.token_logprobs))
    # and the logits of a prefill agree to fp32 precision
    ids = torch.tensor([tok.encode(prompts[0])], device=DEVICE)
    from codellama_fast.engine.cache import KVCache
    from codellama_fast.engine.model import StepContext

    outs = []
    for eng in (ref, fast):
        t = ids.shape[1]
        cache = KVCache(eng.model.config, 1, t, torch.float32, torch.device(DEVICE))
        ctx = StepContext(torch.arange(t, device=DEVICE)[None], torch.arange(t, device=DEVICE), 0, torch.zeros(1, dtype=torch.long, device=DEVICE), t)
        with torch.no_grad():
            outs.append(eng.model(ids, ctx, cache.layers, last_only=False))
    _close(outs[1], outs[0], torch.float32)


@pytest.mark.parametrize("graph", [False, True])
def test_shared_prompt_tokens_through_the_kernels_are_prefilled_once(tmp_path, monkeypatch, graph):
    """Two samples each of two prompts of different lengths that begin with the same preamble: the
    kernels prefill the preamble in one row, then one row per prompt from the slot after it
    (through views of every other cache row); the copies fill the rest, and each sample's
    log-probabilities are transformers' for its own prompt and tokens (the graph-decode step and
    the plain loop)."""
    pytest.importorskip("transformers")
    from codellama_fast.engine import shared_prompts
    from tests.engine_helpers import hf_logprobs, logprobs_close, make_hf_model, save
    from tests.test_shared_prompts import PREAMBLE

    monkeypatch.setattr(shared_prompts, "MIN_SAVED_TOKENS", 1)
    hf = make_hf_model("mha", seed=fresh_seed())
    eng = _triton_engine(save(hf, tmp_path / "m"), graph)
    prompts = [PREAMBLE + "reverse a list", PREAMBLE + "sum"]
    ids = [eng.tokenizer.encode(p) for p in prompts]
    batches = []
    real = eng.model.forward
    eng.model.forward = lambda tokens, *a, **k: batches.append(tuple(tokens.shape)) or real(tokens, *a, **k)  # type: ignore[method-assign]
    got = eng.generate(prompts, num_return_sequences=2, max_new_tokens=6, temperature=1.0, seed=3, stop_at_eos=False,
                       return_logprobs=True)
    prefill = [x for x in batches if x[1] > 1]  # on CUDA the decode step's capture runs first, one token per row
    shared = prefill[0][1]
    assert prefill[0][0] == 1 and shared >= 32 and prefill[1:] == [(2, max(map(len, ids)) - shared)]
    for row, (out, lps) in enumerate(zip(got.token_ids, got.token_logprobs)):
        assert logprobs_close(lps, hf_logprobs(hf, ids[row // 2], out), 1e-4)


def test_prompt_lookup_through_the_kernels_equals_plain_decoding(tmp_path, monkeypatch):
    """Prompt-lookup steps give the tokens of the plain graph-decode loop: steps with guesses run
    several new tokens against the cache (the prefill kernel at an offset), steps without replay
    the decode step on the same cache."""
    pytest.importorskip("transformers")
    from codellama_fast.engine.cuda_graph import GraphDecoder
    from tests.engine_helpers import make_hf_model, save

    folder = save(make_hf_model("gqa4", seed=8), tmp_path / "m")
    eng = _triton_engine(folder, graph=True)
    prompt = "a = [1, 2, 3]\nb = [1, 2, 3]\nc = [1,"
    plain = eng.generate(prompt, max_new_tokens=16, stop_at_eos=False)
    replays, passes = [], []
    replay, forward = GraphDecoder.replay, eng.model.forward
    monkeypatch.setattr(GraphDecoder, "replay", lambda self: replays.append(1) or replay(self))
    eng.model.forward = lambda tokens, *a, **k: passes.append(tokens.shape[1]) or forward(tokens, *a, **k)
    looked = eng.generate(prompt, max_new_tokens=16, stop_at_eos=False, prompt_lookup_num_tokens=4)
    assert looked.token_ids == plain.token_ids
    assert replays and any(1 < n <= 5 for n in passes[1:]), (replays, passes)  # both kinds of step ran


def test_assisted_decoding_through_the_kernels_equals_plain_decoding(tmp_path, monkeypatch):
    """An assistant on the graph-decode step of its own: its one-token steps replay that step, its
    catch-up feeds run against the same cache; the model checks the guesses with the prefill
    kernel at an offset. The tokens are plain decoding's."""
    pytest.importorskip("transformers")
    from codellama_fast.engine.cuda_graph import GraphDecoder
    from tests.engine_helpers import make_hf_model, save

    eng = _triton_engine(save(make_hf_model("gqa4", seed=8), tmp_path / "m"), graph=True)
    draft = _triton_engine(save(make_hf_model("gqa4", seed=8), tmp_path / "d"), graph=True)  # agrees: guesses are kept
    prompt = "a = [1, 2, 3]\nb = [1,"
    plain = eng.generate(prompt, max_new_tokens=12, stop_at_eos=False)
    events: list[tuple[str, object]] = []  # ("pass", model, tokens) and ("replay", model) in order
    replay = GraphDecoder.replay
    monkeypatch.setattr(GraphDecoder, "replay", lambda self: events.append(("replay", self.model)) or replay(self))

    def logged(model):
        forward = model.forward

        def run(tokens, *args, **kwargs):
            events.append(("pass", model, tokens.shape[1]))
            return forward(tokens, *args, **kwargs)
        return run

    for e in (eng, draft):
        e.model.forward = logged(e.model)
    got = eng.generate(prompt, max_new_tokens=12, stop_at_eos=False, assistant_model=draft, num_assistant_tokens=3,
                       assistant_confidence_threshold=0.0)
    assert got.token_ids == plain.token_ids
    passes = [e[2] for e in events if e[0] == "pass" and e[1] is eng.model]
    checks = passes[passes.index(max(passes)) + 1 :]  # after the prompt's pass (before it: trial steps of a new graph)
    assert checks == [4, 4, 3], passes  # each check kept its 3 guesses
    draft_prefill = max(k for k, e in enumerate(events) if e[0] == "pass" and e[1] is draft.model and e[2] > 2)
    after = [e[0] for e in events[draft_prefill:] if e[1] is draft.model]
    assert after.count("replay") == 2 + 2 + 1  # its one-token steps (k - 1 per check), replayed on the draft's own step


# "penalty": repetition_penalty and min_new_tokens; "rules": n-gram and word bans that change the greedy tokens
@pytest.mark.parametrize("greedy", [True, False, "penalty", "rules"])
def test_static_buffer_decode_step_matches_plain_loop(tmp_path, greedy):
    """The graph-decode step (static buffers advanced in place; captured on CUDA, run eagerly
    here) gives the same tokens as the plain decode loop."""
    pytest.importorskip("transformers")
    from tests.engine_helpers import logprobs_close, make_hf_model, save

    folder = save(make_hf_model("mha", seed=5), tmp_path / "m")
    plain = _triton_engine(folder, graph=False)
    graphed = _triton_engine(folder, graph=True, check_every=5)
    kw = dict(max_new_tokens=13, stop_at_eos=False) if greedy else dict(max_new_tokens=13, stop_at_eos=False, temperature=0.8, top_k=50, seed=9)
    if greedy == "penalty":  # greedy, with the penalty applied between the captured step's logits and the choice
        kw = dict(max_new_tokens=13, stop_at_eos=False, repetition_penalty=1.5, min_new_tokens=4)
    prompts = ["x = [", "def g():\n    return 1"]
    want = plain.generate(prompts, **kw).token_ids
    if greedy == "rules":  # bans built from the greedy tokens, so they must change them
        free = want
        kw.update(no_repeat_ngram_size=2, bad_words_ids=[[free[0][2]], [free[1][3], free[1][4]]], suppress_tokens=[free[1][0]])
        want = plain.generate(prompts, **kw).token_ids
        assert want != free
    assert graphed.generate(prompts, **kw).token_ids == want
    # A second call of the same shape, served by the kept state: the log-probabilities, taken off
    # the static step's logits block by block (greedy and penalty), or with them the likeliest
    # alternatives, read back block by block too (sampling and rules)
    extra = dict(return_logprobs=True) if greedy in (True, "penalty") else dict(top_logprobs=3)
    a, b = graphed.generate(prompts, **extra, **kw), plain.generate(prompts, **extra, **kw)
    assert a.token_ids == b.token_ids == want
    assert all(logprobs_close(ra, rb, 1e-4) for ra, rb in zip(a.token_logprobs, b.token_logprobs, strict=True))
    if "top_logprobs" in extra:
        ids = [[[[i for i, _ in pairs] for pairs in row] for row in r.top_logprobs] for r in (a, b)]
        assert ids[0] == ids[1]


def test_interleaved_streams_of_one_shape_do_not_share_a_cache(tmp_path):
    """Two streams of the same shape consumed in turn, and a generate call in between, each give
    their own continuation: the graph state (KV cache, static buffers) serves one generation at a
    time, and an overlapping one runs on a cache of its own."""
    pytest.importorskip("transformers")
    from tests.engine_helpers import make_hf_model, save

    folder = save(make_hf_model("mha", seed=6), tmp_path / "m")
    eng = _triton_engine(folder, graph=True, decode_step="plain")
    kw = dict(max_new_tokens=6, stop_at_eos=False)
    prompts = [[1, 921, 353, 518], [1, 1596, 29898, 29874]]  # the same (batch, length): one graph key
    alone = [eng.generate(input_ids=[p], **kw) for p in prompts]
    assert alone[0].token_ids != alone[1].token_ids
    streams = [eng.stream(p, **kw) for p in prompts]
    firsts = [next(s) for s in streams]  # both prefilled before either decodes
    between = eng.generate(input_ids=[prompts[1]], **kw)
    texts = [first + "".join(s) for first, s in zip(firsts, streams)]
    assert texts == [a.text for a in alone]
    assert between.token_ids == alone[1].token_ids
    assert [eng.generate(input_ids=[p], **kw).token_ids for p in prompts] == [a.token_ids for a in alone]  # state reusable after


def test_dynamic_rope_scaling_through_the_kernels_and_the_graph_step(tmp_path):
    """Dynamic NTK scaling recomputes inv_freq from the positions inside the decode step: the
    graph step (captured on CUDA) and the fused step give the torch path's tokens past
    max_position_embeddings."""
    pytest.importorskip("transformers")
    from codellama_fast import CodeLlamaTokenizerFast
    from codellama_fast.engine import Engine, load_model

    from tests.engine_helpers import make_hf_model, save

    folder = save(make_hf_model("mha", seed=8, rope_scaling={"rope_type": "dynamic", "factor": 2.0}, max_position_embeddings=16),
                  tmp_path / "m")
    prompt = [[1, 921, 353, 518, 1596, 29898, 29874, 29901, 13, 1678, 736]]
    want = Engine(load_model(folder, dtype="float32", device=DEVICE, backend="torch"), CodeLlamaTokenizerFast.from_pretrained()).generate(
        input_ids=prompt, max_new_tokens=14, stop_at_eos=False).token_ids
    for step in ("plain", "fused"):
        eng = _triton_engine(folder, graph=True, decode_step=step)
        assert eng.generate(input_ids=prompt, max_new_tokens=14, stop_at_eos=False).token_ids == want, step


def test_nan_logits_in_graph_decode_steps_raise_at_the_next_read(tmp_path):
    """The graph step notes NaN/inf logits on the device without a sync; the host raises when it
    next reads the ids: after each token for a stream, after each block of steps for generate.
    The weights go bad after the first token (read by the captured step as it replays)."""
    pytest.importorskip("transformers")
    from codellama_fast import NonFiniteLogitsError

    from tests.engine_helpers import make_hf_model, save

    folder = save(make_hf_model("mha", seed=6), tmp_path / "m")
    eng = _triton_engine(folder, graph=True, decode_step="plain")
    eng.check_every = 4
    kw = {"max_new_tokens": 9, "stop_at_eos": False}
    good = eng.model.norm.detach().clone()
    stream = eng.stream([1, 921, 353, 518], **kw)
    next(stream)
    with torch.no_grad():
        eng.model.norm.fill_(float("nan"))
    with pytest.raises(NonFiniteLogitsError, match="among generated tokens 2 to 2"):
        next(stream)

    class PoisonAfterFirstToken:  # a transformers-style streamer: the prompt, then each token
        def __init__(self):
            self.puts = 0

        def put(self, ids):
            self.puts += 1
            if self.puts == 2:
                with torch.no_grad():
                    eng.model.norm.fill_(float("nan"))

        def end(self):
            pass

    with torch.no_grad():
        eng.model.norm.copy_(good)
    assert len(eng.generate(input_ids=[[1, 921, 353, 518]], **kw).token_ids[0]) == 9  # the same graph, healthy again
    with pytest.raises(NonFiniteLogitsError, match="among generated tokens 2 to 5"):
        eng.generate(input_ids=[[1, 921, 353, 518]], streamer=PoisonAfterFirstToken(), **kw)


def test_output_scores_off_the_graph_step_equal_the_torch_path(tmp_path):
    """The graph step runs whole blocks; the scores kept are the ones of the steps read, in the
    torch path's values. Classifier-free guidance (its unconditional rows run beside the captured
    step) chooses as the torch path does."""
    pytest.importorskip("transformers")
    from codellama_fast import CodeLlamaTokenizerFast
    from codellama_fast.engine import Engine, load_model

    from tests.engine_helpers import make_hf_model, save

    folder = save(make_hf_model("mha", seed=6), tmp_path / "m")
    eng = _triton_engine(folder, graph=True, decode_step="plain")
    eng.check_every = 4
    ref = Engine(load_model(folder, dtype="float32", device=DEVICE, backend="torch"), CodeLlamaTokenizerFast.from_pretrained())
    free = ref.generate(input_ids=[[1, 921, 353, 518]], max_new_tokens=9, stop_at_eos=False, repetition_penalty=1.2).token_ids[0]
    kw = {"max_new_tokens": 9, "eos_token_id": free[5], "output_scores": True, "output_logits": True, "repetition_penalty": 1.2}
    want, got = ref.generate(input_ids=[[1, 921, 353, 518]], **kw), eng.generate(input_ids=[[1, 921, 353, 518]], **kw)
    assert got.token_ids == want.token_ids and len(got.scores) == len(want.scores) == len(want.token_ids[0]) + 1
    assert all(torch.allclose(a, b, atol=1e-3, rtol=1e-3) for a, b in zip(got.scores, want.scores))
    assert all(torch.allclose(a, b, atol=1e-3, rtol=1e-3) for a, b in zip(got.logits, want.logits))
    guided = {"max_new_tokens": 9, "stop_at_eos": False, "guidance_scale": 2.0, "negative_prompt_ids": [1, 396, 4319]}
    assert eng.generate(input_ids=[[1, 921, 353, 518]], **guided).token_ids == ref.generate(input_ids=[[1, 921, 353, 518]], **guided).token_ids


def test_rules_that_leave_no_token_in_graph_decode_steps_raise_at_the_next_read(tmp_path):
    """With rules the picker runs after each replay of the graph step; a step where they leave a
    sequence no token raises when the host reads the block it is in, naming the token."""
    pytest.importorskip("transformers")
    from codellama_fast import NoTokenAllowedError

    from tests.engine_helpers import make_hf_model, save

    eng = _triton_engine(save(make_hf_model("mha", seed=6), tmp_path / "m"), graph=True, decode_step="plain")
    eng.check_every = 4
    calls = [0]

    def ban_all_from_the_third(ids, scores):
        calls[0] += 1
        return torch.full_like(scores, float("-inf")) if calls[0] >= 3 else scores

    with pytest.raises(NoTokenAllowedError, match="for sequence 0 at generated token 3"):
        eng.generate(input_ids=[[1, 921, 353, 518]], max_new_tokens=9, stop_at_eos=False, logits_processor=ban_all_from_the_third)
    calls[0] = -100
    assert len(eng.generate(input_ids=[[1, 921, 353, 518]], max_new_tokens=9, stop_at_eos=False,
                            logits_processor=ban_all_from_the_third).token_ids[0]) == 9


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("m,k,n", [(1, 64, 48), (1, 100, 37), (1, 300, 130), (2, 100, 37), (7, 300, 130), (16, 64, 48)])
def test_fused_gemv(dtype, m, k, n):
    """The few-row projections with norm / SwiGLU / residual fused in (one row on the CUDA cores,
    2-16 on the tensor cores; K not a multiple of the block), vs the composed reference ops and an
    fp64 oracle."""
    from codellama_fast.kernels import gemv

    x = torch.randn(m, k, dtype=dtype, device=DEVICE) * 2
    nw = (torch.rand(k, device=DEVICE) + 0.5).to(dtype)
    w = (torch.randn(n, k, device=DEVICE) / k**0.5).to(dtype)
    w13 = (torch.randn(2 * n, k, device=DEVICE) / k**0.5).to(dtype)
    res = torch.randn(m, n, dtype=dtype, device=DEVICE)
    d = lambda t: t.double()  # noqa: E731
    cases = [
        (gemv.norm_linear(x, nw, w, 1e-5), R.norm_linear(x, nw, w, 1e-5), R.norm_linear(d(x), d(nw), d(w), 1e-5)),
        (gemv.norm_linear_swiglu(x, nw, w13, 1e-5), R.norm_linear_swiglu(x, nw, w13, 1e-5),
         R.norm_linear_swiglu(d(x), d(nw), d(w13), 1e-5)),
        (gemv.linear_residual(x, w, res), R.linear_residual(x, w, res), R.linear_residual(d(x), d(w), d(res))),
    ]
    for got, want, want64 in cases:
        assert got.shape == want.shape and got.dtype == dtype
        _close(got, want, dtype)
        _close(got, want64, dtype)
    with pytest.raises(ValueError):
        gemv.norm_linear(torch.randn(17, k, dtype=dtype, device=DEVICE), nw, w, 1e-5)  # up to 16 rows
    with pytest.raises(ValueError):
        gemv.linear_residual(x, w, res[:, :-1])
    with pytest.raises(ValueError):
        gemv.norm_linear_swiglu(x, nw, w13[:-1], 1e-5)


@pytest.mark.parametrize("ops_name", ["torch", "triton"])
@pytest.mark.parametrize("b", [1, 2])
def test_fused_decode_step_matches_model(tmp_path, ops_name, b):
    """engine.fused_decode computes the model's decode step: same logits as LlamaModel.forward
    after the same prefill, fp32."""
    pytest.importorskip("transformers")
    from codellama_fast.engine import load_model
    from codellama_fast.engine.cache import KVCache
    from codellama_fast.engine.fused_decode import fused_decode_forward
    from codellama_fast.engine.model import StepContext
    from codellama_fast.kernels.triton_ops import TritonOps
    from tests.engine_helpers import make_hf_model, save

    folder = save(make_hf_model("gqa4", seed=fresh_seed()), tmp_path / "m")
    model = load_model(folder, dtype="float32", device=DEVICE, backend="torch")
    if ops_name == "triton":
        model.ops = TritonOps()
    t = 6
    ids = torch.randint(3, 32000, (b, t), device=DEVICE)
    kv_start = torch.tensor([0, 2][:b], device=DEVICE)  # the second sequence is left-padded
    nxt = torch.randint(3, 32000, (b, 1), device=DEVICE)
    logits = []
    for step in (lambda tok, ctx, caches: model(tok, ctx, caches), lambda tok, ctx, caches: fused_decode_forward(model, tok, ctx, caches)):
        cache = KVCache(model.config, b, t + 1, torch.float32, torch.device(DEVICE))
        pos = (torch.arange(t, device=DEVICE)[None] - kv_start[:, None]).clamp_min(0)
        with torch.inference_mode():
            model(ids, StepContext(pos, torch.arange(t, device=DEVICE), 0, kv_start, t), cache.layers)
            ctx = StepContext((t - kv_start)[:, None], torch.tensor([t], device=DEVICE), t, kv_start, t + 1)
            logits.append(step(nxt, ctx, cache.layers))
    assert logits[1].shape == (b, model.config.vocab_size)
    _close(logits[1], logits[0], torch.float32)


@pytest.mark.parametrize("prompts", [["def f(x):\n    return"], ["x = [", "import os"]])
def test_fused_decode_graph_step_gives_plain_tokens(tmp_path, prompts):
    """The engine running the fused decode step (static buffers; captured on CUDA, eager here)
    generates the tokens of the plain loop."""
    pytest.importorskip("transformers")
    from tests.engine_helpers import make_hf_model, save

    folder = save(make_hf_model("mha", seed=11), tmp_path / "m")
    plain = _triton_engine(folder, graph=False)
    fused = _triton_engine(folder, graph=True, decode_step="fused")
    kw = dict(max_new_tokens=10, stop_at_eos=False)
    assert fused.generate(prompts, **kw).token_ids == plain.generate(prompts, **kw).token_ids
    assert fused.decode_step_used == "fused"
    fused.decode_step = "sideways"
    fused._graphs.clear()
    with pytest.raises(ValueError):
        fused.generate(prompts, **kw)


def test_kept_graph_state_serves_calls_of_other_lengths(tmp_path):
    """Calls of other prompt lengths replay one kept decode state (a cache larger than they need,
    still holding the last call's keys and values) and generate transformers' greedy tokens: the
    kernels read only each call's own slots."""
    pytest.importorskip("transformers")
    from tests.engine_helpers import make_hf_model, save

    hf = make_hf_model("gqa4-d16", seed=fresh_seed())
    eng = _triton_engine(save(hf, tmp_path / "m"), graph=True, decode_step="plain")
    hf = hf.to(DEVICE)
    gen = torch.Generator().manual_seed(fresh_seed())
    for lengths in ((9, 5), (3, 7), (14, 2)):
        rows = [[1] + torch.randint(259, 32000, (n - 1,), generator=gen).tolist() for n in lengths]
        t = max(lengths)
        x = torch.tensor([[0] * (t - len(r)) + r for r in rows], device=DEVICE)
        want = hf.generate(x, attention_mask=(x != 0).long(), max_new_tokens=5, do_sample=False, eos_token_id=None,
                           pad_token_id=0)[:, t:].tolist()
        assert eng.generate(input_ids=rows, max_new_tokens=5, stop_at_eos=False).token_ids == want, lengths
    assert eng._graphs.builds == 1


def test_a_calls_bits_do_not_depend_on_what_ran_before(tmp_path):
    """One call's tokens and log-probabilities, bit for bit, on a fresh engine; on a kept state
    that a longer call left (a larger cache, after another batch size); and in the uncaptured loop
    on a cache of its own size. The tokens are transformers'."""
    pytest.importorskip("transformers")
    from tests.engine_helpers import make_hf_model, save

    hf = make_hf_model("gqa4-d16", seed=fresh_seed())
    folder = save(hf, tmp_path / "m")
    gen = torch.Generator().manual_seed(fresh_seed())

    def prompt(n):
        return [1] + torch.randint(259, 32000, (n - 1,), generator=gen).tolist()

    row = prompt(int(torch.randint(40, 90, ())))  # past a key block: the splits matter
    kw = dict(max_new_tokens=6, stop_at_eos=False, return_logprobs=True)
    alone = _triton_engine(folder, graph=True, decode_step="plain").generate(input_ids=[row], **kw)
    want = hf.to(DEVICE).generate(torch.tensor([row], device=DEVICE), max_new_tokens=6, do_sample=False, eos_token_id=None,
                                  pad_token_id=0)[0, len(row):].tolist()
    assert alone.token_ids == [want]
    eng = _triton_engine(folder, graph=True, decode_step="plain")
    eng.generate(input_ids=[prompt(9), prompt(30)], **kw)
    eng.generate(input_ids=[prompt(150)], **kw)  # a batch-1 state of far more slots than `row` needs
    after = eng.generate(input_ids=[row], **kw)
    assert eng._graphs.builds == 2  # `row` replayed the long call's state
    eng.use_cuda_graph = False
    uncaptured = eng.generate(input_ids=[row], **kw)
    for got in (after, uncaptured):
        assert got.token_ids == alone.token_ids
        assert got.token_logprobs == alone.token_logprobs  # the same bits, not merely close


def test_pick_faster_keeps_only_agreeing_steps(tmp_path):
    """The decode-step choice: the fastest of the steps whose logits agree with the first one; a
    step that disagrees is never kept, however fast."""
    pytest.importorskip("transformers")
    from codellama_fast.engine import load_model
    from codellama_fast.engine.cache import KVCache
    from codellama_fast.engine.cuda_graph import GraphDecoder, pick_faster, time_replays
    from codellama_fast.engine.fused_decode import fused_decode_forward
    from tests.engine_helpers import make_hf_model, save

    model = load_model(save(make_hf_model("mha", seed=3), tmp_path / "m"), dtype="float32", device="cpu", backend="torch")
    cache = KVCache(model.config, 1, 8, torch.float32, torch.device("cpu"))
    kv_start = torch.zeros(1, dtype=torch.long)

    def make(name, forward=None):
        return GraphDecoder(model, cache.layers, kv_start, 8, True, forward=forward, name=name)

    plain = make("plain")
    fused = make("fused", lambda tok, ctx, caches: fused_decode_forward(model, tok, ctx, caches))
    broken = make("broken", lambda tok, ctx, caches: model(tok, ctx, caches) * 1.5)
    speed = {"plain": 2.0, "fused": 1.0, "broken": 0.1}
    timer = lambda dec: speed[dec.name]  # noqa: E731
    assert pick_faster([plain, fused], timer=timer).name == "fused"
    assert pick_faster([plain, broken, fused], timer=timer).name == "fused"
    speed["fused"] = 3.0
    assert pick_faster([plain, broken, fused], timer=timer).name == "plain"
    # the real timer stays inside a small cache and output buffer (3 slots)
    small = KVCache(model.config, 1, 3, torch.float32, torch.device("cpu"))
    a, b = (GraphDecoder(model, small.layers, kv_start, 3, True, forward=f, name=n)
            for n, f in (("plain", None), ("fused", lambda tok, ctx, caches: fused_decode_forward(model, tok, ctx, caches))))
    pick_faster([a, b])  # real timer: 12 replays asked of 3 slots
    time_replays(a, replays=50)
    assert int(a.slot) == a.capacity - 1 == 2 and int(a.step) == 2  # it stopped at the last slot that fits


def test_cache_layout_checks():
    """The attention kernels address a head's cache block with 32-bit offsets: a layout they
    cannot address, or a head dim that is not contiguous, is refused before any launch."""
    from codellama_fast.kernels.layout import check_cache_layout

    ok = torch.empty((2, 4, 4096, 128), device="meta")
    check_cache_layout(ok, ok)
    huge = torch.empty_strided((1, 1, 3, 128), (0, 0, 2**30, 1), device="meta")
    with pytest.raises(ValueError, match="2\\^31"):
        check_cache_layout(ok, huge)
    with pytest.raises(ValueError, match="contiguous head dim"):
        check_cache_layout(ok.transpose(2, 3), ok)
    q = torch.randn(1, 1, 4, 16, device=DEVICE)
    kc = torch.randn(1, 4, 16, 8, device=DEVICE).transpose(2, 3)  # [1, 4, 8, 16] with strided head dim
    with pytest.raises(ValueError):
        attention_decode(q, kc, kc, torch.zeros(1, dtype=torch.long, device=DEVICE), 4)


def test_auto_decode_step_falls_back_when_the_fused_step_cannot_be_built(tmp_path, monkeypatch):
    """`decode_step="auto"` (batch of one): a fused step that fails to build leaves a warning and
    the plain step, with the plain step's tokens."""
    pytest.importorskip("transformers")
    from codellama_fast.engine import fused_decode
    from tests.engine_helpers import make_hf_model, save

    folder = save(make_hf_model("mha", seed=2), tmp_path / "m")
    eng = _triton_engine(folder, graph=True, decode_step="auto")
    kw = dict(max_new_tokens=6, stop_at_eos=False)
    good = eng.generate(["def f():"], **kw).token_ids
    assert eng.decode_step_used in ("plain", "fused")

    def broken(*args, **kwargs):
        raise RuntimeError("no kernel for this target")

    monkeypatch.setattr(fused_decode, "fused_decode_forward", broken)
    eng._graphs.clear()
    with pytest.warns(RuntimeWarning, match="fused decode step (is unavailable|failed)"):
        again = eng.generate(["def f():"], **kw).token_ids
    assert eng.decode_step_used == "plain"
    assert again == good
