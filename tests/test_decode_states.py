"""The captured decode states an Engine keeps between calls (engine.decode_states): calls of other
prompt lengths, token budgets and batches reuse a state whose cache is large enough, whatever its
cache held before, and still give transformers' tokens; an overlapping call runs on a cache of its
own; a bucket that does not fit in memory gives way to the exact size.

The static-buffer step runs here uncaptured (``use_cuda_graph="eager"``) on the torch ops: the
same buffers, state reuse and leases as the captured step on CUDA (tests/test_gpu.py)."""

from __future__ import annotations

import random

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from codellama_fast.engine.decode_states import MAX_STATES, MIN_BUCKET, cache_capacity  # noqa: E402
from tests.engine_helpers import fp32_engine, logprobs_close, random_checkpoint  # noqa: E402


def test_cache_capacity_buckets():
    """Each capacity holds the call, is a whole number of 256-slot blocks, wastes at most a
    quarter (256 slots for short calls), never shrinks as calls grow, and takes few sizes per
    doubling, so growing prompts rebuild rarely."""
    rng = random.Random()
    for needed in [1, 255, 256, 257, 1023, 1024, 1025, 4097, 16384, 100_001] + [rng.randrange(1, 200_000) for _ in range(2000)]:
        c = cache_capacity(needed)
        assert c >= needed and c % MIN_BUCKET == 0
        assert c - needed < max(MIN_BUCKET, needed / 4)
        assert cache_capacity(c) == c
        assert cache_capacity(needed + 1) >= c
    for k in range(10, 18):
        sizes = {cache_capacity(n) for n in range(2**k, 2 ** (k + 1))}
        assert len(sizes) <= 5
    with pytest.raises(ValueError):
        cache_capacity(0)


def _hf_greedy(hf, rows: list[list[int]], n: int) -> list[list[int]]:
    """transformers' greedy tokens for left-padded `rows` (no end token)."""
    t = max(map(len, rows))
    x = torch.tensor([[0] * (t - len(r)) + r for r in rows])
    mask = (torch.arange(t)[None, :] >= torch.tensor([t - len(r) for r in rows])[:, None]).long()
    out = hf.generate(x, attention_mask=mask, max_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0)
    return out[:, t:].tolist()


def _scribble(engine) -> None:
    """Fills every kept cache with NaN: what a state holds between calls must never be read (a
    NaN read anywhere, even in a masked slot, reaches the logits), but for the tokens it notes
    (engine.prompt_cache), which the NaN replaces: the note goes too."""
    with torch.inference_mode():  # the caches are inference tensors
        for state in engine._graphs._states:
            state.ids = []
            for kc, vc in state.cache.layers:
                kc.fill_(float("nan"))
                vc.fill_(float("nan"))


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    _, hf, path = random_checkpoint(tmp_path_factory, "gqa4", "states")
    return hf, path


def _engine(path, tok):
    engine = fp32_engine(path, tok)
    engine.use_cuda_graph = "eager"
    return engine


def _prompt(rng: random.Random, n: int) -> list[int]:
    return [1] + [rng.randrange(3, 32000) for _ in range(n - 1)]


# (prompt lengths, max_new_tokens, states built once the call is done: with memory to spare, under
# memory where no second state fits beside a new one)
CALLS = [
    ([40], 20, 1, 1),  # needs 60 slots: a state of 256
    ([7], 5, 1, 1),  # fits: reused
    ([200], 100, 2, 2),  # 300 slots: past 256, a state of 512 (the 256 one goes: the new one serves its calls)
    ([40], 20, 2, 2),  # fits the 512 state
    ([211], 45, 2, 2),  # 256 slots: still the 512 state
    ([3, 25], 8, 3, 3),  # another batch size: a new state
    ([30, 9], 12, 3, 3),  # fits the batch-2 state, other left padding
    ([5], 3, 3, 4),  # batch 1: the 512 state again (a step over more rows may round otherwise), or a new one
    ([4, 8, 9], 6, 4, 5),  # batch 3: a new state
    ([6, 7], 5, 4, 6),  # batch 2: not the batch-3 state
    ([6, 7, 8, 9], 5, 5, 7),  # a fourth shape: kept with the other three
    ([6, 7, 8, 9, 10], 5, 6, 8),  # a fifth: past MAX_STATES, the one used least recently (batch 1) goes
    ([9], 5, 7, 9),  # so batch 1 builds again, and batch 3 (now the least recent) goes
    ([6, 17], 5, 7, 10),  # batch 2 is still there
    ([4, 8, 12], 6, 8, 11),  # batch 3 is not
]


@pytest.mark.parametrize("memory", ["plenty", "short", "one kept"])
def test_calls_of_other_lengths_and_shapes_reuse_the_states_and_give_transformers_tokens(model, tok, monkeypatch, memory):
    """Calls of other prompt lengths and budgets reuse a state whose cache holds them; calls of other
    batch sizes alternate between states of their own, at most MAX_STATES of them, the least
    recently used going first; where memory holds a new state but not as much again beside it, or
    max_decode_states is 1, it is the only one kept. Every call gives transformers' greedy tokens,
    whatever the state held."""
    assert MAX_STATES == 4  # the calls above are written for it
    hf, path = model
    engine = _engine(path, tok)
    assert engine.max_decode_states == MAX_STATES
    if memory == "short":  # the free memory holds each new state, never as much again (below: the real sizes)
        monkeypatch.setattr(engine._graphs, "_spare_slots", lambda batch: 0)
    elif memory == "one kept":
        engine.max_decode_states = 1
    rng = random.Random()
    for lengths, new, plenty, short in CALLS:
        rows = [_prompt(rng, n) for n in lengths]
        _scribble(engine)
        got = engine.generate(input_ids=rows, max_new_tokens=new, stop_at_eos=False).token_ids
        assert got == _hf_greedy(hf, rows, new), (lengths, new)
        assert engine._graphs.builds == (plenty if memory == "plenty" else short), (lengths, new)
        batches = [s.batch for s in engine._graphs._states]
        assert batches[-1] == len(lengths)  # the state this call used, the most recent
        assert len(batches) == len(set(batches)) and len(batches) <= (MAX_STATES if memory == "plenty" else 1), batches
    if memory == "plenty":
        assert [s.batch for s in engine._graphs._states] == [5, 1, 2, 3]


@pytest.mark.parametrize("room, kept", [(1040, [1, 2]), (1000, [2])])
def test_a_state_stays_beside_a_new_one_where_the_free_memory_holds_that_twice(model, tok, monkeypatch, room, kept):
    """A batch-2 state of 256 slots (512 slots of one sequence) after a batch-1 state: the batch-1
    state stays where the free memory (as the KV cache's check sees it) holds 1024 such slots,
    and goes where it holds fewer."""
    hf, path = model
    engine = _engine(path, tok)
    _free_memory_for(monkeypatch, room, _per_token(engine))
    rng = random.Random()
    for rows in ([_prompt(rng, 20)], [_prompt(rng, 12), _prompt(rng, 30)]):
        assert engine.generate(input_ids=rows, max_new_tokens=5, stop_at_eos=False).token_ids == _hf_greedy(hf, rows, 5)
    assert [(s.batch, s.capacity) for s in engine._graphs._states] == [(b, 256) for b in kept]


def test_the_non_greedy_step_has_its_own_state(model, tok):
    """A call whose choice happens outside the step (log-probabilities wanted) uses a state
    without the step's argmax, reused in turn by the next such call."""
    hf, path = model
    engine = _engine(path, tok)
    rng = random.Random()
    for builds, n in ((1, 17), (1, 33), (1, 9)):
        row = _prompt(rng, n)
        _scribble(engine)
        res = engine.generate(input_ids=[row], max_new_tokens=10, stop_at_eos=False, return_logprobs=True)
        assert res.token_ids == _hf_greedy(hf, [row], 10)
        with torch.no_grad():
            full = torch.tensor([row + res.token_ids[0]])
            want = hf(full).logits[0, len(row) - 1 : -1].log_softmax(-1).gather(1, full[0, len(row) :, None])[:, 0].tolist()
        assert logprobs_close(res.token_logprobs[0], want, 1e-4)
        assert engine._graphs.builds == builds
    plain = engine.generate(input_ids=[row], max_new_tokens=10, stop_at_eos=False).token_ids
    assert plain == res.token_ids and engine._graphs.builds == 2  # the greedy step: another state
    # calls alternating between the two modes replay the two states kept
    for _ in range(2):
        assert engine.generate(input_ids=[row], max_new_tokens=10, stop_at_eos=False, return_logprobs=True).token_ids == plain
        assert engine.generate(input_ids=[row], max_new_tokens=10, stop_at_eos=False).token_ids == plain
    assert engine._graphs.builds == 2 and sorted(s.greedy for s in engine._graphs._states) == [False, True]


def test_a_call_overlapping_a_stream_runs_on_its_own_cache(model, tok):
    """A generate while a stream holds the state: the generate runs uncaptured on a cache of its
    own (no state built, the stream's cache untouched); both give transformers' tokens, and the
    state is free again once the stream ends."""
    hf, path = model
    engine = _engine(path, tok)
    rng = random.Random()
    a, b = _prompt(rng, 20), _prompt(rng, 12)
    want_a, want_b = _hf_greedy(hf, [a], 16)[0], _hf_greedy(hf, [b], 16)[0]
    stream = engine.stream(a, max_new_tokens=16, stop_at_eos=False)
    first = next(stream)
    assert engine._graphs.builds == 1
    assert engine.generate(input_ids=[b], max_new_tokens=16, stop_at_eos=False).token_ids == [want_b]
    assert engine._graphs.builds == 1
    assert first + "".join(stream) == tok._native.decode_keep_space(want_a, True)
    assert engine.generate(input_ids=[b], max_new_tokens=16, stop_at_eos=False).token_ids == [want_b]
    assert engine._graphs.builds == 1  # the stream's state, free again


def _free_memory_for(monkeypatch, tokens: float, per_token: int) -> None:
    """The device's free memory, as the KV cache checks see it: room for `tokens` cache slots
    (the check keeps a tenth back)."""
    from codellama_fast.engine import cache as cache_module

    monkeypatch.setattr(cache_module, "free_memory_bytes", lambda device: int(tokens * per_token / 0.9))


def _per_token(engine) -> int:
    cfg = engine.model.config
    return cfg.num_hidden_layers * 2 * cfg.num_key_value_heads * cfg.head_dim * 4  # fp32 K and V, batch 1


def test_a_bucket_that_does_not_fit_gives_way_to_the_exact_size(model, tok, monkeypatch):
    hf, path = model
    engine = _engine(path, tok)
    rng = random.Random()
    row, new = _prompt(rng, 30), 40
    needed = len(row) + new
    assert cache_capacity(needed) > needed
    _free_memory_for(monkeypatch, needed + 8, _per_token(engine))  # the exact cache fits, the bucket does not
    assert engine.generate(input_ids=[row], max_new_tokens=new, stop_at_eos=False).token_ids == _hf_greedy(hf, [row], new)
    assert [(s.capacity, s.short) for s in engine._graphs._states] == [(needed, False)]


@pytest.mark.parametrize("graph", ["eager", False])
def test_a_budget_past_memory_generates_what_fits(model, tok, monkeypatch, graph):
    """max_new_tokens whose KV cache does not fit: the call generates as many tokens as the cache
    that fits holds, with a warning (transformers' tokens so far, finish reason "length"); later such
    calls reuse that cache; where not even 64 tokens fit, OutOfMemoryError."""
    from codellama_fast.errors import OutOfMemoryError

    hf, path = model
    engine = _engine(path, tok)
    engine.use_cuda_graph = graph
    rng = random.Random()
    row = _prompt(rng, 30)
    room = 30 + rng.randrange(64, 120)  # cache slots that fit
    _free_memory_for(monkeypatch, room + 0.5, _per_token(engine))
    want = _hf_greedy(hf, [row], room - 30 + 1)[0]  # k tokens need k - 1 slots after the prompt
    for builds in (1, 1):
        with pytest.warns(RuntimeWarning, match="generates at most"):
            res = engine.generate(input_ids=[row], max_new_tokens=900, stop_at_eos=False)
        assert res.token_ids == [want] and res.finish_reasons == ["length"]
        assert engine._graphs.builds == (builds if graph else 0)
    if graph:
        assert [(s.capacity, s.short) for s in engine._graphs._states] == [(room, True)]
    # memory freed meanwhile: a call that now fits gets all its tokens (a new state, not the short one)
    _free_memory_for(monkeypatch, 30 + 200, _per_token(engine))
    assert engine.generate(input_ids=[row], max_new_tokens=150, stop_at_eos=False).token_ids == _hf_greedy(hf, [row], 150)
    assert engine._graphs.builds == (2 if graph else 0)
    engine.release_cache()
    _free_memory_for(monkeypatch, 30 + 63.5, _per_token(engine))
    with pytest.raises(OutOfMemoryError, match="KV cache"):
        engine.generate(input_ids=[row], max_new_tokens=900, stop_at_eos=False)


def test_release_cache_frees_the_state(model, tok):
    hf, path = model
    engine = _engine(path, tok)
    row = _prompt(random.Random(), 10)
    want = _hf_greedy(hf, [row], 6)
    assert engine.generate(input_ids=[row], max_new_tokens=6, stop_at_eos=False).token_ids == want
    assert len(engine._graphs) == 1
    engine.release_cache()
    assert len(engine._graphs) == 0
    assert engine.generate(input_ids=[row], max_new_tokens=6, stop_at_eos=False).token_ids == want
    assert engine._graphs.builds == 2


@pytest.mark.parametrize("graph", ["eager", False])
@pytest.mark.parametrize("setting", ["max_decode_states", "max_kept_prompts"])
@pytest.mark.parametrize("keep", [0, -1, 2.5, True, "4", None])
def test_a_count_of_kept_caches_that_is_no_count_is_refused(model, tok, graph, setting, keep):
    _, path = model
    engine = _engine(path, tok)
    engine.use_cuda_graph = graph
    setattr(engine, setting, keep)
    with pytest.raises(ValueError, match=setting):
        engine.generate("x", max_new_tokens=2)
    with pytest.raises(ValueError, match=setting):
        engine.generate("x", max_new_tokens=2, num_beams=2)


def test_an_unknown_decode_step_is_refused_on_every_path(model, tok):
    _, path = model
    engine = fp32_engine(path, tok)  # no graph here: the setting is still checked
    engine.decode_step = "sideways"
    with pytest.raises(ValueError, match="decode_step"):
        engine.generate("x", max_new_tokens=2)
