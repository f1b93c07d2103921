"""Decode attention that reads a run's shared prompt slots once (engine/shared_prompt_attention.py)
against the float64 key-by-key rule of ``reference.attention``, and samples of a prompt decoded
through it against transformers."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from codellama_fast.engine import shared_prompt_attention as SPA  # noqa: E402
from codellama_fast.kernels import reference as R  # noqa: E402

TOL = {torch.float32: 2e-6, torch.bfloat16: 2e-2, torch.float16: 2e-3}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("runs_of, hq, hkv, prompt, own, t, pads", [
    ((1, 4), 8, 2, 40, 5, 1, [0]),       # one prompt, 4 samples, GQA 4
    ((2, 3), 4, 4, 33, 7, 2, [0, 5]),    # two prompts (the second padded), MHA, two new tokens
    ((2, 2), 6, 3, 20, 1, 1, [3, 0]),    # the first prompt padded; one generated token so far
    ((3, 2), 16, 2, 17, 9, 1, [0, 2, 9]),  # GQA 8
])
def test_equals_the_key_by_key_rule(dtype, runs_of, hq, hkv, prompt, own, t, pads):
    u, runs = runs_of
    b, d, spare = u * runs, 16, 6
    k = torch.randn(b, hkv, prompt + own + t + spare, d).to(dtype)
    v = torch.randn_like(k)
    for r in range(u):  # a run's rows hold the same prompt slots, as the prefill's copies leave them
        k[r * runs : (r + 1) * runs, :, :prompt] = k[r * runs, :, :prompt]
        v[r * runs : (r + 1) * runs, :, :prompt] = v[r * runs, :, :prompt]
    kv_start = torch.tensor([p for p in pads for _ in range(runs)])
    q = torch.randn(b, t, hq, d).to(dtype)
    q_start = prompt + own
    assert SPA.applies(q, k, q_start, runs, prompt) == (b * prompt * hkv * d >= SPA.MIN_SHARED_ELEMENTS)
    got = SPA.attention(q, k, v, q_start, kv_start, q_start + t, runs, prompt)
    want = R.attention(q.double(), k.double(), v.double(), q_start, kv_start, q_start + t)
    assert got.dtype == dtype and got.shape == q.shape
    assert (got.double() - want).abs().max().item() <= TOL[dtype] * max(1.0, want.abs().max().item())


def test_which_calls_take_it():
    q = torch.zeros(4, 1, 32, 128)
    k = torch.zeros(4, 32, 300, 128)
    assert SPA.applies(q, k, 256, 4, 256)  # 4 x 256 x 32 x 128 = 2^22 elements
    assert not SPA.applies(q, k, 256, 1, 256)  # no runs
    assert not SPA.applies(q, k, 255, 4, 256)  # a query inside the prompt (a prefill)
    assert not SPA.applies(q, k, 256, 4, 0)
    assert not SPA.applies(q.half(), k, 256, 4, 256)  # dtypes differ
    small = torch.zeros(4, 1, 32, 128), torch.zeros(4, 32, 40, 128)
    assert SPA.applies(*small, 32, 4, 32) == (4 * 32 * 32 * 128 >= SPA.MIN_SHARED_ELEMENTS)


def test_samples_decoded_through_it_equal_transformers(tok, tmp_path_factory, monkeypatch):
    """Three samples each of two prompts of different lengths: every decode step's attention takes
    this path (counted), and each sample's log-probabilities are transformers' for its prompt and
    tokens."""
    pytest.importorskip("transformers")
    from tests.engine_helpers import fp32_engine, hf_logprobs, logprobs_close, random_checkpoint, spy_shapes

    monkeypatch.setattr(SPA, "MIN_SHARED_ELEMENTS", 0)
    _, hf, path = random_checkpoint(tmp_path_factory, "gqa4", "shared-prompt-attention")
    engine = fp32_engine(path, tok)
    calls = spy_shapes(monkeypatch, SPA, "attention")
    prompts = ["def quicksort(items):\n    ", "x = ["]
    got = engine.generate(prompts, num_return_sequences=3, max_new_tokens=8, temperature=1.0, seed=7, stop_at_eos=False,
                          return_logprobs=True)
    layers = engine.model.config.num_hidden_layers
    assert calls == [(6, 1, 8, 8)] * (7 * layers)  # every step after the first (the prefill chose it), every layer
    for row, (ids, lps) in enumerate(zip(got.token_ids, got.token_logprobs)):
        assert logprobs_close(lps, hf_logprobs(hf, tok.encode(prompts[row // 3]), ids), 1e-4)


@pytest.mark.parametrize("graph", [False, "eager"])
@pytest.mark.parametrize("shared", [True, False])
def test_samples_read_once_keep_no_copies_of_their_prompt(tok, tmp_path_factory, monkeypatch, shared, graph):
    """4 samples of one prompt in caches whose every slot starts as NaN: where every decode step
    reads the prompt's slots from the first row alone (this path, in the plain loop), the prefill
    copies nothing into the other rows, whose NaN slots then never reach a logit; where the steps
    read every row (too few shared elements, or the decode state's step, built for rows read one by
    one on these ops) it copies them. Each sample's log-probabilities are transformers'."""
    pytest.importorskip("transformers")
    from codellama_fast.engine import shared_prompts
    from codellama_fast.engine.cache import KVCache
    from tests.engine_helpers import fp32_engine, hf_logprobs, logprobs_close, random_checkpoint, spy_shapes

    monkeypatch.setattr(SPA, "MIN_SHARED_ELEMENTS", 0 if shared else 1 << 62)
    monkeypatch.setattr(KVCache, "_zeros", lambda self, slots: torch.full(self._shape(slots), float("nan"), dtype=self.dtype))
    _, hf, path = random_checkpoint(tmp_path_factory, "gqa4", "shared-prompt-copies")
    engine = fp32_engine(path, tok)
    engine.use_cuda_graph = graph
    copies = []
    real = shared_prompts.copy_to_repeats
    monkeypatch.setattr(shared_prompts, "copy_to_repeats", lambda layers, n, slots: copies.append((n, slots)) or real(layers, n, slots))
    reads = spy_shapes(monkeypatch, SPA, "attention")
    made = []
    init = KVCache.__init__
    monkeypatch.setattr(KVCache, "__init__", lambda self, *a, **k: init(self, *a, **k) or made.append(self))
    ids = tok.encode("def quicksort(items):\n    ")
    got = engine.generate(input_ids=[ids], num_return_sequences=4, max_new_tokens=6, temperature=1.0, seed=3, stop_at_eos=False,
                          return_logprobs=True)
    once = shared and not graph
    assert copies == ([] if once else [(4, len(ids))]) and bool(reads) == once
    assert [c.sparse for c in made if c.batch == 4] == [once]  # lazily zeroed on the CPU where its rows stay unwritten
    for out, lps in zip(got.token_ids, got.token_logprobs, strict=True):
        assert logprobs_close(lps, hf_logprobs(hf, ids, out), 1e-4)


@pytest.mark.parametrize("graph", [False, "eager"])
@pytest.mark.parametrize("shared", [True, False])
def test_beams_read_once_hold_their_prompt_in_the_first_beam_alone(tok, tmp_path_factory, monkeypatch, shared, graph):
    """3 beams of one prompt in caches whose every slot starts as NaN: where every step reads the
    prompt's slots from the first beam's row alone (this path, in the plain loop), the prompt goes
    to that row alone (the NaN slots of the others never reach a score); otherwise to every beam.
    The beams and their scores are transformers', and so is a next turn continuing the best beam,
    which reuses the prompt's and that beam's keys and values."""
    pytest.importorskip("transformers")
    from codellama_fast.engine import prompt_cache
    from codellama_fast.engine.cache import KVCache
    from tests.engine_helpers import fp32_engine, hf_beams, hf_logprobs, logprobs_close, random_checkpoint, spy_shapes

    monkeypatch.setattr(SPA, "MIN_SHARED_ELEMENTS", 0 if shared else 1 << 62)
    monkeypatch.setattr(prompt_cache, "MIN_SHARED_TOKENS", 1)  # a short prompt's keys and values are kept too
    monkeypatch.setattr(KVCache, "_zeros", lambda self, slots: torch.full(self._shape(slots), float("nan"), dtype=self.dtype))
    _, hf, path = random_checkpoint(tmp_path_factory, "gqa4", "shared-prompt-beams")
    engine = fp32_engine(path, tok)
    engine.use_cuda_graph = graph
    reads = spy_shapes(monkeypatch, SPA, "attention")
    caches = []  # the beams' cache, seen where the steps regroup it
    real = KVCache.reorder_rows
    monkeypatch.setattr(KVCache, "reorder_rows", lambda self, *a, **k: caches.append(self) or real(self, *a, **k))
    ids = tok.encode("def quicksort(items):\n    ")
    kw = dict(num_beams=3, num_return_sequences=2)
    got = engine.generate(input_ids=[ids], max_new_tokens=6, stop_at_eos=False, **kw)
    once = shared and not graph
    assert bool(reads) == once
    assert caches[0].sparse == once
    key = caches[0].layers[0][0]  # [3, Hkv, S, D]
    assert not key[0, :, : len(ids)].isnan().any() and key[1:, :, : len(ids)].isnan().all() == once
    want, want_scores = hf_beams(hf, [ids], 6, None, **kw)
    assert got.token_ids == want
    assert logprobs_close(got.sequence_scores, want_scores, 1e-4), (got.sequence_scores, want_scores)
    # the next turn continues the best beam: the prompt's keys and values (from the prompt's own
    # cache, where the beams' rows lack them) and the beam's (from its row) are reused
    nxt = ids + got.token_ids[0] + tok.encode("\n# sorted", add_special_tokens=False)
    after = engine.generate(input_ids=[nxt], max_new_tokens=3, stop_at_eos=False, return_logprobs=True)
    assert after.prompt_tokens_reused == len(ids) + 5
    assert logprobs_close(after.token_logprobs[0], hf_logprobs(hf, nxt, after.token_ids[0]), 1e-4)
