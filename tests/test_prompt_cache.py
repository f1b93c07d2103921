"""A single-sequence generation's KV cache kept for the next call whose prompt begins with its
tokens (engine/prompt_cache.py): the next call prefills only the rest, and generates what
transformers generates for the whole prompt; which calls take and keep it."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from codellama_fast.engine import prompt_cache as PC  # noqa: E402
from codellama_fast.engine.cache import KVCache  # noqa: E402
from tests.engine_helpers import fresh_seed  # noqa: E402


@pytest.fixture(autouse=True)
def short_prompts_share(monkeypatch):
    """The tests' prompts are short: any shared token counts (the floor has its own test)."""
    monkeypatch.setattr(PC, "MIN_SHARED_TOKENS", 1)


def test_a_prompt_sharing_fewer_than_the_floor_prefills_whole(monkeypatch):
    monkeypatch.setattr(PC, "MIN_SHARED_TOKENS", 4)
    assert PC.reusable_slots([1, 2, 3, 9], [1, 2, 3, 4, 5]) == 0
    assert PC.reusable_slots([1, 2, 3, 4], [1, 2, 3, 4, 5]) == 4
    assert PC.reusable_slots([1, 2, 3, 4, 5], [1, 2, 3, 4]) == 0  # 3 left to reuse: the last is fed again
    cache = PC.PromptCache()
    cache.keep([1, 2, 3, 9], KVCache(_config(), 1, 8, torch.float32, torch.device("cpu")))
    assert cache.take([1, 2, 3, 4, 5]) == (None, 0) and cache.kept_tokens == 4  # not taken: it stays


def test_take_shares_the_common_prefix_and_keeps_one_token_to_feed():
    cfg = _config()
    cache = PC.PromptCache()
    assert cache.take([1, 2, 3]) == (None, 0)
    kept = KVCache(cfg, 1, 8, torch.float32, torch.device("cpu"))
    cache.keep([1, 5, 6, 7], kept)
    assert cache.kept_tokens == 4
    got, n = cache.take([1, 5, 6, 9, 9])
    assert got is not None and got.cache is kept and n == 3 and cache.kept_tokens == 0  # taken out
    cache.keep([1, 5, 6, 7], kept)
    assert cache.take([1, 5])[1] == 1  # the whole prompt is kept: its last token is fed again for its logits
    cache.keep([1, 5, 6, 7], kept)
    assert cache.take([2, 5, 6]) == (None, 0) and cache.kept_tokens == 4  # nothing shared: it stays for another call
    assert PC.common_prefix([1, 2, 3], [1, 2]) == 2 and PC.common_prefix([], [1]) == 0


def test_fed_tokens_are_the_prompt_and_choices_the_steps_have_fed():
    fed = PC.FedTokens([1, 5, 7], tracking=True)
    assert fed.ids == []
    fed.filled = 3
    fed.chosen([9])  # chosen, not yet fed
    assert fed.ids == [1, 5, 7]
    fed.filled = 4
    assert fed.ids == [1, 5, 7, 9]
    off = PC.FedTokens([1, 5, 7], tracking=False)
    off.chosen([9])
    off.filled = 4
    assert off.ids == [] and off.seq == []


@pytest.mark.parametrize("fits", [True, False])
def test_move_slots_hands_over_the_kept_slots(fits):
    cfg = _config()
    kept = KVCache(cfg, 1, 40, torch.float32, torch.device("cpu"))
    kept.reserve(30)  # 40 slots held (a growing cache takes twice what it is asked, at most its length)
    for k, v in kept.layers:
        k.normal_(), v.normal_()
    want = [(k[:, :, :25].clone(), v[:, :, :25].clone()) for k, v in kept.layers]
    # what the new cache takes over with no copy: all 40 slots × 2 layers × (K, V) × 2 KV heads × 8 dims × 4 bytes
    assert PC.adoptable_bytes(kept, 100 if fits else 32) == (40 * 2 * 2 * 2 * 8 * 4 if fits else 0)
    pointers = {k.data_ptr() for k, _ in kept.layers}
    cache = KVCache(cfg, 1, 100 if fits else 32, torch.float32, torch.device("cpu"))
    PC.move_slots(kept, cache, 25)
    assert ({k.data_ptr() for k, _ in cache.layers} == pointers) == fits  # adopted, or copied
    assert len(kept.layers) == 0 and len(cache.layers) == cfg.num_hidden_layers
    assert cache.allocated >= 25 and all(k.shape[2] == cache.allocated for k, _ in cache.layers)
    for (k, v), (wk, wv) in zip(cache.layers, want, strict=True):
        assert torch.equal(k[:, :, :25], wk) and torch.equal(v[:, :, :25], wv)
    cache.reserve(cache.max_len)  # and it grows on as its own
    assert all(torch.equal(k[:, :, :25], wk) for (k, _), (wk, _) in zip(cache.layers, want, strict=True))


def _config():
    from codellama_fast.engine import LlamaConfig

    return LlamaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                       intermediate_size=48)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from tests.engine_helpers import make_hf_model, save

    hf = make_hf_model("gqa4", fresh_seed())
    return hf, save(hf, tmp_path_factory.mktemp("prompt-cache"))


def _forwards(engine):
    """The number of tokens of each forward pass from now on (a call's first: its prefill)."""
    original, calls = engine.model.forward, []
    engine.model.forward = lambda tokens, *a, **k: calls.append(tokens.shape[1]) or original(tokens, *a, **k)  # type: ignore[method-assign]
    return calls


def _greedy(hf, ids, n):
    x = torch.tensor([ids])
    return hf.generate(x, max_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0)[0, len(ids):].tolist()


def test_a_longer_prompt_prefills_only_its_new_tokens(model, tok):
    """A prompt that continues the last call's prompt and output: its keys and values come from
    the kept cache (the last generated token was never fed, so it is prefilled with the new ones),
    and the tokens are transformers' greedy ones for the whole prompt."""
    from tests.engine_helpers import fp32_engine

    hf, path = model
    engine = fp32_engine(path, tok)
    first_ids = tok.encode("def quicksort(items):\n    ")
    first = engine.generate(input_ids=[first_ids], max_new_tokens=10, stop_at_eos=False)
    assert first.prompt_tokens_reused == 0
    assert first.token_ids[0] == _greedy(hf, first_ids, 10)
    calls = _forwards(engine)
    longer = first_ids + first.token_ids[0] + tok.encode("\n# sort a list", add_special_tokens=False)
    second = engine.generate(input_ids=[longer], max_new_tokens=12, stop_at_eos=False)
    reused = len(first_ids) + 10 - 1
    assert second.prompt_tokens_reused == reused and "prompt tokens reused" in second.summary()
    assert calls[0] == len(longer) - reused
    assert second.token_ids[0] == _greedy(hf, longer, 12)


def test_the_same_prompt_again_and_another_prompt(model, tok):
    """The same prompt again feeds its last token alone and generates the same tokens; a prompt
    sharing only BOS reuses that one slot; both equal transformers' greedy."""
    from tests.engine_helpers import fp32_engine

    hf, path = model
    engine = fp32_engine(path, tok)
    ids = tok.encode("import os\nimport sys\n")
    first = engine.generate(input_ids=[ids], max_new_tokens=8, stop_at_eos=False)
    calls = _forwards(engine)
    again = engine.generate(input_ids=[ids], max_new_tokens=8, stop_at_eos=False)
    assert again.prompt_tokens_reused == len(ids) - 1 and calls[0] == 1
    assert again.token_ids == first.token_ids and first.token_ids[0] == _greedy(hf, ids, 8)
    other = tok.encode("class Stack:\n")
    calls.clear()
    got = engine.generate(input_ids=[other], max_new_tokens=8, stop_at_eos=False)
    assert got.prompt_tokens_reused == 1 and calls[0] == len(other) - 1  # BOS alone is shared
    assert got.token_ids[0] == _greedy(hf, other, 8)


def test_a_chats_next_turn_prefills_only_the_new_message(model, tok):
    """The CLI's chat loop: the dialog so far, the answer, and a new message. The second turn's
    prompt begins with the first turn's prompt (at least), so only the rest is prefilled; both
    answers are transformers' greedy ones for the whole dialog's ids."""
    from tests.engine_helpers import fp32_engine

    hf, path = model
    engine = fp32_engine(path, tok)
    messages = [{"role": "user", "content": "Write a function that reverses a list."}]
    ids = tok.chat_prompt_ids(messages)
    answer = engine.chat(messages, max_new_tokens=12, stop_at_eos=False)
    assert tok.encode(answer, add_special_tokens=False)  # something was answered
    want = tok.decode(_greedy(hf, ids, 12), skip_special_tokens=True).strip()
    assert answer == want
    messages += [{"role": "assistant", "content": answer}, {"role": "user", "content": "Now in place."}]
    next_ids = tok.chat_prompt_ids(messages)
    assert next_ids[: len(ids)] == ids
    calls = _forwards(engine)
    answer2 = engine.chat(messages, max_new_tokens=12, stop_at_eos=False)
    assert calls[0] <= len(next_ids) - len(ids)
    assert answer2 == tok.decode(_greedy(hf, next_ids, 12), skip_special_tokens=True).strip()


def test_which_calls_take_and_keep_it(model, tok):
    """A batch of two neither takes nor replaces the kept cache; prompt lookup (guessed tokens
    written ahead) takes it and keeps its own; release_cache drops it; reuse_prompt_cache=False
    turns it off."""
    from tests.engine_helpers import fp32_engine

    _, path = model
    engine = fp32_engine(path, tok)
    ids = tok.encode("def add(a, b):\n    return a + b\n\ndef add")
    engine.generate(input_ids=[ids], max_new_tokens=6, stop_at_eos=False)
    kept = engine._prompt_cache.kept_tokens
    assert kept == len(ids) + 5
    assert engine.generate(input_ids=[ids, ids[:5]], max_new_tokens=4, stop_at_eos=False).prompt_tokens_reused == 0
    assert engine._prompt_cache.kept_tokens == kept
    looked = engine.generate(input_ids=[ids], max_new_tokens=6, stop_at_eos=False, prompt_lookup_num_tokens=3)
    assert looked.prompt_tokens_reused == len(ids) - 1 and engine._prompt_cache.kept_tokens == kept
    assert engine.generate(input_ids=[ids], max_new_tokens=2).prompt_tokens_reused == len(ids) - 1
    engine.release_cache()
    assert engine._prompt_cache.kept_tokens == 0
    assert engine.generate(input_ids=[ids], max_new_tokens=2).prompt_tokens_reused == 0
    engine.reuse_prompt_cache = False
    assert engine.generate(input_ids=[ids], max_new_tokens=2).prompt_tokens_reused == 0


def test_a_stream_closed_early_keeps_what_it_fed(model, tok):
    """A stream closed after a few tokens keeps the prompt and the tokens fed before its last one;
    the next call on that text reuses them and generates transformers' greedy tokens."""
    from tests.engine_helpers import fp32_engine

    hf, path = model
    engine = fp32_engine(path, tok)
    ids = tok.encode("for i in range(10):\n")
    stream = engine.stream(ids, max_new_tokens=20, stop_at_eos=False)
    for _ in range(3):
        next(stream)
    stream.close()
    fed = engine._prompt_cache.kept_tokens
    assert len(ids) <= fed < len(ids) + 20
    want = _greedy(hf, ids, 20)
    longer = ids + want[: fed - len(ids) + 1]  # the prompt and the tokens the stream chose
    got = engine.generate(input_ids=[longer], max_new_tokens=8, stop_at_eos=False)
    assert got.prompt_tokens_reused == fed
    assert got.token_ids[0] == _greedy(hf, longer, 8)


def test_no_memory_for_both_caches_prefills_the_whole_prompt(model, tok, monkeypatch):
    """Where the new cache cannot be had beside the kept one, the kept one is dropped and the whole
    prompt prefilled."""
    from codellama_fast.engine import generate as G
    from codellama_fast.errors import OutOfMemoryError
    from tests.engine_helpers import fp32_engine

    hf, path = model
    engine = fp32_engine(path, tok)
    ids = tok.encode("x = [1, 2, 3]\n")
    engine.generate(input_ids=[ids], max_new_tokens=4, stop_at_eos=False)

    def no_room(kept, cache, n):
        raise OutOfMemoryError("no room for both")

    monkeypatch.setattr(G, "move_slots", no_room)
    got = engine.generate(input_ids=[ids + [13]], max_new_tokens=6, stop_at_eos=False)
    assert got.prompt_tokens_reused == 0 and got.token_ids[0] == _greedy(hf, ids + [13], 6)


def test_the_kept_tensors_a_call_adopts_count_as_memory_it_has(model, tok, monkeypatch):
    """A reusing call whose whole cache the free memory would not hold beside the kept one, but
    would once the kept tensors it adopts (no copy) are counted as its own: it reuses them and
    generates every token asked for, with no warning."""
    import warnings

    from codellama_fast.engine import cache as C
    from tests.engine_helpers import fp32_engine

    hf, path = model
    engine = fp32_engine(path, tok)
    ids = tok.encode("def quicksort(items):\n    ")
    first = engine.generate(input_ids=[ids], max_new_tokens=6, stop_at_eos=False)
    held = engine._prompt_cache.held_bytes
    longer = ids + first.token_ids[0] + tok.encode("\n# sort", add_special_tokens=False)
    whole = engine.model.config.kv_bytes_per_token(4) * (len(longer) + 12)  # the second call's cache, fp32
    assert held < whole
    # free memory for the whole cache less half what the kept one holds
    monkeypatch.setattr(C, "free_memory_bytes", lambda device: int((whole - held / 2) / C.HEADROOM))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = engine.generate(input_ids=[longer], max_new_tokens=12, stop_at_eos=False)
    assert got.prompt_tokens_reused == len(ids) + 6 - 1
    assert got.token_ids[0] == _greedy(hf, longer, 12)


def test_dynamic_rope_scaling_prefills_every_prompt_whole(tmp_path, tok):
    """With dynamic NTK scaling a key depends on the sequence's length, so nothing is reused."""
    from tests.engine_helpers import fp32_engine, make_hf_model, save

    hf = make_hf_model("gqa4", fresh_seed(), rope_scaling={"type": "dynamic", "factor": 2.0}, max_position_embeddings=16)
    engine = fp32_engine(save(hf, tmp_path / "m"), tok)
    ids = tok.encode("def f(x):\n    return x * 2\n")
    engine.generate(input_ids=[ids], max_new_tokens=4, stop_at_eos=False)
    got = engine.generate(input_ids=[ids + [13]], max_new_tokens=4, stop_at_eos=False)
    assert got.prompt_tokens_reused == 0 and engine._prompt_cache.kept_tokens == 0


def test_a_decode_state_call_copies_the_kept_cache(model, tok):
    """A call on a decode state (the captured step's static buffers, run uncaptured here) whose
    prompt continues the uncaptured loop's kept cache copies its slots into the state's cache,
    prefills only the rest and gives transformers' tokens; the kept cache then goes (its tokens
    live in the state)."""
    from tests.engine_helpers import fp32_engine

    hf, path = model
    engine = fp32_engine(path, tok)
    engine.use_cuda_graph = "eager"
    ids = tok.encode("while True:\n    pass\n")
    engine.generate(input_ids=[ids], max_new_tokens=1, stop_at_eos=False)  # one token: no decode state
    assert engine._prompt_cache.kept_tokens == len(ids)
    calls = _forwards(engine)
    got = engine.generate(input_ids=[ids], max_new_tokens=4, stop_at_eos=False)
    assert got.prompt_tokens_reused == len(ids) - 1 and [c for c in calls if c > 1] == []  # the last token alone
    assert got.token_ids[0] == _greedy(hf, ids, 4) and engine._prompt_cache.kept_tokens == 0


@pytest.mark.parametrize("every", [1, 3, 16])
def test_a_decode_state_reuses_what_its_last_call_fed(model, tok, every):
    """On a decode state (run uncaptured here) the cache outlives the call: the next call of one
    sequence whose prompt begins with the last one's prompt and output prefills only the rest, the
    fed tokens counted block by block (`every` tokens read back at a time); the tokens equal
    transformers' greedy ones."""
    from tests.engine_helpers import fp32_engine

    hf, path = model
    engine = fp32_engine(path, tok)
    engine.use_cuda_graph, engine.check_every = "eager", every
    ids = tok.encode("def quicksort(items):\n    ")
    first = engine.generate(input_ids=[ids], max_new_tokens=11, stop_at_eos=False)
    assert first.token_ids[0] == _greedy(hf, ids, 11) and first.prompt_tokens_reused == 0
    longer = ids + first.token_ids[0] + tok.encode("\n# sort", add_special_tokens=False)
    calls = _forwards(engine)
    second = engine.generate(input_ids=[longer], max_new_tokens=9, stop_at_eos=False)
    reused = len(ids) + 10
    assert second.prompt_tokens_reused == reused and calls[0] == len(longer) - reused
    assert second.token_ids[0] == _greedy(hf, longer, 9)
    assert engine.generate(input_ids=[longer], max_new_tokens=3).prompt_tokens_reused == len(longer) - 1
    # prompt lookup writes guesses ahead into the state's cache: the tokens it held are forgotten
    # (the calls around it on the same state as its own: with log-probabilities the step is not the
    # captured argmax's)
    kw = {"max_new_tokens": 4, "stop_at_eos": False, "return_logprobs": True}
    engine.generate(input_ids=[longer], **kw)
    builds = engine._graphs.builds
    engine.generate(input_ids=[longer], max_new_tokens=5, stop_at_eos=False, prompt_lookup_num_tokens=2)
    for state in engine._graphs._states:  # the greedy step's state would give its slots (copied)
        if state.greedy:
            state.ids = []
    again = engine.generate(input_ids=[longer], **kw)
    assert engine._graphs.builds == builds  # all on one state
    # it holds what the prompt lookup call fed: the prompt and all but its last token
    assert again.prompt_tokens_reused == len(longer) - 1 and again.token_ids[0] == _greedy(hf, longer, 4)
    # a batch's call builds a state of its own shape; the one-sequence states stay (engine.decode_states)
    assert engine.generate(input_ids=[longer, ids], max_new_tokens=3, stop_at_eos=False).prompt_tokens_reused == 0
    assert engine.generate(input_ids=[longer], max_new_tokens=3).prompt_tokens_reused == len(longer) - 1


def test_a_next_turn_in_another_decode_mode_copies_the_other_states_slots(model, tok, monkeypatch):
    """Decode states (run uncaptured here): a chat's next turn that wants log-probabilities runs on
    the state of the step without the argmax, built for it; it copies the slots the greedy turn
    before left in the greedy step's state and prefills only the rest; its tokens and
    log-probabilities are transformers'. A state that holds more of the prompt itself copies
    nothing (its own slots serve), and the greedy state keeps its tokens for the turn after."""
    from tests.engine_helpers import fp32_engine, hf_logprobs, logprobs_close

    hf, path = model
    engine = fp32_engine(path, tok)
    engine.use_cuda_graph = "eager"
    ids = tok.encode("def quicksort(items):\n    ")
    first = engine.generate(input_ids=[ids], max_new_tokens=10, stop_at_eos=False)
    longer = ids + first.token_ids[0] + tok.encode("\n# sort", add_special_tokens=False)
    calls = _forwards(engine)
    second = engine.generate(input_ids=[longer], max_new_tokens=6, stop_at_eos=False, return_logprobs=True)
    reused = len(ids) + 9
    assert second.prompt_tokens_reused == reused and engine._graphs.builds == 2
    assert [c for c in calls if c > 1] == [len(longer) - reused]  # the prefill of the rest alone
    assert second.token_ids[0] == _greedy(hf, longer, 6)
    assert logprobs_close(second.token_logprobs[0], hf_logprobs(hf, longer, second.token_ids[0]), 1e-4)
    greedy_state = next(s for s in engine._graphs._states if s.greedy)
    assert greedy_state.ids == (ids + first.token_ids[0])[:reused]  # copied from, not taken
    # the turn after, in the second mode again: its own state holds the longer prompt's slots
    third = longer + second.token_ids[0] + tok.encode("\n", add_special_tokens=False)
    greedy_state.ids = greedy_state.ids[: len(ids)]  # holds less than the state's own: nothing copied
    from codellama_fast.engine import decode_states

    copies = []
    monkeypatch.setattr(decode_states, "copy_slots", lambda *a: copies.append(a[2]) or PC.copy_slots(*a))
    got = engine.generate(input_ids=[third], max_new_tokens=4, stop_at_eos=False, return_logprobs=True)
    assert got.prompt_tokens_reused == len(longer) + 5 and not copies
    assert got.token_ids[0] == _greedy(hf, third, 4) and engine._graphs.builds == 2


def test_a_decode_state_used_by_an_assistant_forgets_its_tokens(model, tok):
    """An engine's decode state lent to another engine's guesses (as its assistant) is overwritten:
    the engine's next call prefills its whole prompt and still generates transformers' tokens."""
    from tests.engine_helpers import fp32_engine

    hf, path = model
    engine, target = fp32_engine(path, tok), fp32_engine(path, tok)
    engine.use_cuda_graph = "eager"
    ids = tok.encode("import os\n")
    kw = {"max_new_tokens": 6, "stop_at_eos": False, "return_logprobs": True}  # the state the guesses lease too (not the argmax one)
    engine.generate(input_ids=[ids], **kw)
    builds = engine._graphs.builds
    target.generate(input_ids=[tok.encode("x = 1\n")], max_new_tokens=6, stop_at_eos=False, assistant_model=engine,
                    num_assistant_tokens=3)
    got = engine.generate(input_ids=[ids + [13]], **kw)
    assert engine._graphs.builds == builds  # all on one state
    assert got.prompt_tokens_reused == 0 and got.token_ids[0] == _greedy(hf, ids + [13], 6)


def test_too_few_tokens_are_not_kept(monkeypatch):
    monkeypatch.setattr(PC, "MIN_SHARED_TOKENS", 4)
    cache = PC.PromptCache()
    kv = KVCache(_config(), 1, 8, torch.float32, torch.device("cpu"))
    cache.keep([1, 2, 3, 4], kv)
    assert cache.kept_tokens == 4
    cache.keep([1, 2, 3], KVCache(_config(), 1, 8, torch.float32, torch.device("cpu")))  # too short to keep
    assert cache.kept_tokens == 4 and len(cache) == 1


def test_several_prompts_are_kept_the_least_recently_used_going_first(monkeypatch):
    """Up to `most` kept prompts: a prompt takes the one that gives it the most (of equals, the most
    recent), copying one's slots makes it the most recent (or drops it), the least recently used
    go past the count, and all but the newest go where the free memory is less than they hold
    together."""
    monkeypatch.setattr(PC, "MIN_SHARED_TOKENS", 2)
    free = [1 << 40]
    cache = PC.PromptCache(lambda: free[0])

    def kv():
        return KVCache(_config(), 1, 8, torch.float32, torch.device("cpu"))

    a, b, c = kv(), kv(), kv()
    cache.keep([1, 2, 3], a, most=2)
    cache.keep([1, 7, 8, 9], b, most=2)
    assert len(cache) == 2 and cache.kept_tokens == 4
    with torch.inference_mode():
        a.layers[0][0].fill_(1.0)  # slot values to see in the copy
    into = kv()
    assert cache.copy_into([1, 2, 3, 4], into, more_than=3) == 0  # gives 3: not more
    assert cache.copy_into([1, 2, 3, 4], into) == 3 and cache.kept_tokens == 3  # the most recent now
    assert torch.equal(into.layers[0][0][:, :, :3], a.layers[0][0][:, :, :3])
    cache.keep([1, 5, 6], c, most=2)  # past the count: b, the least recently used, goes
    assert cache.take([1, 7, 8, 9, 10]) == (None, 0)
    got, n = cache.take([1, 2, 3, 4])
    assert got.cache is a and n == 3 and len(cache) == 1
    cache.keep([1, 2, 3], a, most=2)
    got, n = cache.take([1, 9, 7])  # a and c each share 1 token: under the floor, none
    assert got is None and n == 0
    got, n = cache.take([1, 5, 6, 1])
    assert got.cache is c and n == 3
    cache.keep([1, 5, 6, 9], c, most=2)
    longer = kv()
    cache.keep([1, 5, 6, 7], longer, most=3)  # gives more of [1, 5, 6, 7, 8] than c does
    assert cache.copy_into([1, 5, 6, 7, 8], kv(), drop=True) == 4 and len(cache) == 2  # longer's: dropped
    cache.clear()
    cache.keep([1, 5, 6], c, most=2)
    cache.keep([1, 2, 3], a, most=2)
    free[0] = cache.held_bytes - 1  # less free than the two hold: all but the newest go
    cache.keep([1, 9, 9], b, most=2)
    assert len(cache) == 1 and cache.kept_tokens == 3 and cache._kept[0].cache is b


def test_a_kept_prompt_that_another_begins_with_is_not_kept_beside_it(monkeypatch):
    """A kept prompt whose tokens begin another's gives no prompt more than that one: keeping the
    longer drops the shorter, and keeping a shorter one beside a longer keeps the longer alone, as
    the most recent (``extends``). Prompts that part ways stay side by side."""
    monkeypatch.setattr(PC, "MIN_SHARED_TOKENS", 2)
    cache = PC.PromptCache()

    def kv():
        return KVCache(_config(), 1, 8, torch.float32, torch.device("cpu"))

    short, other, longer, again = kv(), kv(), kv(), kv()
    cache.keep([1, 2, 3], short)
    cache.keep([1, 2, 9, 9], other)  # parts ways with [1, 2, 3] at the third token: both stay
    assert [k.cache for k in cache._kept] == [short, other]
    cache.keep([1, 2, 3, 4, 5], longer)  # begins with [1, 2, 3]: short goes
    assert [k.cache for k in cache._kept] == [other, longer]
    assert not cache.extends([1, 2, 3, 5]) and cache.extends([1, 2, 3])
    cache.keep([1, 2, 9], kv())  # other begins with all of it: other stays, as the most recent
    assert [k.cache for k in cache._kept] == [longer, other]
    cache.keep([1, 2, 3, 4, 5], again)  # the same tokens: the kept one stays, as the most recent
    assert [k.cache for k in cache._kept] == [other, longer]
    got, n = cache.take([1, 2, 3, 4, 5, 6])
    assert got.cache is longer and n == 5


def test_an_editors_next_infill_reuses_the_suffix_first_prompt(model, tok, monkeypatch):
    """Infilling as an editor calls it while the user types (the same suffix, the prefix grown at
    the cursor). Suffix first (SPM: the suffix, then the prefix) the next call reuses all but the
    typed text's tokens; prefix first (PSM) the suffix follows the edit and is prefilled again.
    The middles are transformers' greedy tokens for the new prompt."""
    from tests.engine_helpers import fp32_engine

    monkeypatch.setattr(PC, "MIN_SHARED_TOKENS", 32)  # the engine's own floor: these prompts pass it
    hf, path = model
    engine = fp32_engine(path, tok)
    prefix = "def mean(values):\n    "
    suffix = "\n    return total / len(values)\n\n\ndef median(values):\n    ordered = sorted(values)\n    middle = len(ordered) // 2\n"
    typed = prefix + "total = sum("
    reused = {}
    for spm in (True, False):
        engine.release_cache()
        old = engine.infill_prompt_ids(prefix, suffix, spm)
        first = engine.infill(prefix, suffix, suffix_first=spm, max_new_tokens=5, stop_at_eos=False).generation
        new = engine.infill_prompt_ids(typed, suffix, spm)
        got = engine.infill(typed, suffix, suffix_first=spm, max_new_tokens=5, stop_at_eos=False).generation
        shared = PC.common_prefix(old + first.token_ids[0][:-1], new)
        assert got.prompt_tokens_reused == (shared if shared >= 32 else 0)
        assert got.token_ids[0] == _greedy(hf, new, 5)
        reused[spm] = got.prompt_tokens_reused
    suffix_tokens = len(tok.encode(suffix, add_special_tokens=False))
    assert reused[True] > suffix_tokens and reused[False] < len(engine.infill_prompt_ids(prefix, "", False))


@pytest.mark.parametrize("samples", [False, True])
@pytest.mark.parametrize("lack", ["none", "shorter"])
def test_a_call_short_of_memory_frees_the_kept_cache_first(model, tok, monkeypatch, lack, samples):
    """A batch (which never takes the kept cache; with `samples`, the samples of the kept prompt,
    which would copy its slots) whose cache the free memory would not hold whole while the kept one
    is held: the kept one goes and the batch gets its whole cache, generating every token asked for
    (no warning). The samples' own prompt is kept when they end."""
    import warnings

    from codellama_fast.engine import generate as G
    from codellama_fast.errors import OutOfMemoryError
    from tests.engine_helpers import fp32_engine

    hf, path = model
    engine = fp32_engine(path, tok)
    ids = tok.encode("def quicksort(items):\n    ")
    engine.generate(input_ids=[ids], max_new_tokens=4, stop_at_eos=False)
    assert engine._prompt_cache.kept_tokens > 0
    real = KVCache.at_most.__func__

    def at_most(cls, cfg, batch, needed, least, dtype, device, grow=True, **kw):
        if engine._prompt_cache.kept_tokens:  # the kept cache holds the memory this one needs
            if lack == "none":
                raise OutOfMemoryError("no room beside the kept cache")
            needed -= 10  # as many slots as fit: fewer than asked
        return real(cls, cfg, batch, needed, least, dtype, device, grow, **kw)

    monkeypatch.setattr(G.KVCache, "at_most", classmethod(at_most))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        if samples:
            got = engine.generate(input_ids=[ids], num_return_sequences=2, temperature=1.0, max_new_tokens=40, stop_at_eos=False)
            assert got.prompt_tokens_reused == 0
        else:
            got = engine.generate(input_ids=[ids, ids[:5]], max_new_tokens=40, stop_at_eos=False)
            assert got.token_ids[0] == _greedy(hf, ids, 40)
    assert engine._prompt_cache.kept_tokens == (len(ids) if samples else 0) and [len(r) for r in got.token_ids] == [40, 40]


@pytest.mark.parametrize("graph", [False, "eager"])
def test_samples_of_a_longer_prompt_copy_the_kept_slots(model, tok, graph):
    """A chat's next turn sampled 3 times (num_return_sequences): the kept prompt's slots (the kept
    cache's, or on decode states the one-sequence state's) are copied into the first row, the rest
    of the prompt is prefilled there once and copied to the other rows, and each sample's
    log-probabilities are transformers' for the whole prompt and its own tokens. The samples'
    prompt is kept when they end (the shorter kept prompt it begins with goes): the turn after,
    which continues the second sample, prefills only that sample and its new message. Prompts that
    differ reuse nothing."""
    from tests.engine_helpers import fp32_engine, hf_logprobs, logprobs_close

    hf, path = model
    engine = fp32_engine(path, tok)
    engine.use_cuda_graph = graph
    first_ids = tok.encode("def quicksort(items):\n    ")
    first = engine.generate(input_ids=[first_ids], max_new_tokens=10, stop_at_eos=False)
    shapes = []
    original = engine.model.forward
    engine.model.forward = lambda tokens, *a, **k: shapes.append(tuple(tokens.shape)) or original(tokens, *a, **k)  # type: ignore[method-assign]
    longer = first_ids + first.token_ids[0] + tok.encode("\n# sort a list", add_special_tokens=False)
    got = engine.generate(input_ids=[longer], num_return_sequences=3, max_new_tokens=6, temperature=1.0, seed=fresh_seed(),
                          stop_at_eos=False, return_logprobs=True)
    reused = len(first_ids) + 10 - 1
    assert got.prompt_tokens_reused == reused
    # one prefill (a decode state's warm-up steps come before it), then the rows' steps
    prefills = [i for i, shape in enumerate(shapes) if shape[1] > 1]
    assert prefills and shapes[prefills[0]] == (1, len(longer) - reused) and all(s == (3, 1) for s in shapes[prefills[0] + 1 :])
    assert len(prefills) == 1 and (not graph or engine._graphs.builds == 2)
    assert got.prefill_tokens_per_s > 0
    for out, lps in zip(got.token_ids, got.token_logprobs, strict=True):
        assert logprobs_close(lps, hf_logprobs(hf, longer, out), 1e-4)
    assert [k.ids for k in engine._prompt_cache._kept] == [longer]  # the first turn's: gone, longer begins with it
    if graph:  # the one-sequence state still holds the first call's tokens: the samples copied them
        assert [s.ids for s in engine._graphs._states if s.batch == 1] == [(first_ids + first.token_ids[0])[:reused]]
    third = longer + got.token_ids[1] + tok.encode("\n# in place", add_special_tokens=False)
    shapes.clear()
    after = engine.generate(input_ids=[third], max_new_tokens=4, stop_at_eos=False)
    assert after.prompt_tokens_reused == len(longer)
    assert [s for s in shapes if s[1] > 1] == [(1, len(third) - len(longer))]
    assert after.token_ids[0] == _greedy(hf, third, 4)
    shapes.clear()
    two = [longer, tok.encode("class Stack:\n")]  # rows that differ: each prompt prefilled whole
    assert engine.generate(input_ids=two, max_new_tokens=2, stop_at_eos=False).prompt_tokens_reused == 0
    shapes = [shape for shape in shapes if shape[1] > 1]
    assert shapes[0][0] == 2


@pytest.mark.parametrize("graph", [False, "eager"])
def test_beams_of_a_longer_prompt_copy_the_kept_slots(model, tok, graph):
    """A chat's next turn by beam search (3 beams, 2 returned): the kept prompt's slots (the kept
    cache's, or on decode states the one-sequence state's) are copied into the prompt's cache, only
    the rest of the prompt is prefilled, and the beams and their scores are transformers' for the
    whole prompt. When the beams end, the prompt's keys and values are kept, with the best beam's
    (its row held them: the search ended at its last step): a turn continuing the second beam
    prefills that beam past what it shares with the best, and its message; one continuing the best
    prefills only its last token and the message. Two prompts' beams reuse nothing."""
    from tests.engine_helpers import fp32_engine, hf_beams, hf_logprobs, logprobs_close

    hf, path = model
    engine = fp32_engine(path, tok)
    engine.use_cuda_graph = graph
    first_ids = tok.encode("def quicksort(items):\n    ")
    first = engine.generate(input_ids=[first_ids], max_new_tokens=10, stop_at_eos=False)
    calls = _forwards(engine)
    longer = first_ids + first.token_ids[0] + tok.encode("\n# sort a list", add_special_tokens=False)
    kw = dict(num_beams=3, num_return_sequences=2)
    got = engine.generate(input_ids=[longer], max_new_tokens=6, stop_at_eos=False, **kw)
    reused = len(first_ids) + 10 - 1
    assert got.prompt_tokens_reused == reused
    assert [c for c in calls if c > 1] == [len(longer) - reused]  # the prefill of the rest alone
    want, want_scores = hf_beams(hf, [longer], 6, None, **kw)
    assert got.token_ids == want
    assert logprobs_close(got.sequence_scores, want_scores, 1e-4), (got.sequence_scores, want_scores)
    # the first turn's cache is gone (what is kept begins with it): the prompt and the best beam's
    # tokens but the last, which its row held when the search ended at its last step
    assert [k.ids for k in engine._prompt_cache._kept] == [longer + got.token_ids[0][:5]]
    message = tok.encode("\n# in place", add_special_tokens=False)
    for beam in (1, 0):  # a turn continuing the second beam, then one continuing the best
        third = longer + got.token_ids[beam] + message
        shared = PC.common_prefix(got.token_ids[0][:5], got.token_ids[beam])  # of the tokens kept after the prompt
        calls.clear()
        after = engine.generate(input_ids=[third], max_new_tokens=4, stop_at_eos=False, return_logprobs=True)
        assert after.prompt_tokens_reused == len(longer) + shared and [c for c in calls if c > 1] == [len(third) - len(longer) - shared]
        assert after.token_ids[0] == _greedy(hf, third, 4)
        assert logprobs_close(after.token_logprobs[0], hf_logprobs(hf, third, after.token_ids[0]), 1e-4)
        if beam == 1:
            engine.release_cache()  # each turn continues the beams' call
            engine.generate(input_ids=[longer], max_new_tokens=6, stop_at_eos=False, **kw)
    two = [longer, tok.encode("class Stack:\n")]
    assert engine.generate(input_ids=two, max_new_tokens=6, stop_at_eos=False, **kw).prompt_tokens_reused == 0


@pytest.mark.parametrize("graph", [False, "eager"])
@pytest.mark.parametrize("guess", ["lookup", "assistant", "other assistant"])
def test_guessed_tokens_take_the_kept_prompt_and_keep_what_they_fed(model, tok, tmp_path, graph, guess):
    """Prompt lookup, an assistant with the model's own weights (every guess kept) and one with
    other weights (its guesses rejected): a chat's next turn takes the kept slots and prefills only
    the rest, and what it keeps is the prompt and every token it emitted but the last, whatever the
    slots of rejected guesses hold: the turn after reuses exactly those and gives transformers'
    tokens."""
    from tests.engine_helpers import fp32_engine, make_hf_model, save

    hf, path = model
    engine = fp32_engine(path, tok)
    engine.use_cuda_graph = graph
    kw: dict = {"prompt_lookup_num_tokens": 3}
    if guess != "lookup":
        draft = path if guess == "assistant" else save(make_hf_model("gqa4", fresh_seed()), tmp_path / "draft")
        kw = {"assistant_model": fp32_engine(draft, tok), "num_assistant_tokens": 3}
    ids = tok.encode("def add(a, b):\n    return a + b\n\ndef add(a, b):\n    return")
    first = engine.generate(input_ids=[ids], max_new_tokens=8, stop_at_eos=False).token_ids[0]
    second = ids + first + tok.encode("\n\ndef add(a, b):\n", add_special_tokens=False)
    calls = _forwards(engine)
    got = engine.generate(input_ids=[second], max_new_tokens=12, stop_at_eos=False, **kw)
    assert got.prompt_tokens_reused == len(ids) + 7 and calls[0] == len(second) - len(ids) - 7
    assert got.token_ids[0] == _greedy(hf, second, 12)
    if guess == "assistant":
        assert got.guesses_kept > 0  # passes that fed kept guesses into the cache
    elif guess == "other assistant":
        assert got.guesses_made > got.guesses_kept  # passes that wrote rejected guesses into the cache
    third = second + got.token_ids[0] + tok.encode("\n", add_special_tokens=False)
    after = engine.generate(input_ids=[third], max_new_tokens=6, stop_at_eos=False)
    assert after.prompt_tokens_reused == len(second) + 11
    assert after.token_ids[0] == _greedy(hf, third, 6)


@pytest.mark.parametrize("graph", [False, "eager"])
@pytest.mark.parametrize("most", [4, 1])
def test_conversations_taking_turns_each_reuse_their_own(model, tok, monkeypatch, most, graph):
    """Two conversations taking turns (a server's two users, an editor's two files): each next turn
    reuses its own dialog's keys and values (on a decode state: the other conversation's slots are
    kept aside before they are overwritten, and copied back at its next turn), and its tokens and
    log-probabilities are transformers'; with max_kept_prompts=1 the one kept cache is the other
    conversation's, so neither reuses anything."""
    from tests.engine_helpers import fp32_engine, hf_logprobs, logprobs_close

    monkeypatch.setattr(PC, "MIN_SHARED_TOKENS", 4)  # the dialogs share BOS alone: that is not reused
    hf, path = model
    engine = fp32_engine(path, tok)
    engine.use_cuda_graph = graph
    engine.max_kept_prompts = most
    dialogs = [tok.encode("def quicksort(items):\n    "), tok.encode("class Stack:\n    def __init__(self):\n")]
    for turn in range(3):
        for i, ids in enumerate(dialogs):
            got = engine.generate(input_ids=[ids], max_new_tokens=5, stop_at_eos=False, return_logprobs=True)
            assert got.token_ids[0] == _greedy(hf, ids, 5), (turn, i)
            assert logprobs_close(got.token_logprobs[0], hf_logprobs(hf, ids, got.token_ids[0]), 1e-4), (turn, i)
            # the last call's prompt and its tokens but the last: all but that token and the message added below
            held = 0 if turn == 0 or most == 1 else len(ids) - 2
            assert got.prompt_tokens_reused == held, (turn, i)
            dialogs[i] = ids + got.token_ids[0] + [13]
    # kept: both conversations (on a decode state: the one it does not hold)
    assert len(engine._prompt_cache) == (min(most, 2) if not graph else 1)
    if graph:
        assert engine._graphs.builds == 1


@pytest.mark.parametrize("room", [True, False])
def test_a_new_decode_state_short_of_room_frees_the_kept_caches_first(model, tok, monkeypatch, room):
    """A decode state built where the free memory holds it twice over leaves the kept caches (its
    call copies the one it continues); where it does not, they go before any state does (a kept
    cache saves a prefill, a state a capture): the call prefills its whole prompt, with
    transformers' tokens either way."""
    from tests.engine_helpers import fp32_engine

    monkeypatch.setattr(PC, "MIN_SHARED_TOKENS", 4)  # the two prompts share BOS alone: that is not reused
    hf, path = model
    engine = fp32_engine(path, tok)
    ids = tok.encode("while True:\n    pass\n")
    engine.generate(input_ids=[ids], max_new_tokens=1, stop_at_eos=False)  # kept by the uncaptured loop
    engine.generate(input_ids=[tok.encode("import os\n")], max_new_tokens=1, stop_at_eos=False)
    assert len(engine._prompt_cache) == 2
    engine.use_cuda_graph = "eager"
    if not room:
        engine._graphs._spare_slots = lambda batch: 0
    got = engine.generate(input_ids=[ids], max_new_tokens=4, stop_at_eos=False)
    assert got.token_ids[0] == _greedy(hf, ids, 4)
    assert got.prompt_tokens_reused == (len(ids) - 1 if room else 0)
    assert len(engine._prompt_cache) == (1 if room else 0)  # with room: the other conversation's stays
