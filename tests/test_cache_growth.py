"""A KV cache grows as it fills: it keeps what it holds across growth, never grows past its
max_len, frees the shorter tensors, and a generation that ends early holds only a little of the
cache its max_new_tokens would take; a growth that fails ends plain decoding with what it made.
With every cache starting at one slot (so that each decoding path grows it many times, in the
prefill and between steps), greedy decoding of a padded batch, beam search, classifier-free
guidance and prompt lookup still equal transformers' generate on a tiny random checkpoint in
fp32, on the torch ops and on the Triton kernels (compiled on a GPU, the interpreter elsewhere),
whose launches see the cache's shape and strides change between steps."""

from __future__ import annotations

import weakref

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from codellama_fast.engine import cache as cache_module  # noqa: E402
from codellama_fast.engine.cache import KVCache  # noqa: E402
from codellama_fast.engine.config import LlamaConfig  # noqa: E402
from tests.engine_helpers import fp32_engine, hf_beams, hf_config, random_checkpoint  # noqa: E402

PROMPTS = ["def quicksort(items):\n    ", "import os\nx = 1"]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    _, hf, path = random_checkpoint(tmp_path_factory, "gqa4", "growth")
    return hf, path


@pytest.fixture
def caches(monkeypatch):
    """Every KVCache the engine builds in the test, recorded with the largest slot count asked of it."""
    made: list[KVCache] = []
    init, reserve = KVCache.__init__, KVCache.reserve

    def recording_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.asked, self.most_asked, self.grown_for = [], 0, []  # grown_for: the n of each reserve(n) that grew it
        made.append(self)

    def recording_reserve(self, n):
        self.asked.append(n)
        self.most_asked = max(self.most_asked, n)
        held = self.allocated
        reserve(self, n)
        if self.allocated > held:
            self.grown_for.append(n)

    monkeypatch.setattr(KVCache, "__init__", recording_init)
    monkeypatch.setattr(KVCache, "reserve", recording_reserve)
    return made


@pytest.fixture
def one_slot(monkeypatch):
    """Every cache starts at one slot and grows: also the one-sequence caches kept for a later
    call, which on the CPU would otherwise view mappings holding all their slots at once."""
    monkeypatch.setattr(cache_module, "INITIAL_SLOTS", 1)
    monkeypatch.setattr(cache_module.lazy_zeros, "can_map", lambda device: False)


def test_a_growing_cache_keeps_what_it_holds(tmp_path):
    hf_config("gqa4").save_pretrained(tmp_path)
    cfg = LlamaConfig.from_file(tmp_path / "config.json")
    kv, d, layers = cfg.num_key_value_heads, cfg.head_dim, cfg.num_hidden_layers
    per_slot = 2 * layers * 2 * kv * d * 4  # batch 2, key and value, fp32

    cache = KVCache(cfg, 2, 5000, torch.float32, torch.device("cpu"))
    assert cache.allocated == cache_module.INITIAL_SLOTS == 256
    assert cache.held_bytes == 256 * per_slot and cache.nbytes == 5000 * per_slot
    cache.layers.reserve(300)  # twice the slots asked
    assert cache.allocated == 600 and all(k.shape == (2, kv, 600, d) == v.shape for k, v in cache.layers)
    cache.layers.reserve(600)  # held already
    assert cache.allocated == 600
    data = [(torch.randn(2, kv, 300, d), torch.randn(2, kv, 300, d)) for _ in range(layers)]
    for (k, v), (dk, dv) in zip(cache.layers, data, strict=True):
        k[:, :, :300], v[:, :, :300] = dk, dv
    del k, v
    old = [weakref.ref(x) for pair in cache.layers for x in pair]
    cache.layers.reserve(601)
    assert cache.allocated == 1202
    assert all(r() is None for r in old)  # the shorter tensors are freed
    cache.layers.reserve(10**6)
    assert cache.allocated == 5000 and cache.held_bytes == cache.nbytes  # never past max_len
    whole = [weakref.ref(x) for pair in cache.layers for x in pair]
    cache.layers.reserve(10**7)  # a full cache is not copied again
    assert all(r() is x for r, x in zip(whole, (x for pair in cache.layers for x in pair), strict=True))
    cache.layers.reserve(10)
    assert cache.allocated == 5000
    for (k, v), (dk, dv) in zip(cache.layers, data, strict=True):
        assert torch.equal(k[:, :, :300], dk) and torch.equal(v[:, :, :300], dv)
        assert not k[:, :, 300:].any() and not v[:, :, 300:].any()

    held = KVCache(cfg, 2, 5000, torch.float32, torch.device("cpu"), grow=False)  # as a decode state's
    assert held.allocated == 5000 and held.held_bytes == held.nbytes


def test_a_dropped_cache_frees_its_tensors_at_once(model, tok, monkeypatch):
    """With Python's cycle collector off, a cache is freed as soon as its last user drops it (no
    cycle between it and its layers): alone, and every cache of an engine's calls of each kind
    (plain, a batch, samples, beams, prompt lookup, a stream, scoring; the plain loop and the
    decode states) once ``release_cache`` has dropped what it keeps. The layers of a cache that
    is gone refuse to grow."""
    import gc

    made = []
    init = KVCache.__init__
    _, path = model
    engine = fp32_engine(path, tok)
    ids = tok.encode("def quicksort(items):\n    " * 6)  # past the kept prompts' floor of shared tokens
    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        cache = KVCache(engine.model.config, 2, 300, torch.float32, torch.device("cpu"))  # 256 slots allocated
        layers, tensor = cache.layers, weakref.ref(cache.layers[0][0])
        del cache
        assert tensor() is not None  # the layers still hold it: only the cache's own reference went
        with pytest.raises(RuntimeError, match="is gone"):
            layers.reserve(257)
        layers.reserve(256)  # held already: nothing to grow
        del layers
        assert tensor() is None
        monkeypatch.setattr(KVCache, "__init__", lambda self, *a, **k: init(self, *a, **k) or made.append(weakref.ref(self)))
        for graph in (False, "eager"):
            engine.use_cuda_graph = graph
            engine.generate(input_ids=[ids], max_new_tokens=5, stop_at_eos=False)
            engine.generate(input_ids=[ids, ids[:4]], max_new_tokens=5, stop_at_eos=False)
            engine.generate(input_ids=[ids], max_new_tokens=5, num_return_sequences=3, temperature=1.0, stop_at_eos=False)
            engine.generate(input_ids=[ids], max_new_tokens=5, num_beams=3, stop_at_eos=False)
            engine.generate(input_ids=[ids], max_new_tokens=5, prompt_lookup_num_tokens=2, stop_at_eos=False)
            assert len(list(engine.stream(ids, max_new_tokens=5))) > 0
            engine.score(input_ids=[ids])
            assert any(ref() is not None for ref in made)  # the kept ones (and the decode states)
            engine.release_cache()
            assert all(ref() is None for ref in made), graph
    finally:
        if was_enabled:
            gc.enable()


def test_a_cache_that_cannot_grow_raises_and_keeps_what_it_holds(tmp_path, monkeypatch):
    from codellama_fast.errors import OutOfMemoryError

    hf_config("odd").save_pretrained(tmp_path)
    cfg = LlamaConfig.from_file(tmp_path / "config.json")
    cache = KVCache(cfg, 1, 1000, torch.float32, torch.device("cpu"))
    data = [torch.randn(x.shape) for pair in cache.layers for x in pair]
    for x, want in zip((x for pair in cache.layers for x in pair), data, strict=True):
        x.copy_(want)
    zeros, calls = torch.zeros, []

    def failing_zeros(*args, **kwargs):  # the allocator fails on the third tensor
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 bytes")
        return zeros(*args, **kwargs)

    monkeypatch.setattr(torch, "zeros", failing_zeros)
    with pytest.raises(OutOfMemoryError, match="the KV cache could not take 600 slots per sequence .* can't allocate memory"):
        cache.layers.reserve(300)
    monkeypatch.setattr(torch, "zeros", zeros)
    assert cache.allocated == 256
    for x, want in zip((x for pair in cache.layers for x in pair), data, strict=True):
        assert torch.equal(x[:, :, :256], want)
    cache.layers.reserve(300)  # once memory frees up, it grows
    assert cache.allocated == 600 and all(x.shape[2] == 600 for pair in cache.layers for x in pair)
    for x, want in zip((x for pair in cache.layers for x in pair), data, strict=True):
        assert torch.equal(x[:, :, :256], want)


def test_a_generation_that_ends_early_holds_little_of_its_cache(model, tok, caches):
    _, path = model
    engine = fp32_engine(path, tok)
    steps = []
    with pytest.warns(RuntimeWarning, match="max_position_embeddings"):
        out = engine.generate(PROMPTS, max_new_tokens=20000, stop_at_eos=False,
                              stopping_criteria=[lambda ids, scores: steps.append(1) or len(steps) >= 10])
    assert [len(r) for r in out.token_ids] == [10, 10]
    (cache,) = caches
    assert cache.max_len >= 20000 and cache.allocated == cache_module.INITIAL_SLOTS
    assert cache.held_bytes * 50 < cache.nbytes


def _left_padded(rows):
    t = max(map(len, rows))
    x = torch.tensor([[0] * (t - len(r)) + r for r in rows])
    mask = (torch.arange(t)[None, :] >= torch.tensor([t - len(r) for r in rows])[:, None]).long()
    return x, mask, t


def _grew(caches, beyond: int) -> bool:
    """Some cache grew for more than `beyond` slots: past twice the prompt's, which (starting from
    one slot) it held after the prefill, so it grew between steps too."""
    return any(any(n > beyond for n in c.grown_for) and c.allocated >= c.most_asked for c in caches)


def _unconditional(caches, negative, prompt):
    """Guidance's cache of the unconditional side: the one whose first fill was the negative prompt."""
    assert len(negative) != len(prompt)
    return [c for c in caches if c.asked[:1] == [len(negative)]]


def test_greedy_padded_batch_equals_transformers_while_the_cache_grows(model, tok, caches, one_slot):
    hf, path = model
    engine = fp32_engine(path, tok)
    rows = [tok.encode(p) for p in PROMPTS]
    x, mask, t = _left_padded(rows)
    assert len(set(map(len, rows))) == 2  # a padded batch
    want = hf.generate(x, attention_mask=mask, max_new_tokens=40, do_sample=False, eos_token_id=None, pad_token_id=0)
    got = engine.generate(input_ids=rows, max_new_tokens=40, stop_at_eos=False).token_ids
    assert got == want[:, t:].tolist()
    assert _grew(caches, 2 * t)


def test_beam_search_equals_transformers_while_the_cache_grows(model, tok, caches, one_slot):
    hf, path = model
    engine = fp32_engine(path, tok)
    rows = [tok.encode(p) for p in PROMPTS]
    want, scores = hf_beams(hf, rows, 24, None, num_beams=3, num_return_sequences=2)
    got = engine.generate(input_ids=rows, max_new_tokens=24, num_beams=3, num_return_sequences=2, stop_at_eos=False)
    assert got.token_ids == want
    assert got.sequence_scores == pytest.approx(scores, rel=1e-4)
    assert _grew(caches, 2 * max(map(len, rows)))


def test_guidance_equals_transformers_while_the_cache_grows(model, tok, caches, one_slot):
    hf, path = model
    engine = fp32_engine(path, tok)
    row = tok.encode(PROMPTS[0])
    negative = tok.encode("# slow code")
    x = torch.tensor([row])
    want = hf.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=24, do_sample=False, eos_token_id=None,
                       pad_token_id=0, guidance_scale=2.0, negative_prompt_ids=torch.tensor([negative]))
    got = engine.generate(input_ids=[row], max_new_tokens=24, stop_at_eos=False, guidance_scale=2.0,
                          negative_prompt_ids=[negative]).token_ids
    assert got == want[:, len(row):].tolist()
    assert _grew(_unconditional(caches, negative, row), 2 * len(negative))  # the unconditional side's own cache grows too


def test_prompt_lookup_equals_transformers_while_the_cache_grows(model, tok, caches, one_slot):
    hf, path = model
    engine = fp32_engine(path, tok)
    row = tok.encode("x = [1, 2]\ny = [1, 2]\n")
    x = torch.tensor([row])
    want = hf.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=30, do_sample=False, eos_token_id=None,
                       pad_token_id=0)
    got = engine.generate(input_ids=[row], max_new_tokens=30, stop_at_eos=False, prompt_lookup_num_tokens=4).token_ids
    assert got == want[:, len(row):].tolist()
    assert _grew(caches, 2 * len(row))


def test_a_cache_that_cannot_grow_mid_generation_ends_the_call_keeping_its_tokens(model, tok, monkeypatch):
    """Memory taken by something else during a call: the growth that fails ends the call there,
    with its tokens (transformers' own, so far) and finish reason "length", and a warning."""
    from codellama_fast.errors import OutOfMemoryError

    hf, path = model
    engine = fp32_engine(path, tok)
    row = tok.encode(PROMPTS[0])
    t = len(row)
    x = torch.tensor([row])
    want = hf.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=20, do_sample=False, eos_token_id=None,
                       pad_token_id=0)[0, t:].tolist()
    reserve = KVCache.reserve

    def short_of_memory(self, n):
        if n > t + 5:
            raise OutOfMemoryError("DefaultCPUAllocator: can't allocate memory")
        reserve(self, n)

    monkeypatch.setattr(KVCache, "reserve", short_of_memory)
    with pytest.warns(RuntimeWarning, match=f"could not grow past {t + 5} tokens, so this call ends after 6 generated tokens"):
        out = engine.generate(input_ids=[row], max_new_tokens=20, stop_at_eos=False)
    assert out.token_ids == [want[:6]] and out.finish_reasons == ["length"]
    with pytest.warns(RuntimeWarning, match="could not grow"):
        assert "".join(engine.stream(row, max_new_tokens=20, stop_at_eos=False)) == out.texts[0]


def test_the_triton_kernels_equal_transformers_while_the_cache_grows(model, tok, caches, one_slot):
    """The uncaptured paths through the Triton kernels: plain greedy decoding of a padded batch,
    beam search and guidance, every cache growing from one slot."""
    from codellama_fast.engine import Engine, load_model
    from codellama_fast.kernels.triton_ops import TritonOps

    hf, path = model  # transformers on the CPU: the reference
    device = "cuda" if torch.cuda.is_available() else "cpu"  # compiled kernels on a GPU, else the interpreter
    engine = Engine(load_model(path, dtype="float32", device=device, backend="torch"), tok)
    engine.model.ops = TritonOps()
    engine.use_cuda_graph = False  # the plain loop on a cache of its own, as without a free decode state
    rows = [tok.encode(p) for p in PROMPTS]
    x, mask, t = _left_padded(rows)
    want = hf.generate(x, attention_mask=mask, max_new_tokens=20, do_sample=False, eos_token_id=None,
                       pad_token_id=0)
    assert engine.generate(input_ids=rows, max_new_tokens=20, stop_at_eos=False).token_ids == want[:, t:].tolist()
    assert _grew(caches, 2 * t) and all(c.device.type == device for c in caches)

    caches.clear()
    want, scores = hf_beams(hf, rows, 16, None, num_beams=3, num_return_sequences=2)
    got = engine.generate(input_ids=rows, max_new_tokens=16, num_beams=3, num_return_sequences=2, stop_at_eos=False)
    assert got.token_ids == want
    assert got.sequence_scores == pytest.approx(scores, rel=1e-4)
    assert _grew(caches, 2 * t)

    caches.clear()
    negative = tok.encode("# slow")
    row = torch.tensor([rows[0]])
    want = hf.generate(row, attention_mask=torch.ones_like(row), max_new_tokens=16, do_sample=False, eos_token_id=None,
                       pad_token_id=0, guidance_scale=2.0, negative_prompt_ids=torch.tensor([negative]))
    got = engine.generate(input_ids=[rows[0]], max_new_tokens=16, stop_at_eos=False, guidance_scale=2.0,
                          negative_prompt_ids=[negative]).token_ids
    assert got == want[:, len(rows[0]):].tolist()
    assert _grew(_unconditional(caches, negative, rows[0]), 2 * len(negative))


def test_the_fused_decode_step_grows_the_cache_it_writes(model, one_slot):
    """engine.fused_decode's step asks a growing cache for its slot, as the model's forward does:
    token by token from one slot, its logits equal the model's over a whole cache."""
    from codellama_fast.engine import load_model
    from codellama_fast.engine.fused_decode import fused_decode_forward
    from codellama_fast.engine.model import StepContext

    _, path = model
    m = load_model(path, dtype="float32", device="cpu")
    ids = torch.randint(3, m.config.vocab_size, (2, 9))
    kv_start = torch.zeros(2, dtype=torch.long)
    growing = KVCache(m.config, 2, 9, torch.float32, torch.device("cpu"))
    whole = KVCache(m.config, 2, 9, torch.float32, torch.device("cpu"), grow=False)
    assert growing.allocated == 1
    with torch.inference_mode():
        for s in range(9):
            ctx = StepContext(torch.full((2, 1), s), torch.tensor([s]), s, kv_start, s + 1)
            got = fused_decode_forward(m, ids[:, s:s + 1], ctx, growing.layers)
            want = m(ids[:, s:s + 1], ctx, whole.layers)
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert growing.allocated == 9
